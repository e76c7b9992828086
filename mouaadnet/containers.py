"""Containers without a Docker daemon: the project's images built with podman, a base made locally when none can
be pulled, podman's Docker-API socket for Docker clients (kfp.local's DockerRunner), and `podman run`.

What a machine with podman but no registry and no daemon needs (README, "In containers"), all arranged here:
- ``containers.conf`` (under the cache folder, named by CONTAINERS_CONF for every podman call): the OCI runtime
  `runc` (podman's default crun fails on a kernel in cgroup hybrid mode), rlimits the kernel accepts (podman's
  defaults are refused), the host network;
- a base image: ``BASE_IMAGE`` when given; else python:3.11-slim-bookworm when it is here or can be pulled; else
  a Debian bookworm made with ``mmdebstrap`` (python3, venv, CA certificates, libpython for Triton's Python
  backend stub; no docs, man pages or locales), its tarball kept in the cache folder and imported once;
- ``podman build --isolation chroot --network host`` (RUN steps need no OCI runtime), with this machine's pip
  settings when it has them: the local wheel folder pip's config names (mounted read-only: the CPU torch wheel
  lies there, without it pip takes the multi-GB CUDA build from the index) and its CA bundle (TLS-intercepting
  proxies);
- ``podman system service`` on a socket in the cache folder: the Docker Engine API for the docker SDK.

The cache folder (MOUAADNET_PODMAN_CACHE, default ~/.cache/mouaadnet/podman) and podman's own storage keep the
base and the layers outside the repository, so a rebuild after a code change reruns only the last layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (the Dockerfile's build context)
IMAGE = "localhost/mouaadnet-ultra:0.1.0"  # what `make image` builds: every pipeline component runs in it
SERVING_IMAGE = "localhost/mouaadnet-ultra-serving:0.1.0"  # the Dockerfile's `serving` target: Triton
TARGETS = {"runtime": IMAGE, "serving": SERVING_IMAGE}
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"  # the Dockerfile's BASE_IMAGE default
LOCAL_BASE = "localhost/mouaadnet-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libpython3.11")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SLIM = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/info/*")
CONTAINERS_CONF = """\
# Written by mouaadnet.containers (podman on machines without Docker): runc, rlimits the kernel accepts, host network.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
netns = "host"

