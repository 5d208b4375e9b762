"""The results tables rebuilt as sweeps (issue 26): every method's main weights chosen on a validation
split with the same trial budget as vanilla's learning rate and weight decay, then 3 seeds on test.

    python benchmarks/sweep_tables.py --table offline   # docs/results/fashion_mnist_sweep.md
    python benchmarks/sweep_tables.py --table online    # docs/results/fashion_mnist_schemes_sweep.md

The regime: cnn_tiny on the first 10,000 training images of Fashion-MNIST (after a 10% validation split
carved from the training images by seed 0), batch 128, SGD lr 0.1 cosine, ``--epochs`` epochs; the
teacher (offline) cnn_medium on the whole training split. The regime's check is written into the table:
vanilla's validation curve at ``--epochs`` and at twice as many.

Resumable: the runs, journals and teacher live in ``--out`` (default /work/kdkit_runs/sweep_tables,
outside the work tree); run the same command again and finished trials and final runs are kept, the
interrupted trial resumes from its checkpoint. The table is rewritten after each method, with the methods
still to run listed. For a GPU, ``benchmarks/sweep_tables_gpu.sh``.

Resumable on another machine too: each finished method's small result files (``final.json``,
``sweep.json``, ``best.yaml``) are kept beside the table, in ``<docs>/<table's name>/`` (committed with it),
and copied into ``--out`` when it lacks them; ``final.json`` holds a digest of the method's sweep and of
the teacher's weights, so a method is taken as finished only where the teacher trained here again has the
same weights (kdkit.sweep.compare.fingerprint). The teacher and the regime runs are trained again there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kdkit.build import trainer_in
from kdkit.sweep import parse_sweep
from kdkit.sweep.compare import RANKING_NUMERIC, markdown_table, ranking_table
from kdkit.sweep.methods import resolve_methods

# the papers' CIFAR-100 gains over the student, resnet32x4 -> resnet8x4 (student 72.50): CRD paper
# (Tian et al. 2020) Table 1 for KD .. CRD; DKD (Zhao et al. 2022), DIST (Huang et al. 2022), ReviewKD
# (Chen et al. 2021) from their papers. Online: the OKDDip paper (Chen et al. 2020) Table, ResNet-32 error
# 28.91 -> DML 24.92, CL-ILR 25.40, ONE 25.74, OKDDip 25.76 (docs/methods.md)
ANCHORS = {"kd": 73.33 - 72.50, "fitnets": 73.50 - 72.50, "at": 73.44 - 72.50, "sp": 72.94 - 72.50,
           "cc": 72.97 - 72.50, "vid": 73.09 - 72.50, "rkd": 71.90 - 72.50, "pkt": 73.64 - 72.50,
           "ab": 73.17 - 72.50, "ft": 72.86 - 72.50, "fsp": 72.62 - 72.50, "nst": 73.30 - 72.50,
           "crd": 75.51 - 72.50, "dkd": 76.32 - 72.50, "dist": 76.31 - 72.50, "reviewkd": 75.63 - 72.50,
           "dml": 28.91 - 24.92, "cl": 28.91 - 25.40, "one": 28.91 - 25.74, "okddip": 28.91 - 25.76}


FAMILIES = ["baseline", "response", "feature", "relation", "contrastive", "online"]
# the methods added by issue 31 have their own table (docs/results/fashion_mnist_knowledge.md,
# benchmarks/knowledge_table.py); the offline table keeps the catalogue it was sized for
LATER = {"hkd", "ard", "adversarial_kd", "mhgd", "cross_modal"}
# the knowledge table (issue 31): each later method against vanilla and KD, in the offline table's regime and
# sweep folder (vanilla's and kd's searches are the offline table's own); ARD's attack in training has 3 steps
# here (10 in the paper: 3.5 times the cost), every final run is measured under the paper's 10-step attack
KNOWLEDGE = ["vanilla", "kd", "hkd", "mhgd", "ard", "adversarial_kd"]
KNOWLEDGE_SETTINGS = {"ard": {"steps": 3}}
PGD = {"epsilon": 8 / 255, "step_size": 2 / 255, "steps": 10}


# the cost lines' caveat: the table jobs are paused (SIGSTOP) while the test suite runs on the 2-core machine,
# and a run's epoch timer cannot tell; an epoch that straddled a pause (minutes) counts it
PAUSES = "wall time includes any pause of the table jobs during an epoch (SIGSTOP while the test suite ran)"


def cpu_clause(rows: list[dict[str, Any]], unit: str = "methods") -> str:
    """The cost line's CPU time: the processes' own CPU time (``train_cpu_s``, from the epochs'
    ``time/train_cpu_s``), which pauses and the other jobs' load do not inflate, over the ``unit`` (methods,
    runs) whose every epoch recorded it (kdkit records it since 2026-12-07); empty while none has."""
    cpu = [r["train_cpu_s"] for r in rows if r.get("train_cpu_s") is not None]
    if not cpu:
        return ""
    return (f"; CPU time {sum(cpu) / 3600:.2f} h over the {len(cpu)} of {len(rows)} {unit} whose every epoch "
            "recorded it (the training processes' own CPU time: no pause or other load in it)")


def ordered(table: str) -> list[str]:
    """The family's methods, response-based first (a table still being built shows those first)."""
    if table == "knowledge":
        return list(KNOWLEDGE)
    from kdkit.methods import METHODS
    from kdkit.sweep.methods import family_members

    return sorted((m for m in family_members(table) if m not in LATER),
                  key=lambda m: (FAMILIES.index(METHODS.get(m).family), m != "kd", m))


