"""DVC around the embedded dataset: build it, track it (`data.dvc`), verify it, push/pull it with clear errors.

The repository's `.dvc/config` names one S3 remote, `storage` (url `s3://mouaadnet-data/dvc`, `verify = true` so
every pulled object is re-hashed). The endpoint and credentials never go into the committed config: they come
from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL_S3` for a non-AWS
endpoint such as SeaweedFS or MinIO) or from the git-ignored `.dvc/config.local` (`configure_remote`).

    build_default_data(repo)          # data/ from the synthetic generator, byte-identical for a seed
    track(repo)                       # dvc add data -> data.dvc
    push(repo, env=remote_env(...))   # dvc push
    pull(repo, env=...)               # dvc pull, then verify_data()
    verify_data(repo)                 # dvc status clean AND every file's md5 matches the pinned manifest
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

DATA_DIR = "data"
DVC_FILE = "data.dvc"
REMOTE = "storage"
REMOTE_URL = "s3://mouaadnet-data/dvc"
# The embedded default dataset (keep in step with the default training config).
DEFAULT_N_TRAIN = 256
DEFAULT_N_VAL = 64
DEFAULT_SEED = 0


class DvcError(RuntimeError):
    """A dvc command failed (the message holds the command, exit code, its error output and a hint)."""


class DataVerificationError(DvcError):
    """The dataset on disk is not the version that data.dvc pins (or cannot be checked)."""


# ------------------------------------------------------------------------------------------- running dvc


def dvc_executable() -> str:
    beside = Path(sys.executable).parent / "dvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise DvcError("dvc is not installed: pip install -e '.[pipeline]' (dvc, dvc-s3)")
    return found


_HINTS = {
    "Could not connect to the endpoint": "is the S3 endpoint up? set AWS_ENDPOINT_URL_S3 or "
                                         "`dvc remote modify --local storage endpointurl URL`",
    "Unable to locate credentials": "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or .dvc/config.local",
    "Forbidden": "the S3 credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    "InvalidAccessKeyId": "the S3 access key is unknown to the endpoint",
    "NoSuchBucket": "the remote's bucket does not exist: create it first",
    "bucket does not exist": "the remote's bucket does not exist: create it first",
    "Checkout failed": "an object is missing or corrupted (the remote has `verify = true`): "
                       "re-push it from a good copy or rebuild the data",
    "missing-files": "objects are missing from the cache/remote: was `dvc push` run?",
    "not inside of a DVC repository": "run it inside the repository (where `dvc init` was done)",
    "InternalError": "the S3 endpoint kept answering server errors (5xx) through dvc's retries: is it healthy?",
    "ServiceUnavailable": "the S3 endpoint kept answering 503 through dvc's retries: is it overloaded?",
    "SlowDown": "the S3 endpoint kept answering 503 through dvc's retries: is it overloaded?",
}
_BOILERPLATE = "Having any troubles? Hit us up at https://dvc.org/support, we are always happy to help!"


def run_dvc(
    args: Sequence[str], repo: str | os.PathLike, env: Mapping[str, str] | None = None,
    check: bool = True, timeout: float = 900.0,
) -> subprocess.CompletedProcess:
    """Run `dvc ARGS` in repo (env: extra variables over os.environ); raise DvcError on failure."""
    cmd = [dvc_executable(), *args]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        result = subprocess.run(cmd, cwd=repo, env=full_env, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise DvcError(f"`dvc {' '.join(args)}` in {repo} took more than {timeout:.0f} s") from error
    if check and result.returncode != 0:
        output = (result.stderr.replace(_BOILERPLATE, "").strip() + "\n" + result.stdout.strip()).strip()
        hints = [hint for needle, hint in _HINTS.items() if needle in output]
        message = f"`dvc {' '.join(args)}` in {repo} failed (exit {result.returncode}):\n{output[-3000:]}"
        if hints:
            message += "\nhint: " + "; ".join(dict.fromkeys(hints))
        raise DvcError(message)
    return result


def remote_env(
    endpoint_url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
    region: str | None = None,
) -> dict[str, str]:
    """Environment that points DVC's S3 remote at an endpoint with credentials (nothing is written to disk)."""
    env: dict[str, str] = {}
    if endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = endpoint_url
    if access_key:
        env["AWS_ACCESS_KEY_ID"] = access_key
    if secret_key:
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return env


def configure_remote(
    repo: str | os.PathLike, endpoint_url: str | None = None, access_key: str | None = None,
    secret_key: str | None = None, remote: str = REMOTE,
) -> None:
    """Write the endpoint/credentials of `remote` into the git-ignored .dvc/config.local (never .dvc/config)."""
    for option, value in (("endpointurl", endpoint_url), ("access_key_id", access_key),
                          ("secret_access_key", secret_key)):
        if value:
            run_dvc(["remote", "modify", "--local", remote, option, value], repo)


