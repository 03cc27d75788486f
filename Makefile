# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need: torch first (the CPU wheel, so pip never
# pulls a multi-GB CUDA build), then this package with its dev extra.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,tensorboard]"
	# transformers' common model tests come from the sdist of the installed version (the wheel
	# has none); tests/transformers_common.py reads it here and retries the download if missing.
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(VENV)/transformers-sdist \
		"transformers==$$($(BIN)/python -c 'import transformers; print(transformers.__version__)')" \
		|| echo "transformers sdist not downloaded: tests/test_transformers_common.py will retry"
	touch $(STAMP)

# The main job: embedded data -> train FactorCL-SSL and the CLIP-loss baseline -> evaluate
# -> save -> reload -> outputs/demo/results.json (see training/demo.py).
demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m training.demo --output_dir outputs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
