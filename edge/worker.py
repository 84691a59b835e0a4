"""The gunicorn worker class: gevent, with edge's own HTTP/1 connection handling.

Theory of operation. gunicorn's master forks this worker; gevent's StreamServer
accepts connections (and wraps TLS). ``handle`` gives HTTP/2 connections (ALPN
``h2``) to gunicorn's HTTP/2 code, which calls the WSGI entry point
``edge.app.application``; every other connection is served by ``edge.h1.serve``,
which turns each request straight into a ``RequestContext`` for ``Proxy.handle``
and writes the reply bytes here (``write_reply``). Measured on this machine, the
stock path (gunicorn's request objects, a WSGI environ, its Response) costs about
half the throughput of a small proxied request (docs/benchmarks.md).

It is also where things WSGI cannot see live: the per-connection plugin hook
(``on_connect``), and WebSocket/Upgrade tunnels: after a 101 the client socket and
the backend socket are relayed byte for byte until either side closes or stays
idle too long; then both are closed.
"""

from __future__ import annotations

import email.utils
import gc
import logging
import socket
import ssl
import time

import gevent
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.ggevent import GeventWorker

from edge import h1
from edge import http as rules
from edge.app import Proxy, Reply, application
from edge.context import RequestContext
from edge.errors import EdgeError
from edge.netio import send_all
from edge.runtime import build_worker_state

log = logging.getLogger("edge.worker")

TUNNEL_CHUNK = 65536
IDLE_CLOSE_AFTER_S = 1.0
GC_GEN0_THRESHOLD = 50_000  # a stopping worker closes keep-alive connections idle this long
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends RST


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


class ConnectionInfo:
    """What ``on_connect`` hooks see of a new connection."""

    __slots__ = ("peer_ip", "peer_port", "local_port", "tls")

    def __init__(self, peer_ip: str, peer_port: int, local_port: int, tls: bool) -> None:
        self.peer_ip, self.peer_port, self.local_port, self.tls = peer_ip, peer_port, local_port, tls


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
        self.scheme = self.proxy.state.scheme
        self.idle_connections: dict = {}
        gevent.spawn(self._close_idle_when_stopping)
        # Every request allocates a few dozen short-lived objects; with a thousand open
        # connections the cyclic collector's default gen0 threshold (700) makes it walk
        # all their greenlets and frames hundreds of times a second. Objects built at
        # start-up are frozen out of its view and collections are made rarer.
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)

    def _close_idle_when_stopping(self) -> None:
        """On a graceful stop (reload, shutdown), close idle keep-alive connections.

        Busy connections finish their request, answered with ``Connection: close``;
        idle ones would otherwise hold the old worker until their keep-alive timeout.
        Only connections idle for a while are closed: a client that is about to send
        on an active one would otherwise see its request cut (the keep-alive race).
        """
        while self.alive:
            gevent.sleep(0.1)
        while True:
            cutoff = time.monotonic() - IDLE_CLOSE_AFTER_S
            for sock, since in list(self.idle_connections.items()):
                if since < cutoff:
                    self.idle_connections.pop(sock, None)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already gone
            gevent.sleep(0.1)

    def count_request(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False

    def handle(self, listener, client, addr):
        try:
            is_tls = isinstance(client, ssl.SSLSocket)
            if is_tls and not self.cfg.do_handshake_on_connect:
                client.do_handshake()
            if is_tls and gunicorn_sock.is_http2_negotiated(client):
                super().handle(listener, client, addr)  # gunicorn's HTTP/2 -> edge.app.application
                return
            local_port = listener.getsockname()[1] if listener.family != socket.AF_UNIX else 0
            chain = self.proxy.plugins.default_chain
            if chain.has_connect_hooks:
                info = ConnectionInfo(addr[0], addr[1], local_port, is_tls) if isinstance(addr, tuple) else \
                    ConnectionInfo("unix", 0, 0, is_tls)
                answer = chain.run_connect(info)
                if answer is not None:
                    ctx = RequestContext("GET", "/", client_ip=info.peer_ip, start=time.monotonic())
                    self.write_reply(client, ctx, self.proxy.answer(ctx, answer), False, True)
                    return
            h1.serve(self, client, addr, local_port, self.scheme)
        except ssl.SSLError as e:
            log.debug("TLS error from %s: %s", addr, e)
        except OSError as e:
            # The client went away (reset, broken pipe): nothing to answer, nothing to log loudly.
            log.debug("connection from %s ended: %s", addr, e)
        except Exception:
            log.exception("error serving connection from %s", addr)
        finally:
            try:
                client.close()
            except OSError:
                pass  # already closed by the peer

    # ------------------------------------------------------------------ writing

    def write_reply(self, sock, ctx: RequestContext, reply: Reply, keep: bool, http11: bool) -> bool:
        """Write a reply; True when the connection may carry another request."""
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
            send_all(sock, head)
            return keep
        if isinstance(body, bytes):
            send_all(sock, head + body)
            ctx.bytes_sent += len(body)
            return keep
        return self._stream(sock, ctx, reply, head, body, chunked) and keep

    def _stream(self, sock, ctx: RequestContext, reply: Reply, head: bytes, body, chunked: bool) -> bool:
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
                self.write_reply(sock, ctx, self.proxy.error_reply(ctx, e), False, True)
                return False
        finally:
            if hasattr(body, "close"):
                body.close()  # closes the backend connection unless it was read to its end
        if not complete:
            # The only honest signal left once the head is out is to cut the connection,
            # so the client sees a truncated body rather than a short one.
            _abort(sock)
        return complete

    # ------------------------------------------------------------------ upgrades

    def tunnel(self, sock, buffered: bytes, ctx: RequestContext, reply: Reply) -> None:
        """Relay a 101'd connection both ways until either side closes or idles out."""
        backend, early = reply.upgrade
        head = [f"HTTP/1.1 101 {reply.reason or 'Switching Protocols'}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in reply.headers)
        head.append("\r\n")
        try:
            send_all(sock, "".join(head).encode("latin-1") + early)
            if buffered:
                send_all(backend, buffered)  # bytes the client sent right after its upgrade request
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
            send_all(sock, out.pending + chunk)
            out.pending = b""
        else:
            send_all(sock, chunk)
    tail = b""
    if chunked:
        trailers = reply.trailers_from.trailers if reply.trailers_from is not None else ()
        tail = b"0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in trailers).encode("latin-1") + b"\r\n"
    if out.pending or tail:
        send_all(sock, out.pending + tail)
        out.pending = b""


def _pipe(src, dst) -> None:
    try:
        while True:
            data = src.recv(TUNNEL_CHUNK)
            if not data:
                return
            send_all(dst, data)
    except OSError:
        return  # timeout, reset, or the other direction closed the sockets: the tunnel is over


def _abort(sock) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
    except OSError:
        pass  # the client is already gone
