"""The edge configuration: one YAML file validated into frozen, typed objects.

This module is the only place a configuration key is defined: its type, default,
constraints and description (``scripts/gen_config_doc.py`` turns the descriptions
into ``docs/config.md``). Unknown keys are errors. Every error names the file, the
key path and the reason, e.g.::

    conf/edge.yaml: upstreams.api.servers[1]: port must be 1-65535 (got 70000)

Durations are written ``2s``/``500ms``, sizes ``10MB``/``64KiB``, rates ``100/s``.
Plugin settings are kept here as plain mappings: each plugin's own ``Config``
validates them when the plugins are loaded (``edge.plugins``), with the same
error format.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.compress.negotiate import DEFAULT_EXCLUDE_TYPES, DEFAULT_PREFERENCE, DEFAULT_TYPES, parse_type_pattern
from edge.cookies import cookie_error
from edge.errors import ConfigError
from edge.fields import field_error, is_token
from edge.http import framing_field_error, parse_host, split_host_port
from edge.pattern import compile_client_pattern
from edge.units import parse_duration, parse_size

DEFAULT_CONFIG_PATH = "conf/edge.yaml"


def _duration(v: Any) -> float:
    return parse_duration(v)


def _size(v: Any) -> int:
    return parse_size(v)


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError(f"must be positive (got {v:g})")
    return v


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
# A duration or size where 0 would break the server (a 0 s socket timeout makes a socket
# non-blocking; a 0-byte bound refuses everything): refused at load (issue 7).
PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]
PositiveSize = Annotated[int, BeforeValidator(_size), AfterValidator(_positive)]


def _client_regex(v: str) -> str:
    """A regex that runs on client input: it must compile with the linear-time engine."""
    compile_client_pattern(v)
    return v


def _header_fields(v: dict[str, str]) -> dict[str, str]:
    """Header name -> value pairs that edge will write: RFC 9110 §5.1 names, §5.5 values."""
    for name, value in v.items():
        reason = field_error(name, value) or framing_field_error(name)
        if reason is not None:
            raise ValueError(reason)
    return v


def _header_name(v: str) -> str:
    if not is_token(v):
        raise ValueError(f"invalid header name {v!r}: must be a token (RFC 9110 §5.1)")
    return v


HeaderName = Annotated[str, AfterValidator(_header_name)]


class Model(BaseModel):
    """Base of every config object: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- server


def _cidr_list(v: tuple[str, ...]) -> tuple[str, ...]:
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not an IP network: {item!r}") from None
    return v


class ProxyProtocolConfig(Model):
    """The PROXY protocol (v1 and v2) on plain-HTTP listeners (edge.proxyproto, docs/security.md)."""

    enabled: bool = Field(False, description="read a PROXY protocol header (v1 or v2) at the start of connections "
                                             "from `trusted` sources; their client address replaces the peer's")
    trusted: Annotated[tuple[str, ...], AfterValidator(_cidr_list)] = Field(
        (), description="CIDRs of the load balancers allowed to send a PROXY header; from any other peer the "
                        "header is not read, so a request starting with one is refused as malformed HTTP")
    required: bool = Field(True, description="a trusted source must send the header (closed otherwise); "
                                             "false: a connection without one keeps its own peer address")
    timeout: PositiveDuration = Field(5.0, description="time a trusted source has to send the whole header; closed beyond")

    @model_validator(mode="after")
    def _sources(self) -> "ProxyProtocolConfig":
        if self.enabled and not self.trusted:
            raise _KeyError("server.proxy_protocol.trusted", "give the CIDRs of the load balancers that send PROXY "
                            "headers (enabled with no trusted source would refuse every connection)")
        return self


def _check_bind(item: str) -> str:
    # gunicorn reads a bare "localhost" as localhost:8000 without a word (issue 8): an
    # address edge listens on must say its port, so a forgotten one is a refused start.
    if item.startswith(("unix:", "fd://")):
        return item
    try:
        _host, port = split_host_port(item, 0)
    except ValueError:
        raise ValueError(f"expected 'host:port', '[ipv6]:port' or 'unix:/path' (got {item!r})") from None
    if port == 0:
        raise ValueError(f"no port in {item!r} (write 'host:port')")
    return item


class ListenerConfig(Model):
    bind: Annotated[str, AfterValidator(_check_bind)] = Field(description="`host:port` or `unix:/path`")
    tls: bool = Field(False, description="terminate TLS on this listener (needs the `tls` section)")