def base_recipe(args: argparse.Namespace, epochs: int, teacher: Path | None) -> dict[str, Any]:
    """A student's recipe (with ``teacher``: learning from it, its outputs cached when the views are
    replayed)."""
    data = {"name": args.dataset, "batch_size": 128, "limit_train": args.limit_train, "val_fraction": 0.1}
    if args.replay_views:
        data["replay_views"] = args.replay_views
    recipe: dict[str, Any] = {
        "model": args.student,
        "data": data,
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "seed": 0, "progress": False, "threads": args.threads, "device": args.device},
    }
    if teacher is not None:
        recipe["teacher"] = {"name": args.teacher, "checkpoint": str(teacher)}
        if args.replay_views:  # exact (kdkit/engine/cache.py); methods without a teacher drop it. On disk, in
            # one folder for every run: the trials and seeds of every logits method share one teacher pass per
            # set of views, and its outputs on the evaluation splits (the sweep's digest ignores the store)
            recipe["train"]["teacher_cache"] = {"store": "disk", "path": str(Path(args.out) / "teacher_cache")}
    return recipe


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics lines of the run in ``run_dir`` so far (none when it has not written any)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def train_once(recipe: dict[str, Any], run_dir: Path, read_only: bool = False) -> list[dict[str, Any]]:
    """Train ``recipe`` in ``run_dir`` (resumed if it was started); its metrics lines. A finished run is only
    read (no lock taken: the two tables read the same regime runs at once). ``read_only``: the run must have
    finished already."""
    rows = run_rows(run_dir)
    if rows and rows[-1].get("final"):
        return rows
    if read_only:
        raise SystemExit(f"--write-only: {run_dir} has not finished yet")
    trainer_in(run_dir, recipe, log=lambda m: None).fit()
    return run_rows(run_dir)


# a finished method's files; robust.json: the knowledge table's robust accuracy of each final run
LEDGER_FILES = ("final.json", "sweep.json", "best.yaml", "robust.json")


def ledger_restore(ledger: Path, out: Path) -> int:
    """Copy the finished methods' result files kept in ``ledger`` into ``out`` where it lacks them; how many."""
    n = 0
    for path in sorted(ledger.rglob("*")) if ledger.is_dir() else []:
        target = out / path.relative_to(ledger)
        if path.name in LEDGER_FILES and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            n += 1
    return n


