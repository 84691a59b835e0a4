"""The HTTP/1.1 client edge uses towards backends: pooled, streaming, strict framing.

Theory of operation. ``UpstreamPool.exchange`` picks a server (balancer), takes an
idle connection from that server's pool or opens one, writes the request head
(with the first body chunk in the same send), streams the rest of the body, and
reads the response head with httptools' C parser (llhttp). It returns an
``UpstreamReply`` whose ``body`` is a generator: the caller streams it to the client,
and the generator's ``finally`` decides the connection's fate: back to the pool only
when the response was read to its exact end and both sides allow keep-alive;
closed in every other case (client gone, timeout, truncated body, surplus bytes).

Why our own client: measured on this machine (docs/benchmarks.md), a gevent proxy
spent ~285 µs per small request with urllib3 and ~150 µs with geventhttpclient;
this client keeps the per-request Python work to one head serialisation, one
parser feed and a few attribute reads.

Failure mapping (STYLE §7): refused/reset connect -> ConnectError (502), connect
timeout -> ConnectTimeout (504), silence between reads -> ReadTimeout (504), a
blocked write -> SendTimeout (504), the whole exchange over ``timeouts.total`` ->
TotalTimeout (504), invalid HTTP -> ProtocolError (502), no server left ->
NoHealthyServer (503). Connect failures are retried on the next server (the request
was not sent). A *reused* connection that the backend had already closed (EOF or
reset before the first response byte) is retried once on a fresh connection to
the same server when the request body has not been consumed yet: the backend
never saw the request (RFC 9112 §9.3.1 lets a client retry such requests).
"""

from __future__ import annotations

import errno
import logging
import socket as _stdsocket
import time
from typing import Iterable, Iterator

import httptools

from edge.errors import (
    ConnectError,
    ConnectTimeout,
    NoHealthyServer,
    ProtocolError,
    ReadTimeout,
    SendTimeout,
    TotalTimeout,
    UpstreamError,
)
from edge.netio import send_all
from edge.upstream.balancer import RoundRobin
from edge.upstream.pool import ConnectionPool, PooledConnection

log = logging.getLogger("edge.upstream")

RECV_BYTES = 65536
_NO_BODY_STATUS = (204, 304)
_DEAD_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN)


class Timeouts:
    """Frozen per-pool/route timeouts (seconds); ``total`` None means no limit."""

    __slots__ = ("connect", "read", "send", "total")

    def __init__(self, connect: float, read: float, send: float, total: float | None) -> None:
        self.connect, self.read, self.send, self.total = connect, read, send, total

    @classmethod
    def from_config(cls, t) -> "Timeouts":
        return cls(t.connect, t.read, t.send, t.total)


class Server:
    """One backend server and its idle connections (per worker)."""

    __slots__ = ("host", "port", "authority", "pool", "index", "label")

    def __init__(self, index: int, host: str, port: int, pool: ConnectionPool) -> None:
        self.index, self.host, self.port, self.pool = index, host, port, pool
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.label = self.authority

    def connect(self, timeout: float) -> PooledConnection:
        try:
            sock = _stdsocket.create_connection((self.host, self.port), timeout=timeout)
        except _stdsocket.timeout:
            raise ConnectTimeout(f"connect to {self.authority} timed out after {timeout:g}s") from None
        except OSError as e:
            raise ConnectError(f"connect to {self.authority} failed: {e.strerror or e}") from None
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        self.pool.created += 1
        return PooledConnection(sock, self.pool)


