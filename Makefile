# The README's two commands: `make serve` and `make test`. Both start with an idempotent install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
CHECKPOINTS ?= checkpoints
# The default models' seed; `make checkpoints SEED=1 CHECKPOINTS=DIR` trains them on another.
SEED ?= 0
MODELS ?= models

.PHONY: install test test-fast serve models bench clean

install: $(VENV)/.installed

# Re-runs only when pyproject.toml changes; the stamp is written last, so a failed install retries.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: install browser
	$(BIN)/python -m pytest

# Everything that needs no trained network (tests/conftest.py marks the rest `slow`): for a change
# to the HTTP layer, the ladder, the configs, the docs or the manifests.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The browser tests (tests/service/test_page.py, test_cors.py) drive Debian's chromium through its
# chromedriver. Installed here where missing and allowed (root, apt-get); elsewhere they skip and say why.
.PHONY: browser
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "make browser: no /usr/bin/chromium and no root apt-get to install it: the browser tests will skip"; fi

# --- default models: trained on the synthetic set, reused when present ------------------------
# (the install is order-only, so a reinstall does not retrain)
# owner: training (recipes) and export (the ONNX rules)

# The synthetic set at 16 px: its shapes and textures stay distinct there, and a smaller input
# both trains faster and learns sooner (resnet18, 200 steps: 97.8% at 16 px, 94.4% at 32 px).
# bf16 autocast, channels-last, zero-init residuals (each block starts as the identity, so the
# 152-layer net trains from step 0), a linear warm-up and a cosine decay (slightly ahead of the
# paper's step decay on a run this short). Measured results: docs/training.md.
SYNTHETIC_RECIPE := --data synthetic --image-size 16 --batch-size 64 --zero-init-residual --amp --channels-last \
	--warmup-method linear --lr-schedule cosine --val-size 1000 --seed $(SEED)

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
# A model is also re-exported when the graph's explanation outputs (maps, embedding) are newer than
# it, so default models made before them gain them; cascade.json then follows its models.
$(MODELS)/resnet18/model.onnx: $(CHECKPOINTS)/resnet18/checkpoint.pt export/explain.py | install
	$(BIN)/resnet-export $< --out $(MODELS)

$(MODELS)/resnet152/model.onnx: $(CHECKPOINTS)/resnet152/checkpoint.pt export/explain.py | install
	$(BIN)/resnet-export $< --out $(MODELS)

models: $(MODELS)/resnet18/model.onnx $(MODELS)/resnet152/model.onnx

# --- serving and benchmarks ---------------------------------------------------------------------
# owner: service. Serves every model in $(MODELS)/ (resnet18 and resnet152 from `make models`);
# RESNET_SERVE_* variables set the rest (docs/serving.md).
serve: models
	$(BIN)/resnet-serve --models $(MODELS) --host $(HOST) --port $(PORT)

# owner: bench. The bench's targets are for 224x224 networks: the first run builds resnet18 and
# resnet152, fp32 and int8, with random weights (speed only) into $(RESULTS)/models, then measures
# (10.5 min measured on the idle 2-core box with the models built and the two JPEG payloads; the
# pixels payload adds its own levels, and building the models first adds the exports of
# docs/export.md). Run it on an idle machine. Another models folder:
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

# --- the depth cascade (model=auto): calibrated whenever a model it measured changes ---------------
# owner: cascade (docs/cascade.md). resnet-calibrate measures the ladder on 4000 synthetic val images
# and writes $(MODELS)/cascade.json and cascade.png; resnet-serve refuses a file measured on other
# model files, so `make serve` recalibrates first when a model is newer than the file.
CALIBRATE_FLAGS ?= --data synthetic
.PHONY: calibrate
calibrate: $(MODELS)/cascade.json

$(MODELS)/cascade.json: $(MODELS)/resnet18/model.onnx $(MODELS)/resnet152/model.onnx | install
	$(BIN)/resnet-calibrate --models $(MODELS) $(CALIBRATE_FLAGS)

serve: $(MODELS)/cascade.json

# Real ImageNet models in one command: torchvision's best published weights of resnet18 (V1, 69.8%)
# and resnet152 (V2, 82.3%), imported into checkpoints, exported to ONNX and served as one ladder.
# Downloads once into the torch hub cache ($$TORCH_HOME). model=auto is uncalibrated unless
# IMAGENET_VAL names an ImageNet-style folder with val/<wnid>/*.JPEG; then it is calibrated on it.
# tests/service/test_imagenet_path.py runs this target with stand-in weights in a temporary TORCH_HOME.
IMAGENET_CHECKPOINTS ?= checkpoints/imagenet
IMAGENET_MODELS ?= models-imagenet
IMAGENET_VAL ?=
IMAGENET_WEIGHTS := resnet18:IMAGENET1K_V1 resnet152:IMAGENET1K_V2
.PHONY: imagenet-models serve-imagenet
imagenet-models: $(IMAGENET_MODELS)/resnet18/model.onnx $(IMAGENET_MODELS)/resnet152/model.onnx

