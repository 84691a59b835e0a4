"""The gunicorn worker class: gevent, with an HTTP/1 fast path and connection-level concerns.

Theory of operation. gunicorn parses each HTTP/1 request (its C parser when
``gunicorn_h1c`` is installed) and hands the parsed ``Request`` to
``handle_request``. The stock worker would then build a WSGI environ and a
Response object; measured on this machine that costs about half the throughput of
a small proxied request (docs/benchmarks.md), so this worker turns the parsed
request straight into a ``RequestContext``, runs ``Proxy.handle`` and writes the
reply bytes itself. HTTP/2 streams still go through gunicorn's WSGI layer into
``edge.app.application`` (same ``Proxy``).

It is also where things WSGI cannot see live: ``100 Continue``, closing a
connection whose request body was not read, and WebSocket/Upgrade tunnels (after
a 101 the client socket and the backend socket are relayed byte for byte until
either side closes or stays idle too long; then both are closed).
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time

import gevent
from gunicorn.workers.ggevent import GeventWorker

from edge import http as rules
from edge.app import Proxy, Reply, RequestBody, application
from edge.context import Headers, RequestContext
from edge.errors import BadRequest, EdgeError
from edge.runtime import build_worker_state

log = logging.getLogger("edge.worker")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TUNNEL_CHUNK = 65536


class _Clock:
    """The Date field value, recomputed at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = 0
        self._value = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True)
        return self._value