class _Parse:
    """httptools callbacks for one response; collects the head and body pieces."""

    __slots__ = ("headers", "reason", "head_done", "done", "chunks", "status", "trailers", "in_trailers")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.reason = b""
        self.head_done = False
        self.done = False
        self.chunks: list[bytes] = []
        self.status = 0
        self.trailers: list[tuple[str, str]] = []
        self.in_trailers = False

    def on_message_begin(self) -> None:
        # A 1xx interim answer (103 Early Hints) was followed by the real one.
        self.headers = []
        self.done = False

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        pair = (name.decode("latin-1"), value.decode("latin-1"))
        if self.head_done:
            self.trailers.append(pair)
        else:
            self.headers.append(pair)

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class UpstreamReply:
    """A backend's answer: the head now, the body as a generator to stream."""

    __slots__ = ("status", "reason", "headers", "body", "length", "server", "upgrade_sock", "upgrade_data", "trailers", "_conn")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], server: Server) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.server = server
        self.body: Iterator[bytes] | None = None
        self.length: int | None = None          # Content-Length if the backend framed it so
        self.upgrade_sock = None                # set on 101: the raw backend socket
        self.upgrade_data = b""                 # bytes the backend sent after its 101 head
        self.trailers: list[tuple[str, str]] = []
        self._conn: PooledConnection | None = None

    def close(self) -> None:
        """Release the backend connection when the body will not be read (e.g. an error page replaces it)."""
        if self.body is not None and hasattr(self.body, "close"):
            self.body.close()
        elif self._conn is not None:
            self._conn.close()
            self._conn = None


class UpstreamPool:
    """A named pool of servers with a balancer; ``exchange`` performs one request."""

    __slots__ = ("name", "servers", "balancer", "timeouts", "retries")

    def __init__(self, name: str, cfg) -> None:
        self.name = name
        ka = cfg.keepalive
        self.servers = tuple(
            Server(i, s.host, s.port, ConnectionPool(ka.max_idle, ka.idle_timeout, ka.max_requests))
            for i, s in enumerate(cfg.servers)
        )
        self.balancer = RoundRobin([s.weight for s in cfg.servers])
        self.timeouts = Timeouts.from_config(cfg.timeouts)
        self.retries = cfg.retries

    def close(self) -> None:
        for s in self.servers:
            s.pool.close_all()

    def exchange(
        self,
        method: str,
        target: str,
        host: str | None,
        headers: list[tuple[str, str]],
        body: Iterable[bytes] | None,
        body_length: int | None,
        timeouts: Timeouts | None = None,
    ) -> UpstreamReply:
        """Send one request and return the response head; see the module docstring.

        ``host`` is the Host field to send, None for the picked server's address.
        ``body`` is None for no body; otherwise an iterable of chunks, framed with
        ``Content-Length: body_length`` or, when that is None, chunked.
        """
        t = timeouts or self.timeouts
        deadline = time.monotonic() + t.total if t.total else None
        rest = _request_head_rest(headers, method, body, body_length)
        tried: set[int] = set()
        last_error: UpstreamError | None = None
        while True:
            idx = self.balancer.pick(tried)
            if idx is None:
                if last_error is not None:
                    raise last_error
                raise NoHealthyServer(f"upstream {self.name}: no server available")
            server = self.servers[idx]
            tried.add(idx)
            head = f"{method} {target} HTTP/1.1\r\nHost: {host or server.authority}\r\n".encode("latin-1") + rest
            conn = server.pool.get(time.monotonic())
            if conn is not None and body is not None and _peer_closed(conn.sock):
                # Cheap only with a body: without one, a dead connection is retried after the fact.
                conn.close()
                conn = None
            if conn is None:
                try:
                    conn = server.connect(_remaining(t.connect, deadline))
                except (ConnectError, ConnectTimeout) as e:
                    log.warning("upstream %s: %s", self.name, e)
                    last_error = e
                    if len(tried) > self.retries:
                        raise
                    continue
            try:
                return self._send_and_read(server, conn, method, head, body, body_length, t, deadline)
            except _StaleConnection:
                # The backend closed an idle connection just as we reused it; it never saw the request.
                conn.close()
                conn = server.connect(_remaining(t.connect, deadline))
                return self._send_and_read(server, conn, method, head, body, body_length, t, deadline)

    def _send_and_read(self, server, conn, method, head, body, body_length, t, deadline) -> UpstreamReply:
        sock = conn.sock
        reused = conn.reused
        conn.requests += 1
        ok = False
        try:
            sock.settimeout(_remaining(t.send, deadline))
            if body is None:
                _send(sock, head, reused)
            else:
                _send_with_body(sock, head, body, body_length, reused)
            reply, p, parser = _read_head(sock, server, t, deadline, reused and body is None)
            reply._conn = conn
            ok = True
        finally:
            if not ok:
                conn.close()
        return _attach_body(reply, p, parser, conn, method, t, deadline)