def ledger_save(out: Path, ledger: Path, methods: set[str] | None = None) -> None:
    """Keep the result files of every method under ``out`` that has finished (has ``final.json``) in ``ledger``
    (only those of ``methods`` when given: tables that share a sweep folder keep their own)."""
    for final in sorted(out.rglob("final.json")):
        if methods is not None and final.parent.name not in methods:
            continue
        for name in LEDGER_FILES:
            src = final.parent / name
            if src.is_file():
                target = ledger / src.relative_to(out)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(src.read_bytes())


def write_table(args: argparse.Namespace, name: str, table: str, text: list[str], rows: list[dict[str, Any]],
                pending: list[str], command: str | None = None, base: dict[str, float] | None = None,
                sweep_out: Path | None = None) -> None:
    """``<docs>/<name>.md`` from ``text`` (the methods still to run listed below it) and ``<name>.json``
    from ``rows``; then the table's part of docs/methods.md (:func:`tuned_section`); the finished methods'
    result files under ``sweep_out`` kept in ``<docs>/<name>/`` (:func:`ledger_save`)."""
    if pending:
        text = [*text, "", f"Not run yet (the table is being built; rerun the command): {', '.join(pending)}."]
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{name}.md").write_text("\n".join(text) + "\n")
    (docs / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows, "pending": pending},
                                                  indent=1, default=str))
    if sweep_out is not None:
        ledger_save(sweep_out, docs / name, {r["method"] for r in rows})
    tuned_section(Path(args.methods_doc), table, rows, pending, f"docs/results/{name}.md",
                  command or f"benchmarks/sweep_tables.py --table {table}", base or {"lr": 0.1, "weight_decay": 5e-4})


