# lra-bench: `make help` lists the targets. Everything runs inside a local .venv.
PYTHON        ?= python3
VENV          ?= .venv
# Installed before the project so pip never resolves an unpinned (CUDA) torch.
# A GPU user overrides both, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
BIN           := $(VENV)/bin
STAMP         := $(VENV)/.installed-$(TORCH_VERSION)
RUNS          ?= results/runs/default

.DEFAULT_GOAL := help
.PHONY: help install run speedup test test-slow clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(STAMP) ## create .venv: pinned torch first, then this project (editable) and its tools

run: install ## train the default CPU benchmark (full attention, sdpa and math, on ListOps) and write results/
	$(BIN)/lra-train -m model.attention.impl=sdpa,math trainer.progress=false hydra.sweep.dir=$(RUNS)
	$(BIN)/lra-report runs=$(RUNS) out=results

speedup: install ## time every attention variant against full attention at 512-4096 tokens (results/speedup_cpu.md)
	$(BIN)/python -m runners.speedup --extra "model=performer model.attention.num_features=64" \
		"model=performer model.attention.kernel=relu model.attention.features=deterministic"

test: install ## run the fast test suite
	$(BIN)/pytest -m "not slow"

test-slow: install ## run the slow tests (the default run end to end, torch.compile)
	$(BIN)/pytest -m slow

clean: ## remove the venv, caches and run outputs (keeps data/ and the committed results)
	rm -rf $(VENV) .pytest_cache outputs multirun $(RUNS) *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
