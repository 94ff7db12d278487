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

models: install
	@echo "default models: not yet defined"

# --- serving and benchmarks ---------------------------------------------------------------------
# owner: service. Serves every model in $(MODELS)/ (resnet18 and resnet152 from `make models`);
# RESNET_SERVE_* variables set the rest (README, section Serving).
serve: models
	$(BIN)/resnet-serve --models $(MODELS) --host $(HOST) --port $(PORT)

bench: models
	@echo "the benchmark does not exist yet"

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
