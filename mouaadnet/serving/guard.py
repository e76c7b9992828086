"""The request guard in front of tritonserver: what Triton 2.51 cannot be configured to refuse, refused before it
reaches Triton.

Why it exists (measured, docs/RELIABILITY.md): the tritonserver of the nvidia-pytriton wheel (2.51) has no
option bounding a request's size (its gRPC server accepts messages up to 2 GiB, its HTTP server any body), and
BYTES inputs have no size in a model config. A 1 GiB payload was copied through the gRPC frontend into the
preprocess stub's shared memory (which the Python backend never shrinks) and refused only there, after 33 s,
leaving the server 4.3 GiB larger for good. So ``TritonServer`` runs Triton on internal loopback ports and this
guard on the public ones:

- gRPC: a generic pass-through (every method, raw bytes, streaming too) whose server refuses a message over
  ``max_bytes`` (RESOURCE_EXHAUSTED, from gRPC's own message-size check) before it is forwarded;
- HTTP: a pass-through that refuses a body over ``max_bytes`` from its Content-Length (413, the body is never
  read), compressed bodies (415: their decoded size is unknown until Triton inflates them) and malformed JSON
  (400: Triton 2.51 answers 500), and turns Triton's 500 for an unparsable request into 400;
- model load/unload when model control is not explicit: a clear refusal (Triton's own message for modes none
  and poll is "explicit model load / unload is not allowed if polling is enabled");
- a Python-backend stub that died (Triton 2.51 keeps the model READY and fails each request routed to the dead
  instance after ~1 s; `serve` reloads the model in ~2 s): an inference request that failed with the dead stub's
  error is sent again (up to ``STUB_RETRIES`` times: Triton hands it to a free instance, the live one), and
  readiness calls answer "not ready" for a model with no live stub left and for the ensembles that need it
  (``stubs.StubWatch``), so health says what the server can actually answer;
- admission by cost class (``admission.CostGate``, the budget read from preprocess's config): a request whose
  images decode to more than an ordinary photo (read from the image headers) waits for one of few big-request
  slots and is refused as busy after a short wait; small requests never wait for big ones, in the guard or in
  Triton's queue (where the refused ones used to sit before preprocess refused them).

Triton itself restricts every API (``--grpc-restricted-protocol`` / ``--http-restricted-api``): the inference,
health, metadata, ... APIs to requests carrying the guard's key (so its internal ports are useless without the
guard), and the admin APIs (model repository: index/load/unload, logging, trace) to the admin key, which the
guard passes through from the client and `serve` / `publish --load` send. Keys come from the environment, never
the guard's command line. It runs in the serving venv (`python -m mouaadnet.serving.guard`): stdlib + grpcio, and
Pillow to read image headers for the cost classes.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socketserver
import sys
import threading
from concurrent import futures

from .admission import BusyError, CostGate
from .guard_rules import (
    check_inputs,
    ensemble_steps,
    gate_settings,
    grpc_bytes_elements,
    grpc_infer_inputs,
    grpc_model_name,
    http_bytes_elements,
    http_infer_inputs,
    input_rules,
    needed_models,
    stub_died,
)
from .stubs import StubWatch

GUARD_HEADER = "mouaadnet-guard-key"
ADMIN_HEADER = "mouaadnet-admin-key"
GRPC_PREFIX = "triton-grpc-protocol-"  # Triton's gRPC frontend looks for the restricted key under this prefix
# Triton's restricted-API categories (`tritonserver --help`): which key each group needs.
GUARDED_APIS = ("health", "metadata", "inference", "shared-memory", "model-config", "statistics")
ADMIN_APIS = ("model-repository", "trace", "logging")
DEFAULT_MAX_BYTES = 65 * 1024 * 1024  # preprocess's 64 MiB per-request budget + 1 MiB of framing and other inputs
ENV_GUARD_KEY = "MOUAADNET_GUARD_KEY"
ENV_ADMIN_KEY = "MOUAADNET_ADMIN_KEY"
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                  "host", "content-length", GUARD_HEADER})
STUB_RETRIES = 3  # each failed try costs ~1 s (Triton waits that long on a dead stub); serve reloads in ~2 s
_READY_METHODS = ("/inference.GRPCInferenceService/ServerReady", "/inference.GRPCInferenceService/ModelReady")
_LOAD_METHODS = ("/inference.GRPCInferenceService/RepositoryModelLoad",
                 "/inference.GRPCInferenceService/RepositoryModelUnload")


def restricted_args(guard_key: str, admin_key: str) -> list[str]:
    """tritonserver flags: every API needs one of the two keys (two groups per protocol)."""
    args = []
    for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
        args.append(f"{flag}={','.join(GUARDED_APIS)}:{GUARD_HEADER}={guard_key}")
        args.append(f"{flag}={','.join(ADMIN_APIS)}:{ADMIN_HEADER}={admin_key}")
    return args


def too_large(size: int, max_bytes: int) -> str:
    return (f"request too large: {size / 2**20:.1f} MiB, this server accepts at most {max_bytes / 2**20:.0f} MiB "
            "per request (one request may decode at most 64 MiB of encoded images): send fewer or smaller images")


def control_refusal(mode: str) -> str:
    how = ("loads and unloads models as the repository folder changes" if mode == "poll"
           else "loads every model at start and never loads or unloads one afterwards")
    return (f"model load/unload needs `mouaadnet serve --model-control-mode explicit`; this server runs with model "
            f"control '{mode}', which {how} (Triton's own answer, 'not allowed if polling is enabled', says the "
            "same for every mode but explicit)")


def _deadline(context) -> float | None:
    """The client's remaining deadline (gRPC reports ~9.2e18 s when the client set none)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e9 else None


