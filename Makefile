# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need: torch first (the CPU wheel, so pip never
# pulls a multi-GB CUDA build), then this package with its dev extra.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,tensorboard]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python examples/mi_estimation.py --out outputs/mi

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs
