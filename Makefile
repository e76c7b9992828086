# The two commands a user needs: `make test` (set up + run the tests) and `make run` (set up + run the main job).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Serving venv (Triton): nvidia-pytriton 0.7.0 pins numpy<2, the main venv has numpy 2, so the real tritonserver,
# its Python-backend models and the ONNX Runtime they run live here. Built from the system Python 3.11 because the
# wheel's triton_python_backend_stub embeds the system libpython3.11. See docs/SERVING.md. openvino: the detector's
# `runtime` parameter; onnx: the in-memory fix of older INT8 graphs for OpenVINO (model/onnx_passes.py).
VENV_SERVE := .venv-serve
SERVE_PYTHON ?= $(shell command -v /usr/bin/python3.11 || command -v python3.11 || echo $(PYTHON))
SERVE_STAMP := $(VENV_SERVE)/.installed
# pip prints only errors: -qq also hides the warnings this machine's pip config adds for every package it looks up
# in an index folder that lacks it ("Location ... is ignored"), and setuptools' notice on every editable install.
PIP_INSTALL := -m pip install --disable-pip-version-check --no-input -qq

.PHONY: test run venv serve-venv lint info clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (the project and its test extras; a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python $(PIP_INSTALL) --upgrade pip
	@$(BIN)/python $(PIP_INSTALL) -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

$(SERVE_STAMP): pyproject.toml
	@echo "setting up $(VENV_SERVE) (Triton server and its Python backend)"
	@test -x $(VENV_SERVE)/bin/python || $(SERVE_PYTHON) -m venv $(VENV_SERVE)
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) --upgrade pip
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) 'nvidia-pytriton==0.7.0' 'tritonclient[grpc]>=2.50' 'numpy<2' onnxruntime openvino onnx pillow
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) --no-deps -e .
	@touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

test: $(STAMP) $(SERVE_STAMP)
	$(BIN)/python -m pytest -q

# The main job (mouaadnet/pipeline/demo.py): default data verified against data.dvc -> the Kubeflow pipeline under kfp.local
# (MLflow runs + registry, publish to triton_repo/) -> Triton on 127.0.0.1 -> validation images through gRPC.
run: $(STAMP) $(SERVE_STAMP)
	$(BIN)/mouaadnet demo

lint: $(STAMP)
	$(BIN)/ruff check model mouaadnet tests

info: $(STAMP)
	$(BIN)/mouaadnet info

clean:
	rm -rf $(VENV) $(VENV_SERVE) build *.egg-info .pytest_cache
