# medkd: the commands a user needs. Everything is built from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
CONFIG ?= config/config.yaml
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg
# CONFIGFILE=path/to.yaml runs `make report` (and ui's store stays results/mlflow.db) on another config.
SMK_CONFIG := $(if $(CONFIGFILE),--configfile $(CONFIGFILE))

.PHONY: venv reproduce rehearse reference report test test-e2e test-all test-unit faults lint dryrun plan ui benchmark clean data-add data-push data-pull data-status

venv: $(STAMP)

# torch is pinned in pyproject.toml (==2.13.0, the CPU wheel); requirements.lock pins everything else.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $@

reproduce: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/snakemake --cores $(CORES) results/tables/all.csv results/tables/reproduced.md || exit $$?; \
	end=$$(date +%s); \
	echo ""; echo "medkd: finished in $$(( end - start )) s."; \
	echo "Tables:  $(CURDIR)/results/tables/ (all.csv, <experiment>.md/.csv/.tex)"; \
	echo "Figures: $(CURDIR)/results/figures/"; \
	echo "MLflow:  make ui  (store results/mlflow.db)"; \
	echo "Health:  $(CURDIR)/results/tables/health.md"; echo ""; \
	cat results/tables/health.md; echo ""; \
	echo "Against the reference run ($(CURDIR)/results/tables/reproduced.md; tolerances: docs/reproducibility.md):"; \
	sed -n '/^```$$/,/^```$$/{/^```$$/d;p}' results/tables/reproduced.md

# results/report.html: Snakemake's self-contained report of a finished run (the default target `all` first:
# the tables, the qualitative panels and the report pages; a finished run only adds those).
report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) all $(SMK_CONFIG)
	$(BIN)/snakemake --report results/report.html --report-stylesheet workflow/report/style.css $(SMK_CONFIG)
	@echo ""; echo "Report: $(CURDIR)/results/report.html"

# Every test but the end-to-end workflow runs: unit tests and quick integration tests, about 2-3 minutes here.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

# The end-to-end workflow runs (pytest marker `slow`): the tiny configs through Snakemake, the single-node SLURM
# cluster, the report and MLflow in Chromium, the fault trials; 14 minutes on the last CI host. CI (.ci/run) runs
# `make test` and then this.
test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15

# Both, in one pytest run.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# Fault injection: SIGKILL the job, its fork-server client or Snakemake at seeded moments in every stage,
# re-run, compare with an uninterrupted run (tests/faults/gauntlet.py; about 20-40 min on 2 cores).
TRIALS ?= 22
FAULT_SEED ?= 0
faults: $(STAMP)
	$(BIN)/python tests/faults/gauntlet.py --trials $(TRIALS) --seed $(FAULT_SEED)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# Snakemake's own lint (exits 1 on any lint) and snakefmt, the Snakemake catalog's formatter (check only;
# `.venv/bin/snakefmt Snakefile workflow/rules/` rewrites).
lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules/

dryrun: $(STAMP)
	$(BIN)/snakemake -n results/tables/all.csv

# A rehearsal of config/paper.yaml on generated stand-in data in every dataset's real layout (config/rehearsal.yaml):
# every rule of every paper experiment at full model size, image shape and batch size, one optimisation step per
# model, in results/rehearsal/ (its own results/, data/ and report). Ends with results/rehearsal/resources.csv
# (wall time, peak RSS and step time of every job), which sizes the SLURM jobs (docs/cluster.md).
REHEARSAL_DIR ?= results/rehearsal
REHEARSAL_TARGET ?= all
rehearse: $(STAMP)
	@mkdir -p $(REHEARSAL_DIR); start=$$(date +%s); \
	$(BIN)/snakemake $(REHEARSAL_TARGET) -s $(CURDIR)/Snakefile --directory $(REHEARSAL_DIR) --cores $(CORES) \
	  --keep-going --configfile $(CURDIR)/config/paper.yaml $(CURDIR)/config/rehearsal.yaml; rc=$$?; \
	end=$$(date +%s); \
	$(BIN)/python -m medkd rehearsal-resources --run-dir $(REHEARSAL_DIR) --out $(REHEARSAL_DIR)/resources.csv \
	  --wall-seconds $$(( end - start )) || exit $$?; \
	exit $$rc

# jobs per rule and estimated GPU-hours of a config before submitting it: make plan CONFIG=config/paper.yaml
plan: $(STAMP)
	workflow/scripts/medkd plan --config $(CONFIG)

ui: $(STAMP)
	@echo "MLflow: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (runs view of each experiment)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow.db --host 127.0.0.1 --port 5000

# Make a finished run the reference that later runs are compared with (results/tables/reproduced.md): writes
# REFERENCE (the default's: config/reference_runs/embedded_default.csv) and a JSON of the machine and kernels beside it.
REFERENCE ?= config/reference_runs/embedded_default.csv
reference: $(STAMP)
	workflow/scripts/medkd reference --table results/tables/all.csv --out $(REFERENCE)

benchmark: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/optimizer_step.py
	$(BIN)/python benchmarks/memory_format.py
	$(BIN)/python benchmarks/interval_coverage.py
	$(BIN)/python benchmarks/embedded_default.py

# DVC: the raw data, one .dvc file per dataset folder. The remote is named in one place, .dvc/config
# (`core.remote`); point it elsewhere with `dvc remote modify medkd-store url <url>` (add --local to keep
# the change out of git). DVC_TARGETS restricts push/pull to some .dvc files (default: all of them).
DVC_TARGETS ?=

data-add:
	@test -n "$(DIR)" || { echo "usage: make data-add DIR=<dataset folder>   (writes <folder>.dvc)"; exit 2; }
	$(BIN)/dvc add $(DIR)
	@echo "now: git add $(DIR).dvc $$(dirname $(DIR))/.gitignore && git commit && make data-push"

# data-push and data-status first cache data the workspace holds exactly as the .dvc files record it (the embedded
# data `make reproduce` generates on a fresh clone, byte-identical on every CPU); a modified output is refused.
data-push: $(STAMP)
	scripts/dvc-cache-workspace $(DVC_TARGETS)
	$(BIN)/dvc push $(DVC_TARGETS)

data-pull:
	$(BIN)/dvc pull $(DVC_TARGETS)

data-status: $(STAMP)
	scripts/dvc-cache-workspace $(DVC_TARGETS)
	$(BIN)/dvc status $(DVC_TARGETS)

clean:
	rm -rf results .snakemake