[engine]
runtime = "runc"
"""
CA_IN_BUILD = "/run/mouaadnet-pip-ca.crt"


class ContainerError(RuntimeError):
    """podman is missing, or a build, a run or the Docker API failed (the message carries podman's reason)."""


def cache_dir() -> Path:
    path = Path(os.environ.get("MOUAADNET_PODMAN_CACHE") or Path.home() / ".cache" / "mouaadnet" / "podman")
    path.mkdir(parents=True, exist_ok=True)
    return path


def podman_path() -> str | None:
    return shutil.which("podman")


def podman_env() -> dict[str, str]:
    """The environment every podman call gets: CONTAINERS_CONF -> the cache folder's containers.conf."""
    conf = cache_dir() / "containers.conf"
    if not conf.is_file() or conf.read_text(encoding="utf-8") != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF, encoding="utf-8")
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF") or str(conf)}


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
           nice: int = 0) -> subprocess.CompletedProcess:
    """Run `podman ARGS` (ContainerError with its output when it fails and ``check``)."""
    exe = podman_path()
    if exe is None:
        raise ContainerError("podman is not installed (as root: apt-get install podman runc mmdebstrap uidmap; "
                             "`make image` does it)")
    cmd = ([shutil.which("nice") or "nice", "-n", str(nice)] if nice else []) + [exe, *args]
    try:
        done = subprocess.run(cmd, env=podman_env(), capture_output=capture, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise ContainerError(f"`podman {' '.join(args[:3])} ...` took more than {timeout:.0f} s") from error
    if check and done.returncode != 0:
        output = ((done.stderr or "") + (done.stdout or "")).strip()
        raise ContainerError(f"`podman {' '.join(args)}` failed (exit {done.returncode}): {output[-3000:]}")
    return done


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_size(ref: str) -> int:
    """Bytes of the image's layers, uncompressed (what `podman images` shows)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


# ---------------------------------------------------------------------------------------------- base image


def make_local_base(echo: Callable[[str], None] = print) -> str:
    """A Debian bookworm base from Debian's packages (mmdebstrap, ~1.5 min once), imported as LOCAL_BASE."""
    tarball = cache_dir() / "base-bookworm.tar"
    if not tarball.is_file():
        exe = shutil.which("mmdebstrap")
        if exe is None:
            raise ContainerError("no base image can be pulled and mmdebstrap is missing (apt-get install mmdebstrap)")
        mirror = os.environ.get("MOUAADNET_DEBIAN_MIRROR", DEBIAN_MIRROR)
        security = mirror.removesuffix("/debian") + "/debian-security"
        echo(f"making the base image with mmdebstrap ({', '.join(BASE_PACKAGES)}) -> {tarball}")
        partial = tarball.with_suffix(".partial")
        cmd = [exe, "--quiet", "--variant=minbase", "--format=tar", f"--include={','.join(BASE_PACKAGES)}",
               '--aptopt=Acquire::Check-Valid-Until "false"', *(f"--dpkgopt={opt}" for opt in SLIM)]
        if os.geteuid() != 0:
            cmd.append("--mode=unshare")
        cmd += ["bookworm", str(partial), f"deb {mirror} bookworm main", f"deb {mirror} bookworm-updates main",
                f"deb {security} bookworm-security main"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ContainerError(f"mmdebstrap failed (exit {done.returncode}): {(done.stderr + done.stdout)[-3000:]}")
        partial.rename(tarball)
    podman("import", "--quiet", "--change", 'CMD ["python3"]', str(tarball), LOCAL_BASE)
    return LOCAL_BASE


def resolve_base(base: str | None = None, echo: Callable[[str], None] = print) -> str:
    """``base`` as given (podman pulls it if missing); else the Dockerfile's default when it is here or can be
    pulled; else the local mmdebstrap base (made once)."""
    if base:
        return base
    for ref in (DEFAULT_BASE, LOCAL_BASE):
        if image_exists(ref):
            return ref
    pulled = podman("pull", "--quiet", DEFAULT_BASE, check=False, timeout=600)
    if pulled.returncode == 0:
        return DEFAULT_BASE
    reason = (pulled.stderr.strip().splitlines() or ["?"])[-1]
    echo(f"{DEFAULT_BASE} cannot be pulled ({reason[:200]}): using a local Debian base")
    return make_local_base(echo)


# ---------------------------------------------------------------------------------------------- building


def _pip_config() -> dict[str, str]:
    """This machine's pip settings (environment and config files), as `pip config list` prints them."""
    import sys

    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=60)
    values = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key.split(".", 1)[-1].strip()] = value.strip().strip("'\"")
    return values


def pip_build_options(torch_version: str = "2.13.0") -> list[str]:
    """podman build options that give the build this machine's local wheel folders (mounted read-only, as
    PIP_FIND_LINKS) and CA bundle (as PIP_CERT); none on a machine without them. When a folder holds the CPU
    torch wheel, torch's other requirements come from the package index (TORCH_INDEX_URL)."""
    config = _pip_config()
    options: list[str] = []
    links = [p for p in (os.environ.get("PIP_FIND_LINKS") or config.get("find-links", "")).split()
             if Path(p).is_dir()]
    if links:
        for folder in links:
            options += ["--volume", f"{folder}:{folder}:ro"]
        options += ["--build-arg", f"PIP_FIND_LINKS={' '.join(links)}"]
        if any(any(Path(f).glob(f"torch-{torch_version}+cpu-*.whl")) for f in links):
            index = os.environ.get("PIP_INDEX_URL") or config.get("index-url") or "https://pypi.org/simple"
            options += ["--build-arg", f"TORCH_INDEX_URL={index}"]
    cert = os.environ.get("PIP_CERT") or config.get("cert")
    if cert and Path(cert).is_file():
        options += ["--volume", f"{Path(cert).resolve()}:{CA_IN_BUILD}:ro", "--build-arg", f"PIP_CERT={CA_IN_BUILD}"]
    return options


