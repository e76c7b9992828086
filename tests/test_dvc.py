"""DVC: the committed config, local verification, and a real round trip through SeaweedFS S3.

Every test works in a throw-away git + DVC repository under tmp_path (never the real repository's cache).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytest.importorskip("dvc", reason="dvc not installed (pip install -e '.[pipeline]')")

from mouaadnet.pipeline import dvc_data  # noqa: E402
from mouaadnet.pipeline.dvc_data import DataVerificationError, DvcError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
SMALL = {"n_train": 6, "n_val": 2, "seed": 3}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout


def _tree_md5(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): dvc_data.md5_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _make_repo(path: Path, remote_url: str = dvc_data.REMOTE_URL) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q")
    dvc_data.init_repo(path, remote_url=remote_url)
    dvc_data.build_default_data(path, **SMALL)
    dvc_data.track(path)
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "data")
    return path


@pytest.fixture
def local_repo(tmp_path):
    return _make_repo(tmp_path / "repo")


# ----------------------------------------------------------------------------------- the real repository


def test_committed_dvc_config_has_remote_and_no_secrets():
    config_path = REPO_ROOT / ".dvc" / "config"
    if not config_path.is_file():
        pytest.skip("no .dvc/config in this checkout")
    text = config_path.read_text()
    config = configparser.ConfigParser()
    config.read_string(text)
    assert config["core"]["remote"] == dvc_data.REMOTE
    remote = config[f"'remote \"{dvc_data.REMOTE}\"'"]  # DVC (configobj) quotes the section name
    assert remote["url"].startswith("s3://") and remote["verify"] == "true"
    for secret in ("access_key_id", "secret_access_key", "session_token", "password", "credentialpath"):
        assert secret not in text
    ignored = (REPO_ROOT / ".dvc" / ".gitignore").read_text()
    assert "/config.local" in ignored


def test_committed_data_dvc_is_well_formed():
    path = REPO_ROOT / dvc_data.DVC_FILE
    if not path.is_file():
        pytest.skip("data.dvc not created yet")
    md5 = dvc_data.pinned_md5(REPO_ROOT)
    assert md5.endswith(".dir") and len(md5) == 36


# ----------------------------------------------------------------------------------- local verification


def test_verify_data_accepts_pinned_and_refuses_changes(local_repo):
    md5 = dvc_data.verify_data(local_repo)
    assert md5 == dvc_data.pinned_md5(local_repo)

    image = next((local_repo / "data" / "train" / "images").glob("*.png"))
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    with pytest.raises(DataVerificationError, match="not clean"):
        dvc_data.verify_data(local_repo)
    image.write_bytes(original)
    dvc_data.verify_data(local_repo)

    extra = local_repo / "data" / "val" / "images" / "stray.png"
    extra.write_bytes(b"x")
    with pytest.raises(DataVerificationError):
        dvc_data.verify_data(local_repo)


def test_fresh_clone_rebuilds_byte_identical_data(local_repo, tmp_path):
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(local_repo), str(clone))
    assert not (clone / "data").exists() and (clone / "data.dvc").is_file()
    dvc_data.build_default_data(clone, **SMALL)
    assert dvc_data.ensure_data(clone, use_remote=False) == dvc_data.pinned_md5(local_repo)
    assert _git(clone, "status", "--porcelain") == ""  # data.dvc untouched, data/ ignored


def test_fresh_clone_with_other_data_is_refused(local_repo, tmp_path):
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(local_repo), str(clone))
    dvc_data.build_default_data(clone, **{**SMALL, "seed": SMALL["seed"] + 1})
    pinned = (clone / "data.dvc").read_bytes()
    with pytest.raises(DataVerificationError, match="not the pinned version"):
        dvc_data.ensure_data(clone, use_remote=False)
    assert (clone / "data.dvc").read_bytes() == pinned


def test_corrupted_cache_object_is_detected(local_repo):
    objects = [p for p in dvc_data.cache_dir(local_repo).glob("??/*") if not p.name.endswith(".dir")]
    victim = objects[0]
    victim.chmod(0o644)
    with open(victim, "ab") as handle:
        handle.write(b"bit rot")
    assert dvc_data.verify_cache(local_repo) == [victim]
    with pytest.raises(DataVerificationError, match="corrupted"):
        dvc_data.push(local_repo)  # refuses before touching any remote


def test_dvc_error_is_clear(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DvcError, match=r"`dvc status` in .* failed \(exit \d+\)(.|\n)*hint: run it inside"):
        dvc_data.run_dvc(["status"], tmp_path / "plain")


# ----------------------------------------------------------------------------------- through SeaweedFS S3


@pytest.fixture
def s3_repo(tmp_path, s3_service):
    prefix = f"s3://mouaadnet-data/test-{uuid.uuid4().hex[:8]}"
    repo = _make_repo(tmp_path / "repo", remote_url=prefix)
    env = dvc_data.remote_env(s3_service.endpoint_url, s3_service.access_key, s3_service.secret_key,
                              s3_service.region)
    return repo, env, prefix.removeprefix("s3://mouaadnet-data/")


def _drop_cache_and_data(repo: Path) -> None:
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")


@pytest.mark.integration
def test_push_delete_pull_round_trip(s3_repo, s3_service):
    repo, env, prefix = s3_repo
    before = _tree_md5(repo / "data")
    pinned = dvc_data.pinned_md5(repo)
    dvc_data.push(repo, env=env)
    keys = s3_service.list_keys(prefix + "/", bucket="mouaadnet-data")
    assert len(keys) == len(before) + 1  # every file + the .dir manifest
    assert dvc_data.dvc_status(repo, env=env, cloud=True) == {}

    _drop_cache_and_data(repo)
    assert dvc_data.pull(repo, env=env) == pinned
    assert _tree_md5(repo / "data") == before
    assert dvc_data.verify_cache(repo) == []
    # The credentials never reached a committed file.
    assert s3_service.secret_key not in (repo / ".dvc" / "config").read_text()
    assert not (repo / ".dvc" / "config.local").exists()


@pytest.mark.integration
def test_corrupted_cache_object_is_repaired_by_pull(s3_repo):
    repo, env, _ = s3_repo
    dvc_data.push(repo, env=env)
    victim = next(p for p in dvc_data.cache_dir(repo).glob("??/*") if not p.name.endswith(".dir"))
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-4] + b"rot!")
    shutil.rmtree(repo / "data")
    assert dvc_data.verify_cache(repo) == [victim]
    assert "not in cache" in str(dvc_data.dvc_status(repo))  # DVC itself sees the object as unusable
    dvc_data.pull(repo, env=env)  # re-fetches the bad object, checks out, verifies
    assert dvc_data.verify_cache(repo) == []


@pytest.mark.integration
@pytest.mark.reliability
def test_corrupted_remote_object_is_refused_on_pull(s3_repo, s3_service, scoreboard):
    repo, env, prefix = s3_repo
    dvc_data.push(repo, env=env)
    client = s3_service.client()
    key = next(k for k in s3_service.list_keys(prefix + "/", bucket="mouaadnet-data") if not k.endswith(".dir"))
    body = client.get_object(Bucket="mouaadnet-data", Key=key)["Body"].read()
    client.put_object(Bucket="mouaadnet-data", Key=key, Body=body[:-8] + b"tampered")
    _drop_cache_and_data(repo)
    with pytest.raises(DvcError, match="Checkout failed") as info:
        dvc_data.pull(repo, env=env)  # `verify = true` re-hashes what was downloaded
    scoreboard.record("fault", "corrupted object in the S3 remote", done="8 bytes of one pushed object replaced, "
                      "then dvc pull into an empty cache", observed=f"DvcError: {str(info.value).splitlines()[-1]}; "
                      "nothing checked out as valid", ok=not (repo / "data").exists() or
                      dvc_data.verify_cache(repo) == [], faults=1)


@pytest.mark.integration
def test_wrong_credentials_give_a_clear_error(s3_repo):
    repo, env, _ = s3_repo
    with pytest.raises(DvcError, match="hint: .*credentials"):
        dvc_data.push(repo, env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"})


@pytest.mark.slow
def test_committed_data_dvc_matches_the_generator(tmp_path):
    """A fresh clone rebuilds data/ byte-identically: the default generator still hashes to data.dvc's pin."""
    pinned_file = REPO_ROOT / dvc_data.DVC_FILE
    if not pinned_file.is_file():
        pytest.skip("data.dvc not created yet")
    clone = tmp_path / "clone"
    clone.mkdir()
    _git(clone, "init", "-q")
    dvc_data.init_repo(clone)
    shutil.copy(pinned_file, clone / dvc_data.DVC_FILE)
    dvc_data.build_default_data(clone)
    try:
        md5 = dvc_data.ensure_data(clone, use_remote=False)
    except DataVerificationError as error:
        pytest.fail(f"{error}\nIf the default data changed on purpose, re-pin it: python -m mouaadnet.pipeline.dvc_data track --force")
    assert md5 == dvc_data.pinned_md5(REPO_ROOT)
