# medkd: the three commands a user needs. Everything is built from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: venv reproduce test test-unit faults lint dryrun ui benchmark clean

venv: $(STAMP)

# torch is pinned in pyproject.toml (==2.13.0, the CPU wheel); requirements.lock pins everything else.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $@

reproduce: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/snakemake --cores $(CORES) results/tables/all.csv || exit $$?; \
	end=$$(date +%s); \
	echo ""; echo "medkd: finished in $$(( end - start )) s."; \
	echo "Tables:  $(CURDIR)/results/tables/ (all.csv, <experiment>.md/.csv/.tex)"; \
	echo "Figures: $(CURDIR)/results/figures/"; \
	echo "MLflow:  make ui  (store results/mlflow.db)"; \
	echo "Health:  $(CURDIR)/results/tables/health.md"; echo ""; \
	cat results/tables/health.md

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Fault injection: SIGKILL the job, its fork-server client or Snakemake at seeded moments in every stage,
# re-run, compare with an uninterrupted run (tests/faults/gauntlet.py; about 20-40 min on 2 cores).
TRIALS ?= 22
FAULT_SEED ?= 0
faults: $(STAMP)
	$(BIN)/python tests/faults/gauntlet.py --trials $(TRIALS) --seed $(FAULT_SEED)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n results/tables/all.csv

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow.db --host 127.0.0.1 --port 5000

benchmark: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/embedded_default.py

clean:
	rm -rf results .snakemake
