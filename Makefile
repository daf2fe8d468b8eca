# Transformer, Piece by Piece — the few commands people run.
#   make book       build the whole book (executes every notebook), writes _build/html
#   make test       every test: unit/property/parity, notebooks (nbval), exercises, sync, browser
#   make export     notebooks -> src/scratchformer (nbdev)
#   make exercises  chapter notebooks -> learner notebooks in notebooks/exercises/
#   make outputs    re-execute the chapter notebooks and save their outputs (commit them)
#   make serve      serve _build/html on http://127.0.0.1:8000 (localhost only)
#   make lab        JupyterLab on notebooks/ with the project's environment (installs it once)
#   make bench      the CPU benchmark suite, < 10 min (benchmarks/README.md, results/cpu/)
# `book` and `test` create .venv and install the pinned environment on first use.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# Where pip finds torch; empty = the configured index. On GitHub's runners the workflows pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu, as PyPI's Linux torch is the CUDA build.
TORCH_INDEX ?=
JOBS ?= 2

.PHONY: book test export exercises outputs serve lab lint clean venv bench

venv: $(STAMP)

# torch first and pinned exactly: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# One thread, as tools/run_notebooks.py saves the outputs: the numbers a training run prints
# depend on the thread count, and the prose quotes the printed numbers.
book: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/jupyter-book build --all -W -n --keep-going .
	@echo "book: open _build/html/index.html, or run 'make serve'"

# Unit, property and parity tests, the chapter notebooks under nbval (fast mode, one worker
# thread each), exercise and sync checks, and the browser check of the built book.
test: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
		tests $(wildcard notebooks/[0-9][0-9]_*.ipynb)

export: $(STAMP)
	cd tools && ../$(BIN)/python export.py

exercises: $(STAMP)
	cd tools && ../$(BIN)/python make_exercises.py

outputs: $(STAMP)
	cd tools && ../$(BIN)/python run_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check src tests tools benchmarks

# The CPU benchmark suite (benchmarks/suite.py): attention paths, training step and peak memory
# against torch.nn, greedy decoding with and without the cache, time to accuracy on copy and
# de2num. Writes benchmarks/results/cpu/*.json in under 10 minutes on 2 cores; run it on a
# quiet machine (the JSON records the load). BENCH_ARGS="--quick --out-dir /tmp/b": smoke run.
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py $(BENCH_ARGS)

# JupyterLab is not needed by `make test` or `make book`: installed on first `make lab` only,
# constrained by requirements.txt so it never changes the tested environment.
LAB := jupyterlab==4.6.6
LAB_STAMP := $(VENV)/.lab-installed

$(LAB_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c requirements.txt $(LAB)
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

serve:
	@test -d _build/html || { echo "no _build/html yet: run 'make book' first"; exit 1; }
	$(or $(wildcard $(BIN)/python),$(PYTHON)) -m http.server --bind 127.0.0.1 --directory _build/html 8000

clean:
	rm -rf _build .pytest_cache .hypothesis