def init_repo(repo: str | os.PathLike, remote_url: str = REMOTE_URL, remote: str = REMOTE) -> None:
    """`dvc init` in a git repository and the committed remote config: name + url + verify, no secrets."""
    repo = Path(repo)
    if not (repo / ".dvc").is_dir():
        run_dvc(["init", "-q"], repo)
    config = repo / ".dvc" / "config"
    if not config.is_file() or not config.read_text(encoding="utf-8").strip():
        # A fresh `dvc init` leaves an empty config: write it in one go (each dvc call costs ~1 s).
        config.write_text(_CONFIG_TEMPLATE.format(remote=remote, url=remote_url), encoding="utf-8")
        return
    run_dvc(["config", "core.analytics", "false"], repo)
    run_dvc(["remote", "add", "--force", "--default", remote, remote_url], repo)
    run_dvc(["remote", "modify", remote, "verify", "true"], repo)


_CONFIG_TEMPLATE = """[core]
    remote = {remote}
    analytics = false
['remote "{remote}"']
    url = {url}
    verify = true
"""


# ---------------------------------------------------------------------------------------------- the data


def build_default_data(
    repo: str | os.PathLike = ".", n_train: int = DEFAULT_N_TRAIN, n_val: int = DEFAULT_N_VAL,
    seed: int = DEFAULT_SEED, force: bool = False, data_dir: str = DATA_DIR,
) -> dict | None:
    """Write repo/data from the synthetic generator unless it is already there; None when nothing was done."""
    from mouaadnet.data.synthetic import write_synthetic_dataset

    out = Path(repo) / data_dir
    if not force and (out / "train" / "annotations.json").is_file() and (out / "val" / "annotations.json").is_file():
        return None
    if force and out.exists():
        shutil.rmtree(out)
    return write_synthetic_dataset(out, n_train, n_val, seed)


def track(repo: str | os.PathLike = ".", data_dir: str = DATA_DIR) -> str:
    """`dvc add data` (caches it, writes data.dvc); returns the pinned md5 (`<hash>.dir`)."""
    run_dvc(["add", "-q", data_dir], repo)
    return pinned_md5(repo, f"{data_dir}.dvc")


def pinned_md5(repo: str | os.PathLike = ".", dvc_file: str = DVC_FILE) -> str:
    path = Path(repo) / dvc_file
    try:
        outs = yaml.safe_load(path.read_text(encoding="utf-8"))["outs"]
        return str(outs[0]["md5"])
    except FileNotFoundError as error:
        raise DataVerificationError(f"{path} does not exist: the data is not tracked by DVC") from error
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as error:
        raise DataVerificationError(f"{path} is not a valid .dvc file: {error!r}") from error


def cache_dir(repo: str | os.PathLike = ".") -> Path:
    """The DVC cache's md5 object folder (default location; `dvc cache dir` overrides are honoured)."""
    repo = Path(repo)
    result = run_dvc(["cache", "dir"], repo, check=False)
    base = Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else repo / ".dvc" / "cache"
    if not base.is_absolute():
        base = repo / base
    return base / "files" / "md5"


def _object_path(cache: Path, md5: str) -> Path:
    return cache / md5[:2] / md5[2:]


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_manifest(repo: str | os.PathLike = ".", dvc_file: str = DVC_FILE) -> dict[str, str]:
    """relpath -> md5 of every file that data.dvc pins (read from the `.dir` object in the cache)."""
    md5 = pinned_md5(repo, dvc_file)
    if not md5.endswith(".dir"):
        raise DataVerificationError(f"{dvc_file} pins a single file ({md5}), not a directory")
    path = _object_path(cache_dir(repo), md5)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataVerificationError(
            f"the manifest {md5} of {dvc_file} is not in the cache ({path}): `dvc pull` it, or rebuild the data "
            f"and run `dvc commit -f {dvc_file}` if it is byte-identical") from error
    except json.JSONDecodeError as error:
        raise DataVerificationError(f"the cached manifest {path} is corrupted: {error}") from error
    if md5_file(path) != md5.removesuffix(".dir"):
        raise DataVerificationError(f"the cached manifest {path} is corrupted (its md5 does not match its name)")
    return {entry["relpath"]: entry["md5"] for entry in entries}


def dvc_status(repo: str | os.PathLike = ".", targets: Sequence[str] = (DVC_FILE,),
               env: Mapping[str, str] | None = None, cloud: bool = False) -> dict:
    """`dvc status --json` ({} when the workspace/cache, or with cloud=True the remote, match the pins)."""
    args = ["status", "--json", *(["--cloud"] if cloud else []), *targets]
    out = run_dvc(args, repo, env=env).stdout.strip()
    return json.loads(out) if out else {}


