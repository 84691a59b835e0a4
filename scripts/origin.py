#!/usr/bin/env python3
"""Demo and test origin for edge: a small, fast HTTP/1.1 server with fault endpoints.

Usage::

    python scripts/origin.py --port N [--host 127.0.0.1] [--name NAME] [--idle-timeout 75] [--delay SECONDS]

``--delay SECONDS`` makes every request wait that long before it is answered (``/stats``
too): a uniformly slow backend, for balancing tests (issue 9).

When it is ready it prints exactly one line, ``origin NAME listening on HOST:PORT``, to
stdout and flushes (``--port 0`` picks a free port; read it from that line).

Theory of operation
-------------------
One gevent ``StreamServer``; one greenlet per connection. The HTTP/1.1 parser is written
here by hand (no pywsgi) so the origin sees and sends exactly the bytes on the wire: the
request target as received, header names in their original case and order, duplicates
kept, and response framing (Content-Length, chunked, trailers, truncation, RST, garbage)
chosen per endpoint. Request bodies (Content-Length or chunked) are always consumed as a
stream, so a connection stays in sync even when an endpoint ignores the body, and nothing
is ever held whole in memory: a 1 GiB upload or download costs one 64 KiB buffer.
Keep-alive is the default for HTTP/1.1 (``Connection: close`` is honoured, HTTP/1.0 needs
``Connection: keep-alive``); pipelined requests are parsed in order but not concurrently.
A malformed request gets ``400`` and the connection is closed.

Endpoints (any method unless noted; HEAD always gets the headers only)
-----------------------------------------------------------------------
``/`` and anything unknown
    200 ``hello from origin NAME\\n`` (text/plain).
``/echo``
    200 JSON: ``method``, ``path`` (raw request target as received, query included),
    ``query`` (raw query string, "" if none), ``version``, ``headers`` (list of
    ``[name, value]`` in order and original case), ``body_length``, ``body_sha256``,
    ``chunked`` (request body was chunked), ``trailers`` (list of pairs), ``origin``,
    ``connection`` (connection id, unique per process), ``request`` (number of this
    request on its connection, from 1), ``client`` (``[ip, port]`` of the peer).
``/bytes/N``
    N bytes of the repeating pattern ``bytes(range(256))`` with Content-Length, written in
    64 KiB pieces. ``?chunked=1``: Transfer-Encoding: chunked instead. ``?rate=B``: throttle
    to B bytes/s (slow downloads).
``/chunked?n=K&size=S``
    K chunks of S bytes of the pattern, chunked encoding (defaults n=3, size=1024).
    ``&trailer=1`` announces ``Trailer: X-Body-Sha256`` and sends that trailer field
    (hex sha256 of the body).
``/delay/SECONDS``
    Waits, then 200. ``?header=1`` (default): waits before the headers; ``?body=1``:
    sends the headers at once (with Content-Length) and waits before the body.
``/status/CODE``
    Answers with that status (200-599); 204 and 304 carry no body.
``/close-mid-body``
    Headers with ``Content-Length: 100000``, then 50,000 body bytes, then close.
``/reset``
    Closes the connection with an RST (SO_LINGER 0) without answering.
``/garbage``
    Writes bytes that are not HTTP, then closes.
``/headers?name=value&...``
    Adds each query pair as a response header, in order (repeat a name for duplicates,
    e.g. ``Set-Cookie`` twice).
``/ws``
    WebSocket echo (RFC 6455): handshake with ``Sec-WebSocket-Accept``; text, binary and
    continuation frames are echoed with their opcode and FIN bit, ping is answered with
    pong, a close frame is echoed and the connection closed. Client frames must be masked
    (else close 1002).
``/stats``
    JSON ``{"connections": accepted connections, "requests": requests}`` since start or the
    last ``/stats/reset`` (the ``/stats`` request itself and its connection are counted).
``/stats/reset``
    Zeroes both counters (200 JSON of the values before the reset).
``/static/1k``, ``/static/1m``
    Precomputed 1 KiB / 1 MiB bodies for benchmarks.
``/text/N``
    N bytes of deterministic English-like text (numbered lines of words; compresses
    about as well as HTML), ``Content-Type: text/plain; charset=utf-8``, with
    ``X-Body-Sha256`` (hex sha256 of the N bytes). ``?chunked=1``: chunked, no length.
    ``?type=T``: that Content-Type. ``?etag=V``: ``ETag: "V"``, and an ``If-None-Match``
    that matches it (weak comparison, RFC 9110 §13.1.2) gets 304. ``?h=Name:Value``
    (repeatable): extra response fields. A ``Range: bytes=A-B`` request gets 206 with
    ``Content-Range`` (one range; otherwise the whole body).
``/cache/NAME?...`` (for the cache tests)
    Counts each request per path (``/cache/NAME``, query ignored) and answers 200 with the body
    ``NAME n=<count> vary=<values of the Vary fields in the request>\n`` (or ``size=N`` bytes of
    the pattern). Query parameters: ``cc`` (Cache-Control), ``cdn`` (CDN-Cache-Control),
    ``etag`` (ETag; a matching If-None-Match gets 304), ``lm`` (Last-Modified; an
    If-Modified-Since equal to it gets 304), ``expires``, ``vary``, ``tag`` (Surrogate-Key),
    ``ctag`` (Cache-Tag), ``cookie`` (Set-Cookie), ``status``, ``size``, ``delay`` (seconds before
    the head), ``location``, ``nolength=1`` (chunked), ``cc304`` (the Cache-Control of its 304
    answers instead of ``cc``: a test can make a refreshed object fresh for longer than it
    waited for the first one to go stale). While ``/cache-fail?status=S`` is set,
    every ``/cache/`` request is counted and answered S (``status=0`` clears it).
``/cache-count?path=/cache/NAME``
    JSON ``{"count": requests, "conditional": of which conditional, "methods": [...], "arrivals": [...]}``
    (arrivals: ``time.monotonic()`` of each request's head, in order).

Every response (except the raw fault endpoints above) carries ``Server: origin``,
``X-Powered-By: demo``, ``X-Origin: NAME`` and ``X-Conn-Requests: <n>`` (the request's
number on its connection). A request with ``Expect: 100-continue`` and a body gets an
interim ``100 Continue`` before the body is read.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http
import itertools
import json
import socket as _stdlib_socket
import ssl as _stdlib_ssl
import struct
import sys
import time
from urllib.parse import parse_qsl

import gevent
from gevent import socket
from gevent.server import StreamServer

MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 256 * 1024
PIECE_BYTES = 64 * 1024
WS_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# 64 KiB of the pattern plus one period, so any offset can be sliced without wrapping.
_PERIOD = bytes(range(256))
PATTERN = _PERIOD * (PIECE_BYTES // 256 + 1)
STATIC = {"/static/1k": PATTERN[:1024], "/static/1m": _PERIOD * (1024 * 1024 // 256)}

_NO_BODY_STATUSES = frozenset({204, 304})


def _make_text(size: int) -> bytes:
    """Numbered lines of words from a small vocabulary, picked by an LCG: deterministic text
    that compresses like real prose or markup (not a repeating pattern a codec folds to nothing)."""
    words = ("the of and to in is that for it as with was on be by this are from at or an which have not "
             "edge proxy cache origin request response header body stream worker client server route plugin "
             "store upstream connection timeout retry purge vary encoding gzip brotli zstd html json script "
             "style table row column value name path query host port status length content type").split()
    lines, total, x, i = [], 0, 12345, 0
    while total < size:
        picked = []
        for _ in range(8 + i % 9):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            picked.append(words[(x >> 16) % len(words)])
        line = f"{i:06d} {' '.join(picked)}.\n".encode()
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)[:size]


TEXT = _make_text(256 * 1024)  # /text/N cycles through it


def text_bytes(offset: int, size: int) -> bytes:
    """``size`` bytes of the /text body from absolute ``offset`` (the body repeats every len(TEXT) bytes)."""
    out, n = [], len(TEXT)
    while size > 0:
        start = offset % n
        piece = TEXT[start:start + size]
        out.append(piece)
        offset += len(piece)
        size -= len(piece)
    return b"".join(out)


def pattern_bytes(offset: int, size: int) -> bytes:
    """``size`` (<= 64 KiB) bytes of the repeating pattern starting at absolute ``offset``."""
    start = offset % 256
    return PATTERN[start : start + size]


class BadRequest(Exception):
    """The peer sent something that is not a valid HTTP/1.1 request."""


class PeerClosed(Exception):
    """The peer closed the connection (EOF) while we needed more bytes."""


class Request:
    __slots__ = ("method", "target", "path", "query", "version", "headers", "_lower")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]):
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = headers
        self._lower: dict[str, list[str]] = {}
        for name, value in headers:
            self._lower.setdefault(name.lower(), []).append(value)

    def get_all(self, name: str) -> list[str]:
        return self._lower.get(name, [])

    def get(self, name: str) -> str | None:
        values = self._lower.get(name)
        return values[-1] if values else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()}

    def args(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


class Origin:
    """Process-wide state: name and counters."""

    def __init__(self, name: str, idle_timeout_s: float, delay_s: float = 0.0):
        self.name = name
        self.idle_timeout_s = idle_timeout_s
        self.delay_s = delay_s
        self.connections = 0
        self.requests = 0
        self._ids = itertools.count(1)
        self.tls = None  # a server SSLContext with --certfile
        self.cache_counts: dict[str, list] = {}  # /cache/ path -> [count, conditional count, methods, arrivals]
        self.cache_fail = 0  # status every /cache/ request gets while non-zero

    def handle(self, sock, address) -> None:
        self.connections += 1
        try:
            if self.tls is not None:
                sock.settimeout(self.idle_timeout_s)
                sock = self.tls.wrap_socket(sock, server_side=True)
            conn = Connection(self, sock, address, next(self._ids))
            conn.serve()
        except (PeerClosed, ConnectionError, socket.timeout, TimeoutError):
            pass  # the peer went away or idled out: the normal end of a connection
        except _stdlib_ssl.SSLError as e:
            # A refused handshake (no or untrusted client certificate, a client that rejected ours): one line.
            print(f"origin {self.name}: TLS with {address[0]}:{address[1]} failed: {e.reason or e}", flush=True)
        finally:
            sock.close()


class Connection:
    def __init__(self, origin: Origin, sock, address, conn_id: int):
        self.origin = origin
        self.sock = sock
        self.address = address
        self.id = conn_id
        self.buf = bytearray()
        self.count = 0  # requests on this connection
        sock.settimeout(origin.idle_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- reading ------------------------------------------------------------------------
    def _fill(self) -> None:
        data = self.sock.recv(RECV_BYTES)
        if not data:
            raise PeerClosed()
        self.buf += data

    def _read_head(self) -> bytes | None:
        """The request head without its final CRLFCRLF; None on a clean EOF between requests."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", start)
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD_BYTES:
                raise BadRequest("request head too large")
            start = max(0, len(self.buf) - 3)
            try:
                self._fill()
            except PeerClosed:
                if self.buf.strip(b"\r\n"):
                    raise
                return None

    def _readline(self) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\r\n", start)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > MAX_HEAD_BYTES:
                raise BadRequest("line too long")
            start = max(0, len(self.buf) - 1)
            self._fill()

    def _take(self, limit: int) -> bytes:
        """Between 1 and ``limit`` bytes: from the buffer first, else straight from the socket."""
        if self.buf:
            data = bytes(self.buf[:limit])
            del self.buf[:limit]
            return data
        data = self.sock.recv(min(limit, RECV_BYTES))
        if not data:
            raise PeerClosed()
        return data

    def _parse_head(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        while lines and not lines[0]:  # RFC 9112 §2.2: ignore at least one empty line before a request
            lines.pop(0)
        if not lines:
            raise BadRequest("empty request")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadRequest("bad request line")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise BadRequest("bad header line")  # also refuses obs-fold and "Name : value"
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return Request(parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2].decode(), headers)

    def _body(self, req: Request):
        """Yield the request body in pieces; record trailers into ``self.trailers``."""
        self.trailers = []
        te = req.get_all("transfer-encoding")
        cls = req.get_all("content-length")
        if te:
            if cls:
                raise BadRequest("both Content-Length and Transfer-Encoding")
            if [t.strip().lower() for v in te for t in v.split(",")] != ["chunked"]:
                raise BadRequest("unsupported Transfer-Encoding")
            yield from self._chunked_body()
            return
        if not cls:
            return
        if len(set(cls)) != 1 or not cls[0].isdigit():
            raise BadRequest("bad Content-Length")
        remaining = int(cls[0])
        while remaining:
            data = self._take(min(remaining, PIECE_BYTES))
            remaining -= len(data)
            yield data

    def _chunked_body(self):
        while True:
            line = self._readline()
            size_text = line.split(b";", 1)[0].strip(b" \t")
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("bad chunk size") from None
            if size < 0 or not size_text or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                raise BadRequest("bad chunk size")
            if size == 0:
                break
            while size:
                data = self._take(min(size, PIECE_BYTES))
                size -= len(data)
                yield data
            if self._readline() != b"":
                raise BadRequest("missing CRLF after chunk")
        while True:  # trailer section
            line = self._readline()
            if not line:
                return
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise BadRequest("bad trailer line")
            self.trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))

    # -- writing ------------------------------------------------------------------------
    def _head(self, status: int, headers: list[tuple[str, str]] = ()) -> bytes:
        reason = _REASONS.get(status, "Unknown")
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{n}: {v}" for n, v in headers),
                 "Server: origin", "X-Powered-By: demo",
                 f"X-Origin: {self.origin.name}", f"X-Conn-Requests: {self.count}"]
        if not self.keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = (),
                content_type: str = "text/plain") -> None:
        hdrs = list(headers)
        if status not in _NO_BODY_STATUSES:
            hdrs = [("Content-Type", content_type), ("Content-Length", str(len(body))), *hdrs]
        else:
            body = b""
        head = self._head(status, hdrs)
        self.sock.sendall(head if self.is_head else head + body)

    def respond_json(self, obj) -> None:
        self.respond(200, json.dumps(obj).encode() + b"\n", content_type="application/json")

    # -- request loop -------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            head = self._read_head()
            if head is None:
                return
            self.count += 1
            self.origin.requests += 1
            self.keep_alive = False
            self.is_head = False
            try:
                req = self._parse_head(head)
            except BadRequest as exc:
                self.respond(400, f"bad request: {exc}\n".encode())
                return
            self.is_head = req.method == "HEAD"
            conn_tokens = req.tokens("connection")
            if req.version == "HTTP/1.1":
                self.keep_alive = "close" not in conn_tokens
            else:
                self.keep_alive = "keep-alive" in conn_tokens
            has_body = bool(req.get_all("transfer-encoding")) or req.get("content-length") not in (None, "0")
            if has_body and "100-continue" in req.tokens("expect"):
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if self.origin.delay_s:
                gevent.sleep(self.origin.delay_s)
            try:
                done = self.dispatch(req)
            except BadRequest as exc:
                self.keep_alive = False
                self.respond(400, f"bad request: {exc}\n".encode())
                return
            if done or not self.keep_alive:
                return

    def drain(self, req: Request) -> None:
        for _ in self._body(req):
            pass

    def dispatch(self, req: Request) -> bool:
        """Answer one request; True means the connection is finished (closed or handed over)."""
        path = req.path
        static = STATIC.get(path)
        if static is not None:
            self.drain(req)
            self.respond(200, static, content_type="application/octet-stream")
            return False
        if path == "/echo":
            return self.echo(req)
        if path.startswith("/bytes/"):
            return self.bytes_(req)
        if path == "/chunked":
            return self.chunked(req)
        if path.startswith("/text/"):
            return self.text(req)
        if path.startswith("/delay/"):
            return self.delay(req)
        if path.startswith("/status/"):
            return self.status(req)
        if path == "/close-mid-body":
            self.drain(req)
            self.keep_alive = True  # do not announce the close
            self.sock.sendall(self._head(200, [("Content-Type", "application/octet-stream"),
                                               ("Content-Length", "100000")]))
            if not self.is_head:
                self.sock.sendall(pattern_bytes(0, 50000))
            return True
        if path == "/reset":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        if path == "/garbage":
            self.sock.sendall(b"\x00\xffTHIS IS NOT HTTP\r\n\x16\x03\x01 garbage \r\n\r\n")
            return True
        if path == "/headers":
            self.drain(req)
            pairs = parse_qsl(req.query, keep_blank_values=True)
            self.respond(200, b"headers\n", headers=pairs)
            return False
        if path == "/ws":
            return self.websocket(req)
        if path.startswith("/cache/"):
            return self.cache(req)
        if path == "/cache-count":
            self.drain(req)
            c = self.origin.cache_counts.get(req.args().get("path", ""), [0, 0, [], []])
            self.respond_json({"count": c[0], "conditional": c[1], "methods": c[2], "arrivals": c[3]})
            return False
        if path == "/cache-fail":
            self.drain(req)
            self.origin.cache_fail = int(req.args().get("status", "0") or 0)
            self.respond_json({"fail": self.origin.cache_fail})
            return False
        if path == "/stats":
            self.drain(req)
            self.respond_json({"connections": self.origin.connections, "requests": self.origin.requests})
            return False
        if path == "/stats/reset":
            self.drain(req)
            before = {"connections": self.origin.connections, "requests": self.origin.requests}
            self.origin.connections = self.origin.requests = 0
            self.respond_json(before)
            return False
        self.drain(req)
        self.respond(200, f"hello from origin {self.origin.name}\n".encode())
        return False

    # -- endpoints ----------------------------------------------------------------------
    def echo(self, req: Request) -> bool:
        digest = hashlib.sha256()
        length = 0
        for piece in self._body(req):
            digest.update(piece)
            length += len(piece)
        self.respond_json({
            "method": req.method,
            "path": req.target,
            "query": req.query,
            "version": req.version,
            "headers": [[n, v] for n, v in req.headers],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
            "chunked": bool(req.get_all("transfer-encoding")),
            "trailers": [[n, v] for n, v in self.trailers],
            "origin": self.origin.name,
            "connection": self.id,
            "request": self.count,
            "client": list(self.address[:2]),
            **self._tls_facts(),
        })
        return False

    def _tls_facts(self) -> dict:
        """Over TLS: the version, the ALPN protocol and the client certificate's subject (mutual TLS)."""
        version = getattr(self.sock, "version", None)
        if version is None:
            return {}
        peer = self.sock.getpeercert() or {}
        subject = dict(pair for rdn in peer.get("subject", ()) for pair in rdn)
        return {"tls": {"version": version(), "alpn": self.sock.selected_alpn_protocol(),
                        "client_cn": subject.get("commonName")}}

    def _send_pattern(self, size: int, chunked: bool, rate: float) -> None:
        piece = PIECE_BYTES if not rate else int(min(PIECE_BYTES, max(1024, rate / 20)))
        sent = 0
        start = time.monotonic()
        sendall = self.sock.sendall
        while sent < size:
            n = min(piece, size - sent)
            data = pattern_bytes(sent, n)
            sendall(b"%x\r\n%b\r\n" % (n, data) if chunked else data)
            sent += n
            if rate:
                ahead_s = start + sent / rate - time.monotonic()
                if ahead_s > 0:
                    gevent.sleep(ahead_s)
        if chunked:
            sendall(b"0\r\n\r\n")

    def bytes_(self, req: Request) -> bool:
        self.drain(req)
        try:
            size = int(req.path[len("/bytes/"):])
            args = req.args()
            chunked = args.get("chunked", "0") not in ("", "0")
            rate = float(args.get("rate", 0))
        except ValueError:
            self.respond(400, b"bad size or rate\n")
            return False
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
        self.sock.sendall(self._head(200, [("Content-Type", "application/octet-stream"), framing]))
        if not self.is_head:
            self._send_pattern(size, chunked, rate)
        return False

    def text(self, req: Request) -> bool:
        self.drain(req)
        try:
            size = int(req.path[len("/text/"):])
        except ValueError:
            self.respond(400, b"bad size\n")
            return False
        pairs = parse_qsl(req.query, keep_blank_values=True)
        args = dict(pairs)
        headers = [("Content-Type", args.get("type", "text/plain; charset=utf-8"))]
        headers += [tuple(p.strip() for p in v.split(":", 1)) for k, v in pairs if k == "h" and ":" in v]
        etag = args.get("etag")
        if etag is not None:
            headers.append(("ETag", f'"{etag}"'))
            # RFC 9110 §13.1.2: If-None-Match uses the weak comparison
            tags = {t.strip().removeprefix("W/") for v in req.get_all("if-none-match") for t in v.split(",")}
            if f'"{etag}"' in tags or "*" in tags:
                self.sock.sendall(self._head(304, headers))
                return False
        start, end, status = 0, size - 1, 200
        rng = req.get("range") or ""
        if rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].partition("-")
            if a.isdigit() and (b.isdigit() or not b) and int(a) < size:
                start, end, status = int(a), min(int(b), size - 1) if b else size - 1, 206
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        length = end - start + 1
        digest = hashlib.sha256()
        for off in range(start, end + 1, PIECE_BYTES):
            digest.update(text_bytes(off, min(PIECE_BYTES, end + 1 - off)))
        headers.append(("X-Body-Sha256", digest.hexdigest()))
        chunked = args.get("chunked", "0") not in ("", "0")
        headers.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length)))
        self.sock.sendall(self._head(status, headers))
        if self.is_head:
            return False
        sendall = self.sock.sendall
        for off in range(start, end + 1, PIECE_BYTES):
            data = text_bytes(off, min(PIECE_BYTES, end + 1 - off))
            sendall(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if chunked:
            sendall(b"0\r\n\r\n")
        return False

    def chunked(self, req: Request) -> bool:
        self.drain(req)
        args = req.args()
        try:
            count, size = int(args.get("n", 3)), int(args.get("size", 1024))
        except ValueError:
            self.respond(400, b"bad n or size\n")
            return False
        trailer = args.get("trailer", "0") not in ("", "0")
        headers = [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")]
        if trailer:
            headers.append(("Trailer", "X-Body-Sha256"))
        self.sock.sendall(self._head(200, headers))
        if self.is_head:
            return False
        digest = hashlib.sha256()
        offset = 0
        for _ in range(count):
            parts, left = [], size
            while left:  # a chunk may exceed one pattern slice
                n = min(left, PIECE_BYTES)
                parts.append(pattern_bytes(offset + size - left, n))
                left -= n
            data = b"".join(parts)
            digest.update(data)
            offset += size
            if size:
                self.sock.sendall(b"%x\r\n%b\r\n" % (size, data))
        tail = f"X-Body-Sha256: {digest.hexdigest()}\r\n" if trailer else ""
        self.sock.sendall(f"0\r\n{tail}\r\n".encode())
        return False

    def cache(self, req: Request) -> bool:
        """Configurable cacheable answers with per-path counters (see the module docstring)."""
        self.drain(req)
        args = req.args()
        c = self.origin.cache_counts.setdefault(req.path, [0, 0, [], []])
        c[0] += 1
        c[3].append(time.monotonic())
        conditional = req.get("if-none-match") is not None or req.get("if-modified-since") is not None
        if conditional:
            c[1] += 1
        c[2].append(req.method)
        if args.get("delay"):
            gevent.sleep(float(args["delay"]))
        if self.origin.cache_fail:
            self.respond(self.origin.cache_fail, b"failing\n")
            return False
        headers = [(name, args[key]) for key, name in (
            ("cc", "Cache-Control"), ("cdn", "CDN-Cache-Control"), ("etag", "ETag"), ("lm", "Last-Modified"),
            ("expires", "Expires"), ("vary", "Vary"), ("tag", "Surrogate-Key"), ("ctag", "Cache-Tag"),
            ("cookie", "Set-Cookie"), ("location", "Location")) if key in args]
        etag = args.get("etag")
        inm = req.get("if-none-match")
        lm = args.get("lm")
        if (etag is not None and inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")])
                or lm is not None and inm is None and req.get("if-modified-since") == lm):
            if "cc304" in args:
                headers = [(n, v) for n, v in headers if n != "Cache-Control"] + [("Cache-Control", args["cc304"])]
            self.respond(304, headers=headers)
            return False
        status = int(args.get("status", "200"))
        if "size" in args:
            body = (_PERIOD * (int(args["size"]) // 256 + 1))[: int(args["size"])]
        else:
            vary = ",".join(f"{n.strip().lower()}:{req.get(n.strip().lower()) or ''}"
                            for n in args.get("vary", "").split(",") if n.strip() and n.strip() != "*")
            body = f"{req.path[len('/cache/'):]} n={c[0]} vary={vary}\n".encode()
        if args.get("nolength"):
            self.sock.sendall(self._head(status, [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"), *headers]))
            if not self.is_head:
                for i in range(0, len(body), PIECE_BYTES):
                    piece = body[i:i + PIECE_BYTES]
                    self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.sock.sendall(b"0\r\n\r\n")
            return False
        self.respond(status, body, headers=headers)
        return False

    def delay(self, req: Request) -> bool:
        self.drain(req)
        try:
            seconds = float(req.path[len("/delay/"):])
        except ValueError:
            self.respond(400, b"bad delay\n")
            return False
        body = f"delayed {seconds:g}s\n".encode()
        if req.args().get("body", "0") not in ("", "0"):
            self.sock.sendall(self._head(200, [("Content-Type", "text/plain"),
                                               ("Content-Length", str(len(body)))]))
            gevent.sleep(seconds)
            if not self.is_head:
                self.sock.sendall(body)
            return False
        gevent.sleep(seconds)
        self.respond(200, body)
        return False

    def status(self, req: Request) -> bool:
        self.drain(req)
        try:
            code = int(req.path[len("/status/"):])
        except ValueError:
            code = 0
        if not 200 <= code <= 599:
            self.respond(400, b"status must be 200-599\n")
            return False
        self.respond(code, f"status {code}\n".encode())
        return False

    # -- WebSocket (RFC 6455) -----------------------------------------------------------
    def websocket(self, req: Request) -> bool:
        key = req.get("sec-websocket-key")
        if "websocket" not in req.tokens("upgrade") or "upgrade" not in req.tokens("connection") or not key:
            self.drain(req)
            self.respond(400, b"websocket upgrade required\n")
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode("latin-1") + WS_GUID).digest()).decode()
        self.keep_alive = True  # no "Connection: close" on a 101
        self.sock.sendall(self._head(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                           ("Sec-WebSocket-Accept", accept)]))
        while True:
            fin, opcode, payload, masked = self._ws_read_frame()
            if not masked:  # RFC 6455 §5.1: a server MUST close on an unmasked client frame
                self._ws_send(True, 0x8, struct.pack("!H", 1002))
                return True
            if opcode == 0x8:  # close: echo the status code (§5.5.1), then close
                self._ws_send(True, 0x8, payload[:2])
                return True
            if opcode == 0x9:
                self._ws_send(True, 0xA, payload)
            elif opcode == 0xA:
                continue
            elif opcode in (0x0, 0x1, 0x2):
                self._ws_send(fin, opcode, payload)
            else:
                self._ws_send(True, 0x8, struct.pack("!H", 1002))
                return True

    def _ws_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _ws_read_frame(self) -> tuple[bool, int, bytes, bool]:
        b0, b1 = self._ws_exact(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._ws_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._ws_exact(8))
        if length > WS_MAX_PAYLOAD_BYTES:
            raise PeerClosed()
        masked = bool(b1 & 0x80)
        mask = self._ws_exact(4) if masked else b""
        payload = self._ws_exact(length)
        if masked and payload:
            key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        return bool(b0 & 0x80), b0 & 0x0F, payload, masked

    def _ws_send(self, fin: bool, opcode: int, payload: bytes) -> None:
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", first, n)
        elif n < 65536:
            header = struct.pack("!BBH", first, 126, n)
        else:
            header = struct.pack("!BBQ", first, 127, n)
        self.sock.sendall(header + payload)  # server frames are never masked (§5.1)


_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def _tls_context(opts):
    """A server context for ``--certfile``: TLS 1.2+, ALPN http/1.1, a client certificate required with ``--client-ca``."""
    from gevent import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(opts.certfile, opts.keyfile)
    ctx.set_alpn_protocols(["http/1.1"])
    if opts.client_ca:
        ctx.load_verify_locations(cafile=opts.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="origin")
    parser.add_argument("--idle-timeout", type=float, default=75.0,
                        help="seconds a connection may stay silent before it is closed")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds every request waits before its answer")
    parser.add_argument("--certfile", help="serve TLS with this PEM certificate chain (HTTP/1.1 over TLS)")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    parser.add_argument("--client-ca", help="require a client certificate signed by a CA in this PEM bundle (mutual TLS)")
    opts = parser.parse_args(argv)

    listener = socket.socket(_stdlib_socket.AF_INET6 if ":" in opts.host else _stdlib_socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((opts.host, opts.port))
    listener.listen(4096)
    origin = Origin(opts.name, opts.idle_timeout, opts.delay)
    origin.tls = _tls_context(opts) if opts.certfile else None
    server = StreamServer(listener, origin.handle)
    server.start()
    host, port = listener.getsockname()[:2]
    print(f"origin {opts.name} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