class ServerConfig(Model):
    bind: tuple[str, ...] = Field(
        ("127.0.0.1:8080",), description="addresses to listen on, `host:port` or `unix:/path`; all of them TLS when "
        "the `tls` section is set (use `listeners` to mix plain HTTP and HTTPS)"
    )
    listeners: tuple[ListenerConfig, ...] = Field(
        (), description="instead of `bind`: addresses, each plain HTTP or TLS, e.g. `[{bind: '0.0.0.0:80'}, "
        "{bind: '0.0.0.0:443', tls: true}]`"
    )
    workers: int = Field(0, ge=0, description="worker processes; 0 means one per core")
    worker_connections: int = Field(10000, ge=1, description="concurrent connections per worker")
    keepalive: Duration = Field(
        75.0,
        description="how long an idle client keep-alive connection is kept; 0 means no keep-alive, as in gunicorn "
        "(HTTP/1 connections close after each response; never a 0 s socket timeout)",
    )
    graceful_timeout: Duration = Field(30.0, description="how long a stopping worker may finish its requests")
    max_request_line: int = Field(
        8190,
        description="longest request line in bytes, 1-65535 (414 beyond). Unlike gunicorn, 0 is refused rather than "
        "meaning unlimited: a bound is what keeps one client from growing a worker's buffers",
    )
    max_header_fields: int = Field(100, ge=1, le=32768, description="most request header fields (431 beyond)")
    max_header_field_size: int = Field(8190, ge=1, description="longest request header field in bytes (431 beyond)")
    max_head_size: Size = Field(
        65536, gt=0, description="longest request head in bytes, request line and all fields together (431 beyond)"
    )
    header_timeout: Duration = Field(
        10.0, gt=0, description="time a client has to send a whole request head, from its first byte "
        "(from the accept for a new connection); 408 and close beyond"
    )
    body_idle_timeout: Duration = Field(
        60.0, gt=0, description="longest gap between two reads of a request body, or two writes of a reply "
        "that the client does not take; the connection is closed beyond"
    )
    tunnel_idle_timeout: Duration | None = Field(
        None, gt=0, description="an upgraded (WebSocket) tunnel is closed after this long without traffic in "
        "either direction; unset: keepalive (75s when keepalive is 0)"
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="CIDRs of proxies in front of edge; forwarding headers (X-Forwarded-For, Forwarded) "
        "from them are believed when resolving the client address",
    )
    proxy_protocol: ProxyProtocolConfig = Field(ProxyProtocolConfig(), description="PROXY protocol from load balancers")
    max_connections: int | None = Field(
        None, ge=1, description="open client connections per worker; beyond, a new connection gets a short 503 "
        "and is closed instead of waiting in the accept queue (must be below worker_connections); unset: no cap"
    )
    max_connections_per_ip: int | None = Field(
        None, ge=1, description="open connections per client address per worker (503 and close beyond); unset: no cap"
    )
    max_connections_per_ip_node: int | None = Field(
        None, ge=1, description="open connections per client address across the workers of this node, counted "
        "in the node-local store (503 and close beyond); unset: no cap"
    )
    control_socket: str | None = Field(
        None, description="path of gunicorn's control socket; unset disables it (gunicorn shares one default path between instances)"
    )
    pidfile: str | None = Field(None, description="where the master writes its PID")
    accesslog: str | None = Field(None, description="JSON access log: a file path, or `-` for stdout; unset disables it")
    errorlog: str = Field("-", description="gunicorn error log target")
    loglevel: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="log level")

    @field_validator("max_request_line")
    @classmethod
    def _request_line(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            extra = " (0 does not mean unlimited here, unlike gunicorn's limit_request_line)" if v == 0 else ""
            raise ValueError(f"must be 1-65535 (got {v}){extra}")
        return v

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            _check_bind(item)
        return v

    @model_validator(mode="after")
    def _bind_or_listeners(self) -> "ServerConfig":
        if self.listeners and "bind" in self.model_fields_set:
            raise ValueError("give bind or listeners, not both (a listener says its own bind address)")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _cidr_list(v)

    @model_validator(mode="after")
    def _connection_caps(self) -> "ServerConfig":
        if self.max_connections is not None and self.max_connections >= self.worker_connections:
            raise _KeyError("server.max_connections", f"must be below worker_connections ({self.worker_connections}): "
                            f"the 503 answers need free slots (got {self.max_connections})")
        return self


# --------------------------------------------------------------------------- tls


#: Let's Encrypt's production ACME directory (RFC 8555 §7.1.1), the default of tls.acme.directory
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


def _acme_name(v: str) -> str:
    v = v.strip().lower().rstrip(".")
    if "*" in v:
        raise ValueError(f"a DNS name without port or wildcard (got {v!r}): wildcards need the DNS-01 challenge")
    try:
        host, port = parse_host(v)
    except ValueError as e:
        raise ValueError(str(e)) from None
    if port is not None or host.startswith("[") or ":" in host or host.replace(".", "").isdigit() or "*" in host:
        # RFC 8555 §7.1.4 / §8.3: HTTP-01 proves control of a DNS name; wildcards need DNS-01.
        raise ValueError(f"a DNS name without port or wildcard (got {v!r})")
    return host


class AcmeConfig(Model):
    """Automatic certificates over ACME (RFC 8555; edge.acme, docs/tls.md)."""

    directory: str = Field(
        LETS_ENCRYPT_DIRECTORY,
        description="URL of the ACME directory: Let's Encrypt production (the default), its staging directory, or a private CA",
    )
    email: str | None = Field(None, description="contact address given to the CA for expiry and incident notices")
    accept_terms: bool = Field(
        False, description="you agree to the CA's terms of service (RFC 8555 §7.3 `termsOfServiceAgreed`); must be true"
    )
    names: tuple[Annotated[str, AfterValidator(_acme_name)], ...] = Field(
        min_length=1, max_length=100,
        description="DNS names of the certificate (one certificate for all of them); each must reach this edge on port 80",
    )
    storage_dir: str = Field(
        "/var/lib/edge/acme", description="where the account key, certificate and key are kept (keys mode 0600)"
    )
    renew_before: PositiveDuration = Field(30 * 86400.0, description="renew a certificate this long before it expires")
    check_interval: PositiveDuration = Field(
        3600.0, description="how often a worker checks whether the certificate must be renewed (or a new one appeared)"
    )
    retry_initial: PositiveDuration = Field(60.0, description="wait after a failed order; doubled after every further failure")
    retry_max: PositiveDuration = Field(86400.0, description="longest wait between two failed orders")
    ca_bundle: str | None = Field(
        None, description="PEM bundle trusted for the ACME server's own HTTPS (a private or test CA); unset: the system store"
    )
    challenge: Literal["http-01"] = Field(
        "http-01", description="how control of the names is proven: `http-01` (edge answers "
        "`/.well-known/acme-challenge/` on its plain-HTTP listeners)"
    )

    @model_validator(mode="after")
    def _terms(self) -> "AcmeConfig":
        if not self.accept_terms:
            raise ValueError("set accept_terms: true to agree to the ACME CA's terms of service")
        if not self.directory.startswith("https://"):
            raise ValueError(f"directory must be an https:// URL (RFC 8555 §6.1; got {self.directory!r})")
        return self


#: TLS 1.2 suites when ``tls.ciphers`` is not set: ECDHE key exchange (forward secrecy) with an
#: AEAD cipher only, as in Mozilla's "intermediate" profile. TLS 1.3 suites are all AEAD and
#: are not chosen by this list (OpenSSL configures them separately).
MODERN_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class CertificateConfig(Model):
    cert: str = Field(description="PEM certificate chain (leaf first)")
    key: str = Field(description="PEM private key of `cert`")
    names: tuple[str, ...] = Field(
        (), description="names this certificate is served for (exact or `*.example.com`); empty: its DNS and IP "
        "subject alternative names"
    )

    @field_validator("names")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for n in v:
            n = n.strip().lower().rstrip(".")
            # RFC 6125 §6.4.3: a wildcard is the whole left-most label, and matches one label only
            if not n or ("*" in n and (not n.startswith("*.") or "*" in n[2:] or n.count(".") < 2)):
                raise ValueError(f"a name is a host name or '*.domain.tld' (got {n!r})")
            out.append(n)
        return tuple(out)


class Http2Settings(Model):
    """gunicorn's HTTP/2 connection settings (sent to clients in SETTINGS)."""

    max_concurrent_streams: int = Field(100, ge=1, le=2**31 - 1, description="streams a client may open at once "
                                        "on one connection")
    initial_window_size: int = Field(65535, ge=1, le=2**31 - 1, description="flow-control window per stream, bytes")
    max_frame_size: int = Field(16384, ge=16384, le=16777215, description="largest frame payload accepted, bytes")
    max_header_list_size: int = Field(65536, ge=1, description="largest decoded header list accepted, bytes "
                                      "(HPACK bomb protection)")


class TLSConfig(Model):
    certfile: str | None = Field(None, description="PEM certificate chain served to clients (shorthand for one "
                                 "entry of `certificates`)")
    keyfile: str | None = Field(None, description="PEM private key of certfile")
    certificates: tuple[CertificateConfig, ...] = Field(
        (), description="certificates chosen by the client's SNI name (exact names before wildcards)"
    )
    default: str | None = Field(
        None, description="a name of the certificate served to clients that send no SNI or an unknown name; "
        "unset: the first certificate"
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="oldest TLS version accepted (1.0 and 1.1 never are)")
    ciphers: str = Field(MODERN_TLS12_CIPHERS, description="OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are "
                         "OpenSSL's defaults)")
    http2: bool = Field(True, description="offer HTTP/2 over ALPN (h2, then http/1.1)")
    http2_settings: Http2Settings = Field(Http2Settings(), description="HTTP/2 connection settings")
    acme: AcmeConfig | None = Field(None, description="obtain and renew certificates automatically over ACME (docs/tls.md)")
    redirect_http: bool = Field(
        False, description="answer requests on plain-HTTP listeners with a redirect to HTTPS (301 for GET/HEAD, "
        "308 otherwise), except ACME HTTP-01 challenges (`/.well-known/acme-challenge/`)"
    )

    @field_validator("ciphers")
    @classmethod
    def _ciphers(cls, v: str) -> str:
        import ssl

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL accepts no cipher from {v!r}") from None
        return v

    @model_validator(mode="after")
    def _pairs(self) -> "TLSConfig":
        if (self.certfile is None) != (self.keyfile is None):
            missing = "keyfile" if self.keyfile is None else "certfile"
            raise _KeyError(f"tls.{missing}", "required key is missing")  # they go together
        if self.certfile is None and not self.certificates and self.acme is None:
            raise _KeyError("tls.certificates", "no certificate: give certificates (or certfile and keyfile), or acme")
        return self

    def all_certificates(self) -> tuple[CertificateConfig, ...]:
        """``certfile``/``keyfile`` (first) and ``certificates``, in the order configured."""
        first = (CertificateConfig(cert=self.certfile, key=self.keyfile),) if self.certfile else ()
        return first + self.certificates


# --------------------------------------------------------------------------- upstreams


class TimeoutsConfig(Model):
    connect: Duration = Field(2.0, description="time to open a connection to a backend (504 beyond)")
    read: Duration = Field(30.0, description="longest gap between two reads from a backend (504 beyond)")
    send: Duration = Field(30.0, description="longest a single write to a backend may block (504 beyond)")
    total: Duration | None = Field(None, description="longest a whole exchange with a backend may take, unset for no limit")

    @field_validator("connect", "read", "send", "total")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"must be positive (got {v})")
        return v


