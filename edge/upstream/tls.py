"""TLS towards backends: one client context per pool, the handshake, and TLS-aware socket I/O.

Theory of operation. A pool whose servers use TLS (``https://host:port`` or ``tls: true``)
builds one ``ssl.SSLContext`` per worker, after fork, from ``upstreams.<name>.tls``
(``build_context``): the system trust store or ``ca_file``, hostname checking, an optional
client certificate for mutual TLS, the lowest version, and ALPN ``http/1.1`` only (edge's
client speaks HTTP/1.1 to backends; RFC 7301 §3.1: the server picks from what we offer, so
it cannot switch us to h2). ``verify: false`` is an explicit escape hatch, never a default,
and ``build_context`` logs it as a warning once per pool and worker.

``handshake`` wraps a connected gevent socket and runs the handshake inside the connect
timeout: a handshake that does not finish in time is a ``ConnectTimeout`` (504), one that
fails is a ``TLSHandshakeError`` (502, metric ``upstream.<pool>.tls_error``) whose message
names the server and OpenSSL's verification reason ("certificate has expired", "Hostname
mismatch", "unable to get local issuer certificate"). The SNI name and the name checked
against the certificate are the server's host, or ``server_name`` when a pool reaches its
servers by address; an IP literal gets no SNI (RFC 6066 §3: "Literal IPv4 and IPv6
addresses are not permitted in HostName") and is checked against the certificate's IP SANs.

I/O. The upstream client (client.py) reads and writes ``PooledConnection.raw`` without
blocking and waits on the connection's own timers. For a plain connection ``raw`` is the
kernel socket; writing there under TLS would bypass encryption, so a TLS connection's
``raw`` is a ``TLSTransport``: the same ``recv``/``send`` shape over the SSL object of the
gevent socket, put in non-blocking mode, with OpenSSL's "want read"/"want write" turned
into ``BlockingIOError`` (recv) or 0 bytes sent (send), after which the client waits on
the kernel socket as it does for plain ones. A want-write on send is retried with the same
bytes, as OpenSSL requires (CPython enables SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the
buffer may be a new slice of the same data). Reads only wait after OpenSSL said it has no
whole record buffered, so a record already decrypted is never stranded behind a wait on
the kernel socket. An EOF without close_notify reads as EOF (the standard library's
``suppress_ragged_eofs``), so a backend that drops an idle TLS connection is seen as stale
the same way as a plain one.

Stale check. A plain pooled connection is checked with one ``MSG_PEEK`` of the kernel
socket; on TLS the kernel bytes may be a session ticket (TLS 1.3 sends them after the
handshake) rather than data or a close, and a peek cannot tell. ``TLSTransport.peer_closed``
instead reads one byte through OpenSSL without blocking: "want read" means open and idle
(any ticket was consumed on the way), EOF or an alert means closed, and a byte of data on
an idle connection is a protocol violation that makes it unusable anyway.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time

from gevent import ssl as _gssl

from edge.errors import ConnectTimeout, TLSHandshakeError

log = logging.getLogger("edge.upstream")

ALPN_PROTOCOLS = ("http/1.1",)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def build_context(pool: str, cfg) -> ssl.SSLContext:
    """The client context of pool ``pool`` from its ``UpstreamTLSConfig`` (None: all defaults).

    The files were loaded once already when the configuration was validated
    (``UpstreamTLSConfig``), so a wrong path refused the start or reload before this."""
    ctx = _gssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # gevent's: wrap_socket gives cooperative sockets
    ctx.minimum_version = _VERSIONS[cfg.min_version] if cfg is not None else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    if cfg is not None and cfg.ca_file:
        ctx.load_verify_locations(cafile=cfg.ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cfg is not None and cfg.client_cert:
        ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
    if cfg is not None and not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning("upstream %s: TLS verification is off (tls.verify: false): any certificate is accepted, "
                    "so anyone on the path to these servers can read and change the traffic", pool)
    return ctx


def sni_name(host: str, cfg) -> str:
    """The name checked against the certificate (and sent as SNI unless it is an IP literal)."""
    if cfg is not None and cfg.server_name:
        return cfg.server_name
    return host


def handshake(sock, ctx: ssl.SSLContext, name: str, authority: str, deadline: float):
    """Wrap the connected gevent socket ``sock`` and complete the handshake before ``deadline``
    (monotonic); the gevent SSL socket. Closes ``sock`` on failure."""
    try:
        tls = ctx.wrap_socket(sock, server_hostname=name, do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        sock.close()
        raise TLSHandshakeError(f"TLS to {authority} failed: {e}") from None
    try:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        tls.settimeout(left)
        tls.do_handshake()
    except ssl.SSLCertVerificationError as e:
        tls.close()
        raise TLSHandshakeError(f"TLS to {authority}: certificate verification failed: "
                                f"{e.verify_message or e.reason} (name checked: {name})") from None
    except TimeoutError:  # gevent raises socket.timeout, which is TimeoutError
        tls.close()
        raise ConnectTimeout(f"TLS handshake with {authority} timed out") from None
    except ssl.SSLError as e:
        tls.close()
        raise TLSHandshakeError(f"TLS to {authority} failed: {e.reason or e}") from None
    except OSError as e:
        tls.close()
        raise TLSHandshakeError(f"TLS to {authority} failed during the handshake: "
                                f"{e.strerror or errno.errorcode.get(e.errno, e)}") from None
    tls.settimeout(0.0)  # from here on the client's own waits (TLSTransport)
    return tls


class TLSTransport:
    """``recv``/``send`` over a gevent SSL socket without blocking (see the module docstring)."""

    __slots__ = ("_sock", "_read", "_write", "authority")

    def __init__(self, sock, authority: str = "") -> None:
        self._sock = sock
        self._read = sock.read
        self._write = sock.send
        self.authority = authority

    def recv(self, nbytes: int) -> bytes:
        try:
            return self._read(nbytes)
        except _WANT:
            raise BlockingIOError(errno.EAGAIN, "TLS record not complete") from None
        except ssl.SSLError as e:
            # TLS 1.3 (RFC 8446 §4.4.2): the client's handshake ends before the server has checked
            # the client certificate, so a refused (or missing) one arrives as an alert on the
            # first read: still a handshake failure, and reported as one.
            reason = getattr(e, "reason", None) or ""
            if "CERTIFICATE" in reason:
                raise TLSHandshakeError(f"TLS to {self.authority}: the server refused edge's client certificate "
                                        f"(or its absence): {reason}") from None
            raise

    def send(self, data) -> int:
        try:
            return self._write(data)  # 0 when OpenSSL wants to wait (timeout 0: gevent returns 0)
        except ssl.SSLError:
            # TLS 1.3: a backend that refuses edge's client certificate sends its alert after the
            # handshake; the first write can fail (EOF) before a read has seen it. Read the alert
            # so the failure is reported as what it is; any other write failure passes unchanged.
            try:
                self.recv(1)
            except TLSHandshakeError:
                raise
            except (OSError, ValueError):
                pass
            raise

    def peer_closed(self) -> bool:
        """True when the backend closed (or broke) this idle connection; never blocks."""
        try:
            data = self._read(1)
        except _WANT:
            return False
        except OSError:
            return True
        # EOF, or data on an idle connection (a protocol violation): unusable either way.
        return True
