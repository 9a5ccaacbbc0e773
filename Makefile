# Two commands do all set-up on a fresh machine: `make demo` and `make test` (each creates .venv).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PYTRITON_SPEC ?= nvidia-pytriton==0.7.0
MODELOPT_SPEC ?= nvidia-modelopt==0.47.0
PY := $(VENV)/bin/python

.PHONY: demo test install install-dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,serve,batch,quant]"
	# NVIDIA ModelOpt's ONNX quantizer (export --precision int8|fp8); --no-deps: its [onnx] extra pins
	# onnxruntime-gpu and cupy; the packages it imports are the `quant` extra (see pyproject.toml)
	$(PY) -m pip install -q --no-deps "$(MODELOPT_SPEC)"
	# tritonserver + its python backend for tests/test_serve.py (a Linux x86_64 wheel; --no-deps: see pyproject.toml)
	if [ "$$(uname -sm)" = "Linux x86_64" ]; then $(PY) -m pip install -q --no-deps "$(PYTRITON_SPEC)"; fi
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/vita-deploy demo --out outputs/demo

# Two xdist workers, one file each at a time (module fixtures stay per file); exports are shared between them.
TEST_WORKERS ?= 2
test: install-dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) outputs build *.egg-info