class ServerAddress(Model):
    host: str = Field(description="backend host name or IP address")
    port: int = Field(description="backend port")
    weight: int = Field(1, ge=0, le=1000, description="relative share of requests; 0 sends it no new requests (like `drain`)")
    backup: bool = Field(False, description="used only when every primary server is down, already tried or at its `max_conns`")
    drain: bool = Field(False, description="send no new requests; requests in flight finish (docs/upstreams.md)")
    max_conns: int = Field(
        0, ge=0, description="most requests in flight to this server per worker (0: no limit); beyond it the server counts "
        "as unavailable and a request waits in the pool's `queue` or gets 503",
    )
    tls: bool = Field(False, description="speak TLS to this server (`https://host:port` sets it); see the pool's `tls` settings")

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"port must be 1-65535 (got {v})")
        return v

    @classmethod
    def parse(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        tls = text.startswith("https://")
        if tls:
            text = text[len("https://"):]
        elif text.startswith("http://"):
            text = text[len("http://"):]
        if text.endswith("/"):
            text = text[:-1]
        head, sep, tail = text.rpartition(":")
        if tls and not (sep and tail.isascii() and tail.isdigit() and (head.startswith("[") or ":" not in head)):
            head, sep, tail = text, ":", "443"  # RFC 9110 §4.2.2: https's default port
        if sep and tail.isascii() and tail.isdigit() and (head.startswith("[") or ":" not in head):
            try:
                host, _ = parse_host(head)  # the one host parser; the port field checks the range
            except ValueError:
                pass
            else:
                return {"host": host, "port": int(tail), "tls": True} if tls else {"host": host, "port": int(tail)}
        if tls:
            raise ValueError(f"expected 'https://host[:port]' (got {value!r})")
        raise ValueError(f"expected 'host:port' or 'http://host:port' (got {value!r})")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class KeepaliveConfig(Model):
    max_idle: int = Field(
        1024, ge=0,
        description="idle connections kept per backend server and worker; 0 disables reuse. Keep it above the concurrency "
        "a worker sees: every request beyond it opens and closes a connection (TIME_WAIT churn under load)",
    )
    idle_timeout: PositiveDuration = Field(60.0, description="idle connections older than this are closed, not reused (> 0)")
    max_requests: int = Field(10000, ge=1, description="requests sent on one connection before it is retired")


class UpstreamLimitsConfig(Model):
    """Bounds on what a backend may send (issue 7): over any of them the answer is 502 and the connection is discarded."""

    max_head_bytes: Size = Field(
        65536, ge=1024, description="largest response head (status line, fields, 1xx interim heads included) accepted from a backend"
    )
    max_line_bytes: int = Field(8190, ge=64, le=1048576, description="longest status line or field line of a backend's response head or trailers")
    max_fields: int = Field(100, ge=1, le=32768, description="most fields in a backend's response head, and separately in its trailers")
    max_trailer_bytes: Size = Field(
        65536, ge=64, description="largest trailer section (and chunk framing between two body bytes) accepted from a backend"
    )
    max_interim_responses: int = Field(8, ge=0, le=1000, description="most 1xx interim responses (103 Early Hints...) before the final one")
    retry_body_bytes: Size = Field(
        65536, ge=0,
        description="request body bytes kept while a request may still be retried (another server, or a fresh connection); "
        "a request whose body outgrew this is never retried (bodies are not rewindable)",
    )


Fallback = Literal["round_robin", "least_conn", "p2c_ewma", "random"]


class HashConfig(Model):
    """Consistent hashing (`balance: hash`): what the key is (issue 9, docs/upstreams.md)."""

    key: Literal["client_ip", "header", "cookie", "path"] = Field(
        description="the key: the client address (after trusted proxies), a request header, a cookie, or the normalised path"
    )
    name: str | None = Field(None, description="the header or cookie name (required for `header` and `cookie`)")
    fallback: Fallback = Field("p2c_ewma", description="balancer for requests without the key (header or cookie absent)")

    @model_validator(mode="after")
    def _name(self) -> "HashConfig":
        if self.key in ("header", "cookie"):
            if not self.name:
                raise ValueError(f"name: required when key is {self.key!r}")
            if not is_token(self.name):
                raise ValueError(f"name: {self.name!r} must be a token (RFC 9110 §5.1, RFC 6265 §4.1.1)")
        elif self.name is not None:
            raise ValueError(f"name: only for key 'header' or 'cookie' (got key {self.key!r})")
        return self


class StickyConfig(Model):
    """Sticky sessions (`balance: sticky`): the cookie edge sets to pin a client to a server (issue 9)."""

    cookie: str = Field("edge_server", description="cookie name")
    ttl: Duration | None = Field(None, description="cookie lifetime (Max-Age); unset: a session cookie")
    path: str = Field("/", description="cookie Path")
    domain: str | None = Field(None, description="cookie Domain; unset: this host only")
    secure: bool = Field(False, description="send the cookie over HTTPS only")
    httponly: bool = Field(True, description="hide the cookie from scripts")
    samesite: Literal["Strict", "Lax", "None"] | None = Field("Lax", description="cookie SameSite")
    secret: str | None = Field(
        None, description="key of the hash that names a server in the cookie; unset: derived from the pool's name and "
        "servers (pins then move when the server list changes). Same value on every node of a fleet",
    )
    fallback: Fallback = Field("p2c_ewma", description="balancer for clients without a valid cookie")

    @model_validator(mode="after")
    def _cookie(self) -> "StickyConfig":
        if self.ttl is not None and self.ttl < 1:
            raise ValueError(f"ttl: must be at least 1s (got {self.ttl:g}s); Max-Age=0 would delete the cookie")
        max_age = None if self.ttl is None else int(self.ttl)
        problem = cookie_error(self.cookie, "x", max_age=max_age, path=self.path, domain=self.domain,
                               secure=self.secure, samesite=self.samesite)
        if problem is not None:
            raise ValueError(problem)
        return self


class QueueConfig(Model):
    """Waiting for a slot when every eligible server is at its `max_conns` (per worker)."""

    size: int = Field(ge=1, le=100000, description="most requests waiting per worker; beyond it 503 at once")
    timeout: PositiveDuration = Field(description="longest a request waits for a slot before 503")


def _status_set(v: Any) -> Any:
    """``[200, "3xx"]`` -> the statuses as a sorted tuple of ints (a class ``Nxx`` is 100 statuses)."""
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"expected a list of statuses or classes like 2xx (got {v!r})")
    out: set[int] = set()
    for item in v:
        if isinstance(item, str) and len(item) == 3 and item[0] in "12345" and item[1:].lower() == "xx":
            base = int(item[0]) * 100
            out.update(range(base, base + 100))
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            out.add(item)
        else:
            raise ValueError(f"a status must be 100-599 or a class like 2xx (got {item!r})")
    return tuple(sorted(out))


