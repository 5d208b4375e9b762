"""Reports over runs: ``kdkit report RUN_DIR... --out DIR`` writes one self-contained HTML page (plots
embedded) and its Markdown twin (plots beside it as PNG files); ``kdkit compare RUN_DIR...`` prints the
same comparison as a terminal table.

What it reads (:mod:`.read`, every file checked first): run directories (``config.yaml`` +
``metrics.jsonl``), folders holding run directories (a pipeline's ``out_dir``, ``runs/``), a pipeline's
``summary.json`` (sizes, MACs, latencies) and result JSONs of the benchmarks (``docs/results/*.json``
with ``rows`` that carry ``params``/``macs``). A run or file that cannot be read is left out with one
line naming it and why.

What it shows (:mod:`.numbers`, :mod:`.render`): every run with its status (finished, or in progress at
epoch k of N); the runs grouped by recipe (runs whose configs differ only in seed, run name or output
folder), labelled by the keys in which recipes of the same model and methods differ; a run is its recipe
and seed, so a second folder of both (a resumed copy) is counted once; with mean ± std over the group
of the final test top-1, of the last epoch's validation top-1 and of the best epoch's beside it; each
run's balance hints (loss terms' shares of the gradient on the student over its first steps);
teacher-student agreement; the config keys in which the runs differ;
learning curves (validation top-1 of every network, every named loss term, the learning rate) as PNG
plots made with matplotlib; and, where there are sizes and latencies, a cost table and the
accuracy-vs-latency plot.
"""

from .numbers import config_differences, group_rows, groups
from .read import Report, ReportError, Run, collect, printable, read_run
from .render import plots, tables, terminal, write_report

__all__ = ["Report", "ReportError", "Run", "collect", "config_differences", "group_rows", "groups", "plots",
           "printable", "read_run", "tables", "terminal", "write_report"]