class EdgeWorker(GeventWorker):
    """gunicorn's gevent worker, with edge's request path wired in after fork."""

    proxy: Proxy

    def load_wsgi(self) -> None:
        # Runs in the worker after fork and after gevent's monkey-patching: the place to
        # build everything network-facing (pools, store client, plugins, statsd).
        super().load_wsgi()
        self.proxy = Proxy(build_worker_state())
        application.install(self.proxy)
        self.clock = _Clock()
        self.tunnel_idle_s = self.proxy.state.cfg.server.keepalive

    def handle_request(self, listener_name, req, sock, addr):
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        proxy = self.proxy
        ctx = _context(req, listener_name, addr, time.monotonic(), self.proxy.state.scheme)
        body = None
        try:
            body = _request_body(req, sock)
        except BadRequest as e:
            reply = proxy._error_reply(ctx, e)
        else:
            reply = proxy.handle(ctx, body)
        keep = self.alive and not reply.close_connection and not req.should_close() and req.version >= (1, 1)
        if body is not None and not body.finished:
            # Unread body bytes would be parsed as the next request; gunicorn would drain them,
            # which for a refused 1 GiB upload means reading 1 GiB. Close instead (as nginx does).
            keep = False
        try:
            if reply.upgrade is not None:
                self._tunnel(sock, req, ctx, reply)
                keep = False
            else:
                self._write(sock, ctx, reply, keep, req.version >= (1, 1))
        finally:
            proxy.finish(ctx)
        if not keep:
            raise StopIteration()
        return True

    # ------------------------------------------------------------------ writing

    def _write(self, sock, ctx: RequestContext, reply: Reply, keep: bool, http11: bool) -> None:
        status = reply.status
        parts = [f"HTTP/1.1 {status} {reply.reason}\r\n"]
        has_date = False
        for k, v in reply.headers:
            parts.append(f"{k}: {v}\r\n")
            if not has_date and len(k) == 4 and k.lower() == "date":
                has_date = True
        if not has_date:
            parts.append(f"Date: {self.clock.date()}\r\n")
        body = reply.body
        with_body = rules.response_has_body(ctx.method, status)
        chunked = False
        if reply.length is not None:
            if status != 304 and status != 204 and status >= 200:
                parts.append(f"Content-Length: {reply.length}\r\n")
        elif with_body and body is not None:
            if http11:
                chunked = True
                parts.append("Transfer-Encoding: chunked\r\n")
            else:
                keep = False  # HTTP/1.0 client: the end of the body is the end of the connection
        if not keep:
            parts.append("Connection: close\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("latin-1")
        if not with_body or body is None:
            if body is not None and not isinstance(body, bytes) and hasattr(body, "close"):
                body.close()  # HEAD: release the backend connection
            sock.sendall(head)
            return
        if isinstance(body, bytes):
            sock.sendall(head + body)
            ctx.bytes_sent += len(body)
            return
        self._stream(sock, ctx, reply, head, body, chunked)

    def _stream(self, sock, ctx: RequestContext, reply: Reply, head: bytes, body, chunked: bool) -> None:
        out = _Out(head)
        complete = False
        try:
            _send_stream(sock, ctx, reply, out, body, chunked)
            complete = reply.length is None or ctx.bytes_sent == reply.length
            if not complete:
                log.warning("%s %s: backend body shorter than its Content-Length", ctx.method, ctx.raw_path)
        except EdgeError as e:
            # The backend failed while its body was being relayed (timeout, truncated body).
            ctx.error = e
            log.warning("%s %s: response cut short: %s", ctx.method, ctx.raw_path, e)
            self.proxy.metrics.incr(e.metric)
            if out.pending:
                # Nothing has reached the client yet, so it can still get a proper error answer.
                if hasattr(body, "close"):
                    body.close()
                self._write(sock, ctx, self.proxy._error_reply(ctx, e), False, True)
                raise StopIteration() from None
        finally:
            if hasattr(body, "close"):
                body.close()  # closes the backend connection unless it was read to its end
        if not complete:
            # The only honest signal left once the head is out is to cut the connection,
            # so the client sees a truncated body rather than a short one.
            _abort(sock)
            raise StopIteration()

    # ------------------------------------------------------------------ upgrades

    def _tunnel(self, sock, req, ctx: RequestContext, reply: Reply) -> None:
        backend, early = reply.upgrade
        head = [f"HTTP/1.1 101 {reply.reason or 'Switching Protocols'}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in reply.headers)
        head.append("\r\n")
        try:
            sock.sendall("".join(head).encode("latin-1") + early)
            buffered = b""
            unreader = getattr(req, "unreader", None)
            if unreader is not None and hasattr(unreader, "take_buffered"):
                buffered = unreader.take_buffered() or b""
            if buffered:
                backend.sendall(buffered)
            idle = self.tunnel_idle_s
            sock.settimeout(idle)
            backend.settimeout(idle)
            a = gevent.spawn(_pipe, sock, backend)
            b = gevent.spawn(_pipe, backend, sock)
            gevent.joinall([a, b], count=1)
        finally:
            # Either side closed (or idled out): close both together.
            for s in (backend, sock):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the peer
            backend.close()
        ctx.status = 101


class _Out:
    """The response head until it has been sent with the first body chunk."""

    __slots__ = ("pending",)

    def __init__(self, head: bytes) -> None:
        self.pending = head


def _send_stream(sock, ctx: RequestContext, reply: Reply, out: _Out, body, chunked: bool) -> None:
    """Write head and body; the head rides with the first chunk, so a small response is one send."""
    for chunk in body:
        if not chunk:
            continue
        ctx.bytes_sent += len(chunk)
        if chunked:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        if out.pending:
            sock.sendall(out.pending + chunk)
            out.pending = b""
        else:
            sock.sendall(chunk)
    tail = b""
    if chunked:
        trailers = reply.trailers_from.trailers if reply.trailers_from is not None else ()
        tail = b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers).encode("latin-1") + b"\r\n"
    if out.pending or tail:
        sock.sendall(out.pending + tail)
        out.pending = b""


def _pipe(src, dst) -> None:
    try:
        while True:
            data = src.recv(TUNNEL_CHUNK)
            if not data:
                return
            dst.sendall(data)
    except OSError:
        return  # timeout, reset, or the other direction closed the sockets: the tunnel is over


def _abort(sock) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass  # the client is already gone


def _context(req, listener_name, addr, now: float, scheme: str) -> RequestContext:
    headers = Headers(req.headers)
    host = ""
    for k, v in req.headers:
        if k == "HOST":
            host = v
            break
    port = listener_name[1] if isinstance(listener_name, tuple) else 0
    peer = addr[0] if isinstance(addr, tuple) else "unix"
    ctx = RequestContext(
        req.method,
        req.path or "/",
        req.query,
        headers,
        version=f"{req.version[0]}.{req.version[1]}",
        scheme=scheme,
        host=host,
        port=port,
        client_ip=peer,
        start=now,
    )
    return ctx


def _request_body(req, sock) -> RequestBody | None:
    """The body as announced by gunicorn's framing checks (it already refused CL+TE and the like)."""
    length = None
    chunked = False
    for k, v in req.headers:
        if k == "CONTENT-LENGTH":
            length = int(v)
        elif k == "TRANSFER-ENCODING":
            chunked = True
    if not chunked and not length:
        return None
    on_first = None
    if req._expected_100_continue:
        def on_first() -> None:
            sock.sendall(CONTINUE)
    return RequestBody(None if chunked else length, req.body.read, on_first)
