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


class ServerConfig(Model):
    bind: tuple[str, ...] = Field(("127.0.0.1:8080",), description="addresses to listen on, `host:port` or `unix:/path`")
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
        # gunicorn reads a bare "localhost" as localhost:8000 without a word (issue 8): an
        # address edge listens on must say its port, so a forgotten one is a refused start.
        for item in v:
            if item.startswith(("unix:", "fd://")):
                continue
            try:
                _host, port = split_host_port(item, 0)
            except ValueError:
                raise ValueError(f"expected 'host:port', '[ipv6]:port' or 'unix:/path' (got {item!r})") from None
            if port == 0:
                raise ValueError(f"no port in {item!r} (write 'host:port')")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {item!r}") from None
        return v


# --------------------------------------------------------------------------- tls


class TLSConfig(Model):
    certfile: str = Field(description="PEM certificate chain served to clients")
    keyfile: str = Field(description="PEM private key of certfile")
    http2: bool = Field(True, description="offer HTTP/2 over ALPN (h2, then http/1.1)")


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
    weight: int = Field(1, ge=1, le=1000, description="relative share of requests")

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
        if text.startswith("https://"):
            raise ValueError(f"https backends are not supported yet (got {value!r})")
        if text.startswith("http://"):
            text = text[len("http://"):]
        if text.endswith("/"):
            text = text[:-1]
        head, sep, tail = text.rpartition(":")
        if sep and tail.isascii() and tail.isdigit() and (head.startswith("[") or ":" not in head):
            try:
                host, _ = parse_host(head)  # the one host parser; the port field checks the range
            except ValueError:
                pass
            else:
                return {"host": host, "port": int(tail)}
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
        description="request body bytes kept while a request may still be retried on a fresh connection; "
        "a request whose body outgrew this is never retried (bodies are not rewindable)",
    )


class UpstreamConfig(Model):
    servers: tuple[Annotated[ServerAddress, BeforeValidator(ServerAddress.parse)], ...] = Field(
        min_length=1, description="backend servers, `host:port`, `http://host:port`, or {host, port, weight}"
    )
    balance: Literal["round_robin"] = Field("round_robin", description="how a server is picked")
    keepalive: KeepaliveConfig = Field(KeepaliveConfig(), description="pooled connections to the servers")
    timeouts: TimeoutsConfig = Field(TimeoutsConfig(), description="timeouts towards these servers")
    retries: int = Field(1, ge=0, le=10, description="further servers tried when connecting fails (never after the request was sent)")
    limits: UpstreamLimitsConfig = Field(UpstreamLimitsConfig(), description="bounds on backend response heads and trailers, and on retried bodies")


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
    path: str | None = Field(None, description="local: directory of the node's store (default: a per-config directory under the temp dir)")
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

    @field_validator("ignore_params")
    @classmethod
    def _params(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else _param_names(v)


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
    cache: CacheConfig = Field(CacheConfig(), description="the shared HTTP cache (docs/cache.md)")

    # Where this configuration was read from; set by load_config, used in error messages.
    source: str = Field("<string>", exclude=True, description="(internal) file the configuration came from")

    @model_validator(mode="after")
    def _references(self) -> "EdgeConfig":
        for i, route in enumerate(self.routes):
            if route.upstream is not None and route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                raise _KeyError(f"routes[{i}].upstream", f"unknown upstream {route.upstream!r} (known: {known})")
        return self


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
