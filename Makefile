# The two commands a user needs: `make test` (set up + run the tests) and `make run` (set up + run the main job).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test venv lint info clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check model mouaadnet tests

info: $(STAMP)
	$(BIN)/mouaadnet info

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