StatusSet = Annotated[tuple[int, ...], BeforeValidator(_status_set)]


class ActiveHealthConfig(Model):
    """HTTP probes of every server of a pool; one prober per node (per fleet on redis), see docs/upstreams.md."""

    path: str = Field("/", description="request target of the probe (origin-form: starts with `/`)")
    method: str = Field("GET", description="probe method (a token)")
    host: str | None = Field(None, description="Host field of the probe; default: the server's `host:port`")
    expect_status: StatusSet = Field(
        ("2xx", "3xx"), validate_default=True, description="statuses that pass, as numbers or classes (`[200, \"3xx\"]`)"
    )
    expect_body: str | None = Field(None, description="text the body must contain (within `max_body_bytes`); unset: the body is not read")
    max_body_bytes: PositiveSize = Field(65536, description="most body bytes read to look for `expect_body`")
    interval: PositiveDuration = Field(5.0, description="time between two probes of one server")
    timeout: PositiveDuration = Field(2.0, description="a probe without a full answer within this fails")
    rise: int = Field(2, ge=1, le=100, description="consecutive passing probes that bring a down server back")
    fall: int = Field(3, ge=1, le=100, description="consecutive failing probes that mark a server down")
    jitter: float = Field(0.1, ge=0, le=0.5, description="each interval is varied by up to this share, so probes of many servers spread out")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not is_token(v):
            raise ValueError(f"must be a token (RFC 9110 §9.1) (got {v!r})")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # RFC 9112 §3.2.1 origin-form; SP/CTL would split the request line.
        if not v.startswith("/") or any(c <= " " or c == "\x7f" or c == "#" for c in v):
            raise ValueError(f"must be an origin-form target: starts with '/', no space, control character or '#' (got {v!r})")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and (not v or field_error("Host", v) is not None):
            raise ValueError(f"not a valid Host field value (got {v!r})")
        return v


class PassiveHealthConfig(Model):
    """Outlier detection from real traffic: ejection, then a half-open trial (docs/upstreams.md)."""

    consecutive_failures: int = Field(
        5, ge=0, le=1000,
        description="consecutive failed attempts (connect failure, timeout, a status in `on_5xx`) that eject a server; 0 disables",
    )
    on_5xx: StatusSet = Field((), description="statuses counted as failures (e.g. `[502, 503, 504]` or `[\"5xx\"]`); empty: none")
    base_ejection: PositiveDuration = Field(30.0, description="first ejection time; doubled at each repeated ejection")
    max_ejection: PositiveDuration = Field(300.0, description="longest ejection; also the healthy time that forgives one past ejection")
    max_ejected_percent: int = Field(
        50, ge=0, le=100, description="most servers of the pool ejected at once, in percent (rounded down); an ejection beyond it does not happen"
    )

    @field_validator("on_5xx")
    @classmethod
    def _only_5xx(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 500 <= s <= 599 for s in v):
            raise ValueError("only 5xx statuses can count as server failures")
        return v


class HealthConfig(Model):
    active: ActiveHealthConfig | None = Field(None, description="active HTTP probes; unset: none")
    passive: PassiveHealthConfig = Field(PassiveHealthConfig(), description="outlier detection on real requests")
    refresh: PositiveDuration = Field(
        1.0, description="how often each worker reads the shared health, drain and ejection state (at most the probe interval)"
    )


class RetryBudgetConfig(Model):
    """Retries may be at most `ratio` of the recent requests plus `min_per_s` per second (per pool and worker)."""

    ratio: float = Field(0.2, ge=0, le=10, description="retries allowed per request over the window (0.2: 20%)")
    min_per_s: float = Field(
        3.0, ge=0, le=10000, description="retries allowed per second whatever the traffic, so a quiet pool still retries"
    )
    window: PositiveDuration = Field(10.0, description="how far back requests and retries are counted (sliding)")


_RETRY_ON = ("connect_error", "reset", "read_timeout", "502", "503", "504")


def _retry_on_names(v: Any) -> Any:
    # 502 written unquoted in YAML is an int; the causes are named by strings.
    if isinstance(v, (list, tuple)):
        return tuple(str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)
    return v


