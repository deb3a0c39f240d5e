# Two commands on a fresh machine: `make run` (install + the default star-graph job on CPU), `make test`;
# `make smoke` checks an installation in seconds.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run smoke test test-slow lint report reproduce-table2 reproduce-qwen reproduce-star-graph \
	reproduce-arithmetic bench clean-cache

# The exact tested set (constraints.txt) within pyproject.toml's ranges.
$(VENV)/installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/installed

run: install
	$(PY) -m qsharp_exp $(ARGS)

# Every stage with tiny models, in seconds: checks an installation.
smoke: install
	$(PY) -m qsharp_exp +experiment=smoke $(ARGS)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# make report DIRS="multirun/2026-11-27/10-00-00_star_graph outputs/..."
report: install
	$(PY) -m qsharp_exp.cli.report $(DIRS)

# The paper's Table 2 on a GPU machine with hub access; DRY_RUN=1 lists and checks the 12 jobs offline.
reproduce-table2: install
	$(PY) experiments/reproduce.py table2 $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

# The paper's Qwen 2.5 rows (7B guided by 1.5B on GSM8K, MATH-500, AIME 2024); DRY_RUN=1 checks the 9 jobs offline.
reproduce-qwen: install
	$(PY) experiments/reproduce.py qwen $(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

# pi_ref, REINFORCE, DPO, RPO, CD, Q# on star-graph: CPU-sized by default, SCALE=paper for G(2,5), G(5,5), G(3,8) on a GPU.
reproduce-star-graph: install
	$(PY) experiments/reproduce.py star-graph $(if $(filter paper,$(SCALE)),--paper-scale) \
		$(if $(filter 1,$(DRY_RUN)),--dry-run) $(ARGS)

# The math protocol on CPU across seeds: pi_ref, CD and Q# (eta 0.1) on seeds 0, 1, 2, then the report with means
# over seeds and paired differences (docs/math.md). SEEDS=0,1,2,3,4 for more.
SEEDS ?= 0,1,2
ARITHMETIC_DIR ?= multirun/arithmetic_seeds
reproduce-arithmetic: install
	$(PY) -m qsharp_exp -m task=arithmetic seed=$(SEEDS) algo=pi_ref,cd,qsharp hydra.sweep.dir=$(ARITHMETIC_DIR) $(ARGS)
	$(PY) -m qsharp_exp.cli.report $(ARITHMETIC_DIR)

# Guided decoding against its one-pass floor on the default workload (docs/performance.md); ARGS for more.
bench: install
	$(PY) -m qsharp_exp.cli.bench --batches 1 8 $(ARGS)

lint: install
	$(PY) -m ruff check src tests experiments

clean-cache:
	rm -rf .qsharp_cache