def verify_data(repo: str | os.PathLike = ".", dvc_file: str = DVC_FILE, data_dir: str = DATA_DIR) -> str:
    """Refuse a dirty or unverifiable dataset: `dvc status` clean and every file re-hashed against the pins.

    Returns the pinned md5 (the data fingerprint). Raises DataVerificationError listing what differs.
    """
    repo = Path(repo)
    md5 = pinned_md5(repo, dvc_file)
    status = dvc_status(repo, [dvc_file])
    if status:
        raise DataVerificationError(f"`dvc status {dvc_file}` is not clean: {json.dumps(status)}")
    manifest = dir_manifest(repo, dvc_file)
    root = repo / data_dir
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    problems = [f"missing: {rel}" for rel in sorted(set(manifest) - on_disk)]
    problems += [f"not pinned: {rel}" for rel in sorted(on_disk - set(manifest))]
    problems += [f"changed: {rel}" for rel in sorted(set(manifest) & on_disk)
                 if md5_file(root / rel) != manifest[rel]]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataVerificationError(f"{root} does not match {dvc_file} ({md5}):\n  {shown}")
    return md5


def verify_cache(repo: str | os.PathLike = ".") -> list[Path]:
    """Re-hash every object in the local DVC cache; return those whose content does not match their name."""
    cache = cache_dir(repo)
    bad = []
    for path in sorted(cache.glob("??/*")) if cache.is_dir() else []:
        if not path.is_file() or path.name.endswith((".tmp", ".lock")):
            continue
        expected = path.parent.name + path.name.removesuffix(".dir")
        if md5_file(path) != expected:
            bad.append(path)
    return bad


def push(repo: str | os.PathLike = ".", targets: Sequence[str] = (DVC_FILE,), remote: str | None = None,
         env: Mapping[str, str] | None = None) -> str:
    """`dvc push` the pinned data (after checking the cache is sound); returns dvc's summary line."""
    corrupted = verify_cache(repo)
    if corrupted:
        raise DataVerificationError(f"refusing to push: corrupted objects in the DVC cache: {corrupted[:5]}")
    args = ["push", *(["--remote", remote] if remote else []), *targets]
    return run_dvc(args, repo, env=env).stdout.strip()


def pull(repo: str | os.PathLike = ".", targets: Sequence[str] = (DVC_FILE,), remote: str | None = None,
         env: Mapping[str, str] | None = None, verify: bool = True) -> str:
    """`dvc pull` the pinned data, then verify it (unless verify=False); returns the pinned md5."""
    args = ["pull", *(["--remote", remote] if remote else []), *targets]
    run_dvc(args, repo, env=env)
    return verify_data(repo, targets[0]) if verify else pinned_md5(repo, targets[0])


def ensure_data(repo: str | os.PathLike = ".", env: Mapping[str, str] | None = None,
                use_remote: bool | None = None) -> str:
    """The pinned dataset, present and verified: pull it if a remote is usable, else rebuild the default.

    use_remote=None pulls when data/ is missing and an S3 endpoint/credentials are in env or os.environ.
    Returns the pinned md5. Raises DataVerificationError when the result does not match data.dvc.
    """
    repo = Path(repo)
    merged = {**os.environ, **(env or {})}
    have_remote = bool(merged.get("AWS_ACCESS_KEY_ID")) or (repo / ".dvc" / "config.local").is_file()
    if not (repo / DATA_DIR).is_dir():
        if use_remote or (use_remote is None and have_remote):
            return pull(repo, env=env)
        build_default_data(repo)
    # A rebuilt (or pre-existing) data/ without the cache: re-cache it; data.dvc must not change.
    before = pinned_md5(repo)
    if not _object_path(cache_dir(repo), before).is_file():
        pinned_bytes = (repo / DVC_FILE).read_bytes()
        run_dvc(["commit", "-f", "-q", DVC_FILE], repo)
        after = pinned_md5(repo)
        if after != before:
            (repo / DVC_FILE).write_bytes(pinned_bytes)  # the pin is the truth; never move it silently
            raise DataVerificationError(
                f"{repo / DATA_DIR} hashes to {after}, but {DVC_FILE} pins {before}: the data is not the pinned version")
    return verify_data(repo)


def main(argv: list[str] | None = None) -> int:
    """python -m mouaadnet.pipeline.dvc_data {build,track,verify,ensure,push,pull} [--repo DIR] [--force]."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mouaadnet.pipeline.dvc_data", description=main.__doc__)
    parser.add_argument("action", choices=["build", "track", "verify", "ensure", "push", "pull"])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--force", action="store_true", help="build: rewrite data/ even if present")
    args = parser.parse_args(argv)
    try:
        if args.action == "build":
            print(build_default_data(args.repo, force=args.force) or f"{args.repo / DATA_DIR} already present")
        elif args.action == "track":  # after a deliberate change of the default data: re-pin data.dvc
            build_default_data(args.repo, force=args.force)
            print(track(args.repo))
        elif args.action == "verify":
            print(verify_data(args.repo))
        elif args.action == "ensure":
            print(ensure_data(args.repo))
        elif args.action == "push":
            print(push(args.repo))
        elif args.action == "pull":
            print(pull(args.repo))
    except DvcError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