class _StaleConnection(Exception):
    """A reused connection turned out closed before any response byte (internal)."""


def _remaining(timeout: float, deadline: float | None) -> float:
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise TotalTimeout("upstream exchange exceeded its total timeout")
    return min(timeout, left)


def _peer_closed(sock) -> bool:
    """True when the backend has closed (or reset) an idle connection; one non-blocking peek."""
    raw = getattr(sock, "_sock", sock)  # gevent's wrapper would wait on EAGAIN; ask the kernel directly
    try:
        raw.recv(1, _stdsocket.MSG_PEEK | _stdsocket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    # EOF, or bytes on an idle connection (a protocol violation): unusable either way.
    return True


def _request_head_rest(headers: list[tuple[str, str]], method: str, body, body_length) -> bytes:
    """The request head after the request line and Host: fields, framing, blank line."""
    parts = []
    for k, v in headers:
        parts.append(f"{k}: {v}\r\n")
    if body is not None:
        parts.append(f"Content-Length: {body_length}\r\n\r\n" if body_length is not None else "Transfer-Encoding: chunked\r\n\r\n")
    elif method in ("POST", "PUT", "PATCH"):
        # RFC 9110 §8.6: a user agent SHOULD send Content-Length for a body-less POST/PUT.
        parts.append("Content-Length: 0\r\n\r\n")
    else:
        parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def _send(sock, data: bytes, reused: bool) -> None:
    try:
        send_all(sock, data)
    except _stdsocket.timeout:
        raise SendTimeout("sending to the backend timed out") from None
    except OSError as e:
        if reused and e.errno in _DEAD_ERRNOS:
            raise _StaleConnection() from None
        raise ConnectError(f"sending to the backend failed: {e.strerror or e}") from None


def _send_with_body(sock, head: bytes, body: Iterable[bytes], body_length: int | None, reused: bool) -> None:
    """Stream the body; the first chunk rides with the head so a small POST is one send."""
    it = iter(body)
    first = next(it, b"")
    if body_length is None:
        _send(sock, head + (b"%x\r\n%s\r\n" % (len(first), first) if first else b""), reused)
        for chunk in it:
            if chunk:
                _send(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk), False)
        _send(sock, b"0\r\n\r\n", False)
    else:
        _send(sock, head + first, reused)
        for chunk in it:
            _send(sock, chunk, False)


def _read_head(sock, server: Server, t: Timeouts, deadline: float | None, may_be_stale: bool) -> tuple[UpstreamReply, _Parse, object]:
    p = _Parse()
    parser = httptools.HttpResponseParser(p)
    upgrade_data = b""
    first = True
    while not p.head_done:
        data = _recv(sock, t, deadline, stale_ok=first and may_be_stale, wait_first=first)
        if not data:
            if first and may_be_stale:
                raise _StaleConnection()
            raise ProtocolError("backend closed the connection before answering")
        first = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            upgrade_data = data[e.args[0]:] if e.args else b""
        except httptools.HttpParserError as e:
            raise ProtocolError(f"invalid response from backend: {e}") from None
        if p.head_done and 100 <= parser.get_status_code() < 200 and parser.get_status_code() != 101:
            # 1xx interim answers are consumed here; llhttp goes on to the final one.
            p.head_done = False
            p.chunks.clear()
    status = parser.get_status_code()
    reply = UpstreamReply(status, p.reason.decode("latin-1"), p.headers, server)
    reply.upgrade_data = upgrade_data
    return reply, p, parser


