"""Where the `tritonserver` of the `nvidia-pytriton` wheel is, and how it is started: the serving venv, the
Python-backend directory, the command line and environment (what ``server.TritonServer`` runs; see its module
docstring for why each piece is needed).
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from .guard import DEFAULT_MAX_BYTES, ENV_ADMIN_KEY, restricted_args

PROJECT_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_VENV = PROJECT_ROOT / ".venv-serve"


BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")



class ServerError(RuntimeError):
    """The server could not be started, or a model failed to load (the message carries Triton's reason)."""


@dataclass
class TritonInstall:
    venv: Path
    root: Path  # .../site-packages/pytriton/tritonserver
    python_version: str

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def serving_venv() -> Path:
    """MOUAADNET_SERVE_VENV, else <project>/.venv-serve, else the running interpreter's venv if it has pytriton."""
    env = os.environ.get("MOUAADNET_SERVE_VENV")
    if env:
        return Path(env).resolve()
    if DEFAULT_VENV.is_dir():
        return DEFAULT_VENV
    return Path(sys.prefix)


def find_triton(venv: Path | None = None) -> TritonInstall:
    venv = Path(venv or serving_venv())
    roots = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not roots:
        raise ServerError(f"no tritonserver found in {venv}: build the serving venv with `make serve-venv` "
                          "(or point MOUAADNET_SERVE_VENV at a venv with nvidia-pytriton installed)")
    root = roots[-1]
    version = root.parents[2].name.removeprefix("python")  # lib/python3.11/site-packages
    install = TritonInstall(venv, root, version)
    if not install.binary.is_file():
        raise ServerError(f"{install.binary} is missing (broken nvidia-pytriton install?)")
    if not install.stub.is_file():
        raise ServerError(f"no triton_python_backend_stub for Python {version} in {root / 'python_backend_stubs'}")
    return install


def prepare_backend_dir(install: TritonInstall, where: Path | None = None) -> Path:
    """A backend directory with python/{libtriton_python.so, triton_python_backend_utils.py, stub}. Idempotent."""
    where = Path(where or install.venv / "triton-backends")
    python_dir = where / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    wanted = {name: install.root / "backends" / "python" / name for name in BACKEND_FILES}
    wanted["triton_python_backend_stub"] = install.stub
    for name, source in wanted.items():
        link = python_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == source:
            continue
        tmp = python_dir / f".{name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        os.replace(tmp, link)
    return where


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    control_mode: str = "none"  # none | explicit | poll
    load_models: list[str] = field(default_factory=list)  # explicit mode: models to load at start ([] = all)
    poll_secs: int = 5
    log_verbose: int = 0
    shm_bytes: int = 16 * 1024 * 1024  # python backend shared memory per instance (grows on demand)
    extra_args: list[str] = field(default_factory=list)
    # The request guard (mouaadnet.serving.guard) on the public ports, Triton on internal loopback ports behind it
    # with every API restricted to the guard's key or the admin key. False: Triton on the public ports, open.
    guard: bool = True
    max_request_bytes: int = DEFAULT_MAX_BYTES  # largest gRPC message / HTTP body the guard lets through
    admin_key: str | None = None  # None: $MOUAADNET_ADMIN_KEY, else a fresh one written to <repo>/.admin-key


def build_command(install: TritonInstall, backend_dir: Path, cfg: ServerConfig) -> list[str]:
    if cfg.control_mode not in ("none", "explicit", "poll"):
        raise ServerError(f"--model-control-mode must be none, explicit or poll, got {cfg.control_mode!r}")
    cmd = [
        str(install.binary),
        f"--model-repository={Path(cfg.repo).resolve()}",
        f"--backend-directory={backend_dir}",
        "--http-address=127.0.0.1", f"--http-port={cfg.http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={cfg.grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={cfg.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-on-error=false",  # stay up so the repository index can say which model failed and why
        "--strict-readiness=true",
        "--exit-timeout-secs=15",
        # Every config here is complete (`mouaadnet repo check`). With auto-complete on, the Python backend starts
        # a throw-away stub per model load just to ask model.py for config additions: ~1.3 s of every (re)load on
        # 2 loaded cores, which is most of serve's recovery time after a stub dies.
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-default-byte-size={cfg.shm_bytes}",
        f"--log-verbose={cfg.log_verbose}",
        f"--model-control-mode={cfg.control_mode}",
    ]
    if cfg.control_mode == "explicit":
        cmd += [f"--load-model={name}" for name in cfg.load_models] or ["--load-model=*"]
    if cfg.control_mode == "poll":
        cmd.append(f"--repository-poll-secs={cfg.poll_secs}")
    return cmd + list(cfg.extra_args)


def server_env(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{install.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(install.venv)
    env.pop("PYTHONHOME", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


ADMIN_KEY_FILE = ".admin-key"  # in the model repository: whoever may change the models may also load them


def read_admin_key(repo: Path | None = None) -> str | None:
    """The admin key `serve` uses: $MOUAADNET_ADMIN_KEY, else the one it wrote into ``repo``/.admin-key."""
    key = os.environ.get(ENV_ADMIN_KEY)
    if key:
        return key
    path = Path(repo) / ADMIN_KEY_FILE if repo is not None else None
    return path.read_text().strip() if path is not None and path.is_file() else None


def resolve_admin_key(cfg: ServerConfig) -> str:
    """cfg.admin_key, else $MOUAADNET_ADMIN_KEY, else a fresh random key written to <repo>/.admin-key (0600)."""
    key = cfg.admin_key or os.environ.get(ENV_ADMIN_KEY)
    if key:
        return key
    key = secrets.token_hex(16)
    path = Path(cfg.repo) / ADMIN_KEY_FILE
    tmp = path.with_name(f"{ADMIN_KEY_FILE}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.replace(tmp, path)
    return key


def triton_control_mode(mode: str) -> str:
    """The model-control mode tritonserver itself runs with behind the guard for the mode `serve` offers.

    `none` runs Triton in explicit mode with every model loaded at start: clients still cannot load or unload
    (the guard refuses it, naming `none`), but `serve` can reload the one model whose stub died instead of
    restarting the whole server (Triton refuses any load in mode none). Poll stays poll (Triton loads on its own
    there and refuses explicit loads)."""
    return "explicit" if mode == "none" else mode


def internal_config(cfg: ServerConfig, guard_key: str, admin_key: str) -> ServerConfig:
    """What tritonserver itself runs with behind the guard: free internal loopback ports, every API restricted,
    model control explicit where the guard offers none (``triton_control_mode``)."""
    return replace(cfg, http_port=free_port(), grpc_port=free_port(),
                   control_mode=triton_control_mode(cfg.control_mode), extra_args=[*restricted_args(guard_key, admin_key), *cfg.extra_args])


def guard_command(install: TritonInstall, cfg: ServerConfig, internal: ServerConfig) -> list[str]:
    """The guard process (serving venv's Python: grpcio + this project); its key goes in the environment."""
    return [str(install.venv / "bin" / "python"), "-m", "mouaadnet.serving.guard",
            f"--grpc-port={cfg.grpc_port}", f"--http-port={cfg.http_port}",
            f"--grpc-upstream=127.0.0.1:{internal.grpc_port}", f"--http-upstream=127.0.0.1:{internal.http_port}",
            f"--max-bytes={cfg.max_request_bytes}", f"--control-mode={cfg.control_mode}",
            f"--repo={Path(cfg.repo).resolve()}"]
