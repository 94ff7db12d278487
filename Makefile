# The README's two commands: `make serve` and `make test`. Both start with an idempotent install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
CHECKPOINTS ?= checkpoints
MODELS ?= models

.PHONY: install test serve models bench clean

install: $(VENV)/.installed

# Re-runs only when pyproject.toml changes; the stamp is written last, so a failed install retries.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest

# --- default models: trained on the synthetic set, reused when present ------------------------
# (the install is order-only, so a reinstall does not retrain)
# owner: training (recipes) and export (the ONNX rules)

# The synthetic set at 16 px: its shapes and textures stay distinct there, and a smaller input
# both trains faster and learns sooner (resnet18, 200 steps: 97.8% at 16 px, 94.4% at 32 px).
# bf16 autocast, channels-last, zero-init residuals (each block starts as the identity, so the
# 152-layer net trains from step 0), a linear warm-up and a cosine decay (slightly ahead of the
# paper's step decay on a run this short). Measured results: README, section Training.
SYNTHETIC_RECIPE := --data synthetic --image-size 16 --batch-size 64 --zero-init-residual --amp --channels-last \
	--warmup-method linear --lr-schedule cosine --val-size 1000 --seed 0

.PHONY: checkpoints
checkpoints: $(CHECKPOINTS)/resnet18/checkpoint.pt $(CHECKPOINTS)/resnet152/checkpoint.pt

$(CHECKPOINTS)/resnet18/checkpoint.pt: | install
	$(BIN)/resnet-train --arch resnet18 $(SYNTHETIC_RECIPE) --workers 1 --lr 0.1 --warmup-steps 20 --max-steps 200 --out $(@D)

# resnet152 loads in the training process (--workers 0): at ~130 img/s rendering costs ~2% of a
# step, and a worker process would compete for the two cores. 28800 = 450 x 64 train images: one
# epoch, so no image repeats and validation runs once, at the end.
$(CHECKPOINTS)/resnet152/checkpoint.pt: | install
	$(BIN)/resnet-train --arch resnet152 $(SYNTHETIC_RECIPE) --workers 0 --lr 0.05 --warmup-steps 50 --max-steps 450 --train-size 28800 --out $(@D)

# ONNX rules (export): a model present and newer than its checkpoint is reused. resnet-export
# verifies before it writes and writes atomically (temp file + rename), so a failed or interrupted
# export leaves no model.onnx behind and make retries it next time.
$(MODELS)/resnet18/model.onnx: $(CHECKPOINTS)/resnet18/checkpoint.pt | install
	$(BIN)/resnet-export $< --out $(MODELS)

$(MODELS)/resnet152/model.onnx: $(CHECKPOINTS)/resnet152/checkpoint.pt | install
	$(BIN)/resnet-export $< --out $(MODELS)

models: $(MODELS)/resnet18/model.onnx $(MODELS)/resnet152/model.onnx

# --- serving and benchmarks ---------------------------------------------------------------------
# owner: service. Serves every model in $(MODELS)/ (resnet18 and resnet152 from `make models`);
# RESNET_SERVE_* variables set the rest (README, section Serving).
serve: models
	$(BIN)/resnet-serve --models $(MODELS) --host $(HOST) --port $(PORT)

# owner: bench. The issue's targets are for 224x224 networks: the first run builds resnet18 and
# resnet152, fp32 and int8, with random weights (speed only) into $(RESULTS)/models, then measures
# (about 20 min on the 2-core box; run it on an idle machine). Another models folder:
#   make bench BENCH_FLAGS="--models models --out results/default-models"
# Flags after `--` in BENCH_FLAGS go to resnet-serve, e.g. BENCH_FLAGS="-- --max-batch-size 16".
RESULTS ?= results
BENCH_FLAGS ?=
bench: install
	$(BIN)/resnet-bench --out $(RESULTS) $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info

# --- installs the container images run (deploy/docker/): the same targets here and there ---------
# owner: deploy. `install-serve` is the base install, no torch; `install-serve-gpu` adds the CUDA
# and cuDNN wheels of onnxruntime-gpu; `install-train` adds torch. Each goes into the venv INTO.
INTO ?= build/venv
IMAGE_INSTALLS := install-serve install-serve-gpu install-train
.PHONY: $(IMAGE_INSTALLS)
install-serve: EXTRAS :=
install-serve-gpu: EXTRAS := [gpu]
install-train: EXTRAS := [train]
$(IMAGE_INSTALLS):
	test -x $(INTO)/bin/python || $(PYTHON) -m venv $(INTO)
	$(INTO)/bin/python -m pip install --no-cache-dir '.$(EXTRAS)'

# --- the paper's experiments (training.paper, docs/paper.md) -------------------------------------
# owner: training (issue 14). The small scale on one CPU thread; rerunning resumes. The paper's
# CIFAR-10 scale wants a GPU: `resnet-train paper --scale paper --out results/paper-cifar`.
.PHONY: paper
paper: | install
	OMP_NUM_THREADS=1 $(BIN)/resnet-train paper --scale small --out results/paper-small --device cpu
