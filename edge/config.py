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
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.errors import ConfigError
from edge.units import parse_duration, parse_size

DEFAULT_CONFIG_PATH = "conf/edge.yaml"


def _duration(v: Any) -> float:
    return parse_duration(v)


def _size(v: Any) -> int:
    return parse_size(v)


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]


class Model(BaseModel):
    """Base of every config object: frozen, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- server


class ServerConfig(Model):
    bind: tuple[str, ...] = Field(("127.0.0.1:8080",), description="addresses to listen on, `host:port` or `unix:/path`")
    workers: int = Field(0, ge=0, description="worker processes; 0 means one per core")
    worker_connections: int = Field(10000, ge=1, description="concurrent connections per worker")
    keepalive: Duration = Field(75.0, description="how long an idle client keep-alive connection is kept")
    graceful_timeout: Duration = Field(30.0, description="how long a stopping worker may finish its requests")
    max_request_line: int = Field(8190, ge=0, le=65535, description="longest request line in bytes (414 beyond)")
    max_header_fields: int = Field(100, ge=0, le=32768, description="most request header fields (431 beyond)")
    max_header_field_size: int = Field(8190, ge=0, description="longest request header field in bytes (431 beyond)")
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


_SERVER_RE = re.compile(r"^(?:http://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):([0-9]+)/?$")


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
        m = _SERVER_RE.match(value.strip())
        if not m:
            if value.strip().startswith("https://"):
                raise ValueError(f"https backends are not supported yet (got {value!r})")
            raise ValueError(f"expected 'host:port' or 'http://host:port' (got {value!r})")
        return {"host": m.group(1).strip("[]"), "port": int(m.group(2))}

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
    idle_timeout: Duration = Field(60.0, description="idle connections older than this are closed, not reused")
    max_requests: int = Field(10000, ge=1, description="requests sent on one connection before it is retired")


class UpstreamConfig(Model):
    servers: tuple[Annotated[ServerAddress, BeforeValidator(ServerAddress.parse)], ...] = Field(
        min_length=1, description="backend servers, `host:port`, `http://host:port`, or {host, port, weight}"
    )
    balance: Literal["round_robin"] = Field("round_robin", description="how a server is picked")
    keepalive: KeepaliveConfig = Field(KeepaliveConfig(), description="pooled connections to the servers")
    timeouts: TimeoutsConfig = Field(TimeoutsConfig(), description="timeouts towards these servers")
    retries: int = Field(1, ge=0, le=10, description="further servers tried when connecting fails (never after the request was sent)")


# --------------------------------------------------------------------------- routes


class PathMatch(Model):
    exact: str | None = Field(None, description="the path equals this")
    prefix: str | None = Field(None, description="the path starts with this, at a segment boundary when it ends without `/`")
    regex: str | None = Field(None, description="the path matches this regular expression (search from the start)")

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
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"bad regular expression {self.regex!r}: {e}") from None
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
    headers: dict[str, str] = Field({}, description="header name -> exact value, or `~regex`; all must match")

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
            if value.startswith("~"):
                try:
                    re.compile(value[1:])
                except re.error as e:
                    raise ValueError(f"header {name}: bad regular expression: {e}") from None
        return v


class RewriteConfig(Model):
    regex: str = Field(description="regular expression applied to the path")
    replace: str = Field(description="replacement, with `\\1` or `\\g<name>` groups")

    @field_validator("regex")
    @classmethod
    def _re(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"bad regular expression {v!r}: {e}") from None
        return v


class RedirectConfig(Model):
    status: Literal[301, 302, 303, 307, 308] = Field(301, description="redirect status")
    location: str = Field(description="target; `$host`, `$path` and `$query` (with its `?`) are replaced")


class RespondConfig(Model):
    status: int = Field(200, ge=100, le=599, description="status of the fixed answer")
    body: str = Field("", description="body of the fixed answer")
    content_type: str = Field("text/plain; charset=utf-8", description="its Content-Type")
    headers: dict[str, str] = Field({}, description="further response headers")


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
        "pass", description="Host sent to the backend: `pass` (the client's), `upstream` (the server's address), or a literal name"
    )
    forward_normalized_path: bool = Field(
        True, description="send the backend the normalised path (dot segments removed, slashes collapsed); false sends the client's raw path"
    )
    websocket: bool = Field(True, description="allow Upgrade (WebSocket) pass-through on this route")
    timeouts: TimeoutsConfig | None = Field(None, description="override the upstream's timeouts on this route")
    plugins: dict[str, PluginSettings] = Field(
        {}, description="per-route plugin settings merged over the global ones; `false` disables a global plugin here"
    )

    @model_validator(mode="after")
    def _one_action(self) -> "RouteConfig":
        actions = [k for k in ("upstream", "redirect", "respond") if getattr(self, k) is not None]
        if len(actions) != 1:
            raise ValueError("a route needs exactly one of upstream, redirect, respond")
        if self.strip_prefix and (self.match.path is None or self.match.path.prefix is None):
            raise ValueError("strip_prefix needs a path prefix match")
        return self


# --------------------------------------------------------------------------- headers


class HeadersConfig(Model):
    x_forwarded: bool = Field(True, description="send X-Forwarded-For (appended), -Proto, -Host, -Port to backends")
    forwarded: bool = Field(False, description="also send the RFC 7239 Forwarded header")
    via: bool = Field(True, description="add `Via: 1.1 edge` both ways")
    hide_backend: tuple[str, ...] = Field(
        ("Server", "X-Powered-By"), description="response headers removed so the backend's identity is not shown"
    )
    request_id_header: str = Field("X-Request-ID", description="header whose value is quoted in error bodies and logs")


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
    timeout: Duration = Field(0.05, description="longest a single remote store call may take")
    max_bytes: Size = Field(64 * 1024 * 1024, description="memory/local: size bound")
    max_entries: int = Field(100000, ge=1, description="memory: entry bound")
    key_prefix: str = Field("edge:", description="prefix of every key, so several deployments can share one server")

    @model_validator(mode="after")
    def _needs(self) -> "StoreConfig":
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs url")
        if self.backend == "memcached" and not self.servers:
            raise ValueError("backend memcached needs servers")
        return self


# --------------------------------------------------------------------------- metrics


class MetricsConfig(Model):
    statsd: str | None = Field(None, description="`host:port` of a statsd server; unset disables metrics")
    prefix: str = Field("edge", description="prefix of every metric name")


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


def parse_config(data: Any, source: str = "<string>") -> EdgeConfig:
    """Validate an already-parsed YAML document; raise ConfigError naming source, key and reason."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a mapping")
    try:
        return EdgeConfig.model_validate({**data, "source": source})
    except ValidationError as e:
        err = e.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _KeyError):
            raise ConfigError(source, ctx_err.key_path, ctx_err.reason) from None
        raise ConfigError(source, _key_path(err["loc"]), _reason(err)) from None


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
    return parse_config(data, path)
