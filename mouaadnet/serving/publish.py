"""Publish a model artifact as the next numeric version of a Triton model, atomically.

- The artifact's sha256 is checked against its sidecar (`<artifact>.json`, else `<artifact stem>.json`, with at
  least {"sha256": ...}); a mismatch is refused. The published version gets its own sidecar.
- The version is assembled in a hidden temp folder inside the model folder (same filesystem; Triton ignores
  non-numeric folders) and renamed into place in one step: a polling server never sees a half-written version.
- The backend (python | onnxruntime | tensorrt) picks the artifact's file name and which `configs/<backend>.pbtxt`
  becomes `config.pbtxt` (replaced atomically too). Python-backend versions also get model.py, copied from the
  newest version that has one.
- Only the newest ``keep`` published versions stay; older ones are moved aside and deleted. The tracked seed
  folder `1/` (model.py, no binary) is kept, and its model.py is the one copied into new versions.
- Concurrent publishes to the same model are serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from model.artifacts import sha256_file

BACKENDS = {"python": "model.onnx", "onnxruntime": "model.onnx", "tensorrt": "model.plan"}
DEFAULT_MODEL = "detector"
DEFAULT_KEEP = 3
SEED_VERSION = 1
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # one path component, no "..", no separators


class PublishError(RuntimeError):
    """The artifact or repository is not fit to publish; the message says why."""


@dataclass
class Published:
    model: str
    version: int
    path: Path
    sha256: str
    backend: str
    removed: list[int]


def find_sidecar(artifact: Path) -> Path | None:
    for candidate in (artifact.with_name(artifact.name + ".json"), artifact.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def verify_sidecar(artifact: Path, sidecar: Path | None = None) -> tuple[str, dict]:
    """sha256 of ``artifact``; raises PublishError when its sidecar names a different hash or is unreadable."""
    digest = sha256_file(artifact)
    sidecar = sidecar or find_sidecar(artifact)
    if sidecar is None:
        return digest, {}
    try:
        meta = json.loads(Path(sidecar).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PublishError(f"sidecar {sidecar} is not readable JSON: {error}") from None
    expected = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(expected, str):
        raise PublishError(f"sidecar {sidecar} has no \"sha256\" string")
    if expected.lower() != digest:
        raise PublishError(f"refusing {artifact}: its sha256 {digest} does not match {expected} in {sidecar} "
                           "(corrupt or replaced artifact)")
    return digest, meta


def numeric_versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_synced(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _check_onnx_signature(artifact: Path, config_path: Path) -> None:
    """Refuse an ONNX whose inputs/outputs do not match the config (skipped when `onnx` is not installed)."""
    try:
        from .repo_check import check_onnx_against_config, load_config
    except ImportError:  # pragma: no cover
        return
    problems = check_onnx_against_config(artifact, load_config(config_path), str(config_path))
    if problems:
        raise PublishError(f"refusing {artifact}: it does not match {config_path}:\n  " + "\n  ".join(problems))


def publish(
    artifact: str | Path,
    repo: str | Path,
    model: str = DEFAULT_MODEL,
    backend: str = "python",
    keep: int = DEFAULT_KEEP,
    sidecar: str | Path | None = None,
) -> Published:
    artifact, repo = Path(artifact), Path(repo)
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model) or ".." in model:
        raise PublishError(f"invalid model name {model!r}: one folder name of letters, digits, '_', '-', '.' "
                           "(no path separators, no '..')")
    if backend not in BACKENDS:
        raise PublishError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if keep < 1:
        raise PublishError(f"keep must be >= 1, got {keep}")
    if not artifact.is_file():
        raise PublishError(f"artifact {artifact} does not exist")
    model_dir = repo / model
    if not model_dir.is_dir() or model_dir.resolve().parent != repo.resolve():
        raise PublishError(f"{model_dir} is not a model folder of repository {repo}")
    variant = model_dir / "configs" / f"{backend}.pbtxt"
    config = model_dir / "config.pbtxt"
    if not variant.is_file() and not config.is_file():
        raise PublishError(f"{model_dir} has neither configs/{backend}.pbtxt nor config.pbtxt")
    if artifact.suffix == ".onnx" and BACKENDS[backend] != "model.onnx":
        raise PublishError(f"backend {backend} serves {BACKENDS[backend]}, not an ONNX file")
    if backend != "tensorrt" and artifact.suffix != ".onnx":
        raise PublishError(f"backend {backend} serves an ONNX file; got {artifact.name}")
    digest, source_meta = verify_sidecar(artifact, Path(sidecar) if sidecar else None)
    if BACKENDS[backend] == "model.onnx":
        _check_onnx_signature(artifact, variant if variant.is_file() else config)

    with open(model_dir / ".publish.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_debris(model_dir)
        versions = numeric_versions(model_dir)
        version = (versions[-1] + 1) if versions else 1
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=model_dir))
        try:
            target = staging / BACKENDS[backend]
            _copy_synced(artifact, target)
            if sha256_file(target) != digest:
                raise PublishError(f"copy of {artifact} changed on the way (sha256 mismatch); nothing published")
            if backend == "python":  # the seed's (tracked) model.py, else the newest version's
                order = ([SEED_VERSION] if SEED_VERSION in versions else []) + list(reversed(versions))
                source_py = next((model_dir / str(v) / "model.py" for v in order
                                  if (model_dir / str(v) / "model.py").is_file()), None)
                if source_py is None:
                    raise PublishError(f"no model.py in any version of {model_dir} to copy (python backend)")
                _copy_synced(source_py, staging / "model.py")
            sidecar_out = {**source_meta, "sha256": digest, "artifact": target.name,
                           "published": {"model": model, "version": version, "backend": backend,
                                         "source": str(artifact.resolve()),
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
            (staging / f"{target.name}.json").write_text(json.dumps(sidecar_out, indent=2) + "\n")
            os.chmod(staging, 0o755)
            _fsync_dir(staging)
            final = model_dir / str(version)
            os.rename(staging, final)  # atomic on one filesystem; fails if the version already exists
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if variant.is_file() and variant.read_bytes() != (config.read_bytes() if config.is_file() else b""):
            tmp = model_dir / f".config.pbtxt.{os.getpid()}.tmp"
            shutil.copyfile(variant, tmp)
            os.replace(tmp, config)
        removed = prune(model_dir, keep)
    return Published(model, version, final, digest, backend, removed)


def _remove_debris(model_dir: Path) -> list[str]:
    """Staging and trash folders left by a publish that was killed (SIGKILL, power loss). Called with the
    publish lock held, so no publish is running: every such folder is debris. Triton ignores them anyway
    (non-numeric), so they only cost disk space."""
    removed = []
    for debris in sorted(model_dir.glob(".publish-*")) + sorted(model_dir.glob(".trash-*")):
        if debris.is_dir():
            shutil.rmtree(debris, ignore_errors=True)
            removed.append(debris.name)
    return removed


def is_seed(version_dir: Path) -> bool:
    """Version 1 without a model binary is the git-tracked seed (model.py only): never pruned, never served."""
    return version_dir.name == str(SEED_VERSION) and not any((version_dir / f).exists() for f in set(BACKENDS.values()))


def prune(model_dir: Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` published versions (renamed aside first, so none is half-deleted)."""
    versions = [v for v in numeric_versions(model_dir) if not is_seed(model_dir / str(v))]
    old = versions[:-keep] if keep < len(versions) else []
    for v in old:
        trash = model_dir / f".trash-{v}-{os.getpid()}"
        os.rename(model_dir / str(v), trash)
        shutil.rmtree(trash, ignore_errors=True)
    return old


def load_on_server(url: str, model: str, timeout: float = 120.0, repo: Path | None = None,
                   admin_key: str | None = None) -> None:
    """Ask a server in explicit model-control mode to (re)load ``model``: Triton loads the new version, switches
    traffic once it is ready and then unloads the old one, so requests in flight keep succeeding.

    Loading needs the admin key of `mouaadnet serve`: ``admin_key``, else $MOUAADNET_ADMIN_KEY, else the
    ``repo``/.admin-key the server wrote into the repository it serves."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from .guard import ADMIN_HEADER
    from .triton_install import ADMIN_KEY_FILE, read_admin_key

    key = admin_key or read_admin_key(repo)
    client = grpcclient.InferenceServerClient(url)
    try:
        client.load_model(model, headers={ADMIN_HEADER: key} if key else None, client_timeout=timeout)
    except InferenceServerException as error:
        if "restricted" in str(error):
            raise PublishError(f"the server at {url} loads models only for its admin key ({error.message()}): "
                               f"publish into the --repo it serves (its {ADMIN_KEY_FILE}) or set "
                               "$MOUAADNET_ADMIN_KEY") from None
        raise
    if not client.is_model_ready(model):
        raise PublishError(f"server at {url} reports {model} not ready after loading")
