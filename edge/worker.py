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

from edge import boot, certs, h1, h2, h2conn, proxyproto, tls
from edge.app import Proxy
from edge.config import CertificateConfig, effective_listeners
from edge.conncaps import REFRESH_S, ConnectionCaps
from edge.errors import ConfigError, StoreUnavailable
from edge.context import UNKNOWN_CLIENT, RequestContext
from edge.errors import ClientDisconnected, SlowClient
from edge.http import TrustedProxies
from edge.netio import send_all
from edge.runtime import build_worker_state

log = logging.getLogger("edge.worker")

IDLE_CLOSE_AFTER_S = 1.0  # a stopping worker closes keep-alive connections idle this long
GC_GEN0_THRESHOLD = 50_000
DEFAULT_TUNNEL_IDLE_S = 75.0  # when keepalive is 0 and no tunnel_idle_timeout is set
# Over a connection cap: nginx's limit_conn answers 503 by default (docs/security.md).
OVER_CAP_BODY = b"503 too many connections\n"
OVER_CAP_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
                  % (len(OVER_CAP_BODY), OVER_CAP_BODY))
REFUSE_LINGER_S = 1.0          # after a refusal, read (and drop) what the client sent, for at most this long ...
REFUSE_LINGER_BYTES = 65536    # ... or this many bytes, so the close does not reset the answer away
EXPIRY_REPORT_INTERVAL_S = 3600.0  # certificate expiry gauges: at start, then hourly
EXPIRY_MARKER_KEY = "edge:tls:expiry-report"  # in the node-local store: one worker per node reports


