"""The README's "Where things are" map stays true: every folder it names exists, and every mouaadnet sub-package
and every top-level folder of the repository is on it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _map_lines() -> list[tuple[str, str]]:
    """(folder or file, description) of each line of the README's map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where things are", 1)[1].split("```", 2)[1]
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^(\S+)\s+(.*)$", section, re.M)]


def _mapped() -> list[str]:
    return [place for place, _ in _map_lines() if place.endswith("/")]


def test_every_mapped_folder_exists():
    mapped = _mapped()
    assert mapped, "README has no 'Where things are' map"
    assert [p for p in mapped if not (ROOT / p).is_dir()] == []


def test_every_subpackage_is_mapped():
    packages = {f"mouaadnet/{p.parent.name}/" for p in (ROOT / "mouaadnet").glob("*/__init__.py")}
    assert packages - set(_mapped()) == set()


def test_every_tracked_top_level_folder_is_mapped():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    folders = {line.split("/", 1)[0] + "/" for line in files.splitlines() if "/" in line}
    covered = {p.split("/", 1)[0] + "/" for p in _mapped()}
    assert folders - covered == set()


def test_what_the_descriptions_name_exists():
    """Not only the first word: a sub-folder (``resume/``) or a file (``mouaadnet.yaml``) that a description names
    must exist below the line's folder."""
    missing = []
    for place, description in _map_lines():
        base = ROOT / place
        if not place.endswith("/"):
            assert base.is_file(), place
            continue
        for folder in re.findall(r"(?<![\w./-])([A-Za-z_][\w-]*)/(?=[\s:,)]|$)", description):
            if not (base / folder).is_dir() and not (ROOT / folder).is_dir() and not _generated(folder):
                missing.append(f"{place}: {folder}/")
        for name in re.findall(r"(?<![\w./-])([\w./-]+\.(?:py|yaml|yml|json|md|dvc|html))\b", description):
            found = (ROOT / name).exists() if "/" in name else any(base.rglob(name)) or (ROOT / name).exists()
            if not found:
                missing.append(f"{place}: {name}")
    assert missing == []


def _generated(folder: str) -> bool:
    """A folder the project builds and git ignores (data/ of `make run`): named by the map, absent in a fresh clone."""
    done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], cwd=ROOT, capture_output=True)
    return done.returncode == 0
