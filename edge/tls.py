"""TLS termination: certificates chosen by SNI, per-listener TLS, the HTTP→HTTPS redirect.

Theory of operation. gunicorn 27 has one TLS switch for the whole server: when
``certfile`` is set its gevent worker wraps *every* listener with the same context
(``GeventWorker.run`` passes one ``ssl_context`` to each ``StreamServer``), so plain
HTTP and HTTPS cannot be served at once through it. edge therefore gives gunicorn no
certificate and wraps TLS itself, per listener, in ``EdgeWorker.handle``
(``Termination.wrap``): a connection accepted on a ``tls: true`` listener gets the
handshake (the whole of it bounded by ``server.header_timeout``, not each read), then ALPN decides, as before,
between gunicorn's HTTP/2 connection and edge's HTTP/1 loop.

Certificates. ``load_termination`` runs where the configuration is validated (the
gunicorn master, at start and on every HUP, and ``python -m edge check``): every
certificate file is read and parsed, its key must be the certificate's (the public
keys are compared, so the refusal says which pair is wrong), and its names are the
configured ones or else the certificate's DNS and IP subject alternative names. A
problem refuses the start or the reload with file, key and reason; the old workers
keep serving the old certificates. The contexts are built in the master and reach
the workers through fork: a worker never reads a certificate file the master did not
validate, and a HUP that brings new files gives the new workers new contexts while
the old workers finish their connections on the old ones.

A certificate obtained while edge runs (ACME, a renewal) is added to a worker's
``Termination`` with ``install``, which puts it ahead of older ones for its names.

SNI. One context per certificate, all with the same settings; the default one (the
context every connection starts on) has an ``sni_callback`` that switches the
connection to the context ``SniTable.pick`` chooses: an exact name first, then a
wildcard ``*.example.com``, which covers exactly one label (RFC 6125 §6.4.3: "the
wildcard character ... only as the complete left-most label", matching one label),
then the default certificate (no SNI, an IP address, an unknown name).

Settings. TLS 1.2 and 1.3 only (``minimum_version``; 1.0 and 1.1 are never
offered), TLS 1.2 suites from ``tls.ciphers`` (ECDHE + AEAD by default),
compression off (CRIME), client-initiated renegotiation off (a CPU sink). The
client's cipher order wins: every suite on the list is strong, and a phone without
AES hardware then picks ChaCha20 (Mozilla's "intermediate" profile does the same).

Not available. OCSP stapling: Python's ``ssl`` module has no server-side stapling
call (OpenSSL's ``SSL_CTX_set_tlsext_status_cb`` is not exposed), and pyOpenSSL's
``set_ocsp_server_callback`` works only on pyOpenSSL connections, which gevent's
and gunicorn's sockets are not. Session resumption works: OpenSSL issues session
tickets (TLS 1.3 and 1.2) by default, and since the contexts are created in the
master, every worker of one master holds the same ticket key, so a ticket from one
worker resumes on another; a HUP (new contexts) starts a new key.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Sequence, TypeVar

import gevent
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from edge.config import AcmeConfig, CertificateConfig, EdgeConfig, TLSConfig, effective_listeners
from edge.errors import ConfigError
from edge.http import split_host_port

log = logging.getLogger("edge.tls")

#: RFC 8555 §8.3: HTTP-01 challenges are fetched over plain HTTP at this path; the
#: HTTP→HTTPS redirect leaves it alone so an ACME responder (edge's own or a route) answers.
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

_ALPN_H2 = ("h2", "http/1.1")
_ALPN_H1 = ("http/1.1",)
_MIN_VERSION = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# --------------------------------------------------------------------------- pure rules

T = TypeVar("T")


def normalize_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


class SniTable(Generic[T]):
    """Which certificate (context) serves a server name: exact, then one-label wildcard, then default."""

    __slots__ = ("_exact", "_wild", "default")

    def __init__(self, entries: Sequence[tuple[Sequence[str], T]], default: T) -> None:
        self._exact: dict[str, T] = {}
        self._wild: dict[str, T] = {}
        for names, value in entries:
            for name in names:
                name = normalize_name(name)
                if name.startswith("*."):
                    self._wild.setdefault(name[2:], value)  # the first certificate configured for a name wins
                else:
                    self._exact.setdefault(name, value)
        self.default = default

    def pick(self, server_name: str | None) -> T:
        if not server_name:
            return self.default
        name = normalize_name(server_name)
        found = self._exact.get(name)
        if found is not None:
            return found
        dot = name.find(".")
        if dot > 0:  # RFC 6125 §6.4.3: "*" stands for the whole left-most label, one label only
            found = self._wild.get(name[dot + 1:])
            if found is not None:
                return found
        return self.default


def covers(name: str, pattern: str) -> bool:
    """Whether certificate name ``pattern`` (exact or ``*.domain``) covers host ``name``."""
    name, pattern = normalize_name(name), normalize_name(pattern)
    if pattern.startswith("*."):
        dot = name.find(".")
        return dot > 0 and name[dot + 1:] == pattern[2:]
    return name == pattern


def redirect_status(method: str) -> int:
    """301 for GET and HEAD (what every nginx ``return 301 https://...`` answers, cached by
    browsers); 308 otherwise, so a POST stays a POST with its body (RFC 9110 §15.4.2: on
    301 "a user agent MAY change the request method from POST to GET")."""
    return 301 if method in ("GET", "HEAD") else 308


def https_location(host: str, raw_path: str, query: str, https_port: int) -> str:
    """``https://host[:port]/path?query`` for a request that came over plain HTTP; ``host`` is
    the admitted Host value (its own port, the plain listener's, is replaced)."""
    hostname, _port = split_host_port(host, 80)
    if ":" in hostname:
        hostname = f"[{hostname}]"  # an IPv6 literal (RFC 3986 §3.2.2)
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{hostname}{port}{raw_path}{'?' + query if query else ''}"


def redirects_to_https(raw_path: str) -> bool:
    """False for the ACME HTTP-01 challenge path, which must stay reachable over HTTP."""
    return not raw_path.startswith(ACME_CHALLENGE_PREFIX)


def listener_key(bind: str) -> int | str:
    """How a connection's listener is recognised: its port, or a Unix socket's path."""
    if bind.startswith(("unix:", "fd://")):
        return bind
    return split_host_port(bind, 0)[1]


def https_port(cfg: EdgeConfig) -> int | None:
    """The port HTTP requests are redirected to: the first TLS listener's (None without one)."""
    for lc in effective_listeners(cfg):
        if lc.tls and not lc.bind.startswith(("unix:", "fd://")):
            return split_host_port(lc.bind, 0)[1]
    return None


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True, slots=True)
class Certificate:
    """One validated certificate and its key, as configured."""

    cert_path: str
    key_path: str
    key: str            # its configuration key path (for messages), e.g. tls.certificates[1]
    names: tuple[str, ...]  # the names it is served for
    subject: str
    issuer: str
    serial: int
    not_after: datetime.datetime

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400.0


