"""A minimal raw HTTP/2 gRPC client for one measurement: announce a huge message, send only its first bytes, and
time how long the server takes to end the call. A real gRPC client copies the whole message before sending it
(a 1 GiB memcpy alone takes ~1.7 s on the 2 shared cores here), so its timing says more about the client than
about whether the server refuses the message from its length prefix or only after reading it."""

from __future__ import annotations

import socket
import struct
import time

_DATA, _HEADERS, _RST, _SETTINGS, _GOAWAY = 0, 1, 3, 4, 7
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (names and values < 127 bytes)."""
    name_b, value_b = name.encode(), value.encode()
    return b"\x00" + bytes([len(name_b)]) + name_b + bytes([len(value_b)]) + value_b


def _read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    head = b""
    while len(head) < 9:
        chunk = sock.recv(9 - len(head))
        if not chunk:
            raise ConnectionError("server closed the connection")
        head += chunk
    length = int.from_bytes(head[:3], "big")
    payload = b""
    while len(payload) < length:
        chunk = sock.recv(length - len(payload))
        if not chunk:
            raise ConnectionError("server closed the connection")
        payload += chunk
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


def announce_and_time(port: int, announced: int, sent: int = 16_000, timeout: float = 10.0,
                      method: str = "/inference.GRPCInferenceService/ModelInfer") -> dict:
    """Open a gRPC call, send a message prefix announcing ``announced`` bytes followed by ``sent`` bytes of it,
    and wait for the server to end the call (trailers or RST_STREAM). Returns seconds, how it ended, bytes sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        headers = b"".join(_literal(k, v) for k, v in (
            (":method", "POST"), (":scheme", "http"), (":path", method), (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")))
        prefix = b"\x00" + struct.pack(">I", announced)
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(_SETTINGS, 0, 0)
                     + _frame(_HEADERS, _END_HEADERS, 1, headers))
        started = time.monotonic()
        sock.sendall(_frame(_DATA, 0, 1, prefix + b"\0" * sent))
        while True:
            try:
                kind, flags, stream, payload = _read_frame(sock)
            except (TimeoutError, ConnectionError) as error:
                return {"seconds": time.monotonic() - started, "ended_by": f"nothing ({error or 'timed out'})",
                        "bytes_sent": len(prefix) + sent}
            if kind == _SETTINGS and not flags & _ACK:
                sock.sendall(_frame(_SETTINGS, _ACK, 0))
            elif stream == 1 and (kind == _RST or (kind == _HEADERS and flags & _END_STREAM)):
                how = "RST_STREAM" if kind == _RST else "trailers"
                return {"seconds": time.monotonic() - started, "ended_by": how, "bytes_sent": len(prefix) + sent}
            elif kind == _GOAWAY:
                return {"seconds": time.monotonic() - started, "ended_by": "GOAWAY", "bytes_sent": len(prefix) + sent}
