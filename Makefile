# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need: torch first (the CPU wheel, so pip never
# pulls a multi-GB CUDA build), then this package with its dev extra.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,tensorboard]"
	# The integrations' tests (README, "Where CLIP users already are"): optional extras for users,
	# installed here so that their tests run; torch is named again so that nothing replaces it.
	# selenium drives Chromium in the app's browser test (4.52 wants a newer certifi than the registry has).
	$(BIN)/pip install -q -e ".[faiss,sentence-transformers,lancedb,app]" "selenium==4.51.0" "$(TORCH_SPEC)"
	# clip_benchmark declares torchvision and open_clip, which do not import beside the CPU torch
	# wheel: it goes in without them, then the two small packages it does use.
	$(BIN)/pip install -q --no-deps "clip-benchmark==1.6.2"
	$(BIN)/pip install -q "webdataset==1.0.2" requests "$(TORCH_SPEC)"
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

test: $(STAMP) browser
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

# The app's browser test (tests/test_app.py) drives Debian's Chromium and ChromeDriver: installed
# where absent and allowed (root); elsewhere that test skips, and fails under CI.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; } || echo "chromium not installed: the browser test will skip"

clean:
	rm -rf $(VENV) outputs