class RetryConfig(Model):
    """When a failed attempt is repeated on another server (docs/upstreams.md, Retries)."""

    attempts: int | None = Field(
        None, ge=1, le=11,
        description="servers tried in all for one request, the first included; unset: `retries` + 1",
    )
    on: Annotated[tuple[Literal[_RETRY_ON], ...], BeforeValidator(_retry_on_names)] = Field(
        ("connect_error", "reset"),
        description="what is retried on another server: `connect_error` (refused, unreachable, connect timeout; any "
        "method), `reset` (connection reset or closed before any response byte), `read_timeout` (no response head in "
        "time), `502`, `503`, `504`; all but `connect_error` only for idempotent methods (RFC 9110 §9.2.2). The list replaces "
        "the default: keep `connect_error` and `reset` in it",
    )
    per_try_timeout: PositiveDuration | None = Field(
        None,
        description="longest one attempt waits for its response head once the request is sent (a `read_timeout` "
        "cause beyond); unset: only `timeouts.read` applies. `timeouts.total` still bounds the whole exchange",
    )
    budget: RetryBudgetConfig = Field(RetryBudgetConfig(), description="cap on retries as a share of recent requests")
    retry_after_max: Duration = Field(
        60.0, ge=0, description="longest a 503's Retry-After holds that server out of rotation (0: ignore Retry-After)"
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `on:` key as the boolean True (PyYAML's SafeLoader does).
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class UpstreamTLSConfig(Model):
    """How edge speaks TLS to the servers of one pool that use it (edge.upstream.tls; docs/tls.md)."""

    ca_file: str | None = Field(
        None, description="PEM bundle of the CAs trusted for these servers; unset: the system's trust store"
    )
    server_name: str | None = Field(
        None, description="name sent in SNI and checked against the server's certificate, instead of the server's "
        "host (for servers given by address)"
    )
    client_cert: str | None = Field(None, description="PEM certificate (chain) edge presents to the servers (mutual TLS)")
    client_key: str | None = Field(None, description="PEM private key of client_cert")
    verify: bool = Field(
        True, description="verify the server's certificate and name; `false` accepts any certificate (logged as a "
        "warning at start: traffic can then be read and changed by anyone on the path)"
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="lowest TLS version offered")

    @field_validator("server_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                host, port = parse_host(v)
            except ValueError as e:
                raise ValueError(str(e)) from None
            if port is not None:
                raise ValueError(f"a name without a port (got {v!r})")
        return v

    @model_validator(mode="after")
    def _pair(self) -> "UpstreamTLSConfig":
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        # Load the files once here, so a wrong path or a key that does not match refuses the start or
        # the reload (and `edge check`) instead of a worker that cannot build its pools.
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for path, load in ((self.ca_file, lambda: ctx.load_verify_locations(cafile=self.ca_file)),
                           (self.client_cert, lambda: ctx.load_cert_chain(self.client_cert, self.client_key))):
            if path is None:
                continue
            try:
                load()
            except ssl.SSLError as e:
                raise ValueError(f"cannot use {path}: {e.reason or e}") from None
            except OSError as e:
                raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        return self


class UpstreamConfig(Model):
    servers: tuple[Annotated[ServerAddress, BeforeValidator(ServerAddress.parse)], ...] = Field(
        min_length=1, description="backend servers, `host:port`, `http://host:port`, `https://host[:port]`, "
        "or {host, port, weight, backup, drain, max_conns, tls}"
    )
    balance: Literal["round_robin", "least_conn", "p2c_ewma", "random", "hash", "sticky"] | None = Field(
        None, description="how a server is picked (docs/upstreams.md, Balancing); unset: `p2c_ewma` when all weights are "
        "equal, `round_robin` when they differ",
    )
    hash: HashConfig | None = Field(None, description="the key of `balance: hash` (required with it)")
    sticky: StickyConfig | None = Field(None, description="the cookie of `balance: sticky` (defaults apply when unset)")
    ewma_decay: PositiveDuration = Field(
        10.0, description="time constant of the peak-EWMA latency of `p2c_ewma`: how fast a past peak is forgotten"
    )
    queue: QueueConfig | None = Field(None, description="requests may wait for a server under `max_conns`; unset: 503 at once")
    keepalive: KeepaliveConfig = Field(KeepaliveConfig(), description="pooled connections to the servers")
    timeouts: TimeoutsConfig = Field(TimeoutsConfig(), description="timeouts towards these servers")
    retries: int = Field(
        1, ge=0, le=10, description="further servers tried after a failed attempt (the older form of `retry.attempts` - 1)"
    )
    retry: RetryConfig = Field(RetryConfig(), description="which failed attempts are retried, how often, and the retry budget")
    limits: UpstreamLimitsConfig = Field(UpstreamLimitsConfig(), description="bounds on backend response heads and trailers, and on retried bodies")
    health: HealthConfig = Field(HealthConfig(), description="active probes, outlier detection and shared health state (docs/upstreams.md)")
    tls: UpstreamTLSConfig | None = Field(
        None, description="TLS towards the servers given as `https://` or with `tls: true` (CA bundle, SNI name, client certificate)"
    )

    @model_validator(mode="after")
    def _balancing(self) -> "UpstreamConfig":
        if self.balance == "hash" and self.hash is None:
            raise ValueError("hash: required with balance 'hash' (e.g. {key: client_ip})")
        if self.hash is not None and self.balance != "hash":
            raise ValueError("hash: only with balance 'hash'")
        if self.sticky is not None and self.balance != "sticky":
            raise ValueError("sticky: only with balance 'sticky'")
        if self.queue is not None and not any(s.max_conns for s in self.servers):
            raise ValueError("queue: only useful when a server has max_conns")
        return self

    @model_validator(mode="after")
    def _one_retry_count(self) -> "UpstreamConfig":
        if "retries" in self.model_fields_set and self.retry.attempts is not None:
            raise ValueError("give either retries or retry.attempts, not both")
        return self

    @model_validator(mode="after")
    def _tls_used(self) -> "UpstreamConfig":
        if self.tls is not None and not any(s.tls for s in self.servers):
            raise ValueError("tls settings given but no server uses TLS (write https://host:port or tls: true)")
        return self


# --------------------------------------------------------------------------- routes


class PathMatch(Model):
    exact: str | None = Field(None, description="the path equals this")
    prefix: str | None = Field(None, description="the path starts with this, at a segment boundary when it ends without `/`")
    regex: str | None = Field(
        None, description="the path matches this regular expression (anchored at the start; RE2 syntax, linear time)"
    )

    @model_validator(mode="after")
    def _one(self) -> "PathMatch":
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix, regex")
        for k in ("exact", "prefix"):
            v = getattr(self, k)
            if v is not None and not v.startswith("/"):
                raise ValueError(f"{k} must start with '/' (got {v!r})")
        if self.regex is not None:
            _client_regex(self.regex)
        return self


def _path_match(v: Any) -> Any:
    # `path: /api` is shorthand for a prefix match
    if isinstance(v, str):
        return {"prefix": v}
    return v


class MatchConfig(Model):
    host: tuple[str, ...] = Field((), description="host names (exact or `*.example.com`); empty matches any host")
    path: Annotated[PathMatch | None, BeforeValidator(_path_match)] = Field(
        None, description="path condition; a plain string is a prefix"
    )
    methods: tuple[str, ...] = Field((), description="methods; empty matches any")
    scheme: Literal["http", "https"] | None = Field(
        None, description="only requests that arrived over plain HTTP (`http`) or TLS (`https`); unset matches both"
    )
    headers: dict[str, str] = Field(
        {}, description="header name -> exact value, or `~regex` (RE2 syntax, searched in the value); all must match"
    )

    @field_validator("host")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for h in v:
            h = h.strip().lower()
            if not h or ("*" in h and (not h.startswith("*.") or "*" in h[2:])):
                raise ValueError(f"host must be a name or '*.domain' (got {h!r})")
            out.append(h)
        return tuple(out)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(m.upper() for m in v)

    @field_validator("headers")
    @classmethod
    def _header_regexes(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _header_name(name)
            if value.startswith("~"):
                try:
                    _client_regex(value[1:])
                except ValueError as e:
                    raise ValueError(f"header {name}: {e}") from None
        return v


class RewriteConfig(Model):
    regex: str = Field(description="regular expression applied to the path (RE2 syntax, linear time)")
    replace: str = Field(description="replacement, with `\\1` or `\\g<name>` groups")

    @field_validator("regex")
    @classmethod
    def _re(cls, v: str) -> str:
        return _client_regex(v)


class RedirectConfig(Model):
    status: Literal[301, 302, 303, 307, 308] = Field(301, description="redirect status")
    location: str = Field(description="target; `$host`, `$path` and `$query` (with its `?`) are replaced")


class RespondConfig(Model):
    status: int = Field(200, ge=100, le=599, description="status of the fixed answer")
    body: str = Field("", description="body of the fixed answer")
    content_type: str = Field("text/plain; charset=utf-8", description="its Content-Type")
    headers: Annotated[dict[str, str], AfterValidator(_header_fields)] = Field(
        {}, description="further response headers (names are tokens, values without control characters)"
    )

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, v: str) -> str:
        reason = field_error("Content-Type", v)
        if reason is not None:
            raise ValueError(reason)
        return v


PluginSettings = dict[str, Any] | bool


class RouteConfig(Model):
    name: str | None = Field(None, description="route name used in metrics and logs (default `route<N>`)")
    match: MatchConfig = Field(MatchConfig(), description="conditions, all of which must hold")
    priority: int = Field(0, description="higher wins among matching routes, before the built-in precedence")
    upstream: str | None = Field(None, description="name of the upstream pool to forward to")
    redirect: RedirectConfig | None = Field(None, description="answer with a redirect instead of forwarding")
    respond: RespondConfig | None = Field(None, description="answer with a fixed response instead of forwarding")
    strip_prefix: bool = Field(False, description="remove the matched path prefix before forwarding")
    rewrite: RewriteConfig | None = Field(None, description="regex rewrite of the forwarded path")
    host_header: str = Field(
        "pass",
        description="Host sent to the backend: `pass` (the client's), `upstream` (the server's address), or a literal "
        "`name[:port]` (a valid host name or `[IPv6]` literal)",
    )
    forward_normalized_path: bool = Field(
        True, description="send the backend the normalised path (dot segments removed, slashes collapsed); false sends the client's raw path"
    )
    upgrade: tuple[str, ...] | None = Field(
        None,
        description="protocols a client may switch to through this route (RFC 9110 §7.8 `Upgrade`), e.g. `[websocket]` "
        "(the default); `[]` forwards no upgrade. Other offered protocols (`h2c`, ...) are removed from the request, "
        "with `HTTP2-Settings`",
    )
    websocket: bool | None = Field(
        None, description="shorthand: `true` is `upgrade: [websocket]`, `false` is `upgrade: []`; give one of the two"
    )
    encoded_slash: Literal["keep", "decode", "reject"] = Field(
        "keep",
        description="paths holding `%2F`, `%5C` or `\\`: `keep` forwards them unchanged (a request whose path would "
        "match another route once they are read as `/` is refused with 400, see *Encoded slashes* under Routes); `decode` "
        "forwards them as `/` (then normalised); `reject` answers 400",
    )
    timeouts: TimeoutsConfig | None = Field(None, description="override the upstream's timeouts on this route")
    plugins: dict[str, PluginSettings] = Field(
        {}, description="per-route plugin settings merged over the global ones; `false` disables a global plugin here"
    )
    compression: bool | None = Field(
        None, description="response compression on this route: `true`/`false` override `compression.enabled`"
    )
    cache: "RouteCacheConfig" = Field(
        default_factory=lambda: RouteCacheConfig(), description="per-route cache settings over the `cache` section"
    )

    @field_validator("host_header")
    @classmethod
    def _host_header(cls, v: str) -> str:
        if v in ("pass", "upstream"):
            return v
        try:
            parse_host(v)
        except ValueError as e:
            raise ValueError(f"must be pass, upstream or a host name with an optional port: {e}") from None
        return v

    @field_validator("upgrade")
    @classmethod
    def _protocols(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        for p in v:
            if not is_token(p):
                raise ValueError(f"not a protocol name (a token, RFC 9110 §7.8): {p!r}")
        return tuple(p.lower() for p in v)

    @model_validator(mode="after")
    def _one_action(self) -> "RouteConfig":
        actions = [k for k in ("upstream", "redirect", "respond") if getattr(self, k) is not None]
        if len(actions) != 1:
            raise ValueError("a route needs exactly one of upstream, redirect, respond")
        if self.strip_prefix and (self.match.path is None or self.match.path.prefix is None):
            raise ValueError("strip_prefix needs a path prefix match")
        if self.upgrade is not None and self.websocket is not None:
            raise ValueError("give upgrade or websocket, not both (websocket: true is upgrade: [websocket])")
        return self

    @property
    def upgrade_protocols(self) -> frozenset[str]:
        """The lower-cased protocol names this route lets a client upgrade to."""
        if self.upgrade is not None:
            return frozenset(self.upgrade)
        return frozenset() if self.websocket is False else frozenset({"websocket"})


# --------------------------------------------------------------------------- headers


class HeadersConfig(Model):
    x_forwarded: bool = Field(True, description="send X-Forwarded-For (appended), -Proto, -Host, -Port to backends")
    forwarded: bool = Field(False, description="also send the RFC 7239 Forwarded header")
    via: bool = Field(True, description="add `Via: 1.1 edge` both ways")
    hide_backend: tuple[HeaderName, ...] = Field(
        ("Server", "X-Powered-By"), description="response headers removed so the backend's identity is not shown"
    )
    request_id_header: HeaderName = Field("X-Request-ID", description="header whose value is quoted in error bodies and logs")


# --------------------------------------------------------------------------- store


class StoreConfig(Model):
    backend: Literal["memory", "local", "redis", "memcached"] = Field(
        "local", description="where shared state lives: `local` (all workers of this node, no server), `memory` (one worker), `redis`, `memcached`"
    )
    url: str | None = Field(
        None,
        description="redis: `redis://`, `rediss://`, `unix://`, `redis+sentinel://host:port[,host:port]/service`, "
        "`redis+cluster://host:port`",
    )
    servers: tuple[str, ...] = Field((), description="memcached: `host:port` of each server")
    path: str | None = Field(None, description="local: directory of the node's store (default: a per-config directory under /dev/shm when it can hold the store, else under the temp dir)")
    timeout: PositiveDuration = Field(
        0.05,
        description="redis/memcached: longest a single wait of a store call may take (connect, answer, a free connection slot); one call may wait up to 4 times this (`edge.store.base.CALL_TIMEOUTS`) before it fails with `StoreUnavailable` (> 0)",
    )
    max_bytes: PositiveSize = Field(64 * 1024 * 1024, description="memory/local: size bound (> 0)")
    max_entries: int = Field(100000, ge=1, description="memory: entry bound")
    key_prefix: str = Field("edge:", description="prefix of every key, so several deployments can share one server")

    @model_validator(mode="after")
    def _needs(self) -> "StoreConfig":
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs url")
        if self.backend == "memcached" and not self.servers:
            raise ValueError("backend memcached needs servers")
        return self


# --------------------------------------------------------------------------- compression


def _type_patterns(v: tuple[str, ...]) -> tuple[str, ...]:
    for t in v:
        parse_type_pattern(t)
    return v


TypePatterns = Annotated[tuple[str, ...], AfterValidator(_type_patterns)]


class CompressionConfig(Model):
    """Response compression (edge.compress; docs/cache.md, "Compression")."""

    enabled: bool = Field(
        False,
        description="compress responses on every route (a route's `compression` overrides). Off by default, as in "
        "nginx and Caddy: it costs CPU per byte, changes ETags, and over TLS a page that reflects input next to a "
        "secret leaks it to BREACH; an operator opts in knowing the content",
    )
    codecs: tuple[Literal["zstd", "br", "gzip"], ...] = Field(
        DEFAULT_PREFERENCE, min_length=1,
        description="content codings offered, in the server's order of preference (used when the client's "
        "`Accept-Encoding` weights tie); the default puts the cheapest per byte first (docs/cache.md, Compression)",
    )
    min_size: Size = Field(
        512, ge=0, description="responses whose Content-Length is below this are sent as they are (a body of "
        "unknown length is compressed)",
    )
    types: TypePatterns = Field(
        DEFAULT_TYPES, description="media types compressed: `type/subtype`, `type/*` or `type/*+suffix`"
    )
    exclude_types: TypePatterns = Field(
        DEFAULT_EXCLUDE_TYPES, description="media types never compressed even if `types` matches (event streams "
        "must not wait in an encoder's buffer)",
    )
    gzip_level: int = Field(1, ge=1, le=9, description="gzip level (1 fastest, 9 smallest)")
    br_quality: int = Field(4, ge=0, le=11, description="brotli quality (0-11; above 5 is for precompressed files)")
    zstd_level: int = Field(
        3, ge=1, le=19, description="zstd level (1-19; 20+ need a window over the 8 MB RFC 9659 allows)"
    )

    @field_validator("codecs")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"each coding once (got {list(v)})")
        return v


# --------------------------------------------------------------------------- cache


def _param_names(v: tuple[str, ...]) -> tuple[str, ...]:
    for p in v:
        if not p or "&" in p or "=" in p or "#" in p:
            raise ValueError(f"not a query parameter name: {p!r}")
    return v


class RouteCacheConfig(Model):
    """Per-route cache settings (``routes[].cache``); unset keys take the ``cache`` section's value."""

    enabled: bool | None = Field(None, description="cache this route (default: `cache.enabled`)")
    force_ttl: Duration | None = Field(
        None, gt=0,
        description="store every storable 200/203/204/206/300/301/308/404/405/410/414/501 response of this route for this long, "
        "whatever its own freshness says (for static routes whose backend sends no Cache-Control); RFC 9111's refusals "
        "(no-store, private, Authorization) still hold",
    )
    ignore_params: tuple[str, ...] | None = Field(
        None, description="query parameters left out of the cache key (e.g. `utm_source`); default: `cache.ignore_params`"
    )
    sort_query: bool | None = Field(None, description="order query parameters by name in the cache key; default: `cache.sort_query`")
    max_object_size: PositiveSize | None = Field(None, description="largest body stored for this route; default: `cache.max_object_size`")
    serve_stale_on_error: Duration | None = Field(
        None, ge=0, description="how long past its freshness a stored response may be served when the backend is down "
        "or answers 5xx; default: `cache.serve_stale_on_error`",
    )
    set_cookie: Literal["refuse", "strip", "store"] | None = Field(None, description="responses with Set-Cookie; default: `cache.set_cookie`")
    reuse_post_responses: bool | None = Field(
        None, description="store a POST's answer as its target's GET response when RFC 9110 §9.3.3 allows; default: "
        "`cache.reuse_post_responses`",
    )

    @field_validator("ignore_params")
    @classmethod
    def _params(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else _param_names(v)


# RouteConfig names RouteCacheConfig before it is defined: resolve it now, so the schema is
# complete at import (scripts/gen_config_doc.py reads the fields; validation would resolve it late)
RouteConfig.model_rebuild()


class CacheConfig(Model):
    """The shared HTTP cache (RFC 9111); see docs/cache.md."""

    enabled: bool = Field(False, description="cache responses on every forwarding route (a route's `cache.enabled` overrides)")
    store: StoreConfig | None = Field(
        None, description="a store of its own for cached objects; unset: the main `store` when it is remote (redis, "
        "memcached), or, when it is `local`, a sibling LMDB directory `<store.path>-cache` with the same size bound (so "
        "cached objects never evict rate-limit states)"
    )
    max_object_size: PositiveSize = Field(
        8 * 1024 * 1024,
        description="largest body stored; a larger response streams through uncached (known from Content-Length up front, "
        "else as soon as it passes this size)",
    )
    max_ttl: PositiveDuration = Field(
        86400.0, description="no object stays in the store longer than this, stale window included; also how long a prefix/tag purge rule is kept"
    )
    keep_stale: Duration = Field(
        3600.0, ge=0, description="how long a response is kept past its freshness for revalidation and stale serving "
        "(at least its own stale-while-revalidate / stale-if-error and `serve_stale_on_error`), within `max_ttl`",
    )
    heuristic_fraction: float = Field(
        0.1, ge=0, le=1,
        description="heuristic freshness (RFC 9111 §4.2.2): this fraction of the time since Last-Modified, for responses "
        "cacheable by default that carry no explicit freshness",
    )
    heuristic_max: Duration = Field(86400.0, ge=0, description="upper bound of a heuristic freshness lifetime")
    targeted_field: HeaderName | None = Field(
        None, description="an edge-specific targeted cache-control field (RFC 9213), e.g. `Edge-Cache-Control`, taking "
        "precedence over `CDN-Cache-Control` and `Cache-Control`",
    )
    serve_stale_on_error: Duration = Field(
        0.0, ge=0, description="how long past its freshness a stored response may be served when the backend is down "
        "(connect error, timeout) or answers 5xx, in addition to the response's own `stale-if-error` (RFC 5861)",
    )
    coalesce_wait: Duration = Field(
        5.0, ge=0, description="concurrent misses for one URL wait this long for the one request that fetches it "
        "(across workers, and nodes on a shared store), then go to the backend themselves; 0 disables coalescing",
    )
    hit_for_pass: Duration = Field(
        10.0, ge=0, description="after a response that could not be stored, misses for that URL skip coalescing for this long",
    )
    ban_refresh: PositiveDuration = Field(
        1.0, description="how often a worker re-reads the prefix/tag purge rules: such a purge takes effect everywhere within this",
    )
    sort_query: bool = Field(False, description="order query parameters by name in cache keys")
    ignore_params: tuple[str, ...] = Field((), description="query parameters left out of cache keys")
    set_cookie: Literal["refuse", "strip", "store"] = Field(
        "refuse", description="a response with Set-Cookie: `refuse` to store it; `strip`: store it without its "
        "Set-Cookie fields (the client that caused the fetch still gets them); `store`: store it as it is, as RFC 9111 "
        "allows (Set-Cookie does not inhibit caching): every client then gets that cookie",
    )
    reuse_post_responses: bool = Field(
        True, description="store a POST's answer as the GET response of its target when RFC 9110 §9.3.3 allows it "
        "(explicit freshness and a Content-Location naming the target URI), so a later GET or HEAD is a hit; off: POST "
        "answers are never stored, as in nginx and Varnish (a POST still invalidates its target, RFC 9111 §4.4)",
    )
    strip_surrogate_headers: bool = Field(
        True, description="remove `Surrogate-Key` and `Cache-Tag` (the purge tags) from responses before they reach clients",
    )
    status_name: str = Field("edge", description="the cache's name in `Cache-Status` (RFC 9211)")

    @field_validator("ignore_params")
    @classmethod
    def _params(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _param_names(v)

    @field_validator("status_name")
    @classmethod
    def _status_name(cls, v: str) -> str:
        if not is_token(v):
            raise ValueError(f"must be a token (RFC 9211 §2 / RFC 8941 token): {v!r}")
        return v


# --------------------------------------------------------------------------- metrics


class MetricsConfig(Model):
    statsd: str | None = Field(None, description="`host:port` of a statsd server; unset disables metrics")
    prefix: str = Field("edge", description="prefix of every metric name")

    @field_validator("statsd")
    @classmethod
    def _statsd(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _host, port = parse_host(v)
            except ValueError as e:
                raise ValueError(str(e)) from None
            if port is None:
                raise ValueError(f"expected 'host:port' (got {v!r})")
        return v


# --------------------------------------------------------------------------- top level


class EdgeConfig(Model):
    server: ServerConfig = Field(ServerConfig(), description="listening and process settings (gunicorn)")
    tls: TLSConfig | None = Field(None, description="TLS termination; HTTP/2 is offered when set")
    upstreams: dict[str, UpstreamConfig] = Field({}, description="named pools of backend servers")
    routes: tuple[RouteConfig, ...] = Field((), description="routes, matched by the precedence in docs/config.md")
    headers: HeadersConfig = Field(HeadersConfig(), description="header rules between client and backend")
    store: StoreConfig = Field(StoreConfig(), description="shared state for the cache and rate limits")
    plugin_dirs: tuple[str, ...] = Field((), description="directories searched for plugins after the shipped `plugins/`")
    plugins: dict[str, dict[str, Any]] = Field({}, description="plugins enabled on every route, with their settings")
    metrics: MetricsConfig = Field(MetricsConfig(), description="statsd metrics")
    compression: CompressionConfig = Field(CompressionConfig(), description="response compression (gzip, br, zstd)")
    cache: CacheConfig = Field(CacheConfig(), description="the shared HTTP cache (docs/cache.md)")

    # Where this configuration was read from; set by load_config, used in error messages.
    source: str = Field("<string>", exclude=True, description="(internal) file the configuration came from")

    @model_validator(mode="after")
    def _proxy_protocol_plain(self) -> "EdgeConfig":
        if self.tls is not None and self.server.proxy_protocol.enabled:
            # The PROXY header comes before the TLS ClientHello on the wire; edge reads it in
            # chunks, which could take ClientHello bytes the handshake then misses.
            raise _KeyError("server.proxy_protocol.enabled", "not supported together with tls yet: the PROXY header "
                            "precedes the TLS handshake on the same bytes (terminate TLS at the balancer, or "
                            "send X-Forwarded-For from a trusted proxy)")
        return self

    @model_validator(mode="after")
    def _references(self) -> "EdgeConfig":
        if self.tls is not None and self.tls.acme is not None and self.store.backend == "memory" and self.server.workers != 1:
            # the lease and the published challenge answers must be seen by every worker (edge.acme)
            raise _KeyError("tls.acme", "needs a store shared by the workers: store.backend local, redis or memcached "
                            "(memory is one worker's own)")
        _check_listeners(self)
        for i, route in enumerate(self.routes):
            if route.upstream is not None and route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                raise _KeyError(f"routes[{i}].upstream", f"unknown upstream {route.upstream!r} (known: {known})")
        return self


def effective_listeners(cfg: "EdgeConfig") -> tuple[ListenerConfig, ...]:
    """``server.listeners``, or one listener per ``server.bind`` address (TLS when ``tls`` is set)."""
    if cfg.server.listeners:
        return cfg.server.listeners
    return tuple(ListenerConfig(bind=b, tls=cfg.tls is not None) for b in cfg.server.bind)


def _check_listeners(cfg: "EdgeConfig") -> None:
    if cfg.tls is not None and cfg.tls.acme is not None and all(lc.tls for lc in effective_listeners(cfg)):
        # RFC 8555 §8.3: the CA fetches http://<name>/.well-known/acme-challenge/<token> on port 80
        raise _KeyError("tls.acme", "the http-01 challenge needs a plain-HTTP listener: list it in server.listeners "
                        "(e.g. [{bind: '0.0.0.0:80'}, {bind: '0.0.0.0:443', tls: true}])")
    listeners = cfg.server.listeners
    if not listeners:
        return
    tls_by_port: dict[Any, bool] = {}
    for i, lc in enumerate(listeners):
        if lc.tls and cfg.tls is None:
            raise _KeyError(f"server.listeners[{i}].tls", "a TLS listener needs the tls section (its certificates)")
        # edge tells a connection's listener by its local port (or socket path)
        port = lc.bind if lc.bind.startswith(("unix:", "fd://")) else split_host_port(lc.bind, 0)[1]
        if tls_by_port.setdefault(port, lc.tls) != lc.tls:
            raise _KeyError(f"server.listeners[{i}]", f"port {port} is both a TLS and a plain listener")
    if cfg.tls is not None and not any(lc.tls for lc in listeners):
        raise _KeyError("server.listeners", "the tls section is set but no listener has tls: true")


class _KeyError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, key_path: str, reason: str) -> None:
        self.key_path, self.reason = key_path, reason
        super().__init__(reason)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "constrained-")) or "[" in str(part):
            continue  # pydantic's internal validator steps, not keys
        else:
            out += ("." if out else "") + str(part)
    return out


def _reason(err: dict[str, Any]) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return msg


#: ``edge check`` and a refused start report at most this many errors of one file.
MAX_REPORTED_ERRORS = 20


class ConfigErrors(ConfigError):
    """Every problem found in one file (up to ``MAX_REPORTED_ERRORS``), one ``file: key: reason`` per line.

    ``file``, ``key_path`` and ``reason`` are those of the first error, so code that
    handles a single ``ConfigError`` keeps working; ``errors`` holds them all.
    """

    def __init__(self, errors: list[ConfigError], more: int = 0) -> None:
        first = errors[0]
        super().__init__(first.file, first.key_path, first.reason)
        self.errors = tuple(errors)
        self.more = more
        lines = [str(e) for e in errors]
        if more:
            lines.append(f"{first.file}: ... and {more} more errors")
        self.args = ("\n".join(lines),)

    def __str__(self) -> str:
        return self.args[0]


def _config_error(source: str, err: Any) -> ConfigError:
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _KeyError):
        return ConfigError(source, ctx_err.key_path, ctx_err.reason)
    return ConfigError(source, _key_path(err["loc"]), _reason(err))


def config_errors(source: str, errors: list[Any]) -> ConfigError:
    """One ``ConfigError`` for pydantic's error list (see ``combine_errors``)."""
    # An error on a container that only follows from errors inside it (a list left
    # empty because each of its items failed) would repeat them: keep the inner ones.
    locs = [tuple(err["loc"]) for err in errors]
    errors = [err for err, loc in zip(errors, locs)
              if not any(len(o) > len(loc) and o[:len(loc)] == loc for o in locs)]
    return combine_errors([_config_error(source, err) for err in errors])


def combine_errors(errors: list[ConfigError]) -> ConfigError:
    """The error itself when there is one, else a ``ConfigErrors`` holding the first
    ``MAX_REPORTED_ERRORS`` (repeated lines dropped)."""
    unique: list[ConfigError] = []
    seen: set[str] = set()
    for e in errors:
        if str(e) not in seen:
            seen.add(str(e))
            unique.append(e)
    if len(unique) == 1:
        return unique[0]
    return ConfigErrors(unique[:MAX_REPORTED_ERRORS], max(0, len(unique) - MAX_REPORTED_ERRORS))


def parse_config(data: Any, source: str = "<string>") -> EdgeConfig:
    """Validate an already-parsed YAML document; raise ConfigError naming source, key and reason
    (a ``ConfigErrors`` with every problem, one per line, when there are several)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a mapping")
    try:
        return EdgeConfig.model_validate({**data, "source": source})
    except ValidationError as e:
        raise config_errors(source, e.errors()) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML would keep the last silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1}, column {mark.column + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_config(path: str | os.PathLike[str] | None = None) -> EdgeConfig:
    """Read and validate the configuration file (default: $EDGE_CONFIG or conf/edge.yaml)."""
    path = os.fspath(path or os.environ.get("EDGE_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, "", f"invalid YAML: {where}{getattr(e, 'problem', e)}") from None
    # A file edge would serve nothing from is a mistake (a truncated deploy, the wrong
    # path), not a configuration: refuse it rather than start a node that answers 404.
    if data is None:
        raise ConfigError(path, "", "the file is empty (a configuration needs at least one route)")
    cfg = parse_config(data, path)
    if not cfg.routes:
        raise ConfigError(path, "routes", "no routes: edge would answer every request with 404")
    return cfg