def regime(args: argparse.Namespace, out: Path, say: Any) -> list[str]:
    """Vanilla at the base recipe over ``--epochs`` and twice as many: the validation curves."""
    lines = ["Vanilla's validation top-1 per epoch at the base recipe (lr 0.1, weight decay 5e-4):", ""]
    for epochs in (args.epochs, 2 * args.epochs):
        say(f"regime: vanilla, {epochs} epochs")
        folder = f"vanilla-e{epochs}" + (f"-replay{args.replay_views}" if args.replay_views else "")
        rows = [r for r in train_once(base_recipe(args, epochs, None), out / "regime" / folder, args.write_only)
                if not r.get("final")]
        curve = [r["val/top1"] for r in rows]
        tail = curve[-max(1, len(curve) // 5):]
        lines.append(f"- {epochs} epochs: " + " ".join(f"{v:.1f}" for v in curve)
                     + f"; last fifth {min(tail):.2f} to {max(tail):.2f} (spread {max(tail) - min(tail):.2f})")
    return lines + [""]


def carried_rows(args: argparse.Namespace, name: str, sweep: dict[str, Any], say: Any) -> list[dict[str, Any]]:
    """The committed table's rows that have no result files kept (measured before they were kept, on a
    machine whose runs are gone), carried into this table only where vanilla, measured again here, gives
    the committed vanilla row exactly (its best trial, parameters and test mean and std): the same regime,
    so their paired differences to vanilla stand. Marked ``carried`` in the table's JSON."""
    path = Path(args.docs) / f"{name}.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    same = ("table", "dataset", "teacher", "student", "epochs", "limit_train", "teacher_epochs", "trials", "seeds",
            "threads", "replay_views")
    if any(old["args"].get(k, 0 if k == "replay_views" else None) != getattr(args, k) for k in same):
        return []  # (a table written before --replay-views had fresh augmentation: 0)
    kept = {p.parent.name for p in (Path(args.docs) / name).rglob("final.json")}
    wanted = set(resolve_methods(sweep["methods"]))
    rows = [r for r in old["rows"] if r["method"] in wanted and r["method"] not in kept and r["method"] != "vanilla"]
    if args.write_only or not rows:
        return [r for r in rows if r.get("carried")]
    from kdkit.sweep.compare import run_methods

    fresh = next(r for r in run_methods(parse_sweep({**sweep, "methods": ["vanilla"]}, "vanilla"), log=say)
                 if r["method"] == "vanilla")
    committed = next((r for r in old["rows"] if r["method"] == "vanilla"), {})
    fields = ("val", "params", "test_mean", "test_std")
    if any(fresh[k] != committed.get(k) for k in fields):
        say("vanilla measured here differs from the committed table's: its other rows are measured again")
        return []
    say(f"vanilla reproduced the committed row exactly: carried over {', '.join(r['method'] for r in rows)}")
    return [{**r, "carried": True} for r in rows]


def robust_lines(rows: list[dict[str, Any]], sweep_out: Path, read_only: bool, say: Any) -> list[str]:
    """Each method's final runs measured on test under the paper's PGD attack (ARD's: 8/255, step 2/255, 10
    steps), kept in ``<method>/robust.json`` (computed once, from the final runs' checkpoints)."""
    from kdkit.engine.evaluate import evaluate
    from kdkit.engine.rebuild import network_and_data
    from kdkit.tasks import create_task

    lines = ["", f"## Clean and robust test accuracy (PGD, L-inf {PGD['epsilon']:.4f} = 8/255, step 2/255, "
             f"{PGD['steps']} steps, on each final run)", "",
             "| method | test/top1 (mean ± std) | test robust_top1 (mean ± std) |", "|---|---:|---:|"]
    for r in rows:
        path = sweep_out / r["method"] / "robust.json"
        final = sweep_out / r["method"] / "final.json"
        if not path.is_file() and final.is_file() and not read_only:
            values = []
            for run in json.loads(final.read_text())["runs"]:
                say(f"robust accuracy: {r['method']} seed {run['seed']}")
                loaded, loaders = network_and_data(Path(run["run"]) / "checkpoint.pt", None, "cpu")
                task = create_task({"name": "classification", "robust": PGD})
                values.append({"seed": run["seed"], **evaluate(loaded.model, loaders.test, task=task)})
            path.write_text(json.dumps(values, indent=1))
        if not path.is_file():
            continue
        values = json.loads(path.read_text())
        cells = []
        for key in ("top1", "robust_top1"):
            v = [x[key] for x in values]
            cells.append(f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}")
        lines.append(f"| {r['method']} | {cells[0]} | {cells[1]} |")
    return lines


def tuned_section(doc: Path, table: str, rows: list[dict[str, Any]], pending: list[str], source: str, command: str,
                  base: dict[str, float]) -> None:
    """Rewrite the table's part of docs/methods.md between its markers: each method's searched settings,
    the default (the paper's, as kdkit ships it; vanilla's: the base recipe's ``base``) beside the value the
    sweep chose here."""
    from kdkit.methods import METHODS

    start, end = f"<!-- tuned:{table}:start -->", f"<!-- tuned:{table}:end -->"
    text = doc.read_text() if doc.is_file() else ""
    if start not in text or end not in text:
        return
    lines = [start, "", f"From `{source}` (written by `{command}`):", "",
             "| method | setting | default (paper; vanilla: the base recipe) | chosen here | vs vanilla on test |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        fields = METHODS.get(r["method"]).Config.__dataclass_fields__ if r["method"] != "vanilla" else {}
        delta = (f"{r['delta_mean']:+.2f} ± {r['delta_std']:.2f}" if r["delta_mean"] is not None
                 and r["method"] != "vanilla" else "-")
        for key, value in r["params"].items():
            short = key.rsplit(".", 1)[-1]
            default = fields[short].default if short in fields else base.get(short, "-")
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(f"| `{r['method']}` | {short} | {default} | {shown} | {delta} |")
    if pending:
        lines += ["", f"Not swept yet: {', '.join(pending)}."]
    i, j = text.index(start), text.index(end)
    doc.write_text(text[:i] + "\n".join(lines + [""]) + text[j:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", choices=["offline", "online", "knowledge"], required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--teacher", default="cnn_medium")
    ap.add_argument("--student", default="cnn_tiny")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--replay-views", type=int, default=None,
                    help="the students' augmentation: this many fixed views of each image, replayed (epoch e shows "
                         "view e mod N), so that the teacher's outputs are computed once per run and looked up "
                         "(train.teacher_cache); 0: fresh augmentation each epoch, the teacher run at every step "
                         "(default: 4 for offline and knowledge; 0 for online, whose table was measured so)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1: the two tables run at "
                    "once, one core each, on the 2-core development machine)")
    ap.add_argument("--workers", type=int, default=1, help="sweep processes sharing the study (a GPU: several)")
    ap.add_argument("--device", default="auto", help="train.device of every run (auto: CUDA when there is one)")
    ap.add_argument("--write-only", action="store_true", help="rewrite the table from the runs so far; train nothing")
    ap.add_argument("--methods-doc", default="docs/methods.md", help="its tuned-weights section is rewritten")
    ap.add_argument("--methods", default=None, help="a subset (kd,dkd,...); default: the whole family")
    ap.add_argument("--out", default="/work/kdkit_runs/sweep_tables")
    ap.add_argument("--docs", default="docs/results")
    args = ap.parse_args()
    if args.replay_views is None:
        args.replay_views = 0 if args.table == "online" else 4
    out = Path(args.out)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    lines_regime = regime(args, out, say)
    teacher = None
    teacher_line = ""
    if args.table != "online":
        say(f"teacher: {args.teacher}, {args.teacher_epochs} epochs on the whole training split")
        recipe = base_recipe(args, args.teacher_epochs, None)
        recipe["model"] = args.teacher
        recipe["data"]["limit_train"] = None
        recipe["data"].pop("replay_views", None)  # the teacher: fresh augmentation every epoch
        rows = train_once(recipe, out / "teacher", args.write_only)
        teacher = out / "teacher" / "checkpoint.pt"
        teacher_line = (f"Teacher {args.teacher}: {rows[-1]['test/top1']:.2f}% test top-1 ({args.teacher_epochs} "
                        "epochs on the whole training split). ")
    name = {"offline": f"{args.dataset}_sweep", "online": f"{args.dataset}_schemes_sweep",
            "knowledge": f"{args.dataset}_knowledge"}[args.table]
    folder = "offline" if args.table == "knowledge" else args.table  # shared: vanilla's and kd's searches
    sweep = {"base": base_recipe(args, args.epochs, teacher), "methods": args.methods or ordered(args.table),
             "trials": args.trials, "sampler": "tpe", "pruner": "median", "seed": 0,
             "seeds": [int(s) for s in args.seeds.split(",")], "out": str(out / folder), "name": folder}
    ledger_restore(Path(args.docs) / name, out / folder)
    carried = carried_rows(args, name, sweep, say)
    sweep["methods"] = [m for m in resolve_methods(sweep["methods"]) if m not in {r["method"] for r in carried}]
    if args.table != "online":  # fixed settings of the methods this invocation compares (knowledge: ARD's attack)
        sweep["method_settings"] = {k: v for k, v in KNOWLEDGE_SETTINGS.items()
                                    if args.table == "knowledge" and k in sweep["methods"]}
    cfg = parse_sweep(sweep, f"sweep_tables --table {args.table}")
    command = "python benchmarks/sweep_tables.py " + " ".join(a for a in sys.argv[1:] if a != "--write-only")

    def write(rows: list[dict[str, Any]], pending: list[str]) -> None:
        rows = sorted(rows + carried, key=lambda r: (r["val"] is None, -(r["val"] or 0.0)))
        spent = sum(r["train_s"] for r in rows)
        pair = f"{args.teacher} -> {args.student}" if teacher else f"online schemes, {args.student}"
        text = [f"# {args.dataset}, {pair}: each method's weights chosen by a sweep on validation", "",
                f"Generated by `{command}` (resumable; runs in {out}).", "",
                teacher_line + f"Students: {args.student}, {args.epochs} epochs on the first {args.limit_train} images "
                "of the training split (a 10% validation split carved from the training images by the run's seed: "
                "seed 0, the same split, for every trial; a final run with another seed carves its own split, and "
                "vanilla's run with that seed the same one), batch 128, SGD lr 0.1 momentum 0.9 cosine, "
                "weight decay 5e-4, "
                f"{args.threads} CPU threads; augmentation: the dataset's random crop (and flip), "
                + (f"{args.replay_views} fixed views of each image replayed (epoch e shows view e mod "
                   f"{args.replay_views}; drawn from the run's seed), so that the teacher's outputs are computed once "
                   "and looked up (train.teacher_cache, exact; on disk, shared by the runs with the same views and "
                   "layers)." if args.replay_views else "fresh every epoch.")
                + " The teacher's outputs on the validation and test splits are computed once too (for the "
                "agreement metric).", "",
                f"Budget: {args.trials} trials per method (TPE; median pruning after 2 finished trials, never before "
                f"epoch {cfg.pruner_warmup}), the same for "
                "vanilla over the learning rate and weight decay; each method's search covers its main weights and "
                "temperature (kdkit/sweep/methods.py). Final runs: the best configuration of each over seeds "
                f"{args.seeds} on the test set (seed 0's run is the best trial's own), mean ± std; vs vanilla is the "
                "mean ± std of the per-seed differences. The paper's gain is its CIFAR-100 gain over the student "
                "(offline: resnet32x4 -> resnet8x4; online: ResNet-32), the anchor, not a target.", "",
                f"Cost: {spent / 3600:.2f} h of training (the epochs' wall time over all trials and final runs, "
                "teacher and regime runs not counted; on the 2-core development machine, at times beside other "
                f"work; {PAUSES}){cpu_clause(rows)}"
                + ("" if args.write_only else f"; this invocation {(time.time() - t0) / 3600:.2f} h wall")
                + ".", "", "## Regime", ""]
        text += lines_regime + ["## Ranking (by validation)", ""]
        head, cells = ranking_table(cfg.metric, rows)
        anchors = [ANCHORS.get(r["method"]) for r in rows]
        text += markdown_table([*head, "paper's gain"], [[*c, f"{a:+.2f}" if a is not None else "-"]
                                                         for c, a in zip(cells, anchors)],
                               RANKING_NUMERIC | {len(head)}).splitlines()
        losers = [r["method"] for r in rows if r["method"] != "vanilla" and r["delta_mean"] is not None
                  and r["delta_mean"] < 0]
        text += ["", f"Below vanilla on test: {', '.join(losers) if losers else 'none'}."]
        kd = next((r for r in rows if r["method"] == "kd" and r["test_mean"] is not None), None)
        if args.table == "knowledge" and kd is not None:
            below = [r["method"] for r in rows if r["method"] not in ("vanilla", "kd") and r["test_mean"] is not None
                     and r["test_mean"] < kd["test_mean"]]
            text += ["", f"Below KD on test (mean over the seeds): {', '.join(below) if below else 'none'}."]
        if carried:
            text += ["", f"Carried over from an earlier session: {', '.join(r['method'] for r in carried)} (measured "
                     "before each method's result files were kept beside the table; their runs are gone). Vanilla, "
                     "measured again here, reproduced that session's vanilla row exactly, so their differences to it "
                     "stand."]
        if args.table == "knowledge":
            text += robust_lines(rows, out / folder, args.write_only, say)
        write_table(args, name, args.table, text, rows, pending, sweep_out=out / folder)
        say(f"wrote {Path(args.docs) / name}.md ({len(rows)} methods, {len(pending)} to go)")
        if not args.write_only:  # a finished method's feature caches (gigabytes each) are not needed again
            from kdkit.engine.cache import remove_feature_caches

            for gone in remove_feature_caches(out / "teacher_cache"):
                say(f"removed the teacher cache {gone} (tapped features of a finished method)")

    from kdkit.sweep.compare import read_methods, run_methods

    if args.write_only:
        write(*read_methods(cfg))
    else:
        run_methods(cfg, log=say, workers=args.workers, after=write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