class Guard:
    """Both pass-throughs of one server; ``start()`` binds, ``stop()`` closes them."""

    def __init__(self, *, grpc_port: int, http_port: int, grpc_upstream: str, http_upstream: str,
                 guard_key: str, max_bytes: int = DEFAULT_MAX_BYTES, control_mode: str = "none",
                 rules: dict[str, dict[str, str]] | None = None, steps: dict[str, list[str]] | None = None,
                 watch_stubs: bool = True, gate: CostGate | None = None, input_size: int = 320,
                 workers: int = 128, host: str = "127.0.0.1"):
        self.host, self.grpc_port, self.http_port = host, grpc_port, http_port
        self.grpc_upstream, self.http_upstream = grpc_upstream, http_upstream
        self.guard_key, self.max_bytes, self.control_mode, self.workers = guard_key, max_bytes, control_mode, workers
        self.rules = rules or {}  # guard_rules.input_rules: the inputs each model needs
        self.steps = steps or {}  # guard_rules.ensemble_steps: the models each ensemble calls
        self.watch = StubWatch(int(grpc_upstream.rsplit(":", 1)[1])) if watch_stubs else None
        self.gate, self.input_size = gate, input_size  # cost classes (None: every request passes)
        self._grpc = None
        self._http = None

    def infer_problem(self, model: str, inputs: list[tuple[str, list[int]]]) -> str | None:
        return check_inputs(model, inputs, self.rules)

    def admit(self, elements: list[memoryview]) -> int:
        """Pixels the request's images decode to, admitted by the cost gate (0: a small request, nothing to
        release); raises BusyError."""
        if self.gate is None or not elements:
            return 0
        from .prepost import header_cost  # numpy + Pillow: only once an image request comes

        pixels = sum(header_cost(element, self.input_size) for element in elements)
        return pixels if self.gate.enter(pixels) else 0

    def release(self, pixels: int) -> None:
        if pixels and self.gate is not None:
            self.gate.leave(pixels)

    def unready(self, model: str | None) -> str | None:
        """Why the server (``model`` None) or ``model`` cannot answer although Triton says READY, else None."""
        down = self.watch.down_models() if self.watch else set()
        if model is not None:
            down &= needed_models(model, self.steps)
        if not down:
            return None
        return (f"not ready: every Python-backend stub of model(s) {', '.join(sorted(down))} died (Triton still "
                "reports READY); `mouaadnet serve` reloads the model: retry in a few seconds")

    # ------------------------------------------------------------------ gRPC
    def _metadata(self, context) -> list[tuple[str, str]]:
        """The client's metadata (its admin key moved under Triton's gRPC prefix) plus the guard's key."""
        kept = []
        for key, value in context.invocation_metadata():
            if key.startswith((":", "grpc-")) or key in ("user-agent", "te", "content-type") or \
                    key.endswith(GUARD_HEADER):
                continue
            kept.append((GRPC_PREFIX + key if key == ADMIN_HEADER else key, value))
        return kept + [(GRPC_PREFIX + GUARD_HEADER, self.guard_key)]

    def _grpc_handler(self):
        import grpc

        # reconnect fast: Triton behind may restart (serve's recovery) and must be used again as soon as it is up
        channel = grpc.insecure_channel(self.grpc_upstream, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500)])
        guard = self

        def unary(method):
            call = channel.unary_unary(method)

            def handle(request, context):
                if method in _LOAD_METHODS and guard.control_mode != "explicit":
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, control_refusal(guard.control_mode))
                if method.endswith("/ModelInfer"):
                    try:
                        problem = guard.infer_problem(*grpc_infer_inputs(request))
                    except ValueError:  # not a well-formed message: Triton's own parser answers it
                        problem = None
                    if problem:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                if method in _READY_METHODS and guard.unready(
                        grpc_model_name(request) if method.endswith("/ModelReady") else None):
                    return b""  # ServerReadyResponse / ModelReadyResponse with ready = false
                admitted = 0
                if method.endswith("/ModelInfer"):
                    try:
                        admitted = guard.admit(grpc_bytes_elements(request))
                    except BusyError as error:
                        context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
                try:
                    return forward(request, context, STUB_RETRIES if method.endswith("/ModelInfer") else 0)
                finally:
                    guard.release(admitted)

            def forward(request, context, retries: int):
                for attempt in range(retries + 1):
                    try:
                        return call(request, metadata=guard._metadata(context), timeout=_deadline(context))
                    except grpc.RpcError as error:
                        details = error.details() or ""
                        if attempt < retries and stub_died(details) and (_deadline(context) or 2.0) > 1.5:
                            continue  # the request never ran: Triton gives it to a live instance this time
                        if error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
                            details = "tritonserver is not answering behind the request guard (restarting?): retry"
                        context.abort(error.code(), details)
            return grpc.unary_unary_rpc_method_handler(handle)

        def stream(method):
            call = channel.stream_stream(method)

            def handle(requests, context):
                responses = call(requests, metadata=guard._metadata(context), timeout=_deadline(context))
                context.add_callback(responses.cancel)
                try:
                    yield from responses
                except grpc.RpcError as error:
                    context.abort(error.code(), error.details() or "")
            return grpc.stream_stream_rpc_method_handler(handle)

        class Forward(grpc.GenericRpcHandler):
            def service(self, details):
                method = details.method
                return stream(method) if method.endswith("/ModelStreamInfer") else unary(method)

        return Forward()

    def _start_grpc(self) -> None:
        import grpc

        server = grpc.server(futures.ThreadPoolExecutor(self.workers, thread_name_prefix="guard-grpc"), options=[
            ("grpc.max_receive_message_length", self.max_bytes), ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=4 * self.workers)
        server.add_generic_rpc_handlers((self._grpc_handler(),))
        if server.add_insecure_port(f"{self.host}:{self.grpc_port}") == 0:
            raise OSError(f"guard: cannot bind gRPC {self.host}:{self.grpc_port}")
        server.start()
        self._grpc = server

    # ------------------------------------------------------------------ HTTP
    def _start_http(self) -> None:
        guard = self
        upstream_host, upstream_port = self.http_upstream.rsplit(":", 1)
        local = threading.local()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: Triton logs requests itself when asked to
                pass

            def _reply(self, status: int, message: str, close: bool = False) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)
                if close:  # lingering close: unread request bytes at close() would reset the connection and
                    self.wfile.flush()  # could take the answer with them; read (and drop) at most 1 MiB or 0.5 s
                    try:
                        self.connection.settimeout(0.5)
                        for _ in range(16):
                            if not self.rfile.read1(65536):
                                break
                    except OSError:
                        pass

            def _read_body(self) -> bytes | None:
                """The body, or None after refusing it (too large / unreadable)."""
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks, size = [], 0
                    while True:
                        line = self.rfile.readline(65537)
                        try:
                            n = int(line.split(b";")[0].strip() or b"x", 16)
                        except ValueError:
                            self._reply(400, "malformed chunked request body", close=True)
                            return None
                        if n == 0:
                            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        size += n
                        if size > guard.max_bytes:
                            self._reply(413, too_large(size, guard.max_bytes) + " (refused after that many "
                                        "bytes of a chunked body)", close=True)
                            return None
                        chunks.append(self.rfile.read(n))
                        self.rfile.readline(3)
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self._reply(400, "Content-Length is not a number", close=True)
                    return None
                if length < 0 or length > guard.max_bytes:
                    self._reply(413, too_large(length, guard.max_bytes), close=True)
                    return None
                return self.rfile.read(length) if length else b""

            def _check_json(self, body: bytes) -> str | None:
                """The JSON part of a POST body: malformed -> its problem; an inference request -> its inputs."""
                header = self.headers.get("Inference-Header-Content-Length")
                try:
                    head = body[: int(header)] if header else body
                except ValueError:
                    return "Inference-Header-Content-Length is not a number"
                if not head.strip():
                    return None
                try:
                    parsed = json.loads(head)
                except (ValueError, UnicodeDecodeError) as error:
                    return f"malformed JSON in the request body: {error}"
                request = http_infer_inputs(self.path.split("?", 1)[0], parsed)
                return guard.infer_problem(*request) if request else None

            def _forward(self) -> None:
                encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    self._reply(415, f"compressed request bodies ({encoding}) are not accepted: their decoded size "
                                "is unknown until the server has inflated them; send the body uncompressed",
                                close=True)
                    return
                body = self._read_body()
                if body is None:
                    return
                path = self.path.split("?", 1)[0].rstrip("/")
                if self.command == "POST" and path.startswith("/v2/repository/models/") and \
                        path.endswith(("/load", "/unload")) and guard.control_mode != "explicit":
                    self._reply(400, control_refusal(guard.control_mode))
                    return
                problem = self._check_json(body) if self.command == "POST" and body else None
                if problem:
                    self._reply(400, problem)
                    return
                unready = self._unready(path) if self.command in ("GET", "HEAD") else None
                if unready:
                    self._reply(503, unready)
                    return
                infer = self.command == "POST" and path.endswith("/infer")
                try:
                    admitted = guard.admit(self._images(body)) if infer else 0
                except BusyError as error:
                    self._reply(503, str(error))
                    return
                try:
                    for _ in range(STUB_RETRIES + 1 if infer else 1):
                        status, headers, data = self._upstream(body)
                        if status is None or not (status >= 400 and stub_died(data[:2000].decode(errors="replace"))):
                            break  # else the request never ran (dead stub): Triton gives it to a live instance now
                finally:
                    guard.release(admitted)
                if status is None:
                    self._reply(503, data.decode())
                    return
                if status == 500 and (b"parse" in data[:300]):  # Triton 2.51: 500 for requests it cannot parse
                    status = 400
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _images(self, body: bytes) -> list[memoryview]:
                """The BYTES elements of an inference request in the binary-data format (JSON data: none)."""
                header = self.headers.get("Inference-Header-Content-Length")
                try:
                    length = int(header) if header else len(body)
                    return http_bytes_elements(json.loads(body[:length]), body, length) if header else []
                except ValueError:
                    return []

            def _unready(self, path: str) -> str | None:
                """Readiness the stubs contradict: /v2/health/ready, /v2/models/<m>[/versions/<v>]/ready."""
                parts = path.strip("/").split("/")
                if parts == ["v2", "health", "ready"]:
                    return guard.unready(None)
                if len(parts) >= 4 and parts[:2] == ["v2", "models"] and parts[-1] == "ready":
                    return guard.unready(parts[2])
                return None

            def _upstream(self, body: bytes) -> tuple[int | None, list[tuple[str, str]], bytes]:
                """(status, headers, body) of the request sent to Triton; status None: Triton is not answering."""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers[GUARD_HEADER] = guard.guard_key
                headers["Content-Length"] = str(len(body))
                for attempt in (0, 1):  # a kept-alive upstream connection Triton closed: retry once, fresh
                    conn = getattr(local, "conn", None)
                    if conn is None:
                        conn = local.conn = http.client.HTTPConnection(upstream_host, int(upstream_port), timeout=600)
                    try:
                        conn.request(self.command, self.path, body if body or self.command == "POST" else None,
                                     headers)
                        response = conn.getresponse()
                        return response.status, response.getheaders(), response.read()
                    except (OSError, http.client.HTTPException) as error:
                        conn.close()
                        local.conn = None
                        if attempt:
                            return None, [], (f"tritonserver is not answering behind the request guard "
                                              f"(restarting?): retry ({error})").encode()
                return None, [], b"unreachable"

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._http = Server((self.host, self.http_port), Handler)
        threading.Thread(target=self._http.serve_forever, name="guard-http", daemon=True).start()

    def start(self) -> Guard:
        if self.watch is not None:
            self.watch.watch()
        self._start_grpc()
        try:
            self._start_http()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait(5)
            self._grpc = None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mouaadnet.serving.guard", description=__doc__.split("\n")[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-upstream", required=True, help="host:port of tritonserver's gRPC")
    parser.add_argument("--http-upstream", required=True, help="host:port of tritonserver's HTTP")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--control-mode", default="none")
    parser.add_argument("--repo", help="model repository: the inputs each model needs come from its configs")
    args = parser.parse_args(argv)
    key = os.environ.get(ENV_GUARD_KEY)
    if not key:
        print(f"guard: {ENV_GUARD_KEY} is not set", file=sys.stderr)
        return 2
    budget = gate_settings(args.repo) if args.repo else {}
    gate = CostGate(budget["limit"], budget["always_admit"]) if budget else None
    guard = Guard(grpc_port=args.grpc_port, http_port=args.http_port, grpc_upstream=args.grpc_upstream,
                  http_upstream=args.http_upstream, guard_key=key, max_bytes=args.max_bytes,
                  control_mode=args.control_mode, rules=input_rules(args.repo) if args.repo else None,
                  steps=ensemble_steps(args.repo) if args.repo else None, gate=gate,
                  input_size=budget.get("size", 320)).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"guard: gRPC 127.0.0.1:{args.grpc_port} -> {args.grpc_upstream}, HTTP 127.0.0.1:{args.http_port} -> "
          f"{args.http_upstream}, at most {args.max_bytes} bytes per request", flush=True)
    done.wait()
    guard.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
