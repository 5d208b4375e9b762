# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch 2.14.1 with torchvision 0.29.1: the pair whose torchvision imports on a CPU machine (a CUDA build of
# torch that runs on the CPU; PyPI's torchvision beside the CPU build of torch 2.13.0 fails with "operator
# torchvision::nms does not exist"). docs/models.md has the measurements.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-slow kill-test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned first, so that no dependency pulls an unpinned CUDA build of torch.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,vision,sweep,text,gan]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdkit demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kdkit tests benchmarks scripts examples

# In parallel (pytest-xdist): one worker per core, at most 4 (each worker keeps to its share of the cores,
# tests/conftest.py); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= auto
test: $(STAMP) lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4

# torch.compile with the inductor backend: needs a C++ compiler, about 40 s here; not in `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# A run killed (SIGKILL) at 36 random moments resumes to an uninterrupted run's weights and metrics
# (docs/robustness.md); a few minutes here, not in `make test`.
kill-test: $(STAMP)
	$(PY) benchmarks/kill_resume.py --kills 36

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