def _recv(sock, t: Timeouts, deadline: float | None, stale_ok: bool = False, wait_first: bool = False) -> bytes:
    try:
        sock.settimeout(_remaining(t.read, deadline))
        if wait_first:
            # Just after sending, the answer cannot be there yet: wait for readability first
            # instead of paying a recv() that fails with EAGAIN (one syscall per request).
            wait = getattr(sock, "_wait", None)
            if wait is not None:
                wait(sock._read_event)
        return sock.recv(RECV_BYTES)
    except _stdsocket.timeout:
        if deadline is not None and time.monotonic() >= deadline:
            raise TotalTimeout("upstream exchange exceeded its total timeout") from None
        raise ReadTimeout(f"backend sent nothing for {t.read:g}s") from None
    except OSError as e:
        if stale_ok and e.errno in _DEAD_ERRNOS:
            raise _StaleConnection() from None
        raise ProtocolError(f"reading from the backend failed: {e.strerror or e}") from None


def _attach_body(reply: UpstreamReply, p: _Parse, parser, conn: PooledConnection, method: str, t: Timeouts, deadline: float | None) -> UpstreamReply:
    status = reply.status
    # llhttp's should_keep_alive() reads False once the message is complete, so decide here:
    # HTTP/1.1 persists unless "Connection: close"; HTTP/1.0 only with "Connection: keep-alive".
    http11 = parser.get_http_version() == "1.1"
    keep_alive = http11
    length = None
    chunked = False
    for k, v in reply.headers:
        lk = k.lower()
        if lk == "connection":
            tokens = {t.strip() for t in v.lower().split(",")}
            if "close" in tokens:
                keep_alive = False
            elif "keep-alive" in tokens and not http11:
                keep_alive = True
        elif lk == "content-length":
            length = int(v) if v.strip().isdigit() else None
        elif lk == "transfer-encoding":
            chunked = v.strip().lower().endswith("chunked")
        elif lk == "keep-alive":
            _apply_keepalive_hint(conn, v)
    if status == 101:
        reply.upgrade_sock = conn.sock
        reply._conn = None  # the socket now belongs to the tunnel
        return reply
    if method == "HEAD" or status in _NO_BODY_STATUS:
        # No body whatever the framing headers say (RFC 9112 §6.3 rule 1).
        _finish(conn, keep_alive and not p.chunks)
        reply.body = None
        reply.length = 0 if method != "HEAD" else length
        return reply
    if not chunked and length is None:
        keep_alive = False  # read until close: the connection cannot be reused
    reply.length = None if chunked else length
    reply.body = _body(reply, conn, p, parser, keep_alive, until_close=(not chunked and length is None), t=t, deadline=deadline)
    return reply


def _apply_keepalive_hint(conn: PooledConnection, value: str) -> None:
    # "Keep-Alive: timeout=5, max=100": stop reusing a second before the backend's own timer fires.
    for part in value.split(","):
        name, _, num = part.strip().partition("=")
        if name.strip().lower() == "timeout" and num.strip().isdigit():
            conn.expires = time.monotonic() + max(0, int(num) - 1)


def _finish(conn: PooledConnection, reusable: bool) -> None:
    if reusable:
        conn.pool.put(conn, time.monotonic())
    else:
        conn.close()


def _body(reply, conn, p: _Parse, parser, keep_alive: bool, until_close: bool, t: Timeouts, deadline) -> Iterator[bytes]:
    """Yield the response body as it arrives; return the connection to the pool only after a clean end."""
    sock = conn.sock
    clean = False
    try:
        if p.chunks:
            pending = p.chunks
            p.chunks = []
            for c in pending:
                yield c
        while not p.done:
            data = _recv(sock, t, deadline)
            if not data:
                if until_close:
                    clean = True
                    keep_alive = False
                    return
                raise ProtocolError("backend closed the connection mid-body")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as e:
                if p.done:
                    keep_alive = False  # surplus bytes after the message: never reuse
                else:
                    raise ProtocolError(f"invalid response body from backend: {e}") from None
            if p.chunks:
                pending = p.chunks
                p.chunks = []
                for c in pending:
                    yield c
        reply.trailers = p.trailers
        clean = True
    finally:
        if clean and keep_alive:
            _finish(conn, True)
        else:
            conn.close()
