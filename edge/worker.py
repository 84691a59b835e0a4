"""The gunicorn worker class: worker concerns only (accept, TLS/ALPN dispatch, stop, GC).

Theory of operation. gunicorn's master forks this worker; gevent's StreamServer
accepts connections. ``handle`` wraps TLS on the listeners configured for it
(``edge.tls.Termination``: SNI certificates, ALPN; gunicorn itself is given no
certificate, since it would wrap every listener), runs the ``on_connect`` plugin
hook, then dispatches on ALPN: HTTP/2 connections go to ``edge.h2conn.serve``
(gunicorn's HTTP/2 connection code, its streams served concurrently), which hands
each stream to ``handle_http2_request`` and from there to
``edge.h2.serve_stream``; every other connection is served by
``edge.h1.serve`` (the HTTP/1 connection state machine, reading, writing and
tunnelling). Both front ends pass ``edge.admission`` and ``edge.framing``
(docs/request-path.md). Measured on this machine, the stock path (gunicorn's
request objects, a WSGI environ, its Response) costs about half the throughput of
a small proxied request (docs/benchmarks.md).

A graceful stop closes idle keep-alive connections; the cyclic GC is tuned for
many short-lived per-request objects.
"""

from __future__ import annotations

import datetime
import gc
import logging
import socket
import ssl
import time

import gevent
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.ggevent import GeventWorker

from edge import boot, certs, h1, h2, h2conn, tls
from edge.app import Proxy
from edge.config import effective_listeners
from edge.errors import StoreUnavailable
from edge.context import UNKNOWN_CLIENT, RequestContext
from edge.runtime import build_worker_state

log = logging.getLogger("edge.worker")

IDLE_CLOSE_AFTER_S = 1.0  # a stopping worker closes keep-alive connections idle this long
GC_GEN0_THRESHOLD = 50_000
DEFAULT_TUNNEL_IDLE_S = 75.0  # when keepalive is 0 and no tunnel_idle_timeout is set
EXPIRY_REPORT_INTERVAL_S = 3600.0  # certificate expiry gauges: at start, then hourly
EXPIRY_MARKER_KEY = "edge:tls:expiry-report"  # in the node-local store: one worker per node reports


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
        h2.application.install(self.proxy)
        self.clock = h1.Clock()
        server = self.proxy.state.cfg.server
        self.tunnel_idle_s = server.tunnel_idle_timeout or server.keepalive or DEFAULT_TUNNEL_IDLE_S
        self.head_limits = h1.HeadLimits(server.max_request_line, server.max_header_fields,
                                         server.max_header_field_size, server.max_head_size)
        self.scheme = self.proxy.state.scheme
        loaded = boot.current()
        self.termination = loaded.termination if loaded is not None else None
        # which listeners are TLS, by local port (or socket path): edge wraps them itself (edge/tls.py)
        self.tls_listeners = {tls.listener_key(lc.bind): lc.tls for lc in effective_listeners(self.proxy.state.cfg)}
        self.handshake_timeout_s = server.header_timeout
        self.idle_connections: dict = {}
        self.h2_connections: set = set()  # edge.h2conn connections: closed with GOAWAY on a graceful stop
        gevent.spawn(self._close_idle_when_stopping)
        if self.termination is not None:
            gevent.spawn(self._report_expiry)
        # Every request allocates a few dozen short-lived objects; with a thousand open
        # connections the cyclic collector's default gen0 threshold (700) makes it walk
        # all their greenlets and frames hundreds of times a second. Objects built at
        # start-up are frozen out of its view and collections are made rarer.
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)

    def handle_usr1(self, sig, frame) -> None:
        # gunicorn reopens its own logs (and, through them, edge's loggers); the JSON access
        # log is edge's, so it is reopened here too: logrotate moves both files and sends USR1.
        super().handle_usr1(sig, frame)
        access_log = self.proxy.state.access_log if getattr(self, "proxy", None) is not None else None
        if access_log is not None:
            gevent.spawn(access_log.reopen)

    def _close_idle_when_stopping(self) -> None:
        """On a graceful stop (reload, shutdown), close idle keep-alive connections.

        Busy connections finish their request, answered with ``Connection: close``;
        idle ones would otherwise hold the old worker until their keep-alive timeout.
        Only connections idle for a while are closed: a client that is about to send
        on an active one would otherwise see its request cut (the keep-alive race).
        HTTP/2 connections with no stream running get a GOAWAY naming the last stream
        served, which tells the client what to retry (``edge.h2conn``).
        """
        while self.alive:
            gevent.sleep(0.1)
        while True:
            for conn in list(self.h2_connections):
                if conn.close_if_idle():
                    self.h2_connections.discard(conn)
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

    def _report_expiry(self) -> None:
        """Days to expiry of every certificate as statsd gauges, at start and hourly, from one
        worker per node: the one that takes the period's marker in the node-local store."""
        state = self.proxy.state
        store = state.local_store or state.store
        while self.alive:
            try:
                mine = store is None or store.add(EXPIRY_MARKER_KEY, str(self.pid).encode(),
                                                  ttl_s=EXPIRY_REPORT_INTERVAL_S * 0.9)
            except StoreUnavailable as e:
                mine = True  # a gauge sent twice is harmless; one never sent hides an expiry
                log.debug("expiry gauges: node store unavailable (%s); reporting anyway", e)
            if mine:
                now = datetime.datetime.now(datetime.timezone.utc)
                for name, days in certs.expiry_gauges(self.termination.certificates, now):
                    self.proxy.metrics.gauge(name, days)
            gevent.sleep(EXPIRY_REPORT_INTERVAL_S)

    def handle(self, listener, client, addr):
        try:
            if listener.family == socket.AF_UNIX:
                local_port = 0
                is_tls = self.tls_listeners.get("unix:" + listener.getsockname(), False)
            else:
                local_port = listener.getsockname()[1]
                is_tls = self.tls_listeners.get(local_port, False)
            http2 = False
            if is_tls:
                client = self.termination.wrap(client, self.handshake_timeout_s)
                http2 = gunicorn_sock.is_http2_negotiated(client)
            scheme = "https" if is_tls else "http"
            chain = self.proxy.plugins.default_chain
            if chain.has_connect_hooks:
                info = ConnectionInfo(addr[0], addr[1], local_port, is_tls) if isinstance(addr, tuple) else \
                    ConnectionInfo(UNKNOWN_CLIENT, 0, 0, is_tls)
                answer = chain.run_connect(info)
                if answer is not None:
                    if http2:
                        return  # no HTTP/1 answer can be written on an HTTP/2 connection: it is closed
                    ctx = RequestContext("GET", "/", client_ip=info.peer_ip, start=time.monotonic())
                    h1.answer_and_close(self, client, info.peer_ip, self.proxy.answer(ctx, answer), ctx, scheme)
                    return
            if http2:
                h2conn.serve(self, listener, client, addr)  # streams -> handle_http2_request, concurrently
                return
            h1.serve(self, client, addr, local_port, scheme)
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

    def handle_http2_request(self, listener_name, req, sock, addr, h2_conn):
        """One HTTP/2 stream: edge's own adapter instead of gunicorn's WSGI one (``edge.h2``)."""
        self.count_request()
        port = listener_name[1] if isinstance(listener_name, tuple) else 0
        h2.serve_stream(self, req, addr, h2_conn, port)
