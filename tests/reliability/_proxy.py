"""A fault-injecting TCP proxy on 127.0.0.1 for HTTP services (S3): pass through, or answer every new
connection with an HTTP error (optionally only the first N connections, then pass through)."""

from __future__ import annotations

import socket
import threading


class FaultProxy:
    def __init__(self, upstream: tuple[str, int] | None = None, status: int | None = 500, fail_first: int | None = None):
        self.upstream, self.status, self.fail_first = upstream, status, fail_first
        self.connections = 0
        self.failed = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            failing = self.status is not None and (self.fail_first is None or self.connections <= self.fail_first)
            target = self._fail if failing or self.upstream is None else self._pipe
            threading.Thread(target=target, args=(conn,), daemon=True).start()

    def _fail(self, conn: socket.socket) -> None:
        self.failed += 1
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            body = b"<Error><Code>InternalError</Code><Message>injected fault</Message></Error>"
            length = len(body)
            if data.startswith(b"HEAD "):
                body = b""  # a response to HEAD carries no body (Content-Length still says what GET would get)
            reason = {500: "Internal Server Error", 503: "Slow Down"}.get(self.status, "Error")
            conn.sendall(f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: application/xml\r\n"
                         f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass
        finally:
            conn.close()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            conn.close()
            return

        def copy(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=copy, args=(up, conn), daemon=True)
        t.start()
        copy(conn, up)
        t.join(30)
        up.close()
        conn.close()