class ConnectionInfo:
    """What ``on_connect`` hooks see of a new connection.

    ``peer_ip``/``peer_port`` are the PROXY protocol source when the listener reads one
    (``server.proxy_protocol``), else the TCP peer. ``trusted_proxy``: the peer is in
    ``server.trusted_proxies``, so the client is only known once its forwarding headers
    are read (``ctx.client_ip`` in ``on_request``); a per-address decision must wait.
    """

    __slots__ = ("peer_ip", "peer_port", "local_port", "tls", "trusted_proxy")

    def __init__(self, peer_ip: str, peer_port: int, local_port: int, tls: bool, trusted_proxy: bool = False) -> None:
        self.peer_ip, self.peer_port, self.local_port, self.tls = peer_ip, peer_port, local_port, tls
        self.trusted_proxy = trusted_proxy


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
        loaded = boot.current()
        self.termination = loaded.termination if loaded is not None else None
        # which listeners are TLS, by local port (or socket path): edge wraps them itself (edge/tls.py)
        self.tls_listeners = {tls.listener_key(lc.bind): lc.tls for lc in effective_listeners(self.proxy.state.cfg)}
        self.handshake_timeout_s = server.header_timeout
        self.idle_connections: dict = {}
        self.h2_connections: set = set()  # edge.h2conn connections: closed with GOAWAY on a graceful stop
        gevent.spawn(self._close_idle_when_stopping)
        pp = server.proxy_protocol
        self.proxy_protocol = pp if pp.enabled else None
        self.proxy_sources = TrustedProxies(pp.trusted)
        state = self.proxy.state
        self.caps = ConnectionCaps(server.max_connections, server.max_connections_per_ip,
                                   server.max_connections_per_ip_node, store=state.local_store, metrics=state.metrics)
        if self.caps.max_per_ip_node is not None:
            gevent.spawn(self._refresh_node_counts)
        if self.proxy.state.acme is not None:
            self.proxy.state.acme.start()  # certificate renewal (edge.acme), stopped with the worker
        if self.termination is not None:
            gevent.spawn(self._report_expiry)
            if self.proxy.state.acme is not None:
                # every certificate the ACME manager loads (at start, after an order or a renewal
                # by any worker of the fleet) is served from then on, without a restart
                self.proxy.state.acme.on_change(self._serve_acme_certificate)
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
        if self.proxy.state.acme is not None:
            self.proxy.state.acme.stop()  # a stopping worker starts no order; the lease TTL frees one in flight
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

    def _refresh_node_counts(self) -> None:
        """Re-count this worker's open connections into each new epoch (edge.conncaps: leaks)."""
        while True:
            gevent.sleep(REFRESH_S)
            try:
                self.caps.refresh()
            except Exception:
                log.exception("connection counts: refresh failed")  # a bug; the next epoch tries again

    def _serve_acme_certificate(self, _context, info) -> None:
        cc = CertificateConfig(cert=str(info.cert_path), key=str(info.key_path), names=tuple(info.names))
        try:
            self.termination.install(tls.load_certificate(cc, "acme", "tls.acme"))
        except ConfigError as e:
            log.error("acme: cannot serve the new certificate: %s", e)

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
        slot = None
        try:
            if listener.family == socket.AF_UNIX:
                local_port = 0
                is_tls = self.tls_listeners.get("unix:" + listener.getsockname(), False)
            else:
                local_port = listener.getsockname()[1]
                is_tls = self.tls_listeners.get(local_port, False)
            initial = b""
            if self.proxy_protocol is not None and isinstance(addr, tuple) and addr[0] in self.proxy_sources:
                # before anything else: the PROXY header is the connection's first bytes
                addr, initial = self._read_proxy_header(client, addr)
                if addr is None:
                    return
            if self.caps.enabled:
                # before the TLS handshake: a client that never completes one still holds its place
                slot, refusal = self.caps.admit(addr[0] if isinstance(addr, tuple) else UNKNOWN_CLIENT)
                if refusal is not None:
                    self._refuse_over_cap(client, addr, refusal, is_tls)
                    return
            http2 = False
            if is_tls:
                client = self.termination.wrap(client, self.handshake_timeout_s)
                http2 = gunicorn_sock.is_http2_negotiated(client)
            scheme = "https" if is_tls else "http"
            chain = self.proxy.plugins.default_chain
            if chain.has_connect_hooks:
                info = ConnectionInfo(addr[0], addr[1], local_port, is_tls, addr[0] in self.proxy.trusted) \
                    if isinstance(addr, tuple) else ConnectionInfo(UNKNOWN_CLIENT, 0, 0, is_tls)
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
            h1.serve(self, client, addr, local_port, scheme, initial)
        except ssl.SSLError as e:
            log.debug("TLS error from %s: %s", addr, e)
        except OSError as e:
            # The client went away (reset, broken pipe): nothing to answer, nothing to log loudly.
            log.debug("connection from %s ended: %s", addr, e)
        except Exception:
            log.exception("error serving connection from %s", addr)
        finally:
            if slot is not None:
                self.caps.release(slot)
            try:
                client.close()
            except OSError:
                pass  # already closed by the peer

    def _read_proxy_header(self, client, addr):
        """``(addr, bytes after the header)`` from a trusted source's PROXY header; ``(None, b"")``
        when the connection was refused (malformed, missing while required, too slow)."""
        pp = self.proxy_protocol
        deadline = time.monotonic() + pp.timeout
        buf = b""
        try:
            while True:
                try:
                    header = proxyproto.parse(buf)
                except proxyproto.MissingHeader:
                    if pp.required:
                        raise
                    return addr, buf  # a trusted source speaking HTTP directly: its own address stands
                if header is not None:
                    if not header.local:
                        addr = (header.src_ip, header.src_port)
                    return addr, buf[header.length:]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlowClient(f"PROXY header not complete within {pp.timeout:g}s")
                client.settimeout(left)
                try:
                    data = client.recv(proxyproto.MAX_HEADER_BYTES - len(buf))
                except socket.timeout:
                    raise SlowClient(f"PROXY header not complete within {pp.timeout:g}s") from None
                if not data:
                    raise ClientDisconnected("closed before the PROXY header ended")
                buf += data
        except (proxyproto.ProxyProtocolError, SlowClient, ClientDisconnected) as e:
            # closed without an answer: whatever is on the other side does not speak HTTP yet
            self.proxy.metrics.incr(e.metric)
            self.proxy.client_errors.log(addr[0], e.status, e)
            return None, b""

    def _refuse_over_cap(self, client, addr, refusal, is_tls: bool) -> None:
        """A short 503 written directly, then a lingering close (the reply must not be reset away)."""
        ip = addr[0] if isinstance(addr, tuple) else UNKNOWN_CLIENT
        self.proxy.client_errors.log(ip, 503, f"over {refusal.value}")
        if is_tls:
            return  # refused before the handshake (it costs CPU): no HTTP answer can be read, just close
        client.settimeout(REFUSE_LINGER_S)
        send_all(client, OVER_CAP_REPLY)
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            return
        deadline = time.monotonic() + REFUSE_LINGER_S
        drained = 0
        while drained < REFUSE_LINGER_BYTES and time.monotonic() < deadline:
            try:
                data = client.recv(16384)
            except (socket.timeout, OSError):
                return
            if not data:
                return
            drained += len(data)

    def handle_http2_request(self, listener_name, req, sock, addr, h2_conn):
        """One HTTP/2 stream: edge's own adapter instead of gunicorn's WSGI one (``edge.h2``)."""
        self.count_request()
        port = listener_name[1] if isinstance(listener_name, tuple) else 0
        h2.serve_stream(self, req, addr, h2_conn, port)