def subject_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS and IP subject alternative names, in order; the common name when there is no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return (normalize_name(str(cn[0].value)),) if cn else ()
    names = [normalize_name(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _read(path: str, source: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(source, key, f"cannot read {path}: {e.strerror}") from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_certificate(cc: CertificateConfig, source: str, key: str) -> Certificate:
    """Read and check one certificate/key pair; ConfigError naming the file and the reason."""
    pem = _read(cc.cert, source, f"{key}.cert")
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(source, f"{key}.cert", f"{cc.cert}: no PEM certificate in the file") from None
    leaf = chain[0]
    key_pem = _read(cc.key, source, f"{key}.key")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError(source, f"{key}.key", f"{cc.key}: the key is encrypted (edge needs it unencrypted)") from None
    except ValueError:
        raise ConfigError(source, f"{key}.key", f"{cc.key}: not a PEM private key") from None
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(source, f"{key}.key", f"{cc.key} is not the key of {cc.cert} (the public keys differ)")
    names = cc.names or subject_names(leaf)
    if not names:
        raise ConfigError(source, f"{key}.names", f"{cc.cert} names no host (no subject alternative name): give names")
    return Certificate(cc.cert, cc.key, key, names, leaf.subject.rfc4514_string(), leaf.issuer.rfc4514_string(),
                       leaf.serial_number, leaf.not_valid_after_utc)


def load_certificates(tls: TLSConfig, source: str) -> tuple[Certificate, ...]:
    out = []
    legacy = tls.certfile is not None
    for i, cc in enumerate(tls.all_certificates()):
        if legacy and i == 0:
            key = "tls.certfile"
        else:
            key = f"tls.certificates[{i - 1 if legacy else i}]"
        out.append(load_certificate(cc, source, key))
    return tuple(out)


def default_index(tls: TLSConfig, certs: Sequence[Certificate], source: str) -> int:
    if tls.default is None:
        return 0
    for i, c in enumerate(certs):
        if any(covers(tls.default, n) for n in c.names):
            return i
    raise ConfigError(source, "tls.default", f"no configured certificate covers {tls.default!r}")


# --------------------------------------------------------------------------- contexts


def _context_class():
    # gevent's SSLContext wraps sockets as cooperative gevent SSLSockets; the class is
    # only a subclass of the standard one, so building it in the master patches nothing.
    from gevent.ssl import SSLContext

    return SSLContext


def build_context(cert: Certificate, tls: TLSConfig) -> ssl.SSLContext:
    ctx = _context_class()(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSION[tls.min_version]
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(tls.ciphers)
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    ctx.set_alpn_protocols(list(_ALPN_H2 if tls.http2 else _ALPN_H1))
    return ctx


class Termination:
    """The TLS side of one configuration: a context per certificate, chosen by SNI."""

    def __init__(self, certificates: tuple[Certificate, ...], tls: TLSConfig, default: int = 0) -> None:
        self.certificates = certificates
        self.config = tls
        contexts = [build_context(c, tls) for c in certificates]
        self._entries = [(c.names, ctx) for c, ctx in zip(certificates, contexts)]
        self.table: SniTable[ssl.SSLContext] = SniTable(self._entries, contexts[default])
        self.default_context = contexts[default]
        self.default_context.sni_callback = self._on_sni

    def install(self, cert: Certificate) -> None:
        """Serve ``cert`` from now on (in this process), ahead of any certificate already
        serving its names: how a certificate obtained at run time (ACME) or renewed is used
        without a restart. Handshakes already under way keep the table they started with."""
        ctx = build_context(cert, self.config)
        self._entries = [(cert.names, ctx), *self._entries]
        self.certificates = (cert, *(c for c in self.certificates if c.cert_path != cert.cert_path))
        self.table = SniTable(self._entries, self.table.default)  # one assignment: readers see old or new

    def _on_sni(self, sslsock, server_name: str | None, initial) -> None:
        chosen = self.table.pick(server_name)
        if chosen is not initial:
            sslsock.context = chosen
        return None  # None: go on with the handshake

    def wrap(self, sock, handshake_timeout_s: float):
        """The server side of TLS on an accepted socket, handshake done (ssl.SSLError, OSError;
        ``socket.timeout`` when the whole handshake took longer than ``handshake_timeout_s``)."""
        tls_sock = self.default_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                                                    suppress_ragged_eofs=True)
        tls_sock.settimeout(handshake_timeout_s)
        # The socket timeout alone bounds each wait, and gevent's do_handshake re-arms it at
        # every read: a client trickling its ClientHello a byte per (timeout - ε) would hold
        # the connection, and its connection-cap slot, for ever. The deadline bounds the whole.
        with gevent.Timeout(handshake_timeout_s,
                            socket.timeout(f"TLS handshake not done within {handshake_timeout_s:g}s")):
            tls_sock.do_handshake()
        return tls_sock


#: a self-signed stand-in expiring within this many days is made anew at the next validation
SELF_SIGNED_RENEW_DAYS = 30


def acme_start_certificate(acme: AcmeConfig, source: str) -> Certificate:
    """What a TLS listener serves when its only certificates come from ACME: the one obtained
    before (kept in ``storage_dir``), else a self-signed one for the names until the first order
    completes (edge.acme installs the real one in every worker without a restart). The stand-in
    is kept across validations, made anew only when missing, unreadable, for other names, or
    expiring within ``SELF_SIGNED_RENEW_DAYS``."""
    from edge.acme import Storage, set_id

    names = tuple(acme.names)
    stored = Storage(acme.storage_dir, acme.directory, set_id(names, acme.directory))
    if stored.cert_path.is_file() and stored.key_path.is_file():
        try:
            return load_certificate(CertificateConfig(cert=str(stored.cert_path), key=str(stored.key_path), names=names),
                                    source, "tls.acme")
        except ConfigError as e:
            log.warning("acme: the stored certificate cannot be served (%s); a self-signed one stands in", e)
    directory = Path(acme.storage_dir) / "self-signed"
    stand_in = CertificateConfig(cert=str(directory / "cert.pem"), key=str(directory / "key.pem"), names=names)
    try:
        # Reused while it covers the names for a while yet: this runs at every validation (each
        # HUP, each `edge check`), and a new key each time would only churn the files.
        current = load_certificate(stand_in.model_copy(update={"names": ()}), source, "tls.acme")
        if set(current.names) >= {normalize_name(n) for n in names} and \
                current.days_left(datetime.datetime.now(datetime.timezone.utc)) > SELF_SIGNED_RENEW_DAYS:
            return load_certificate(stand_in, source, "tls.acme")
    except ConfigError:
        pass  # missing or unreadable: made anew below
    generate_self_signed(directory, names)
    return load_certificate(stand_in, source, "tls.acme")


def load_termination(cfg: EdgeConfig) -> Termination | None:
    """Validate the certificates of ``cfg.tls`` and build the contexts (ConfigError: file, key, reason)."""
    if cfg.tls is None:
        return None
    certs = load_certificates(cfg.tls, cfg.source)
    if not certs and cfg.tls.acme is not None:
        certs = (acme_start_certificate(cfg.tls.acme, cfg.source),)
    default = default_index(cfg.tls, certs, cfg.source)
    try:
        return Termination(certs, cfg.tls, default)
    except ssl.SSLError as e:
        raise ConfigError(cfg.source, "tls", f"OpenSSL refused the TLS settings: {e}") from None


# --------------------------------------------------------------------------- development certificates


def generate_self_signed(directory: str | Path, names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
                         days: int = 365) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (EC P-256) for ``names`` into ``directory``; return their paths."""
    from edge.certs import self_signed

    return self_signed(directory, names, days)

