"""Raw HTTP/1.1 over sockets bound to a chosen loopback source address (127.0.0.x, ::1).

Connection caps, IP filters and the PROXY protocol are about *who* connects, so these
tests open sockets from several loopback addresses (all of 127.0.0.0/8 is local on
Linux) and read exactly one response, leaving the connection open unless it closed.
"""

from __future__ import annotations

import socket

TIMEOUT_S = 10.0


def connect(port: int, src: str = "127.0.0.1", host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_S)
    s.bind((src, 0))
    s.connect((host, port))
    return s


def send_until_close(port: int, data: bytes, timeout_s: float = TIMEOUT_S) -> bytes:
    """Send ``data`` (a request with ``Connection: close``) and return every byte the server
    sends until it closes: the exact answer, framing included."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def messages(data: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """The responses in ``data`` (what ``send_until_close`` returned): each 1xx interim head as
    ``(status, fields, b"")``, then the final one with every byte after its head. http.client
    (and so requests) takes any 1xx but 100 for the final response: these tests read raw."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"unterminated head {head[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        status = int(lines[0].split(" ")[1])
        fields = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        if 100 <= status < 200:
            out.append((status, fields, b""))
        else:
            out.append((status, fields, data))
            break
    return out


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, closed: bool) -> None:
        self.status, self.headers, self.body, self.closed = status, headers, body, closed

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:60]!r})"


def read_reply(s: socket.socket) -> Reply | None:
    """One response with a Content-Length body; None when the server closed without answering."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        data = s.recv(65536)
        if not data:
            break
        rest += data
    return Reply(status, headers, rest[:n], headers.get("connection", "").lower() == "close")


def request(port: int, src: str = "127.0.0.1", path: str = "/", headers: dict[str, str] | None = None,
            prefix: bytes = b"", method: str = "GET", host: str = "127.0.0.1") -> Reply | None:
    """One request on a new connection from ``src`` (``prefix``: bytes sent before it, e.g. a PROXY header)."""
    with connect(port, src, host) as s:
        s.sendall(prefix + head(method, path, headers, close=True))
        return read_reply(s)


def head(method: str = "GET", path: str = "/", headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closed_without_answer(s: socket.socket) -> bool:
    """True when the server closes (or resets) the connection without sending a byte."""
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
