# lra-bench: `make help` lists the targets. Everything runs inside a local .venv.
PYTHON        ?= python3
VENV          ?= .venv
# Installed before the project so pip never resolves an unpinned (CUDA) torch.
# A GPU user overrides both, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.installed-$(TORCH_VERSION)
STUDY         ?= results/runs/default
# The default study's training budget: every variant gets the same steps, jobs run side by side.
STUDY_STEPS   ?= 200
JOBS          ?= $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')
# `make test` runs one pytest process per core (pytest-xdist); TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS  ?= auto

.DEFAULT_GOAL := help
.PHONY: help install run test test-slow clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv: pinned torch first, then this project (editable) and its tools

run: install ## the default CPU study: every variant trained on ListOps and Pathfinder, benched at 1K-4K, model-level techniques on ListOps; report in results/
	rm -rf $(STUDY)
	$(BIN)/lra-train -m experiment=default_study 'model=glob(*,exclude=full_math)' task=listops,pathfinder \
		trainer.max_steps=$(STUDY_STEPS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/train
	$(BIN)/lra-train -m experiment=default_study model=full,performer 'technique=glob(*)' task=listops \
		trainer.max_steps=$(STUDY_STEPS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/techniques
	$(BIN)/lra-train -m experiment=default_study model=local,performer task=listops \
		distill.teacher=$$(ls -d $(STUDY)/train/full-sdpa_listops_*) \
		trainer.max_steps=$(STUDY_STEPS) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/distill
	$(BIN)/lra-compress -m run=$$(ls -d $(STUDY)/train/full-sdpa_listops_* $(STUDY)/train/performer-*_listops_* | paste -sd, -) \
		progress=false hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/compress
	$(BIN)/lra-bench -m 'model=glob(*)' bench.min_run_time=0.5 bench.progress=false \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/bench
	$(BIN)/lra-bench -m model=full,performer technique=reversible bench.min_run_time=0.5 bench.progress=false \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/bench-techniques
	$(BIN)/lra-report runs=$(STUDY) out=results reference=lra_paper

test: install ## run the fast test suite, one process per core
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS)

test-slow: install ## run the slow tests (the default run end to end, torch.compile)
	$(BIN)/pytest -m slow

clean: ## remove the venv, caches and run outputs (keeps data/ and the committed results)
	rm -rf $(VENV) .pytest_cache .hypothesis outputs multirun $(STUDY) *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
