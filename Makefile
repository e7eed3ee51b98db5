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
# The default study: every variant at these recall lengths (conf/experiment/study_*.yaml: the budgets).
RECALL_LENGTHS ?= 64,128,256
TECHNIQUES    ?= results/runs/techniques
# The long CPU study: full attention and three efficient variants learning ListOps at LRA's lengths
# and Pathfinder-32 (conf/experiment/long_*.yaml), about an hour on 2 cores.
LONG_STUDY    ?= results/runs/long
LONG_MODELS   ?= full,local,linear,nystrom
JOBS          ?= $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')
# `make gpu-check`: the Python whose CUDA torch is installed (nothing is installed into it but WHEELS: a
# folder of wheels for what it lacks, e.g. hydra-core, omegaconf, antlr4-python3-runtime, installed with no index).
GPU_PYTHON    ?= python3
WHEELS        ?=
# `make test` runs one pytest process per core (pytest-xdist); TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS  ?= auto

.DEFAULT_GOAL := help
.PHONY: help install run study-techniques study-long test test-slow gpu-check clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv: pinned torch first, then this project (editable) and its tools

run: install ## the default CPU study (about 15 minutes on 2 cores): every variant trained on recall at 64-256 tokens and on ListOps, benched at 1K-4K; report in results/
	rm -rf $(STUDY)
	$(BIN)/lra-train -m experiment=study_recall 'model=glob(*,exclude=full_math)' task.max_len=$(RECALL_LENGTHS) \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/recall
	$(BIN)/lra-train -m experiment=study_listops 'model=glob(*,exclude=full_math)' \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/listops
	$(BIN)/lra-bench -m 'model=glob(*)' bench.min_run_time=0.3 bench.progress=false \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(STUDY)/bench
	$(BIN)/lra-report runs=$(STUDY) out=results reference=lra_paper

study-techniques: install ## model-level techniques, distillation and compression on ListOps (about 8 minutes on 2 cores); report in results/techniques/
	rm -rf $(TECHNIQUES)
	$(BIN)/lra-train -m experiment=study_techniques model=full,performer 'technique=glob(*)' \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(TECHNIQUES)/techniques
	$(BIN)/lra-train -m experiment=study_techniques model=full,performer,local \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(TECHNIQUES)/train
	$(BIN)/lra-train -m experiment=study_techniques model=local,performer \
		distill.teacher=$$(ls -d $(TECHNIQUES)/train/full-sdpa_listops_*) \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(TECHNIQUES)/distill
	$(BIN)/lra-compress -m run=$$(ls -d $(TECHNIQUES)/train/full-sdpa_listops_* $(TECHNIQUES)/train/performer-*_listops_* | paste -sd, -) \
		progress=false hydra.callbacks.sweep.report=false hydra.sweep.dir=$(TECHNIQUES)/compress
	$(BIN)/lra-bench -m model=full,performer technique=reversible bench.min_run_time=0.5 bench.progress=false \
		hydra.callbacks.sweep.report=false hydra.sweep.dir=$(TECHNIQUES)/bench
	$(BIN)/lra-report runs=$(TECHNIQUES) out=results/techniques reference=lra_paper

study-long: install ## the long CPU study: learning curves on ListOps (500-2000 tokens) and Pathfinder-32; report in results/long/
	$(BIN)/lra-train -m experiment=long_listops,long_pathfinder model=$(LONG_MODELS) \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) hydra.callbacks.sweep.report=false hydra.sweep.dir=$(LONG_STUDY)
	$(BIN)/lra-report runs=$(LONG_STUDY) out=results/long

test: install ## run the fast test suite, one process per core
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS)

test-slow: install ## run the slow tests (the default run end to end, torch.compile, the GPU check rehearsed)
	$(BIN)/pytest -m slow

gpu-check: ## validate a GPU machine in under 10 minutes with its own CUDA torch, no package index (GPU_CHECK_DRY=1: rehearse on the CPU)
	$(if $(WHEELS),$(GPU_PYTHON) -m pip install --no-index --no-deps $(WHEELS)/*.whl)
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m runners.gpu_check

clean: ## remove the venv, caches and run outputs (keeps data/ and the committed results)
	rm -rf $(VENV) .pytest_cache .hypothesis outputs multirun $(STUDY) $(TECHNIQUES) $(LONG_STUDY) *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
