"""The package layering (pyproject.toml [tool.importlinter]) holds: `lint-imports` checks every import, inside
functions too, against the layers from `model` up to `mouaadnet.cli` and for cycles between sibling modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_contracts_have_no_ignored_imports():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert {c["type"] for c in config["contracts"]} == {"layers", "acyclic_siblings"}
    assert all(not c.get("ignore_imports") for c in config["contracts"])
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    assert layers[0] == "mouaadnet.cli" and layers[-1] == "model"


def test_imports_keep_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
