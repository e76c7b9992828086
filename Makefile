# The two commands a user needs: `make test` (set up + run the tests) and `make run` (set up + run the main job).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Serving venv (Triton): nvidia-pytriton 0.7.0 pins numpy<2, the main venv has numpy 2, so the real tritonserver,
# its Python-backend models and the ONNX Runtime they run live here. Built from the system Python 3.11 because the
# wheel's triton_python_backend_stub embeds the system libpython3.11. See docs/SERVING.md.
VENV_SERVE := .venv-serve
SERVE_PYTHON ?= $(shell command -v /usr/bin/python3.11 || command -v python3.11 || echo $(PYTHON))
SERVE_STAMP := $(VENV_SERVE)/.installed

.PHONY: test reliability run venv serve-venv lint info clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

$(SERVE_STAMP): pyproject.toml
	test -x $(VENV_SERVE)/bin/python || $(SERVE_PYTHON) -m venv $(VENV_SERVE)
	$(VENV_SERVE)/bin/python -m pip install -q --upgrade pip
	$(VENV_SERVE)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' 'tritonclient[grpc]>=2.50' 'numpy<2' onnxruntime pillow 'simplejpeg>=1.8'
	$(VENV_SERVE)/bin/python -m pip install -q --no-deps -e .
	touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

test: $(STAMP) $(SERVE_STAMP)
	$(BIN)/python -m pytest -q

# The reliability suite at full size (60 s load, every fault variant; `make test` runs it bounded), plus the
# existing cases that feed the scoreboard; writes the scoreboard into docs/RELIABILITY.md.
reliability: $(STAMP) $(SERVE_STAMP)
	MOUAADNET_RELIABILITY=full MOUAADNET_SCOREBOARD_DOC=docs/RELIABILITY.md $(BIN)/python -m pytest -q -m reliability

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
