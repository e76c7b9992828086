"""`mouaadnet web`: a static server for the browser page in web/ (onnxruntime-web runs the model on the client).

Serves on 127.0.0.1 only:
  /                 web/index.html, web/style.css, web/js/*.js
  /ort/<file>       web/node_modules/onnxruntime-web/dist/<file> (the pinned onnxruntime-web: .mjs + .wasm)
  /models/<name>    the ONNX file(s) given with --model
  /samples/<name>   example photos from pip packages (scikit-image's astronaut, matplotlib's grace_hopper)
  /api/config       JSON: the models (name, file, url, sha256, bytes, precision, version) and samples
Every response carries COOP `same-origin` + COEP `require-corp` (+ CORP `same-origin`), which make the page
cross-origin isolated: SharedArrayBuffer, so onnxruntime-web may run WASM threads. Nothing but these files is
reachable (no directory listing, no path outside the served roots).
"""

from __future__ import annotations

import json
import mimetypes
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mouaadnet.data.samples import sample_images

from .models import ModelInfo, describe_model

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = REPO_ROOT / "web"
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
HOST = "127.0.0.1"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                 ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".map": "application/json"}
PAGE_SUFFIXES = {".html", ".js", ".css", ".png", ".svg", ".ico"}
ORT_SUFFIXES = {".mjs", ".wasm", ".js", ".map"}


class WebSetupError(RuntimeError):
    """The page cannot be served (web/ or its onnxruntime-web missing, a bad model). The message says what to do."""


@dataclass
class WebSite:
    """What the server serves: the page folder, onnxruntime-web's dist folder, models and sample photos."""

    web_dir: Path
    ort_dir: Path
    models: list[ModelInfo]
    samples: dict[str, Path]

    @classmethod
    def build(cls, models: list[str | Path], web_dir: str | Path = WEB_DIR) -> WebSite:
        web_dir = Path(web_dir)
        if not (web_dir / "index.html").is_file():
            raise WebSetupError(f"{web_dir}/index.html not found: run from a checkout of the repository")
        ort_dir = web_dir / ORT_DIST
        if not (ort_dir / "ort.wasm.min.mjs").is_file():
            raise WebSetupError(f"{ort_dir} is missing: run `npm ci` in {web_dir} (installs the pinned "
                                f"onnxruntime-web)")
        if not models:
            raise WebSetupError("no model given")
        infos = [describe_model(m, mode="scene") for m in models]
        seen: dict[str, int] = {}
        for info in infos:  # two files of one name get distinct URLs
            n = seen.get(info.name, 0)
            seen[info.name] = n + 1
            if n:
                info.name = f"{info.name}-{n + 1}"
        return cls(web_dir.resolve(), ort_dir.resolve(), infos, sample_images())

    def config(self) -> dict:
        return {
            "models": [{**m.as_dict(), "url": f"models/{m.name}.onnx"} for m in self.models],
            "samples": [{"name": name, "url": f"samples/{name}"} for name in self.samples],
        }

    def resolve(self, url_path: str) -> Path | None:
        """URL path -> the file to send, or None (404). Only files under the served roots, by suffix."""
        path = unquote(urlsplit(url_path).path)
        if path in ("", "/"):
            path = "/index.html"
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") or p.startswith(".") for p in parts):
            return None
        if parts[0] == "ort" and len(parts) == 2:
            return _inside(self.ort_dir, parts[1], ORT_SUFFIXES)
        if parts[0] == "models" and len(parts) == 2:
            return next((m.path for m in self.models if f"{m.name}.onnx" == parts[1]), None)
        if parts[0] == "samples" and len(parts) == 2:
            return self.samples.get(parts[1])
        if parts[0] == "node_modules":
            return None
        return _inside(self.web_dir, "/".join(parts), PAGE_SUFFIXES)


def _inside(root: Path, relative: str, suffixes: set[str]) -> Path | None:
    candidate = (root / relative).resolve()
    if candidate.suffix not in suffixes or not candidate.is_file() or not candidate.is_relative_to(root):
        return None
    return candidate


def _handler(site: WebSite, quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        server_version = "mouaadnet-web"

        def log_message(self, fmt, *args):  # noqa: N802 - stdlib name
            if not quiet:
                super().log_message(fmt, *args)

        def _send(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
            self.send_response(status)
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _get(self, head: bool) -> None:
            if urlsplit(self.path).path == "/api/config":
                self._send(200, json.dumps(site.config()).encode(), "application/json", head)
                return
            target = site.resolve(self.path)
            if target is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
                return
            kind = CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            self._send(200, target.read_bytes(), kind, head)

        def do_GET(self):  # noqa: N802
            self._get(head=False)

        def do_HEAD(self):  # noqa: N802
            self._get(head=True)

        def do_POST(self):  # noqa: N802
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain; charset=utf-8")

    return Handler


class WebServer:
    """The page server on 127.0.0.1:port (0 = a free port) in a background thread; `url` once started."""

    def __init__(self, site: WebSite, port: int = 8080, quiet: bool = True):
        self.site = site
        self.httpd = ThreadingHTTPServer((HOST, port), _handler(site, quiet))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mouaadnet-web", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