# imported checkpoints stay after the export (make would delete a pattern rule's intermediate file)
.SECONDARY: $(IMAGENET_CHECKPOINTS)/resnet18/checkpoint.pt $(IMAGENET_CHECKPOINTS)/resnet152/checkpoint.pt
$(IMAGENET_CHECKPOINTS)/%/checkpoint.pt: | install
	$(BIN)/resnet-train import-torchvision $* --weights $(patsubst $*:%,%,$(filter $*:%,$(IMAGENET_WEIGHTS))) --out $(@D)

$(IMAGENET_MODELS)/%/model.onnx: $(IMAGENET_CHECKPOINTS)/%/checkpoint.pt export/explain.py | install
	$(BIN)/resnet-export $< --out $(IMAGENET_MODELS)

$(IMAGENET_MODELS)/cascade.json: $(IMAGENET_MODELS)/resnet18/model.onnx $(IMAGENET_MODELS)/resnet152/model.onnx
	$(BIN)/resnet-calibrate --models $(IMAGENET_MODELS) --data $(IMAGENET_VAL)

serve-imagenet: imagenet-models $(if $(IMAGENET_VAL),$(IMAGENET_MODELS)/cascade.json)
	$(BIN)/resnet-serve --models $(IMAGENET_MODELS) --host $(HOST) --port $(PORT)

# --- fine-tuning (docs/finetuning.md) ----------------------------------------------------------
# owner: training (finetune). The table of docs/finetuning.md: fine-tuning from a synthetic-set
# model (3 whole-net lrs) and from stand-in torchvision weights against from-scratch, 3 seeds each
# (15 runs of 90 steps, ~45 min on a busy 2-core box).
.PHONY: finetune-compare
finetune-compare: | install
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.studies.finetune --out results/finetune --image-size 16 --steps 90 --source-steps 150

# --- the service's own cost per image (docs/performance-per-image.md) ----------------------------
# The service against raw ONNX Runtime at 8 clients on the bench's 224x224 models (built into
# $(RESULTS)/models on first use), 3 interleaved rounds.
.PHONY: bench-per-image
bench-per-image: install
	$(BIN)/python -m bench.models $(RESULTS)/models
	$(BIN)/resnet-bench --models $(RESULTS)/models --only resnet18,resnet18-int8,resnet152 --rounds 3 \
		--out $(RESULTS)/per-image

# --- the GPU device check (bench/gpu/check.py, docs/gpu.md) ---------------------------------------
# owner: gpu. On a machine with an NVIDIA GPU and onnxruntime-gpu: export, raw ONNX Runtime CUDA, the engine
# variants, the decode ceiling, resnet-serve under resnet-bench; at most 4 minutes, resumable. Without a GPU it
# says so in one line and exits 2. `gpu-pack` prepares what the lent-device calls carry.
GPU_OUT ?= $(RESULTS)/gpu
GPU_FLAGS ?=
.PHONY: gpu-check gpu-pack
gpu-check: install
	$(BIN)/python -m bench.gpu.check --out $(GPU_OUT) $(GPU_FLAGS)

gpu-pack:
	PYTHON=$(BIN)/python bench/gpu/pack.sh $(or $(DEST),.gpu)
# --- robustness scenarios (bench/scenarios/): results and commands in docs/robustness.md ---------
# owner: robustness. Each scenario starts its own resnet-serve on the default models and writes
# $(RESULTS)/scenarios/<scenario>.json; the soak also writes soak-memory.png. About 15 min in all.
# `faults` swaps resnet18/model.onnx for resnet152's for a moment, and puts it back.
.PHONY: bench-robustness
bench-robustness: models
	for s in two-models slow-clients faults; do \
		$(BIN)/resnet-bench scenario $$s --models $(MODELS) --out $(RESULTS)/scenarios || exit 1; done
	$(BIN)/resnet-bench scenario soak --models $(MODELS) --out $(RESULTS)/scenarios --duration-s 600 --clients 24

# --- the paper's experiments (training.paper, docs/paper.md) -------------------------------------
# owner: training. The small scale on one CPU thread; rerunning resumes. The paper's
# CIFAR-10 scale wants a GPU: `resnet-train paper --scale paper --out results/paper-cifar`.
.PHONY: paper
paper: | install
	OMP_NUM_THREADS=1 $(BIN)/resnet-train paper --scale small --out results/paper-small --device cpu