def git_commit(root: Path = ROOT) -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_image(target: str = "runtime", tag: str | None = None, base: str | None = None, no_cache: bool = False,
                nice: int = 0, echo: Callable[[str], None] = print, quiet: bool = False) -> dict[str, object]:
    """Build the Dockerfile's ``target`` (runtime: the pipeline image; serving: Triton) as ``tag``.

    Returns {"tag", "base", "seconds", "size"}; the build's log goes to the terminal unless ``quiet``."""
    if target not in TARGETS:
        raise ContainerError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    tag = tag or TARGETS[target]
    base = resolve_base(base, echo)
    cmd = ["build", "--isolation", "chroot", "--network", "host", "--target", target, "--tag", tag,
           "--file", str(ROOT / "Dockerfile"), "--build-arg", f"BASE_IMAGE={base}",
           "--build-arg", f"GIT_COMMIT={git_commit()}", *pip_build_options()]
    if no_cache:
        cmd.append("--no-cache")
    echo(f"building {tag} (target {target}) on {base}")
    before = _image_id(tag)
    started = time.monotonic()
    done = podman(*cmd, str(ROOT), check=False, capture=quiet, nice=nice)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = ((done.stdout or "") + (done.stderr or ""))[-4000:] if quiet else "(see the build log above)"
        raise ContainerError(f"podman build of {tag} failed (exit {done.returncode}): {tail}")
    if before and before != _image_id(tag):  # the image this build replaced (its layers below stay cached)
        podman("rmi", before, check=False)
    return {"tag": tag, "base": base, "seconds": seconds, "size": image_size(tag)}


def _image_id(ref: str) -> str:
    done = podman("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


# ---------------------------------------------------------------------------------------------- Docker API


def _ping(url: str, timeout: float = 2.0) -> bool:
    """GET /_ping on a unix:// Docker API socket."""
    import socket

    path = url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0] + b" "
    except OSError:
        return False


@contextmanager
def docker_api(echo: Callable[[str], None] = print) -> Iterator[str]:
    """A Docker Engine API for the docker SDK, as DOCKER_HOST (set for the duration): the one DOCKER_HOST already
    names, else Docker's own socket, else `podman system service` on a socket in the cache folder (started here
    and stopped at the end, unless one already answers there)."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    if Path("/var/run/docker.sock").exists() and _ping("unix:///var/run/docker.sock"):
        yield "unix:///var/run/docker.sock"
        return
    url = f"unix://{cache_dir() / 'podman.sock'}"
    process = None
    if not _ping(url):
        exe = podman_path()
        if exe is None:
            raise ContainerError("no Docker API: DOCKER_HOST is unset, /var/run/docker.sock does not answer and "
                                 "podman is not installed")
        Path(url.removeprefix("unix://")).unlink(missing_ok=True)
        log = open(cache_dir() / "podman-service.log", "ab")  # noqa: SIM115 - closed below
        process = subprocess.Popen([exe, "system", "service", "--time=0", url], env=podman_env(), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not _ping(url):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise ContainerError(f"`podman system service` did not answer on {url}: see "
                                     f"{cache_dir() / 'podman-service.log'}")
            time.sleep(0.2)
        echo(f"Docker API: podman system service on {url}")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        yield url
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


# ---------------------------------------------------------------------------------------------- running


def run_detached(image: str, args: list[str], name: str, env: dict[str, str] | None = None,
                 shm_size: str = "256m", nice: int = 0) -> str:
    """`podman run -d --rm --network host` (Triton's Python backend wants more than the default 64 MB of
    /dev/shm); returns the container id."""
    options = ["run", "--detach", "--rm", "--name", name, "--network", "host", f"--shm-size={shm_size}"]
    for key, value in (env or {}).items():
        options += ["--env", f"{key}={value}"]
    return podman(*options, image, *args, nice=nice).stdout.strip()


def stop(name: str, timeout: int = 20) -> None:
    podman("stop", "--ignore", "--time", str(timeout), name, check=False, timeout=timeout + 30)


def wait_http(url: str, timeout: float = 180.0, is_alive: Callable[[], bool] | None = None) -> None:
    """Until GET url answers 200 (ContainerError after timeout, or at once when ``is_alive`` says it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if is_alive is not None and not is_alive():
            raise ContainerError(f"the container behind {url} exited")
        time.sleep(0.5)
    raise ContainerError(f"{url} did not answer 200 within {timeout:.0f} s")
