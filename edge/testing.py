"""Helpers for testing plugins without sockets: the public author kit (DESIGN.md §5).

Build a request with ``make_ctx``, a backend answer with ``make_upstream_response``,
and run a plugin through the same ``Chain`` the proxy uses with ``run_plugin``::

    from edge.testing import make_ctx, run_plugin
    from plugins.headers import Headers

    def test_adds_security_headers():
        run = run_plugin(Headers, {"security": True}, ctx=make_ctx(scheme="https"))
        assert run.headers.get("X-Frame-Options") == "DENY"

``load_plugin_file(path)`` imports a plugin file through the loader's checks (a typo
hook fails there exactly as it would at start). The end-to-end fixture that starts a
real edge in front of a test origin is at the bottom of this module.

Unlike the proxy, ``run_plugin`` lets a hook's exception propagate by default
(``isolate=False``), so a test shows the traceback instead of a 500; pass
``isolate=True`` to see what the proxy would do.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from collections import Counter
from http import HTTPStatus
from typing import Any, Iterable, Mapping

from edge.context import Headers, RequestContext, Response, UpstreamResponse
from edge.errors import EdgeError
from edge.plugins import (
    Chain,
    Plugin,
    Services,
    _Entry,
    check_plugin_class,
    load_plugin_file,
    validate_settings,
)

__all__ = [
    "make_ctx", "make_upstream_response", "make_services", "make_plugin", "run_plugin", "PluginRun",
    "load_plugin_file", "EdgeServer", "edge_server",
]

_UNSET: Any = object()

HeadersLike = Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None


def _headers(h: HeadersLike) -> Headers:
    if h is None:
        return Headers()
    if isinstance(h, Headers):
        return h
    if isinstance(h, Mapping):
        return Headers(list(h.items()))
    return Headers(list(h))


def make_ctx(
    method: str = "GET",
    path: str = "/",
    headers: HeadersLike = None,
    client_ip: str = "127.0.0.1",
    query: str = "",
    host: str = "example.com",
    route: Any = None,
    *,
    scheme: str = "http",
    upstream: str | None = None,
    **fields: Any,
) -> RequestContext:
    """A ``RequestContext`` as the request path would build it.

    ``headers`` may be a dict, a list of pairs or a ``Headers``; a ``Host`` header is
    added from ``host`` when missing. ``path`` may carry a query (``"/a?x=1"``).
    Further ``RequestContext`` fields (``peer_ip``, ``port``, ``http2`` ...) are passed on.
    """
    if "?" in path and not query:
        path, query = path.split("?", 1)
    hs = _headers(headers)
    if "Host" not in hs:
        hs.add("Host", host)
    port = fields.pop("port", 443 if scheme == "https" else 80)
    ctx = RequestContext(method, path, query, hs, scheme=scheme, host=host, port=port, client_ip=client_ip, **fields)
    ctx.route = route
    ctx.upstream = upstream
    return ctx


def make_upstream_response(status: int = 200, headers: HeadersLike = None,
                           body: bytes | Iterable[bytes] = b"") -> UpstreamResponse:
    """A backend answer. ``body`` is bytes or an iterable of chunks; for bytes a
    ``Content-Length`` is added when the headers give no framing."""
    hs = _headers(headers)
    if isinstance(body, (bytes, bytearray)):
        if "Content-Length" not in hs and "Transfer-Encoding" not in hs:
            hs.add("Content-Length", str(len(body)))
        chunks: list[bytes] = [bytes(body)] if body else []
    else:
        chunks = list(body)
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return UpstreamResponse(status, reason, hs, chunks)


def _memory_store() -> Any:
    # edge/store is written separately; plugin tests must work with or without it.
    try:
        from edge.config import StoreConfig
        from edge.store import build_store  # type: ignore[attr-defined]
    except ImportError:
        return None
    return build_store(StoreConfig(backend="memory"))


def make_services(store: Any = _UNSET, metrics: Any = None, logger: logging.Logger | None = None,
                  **extras: Any) -> Services:
    """``Services`` for tests: an in-memory store (when ``edge.store`` provides one), no
    metrics, the ``edge.plugins.test`` logger, and any extras (``geo=FakeGeo()``)."""
    return Services(
        store=_memory_store() if store is _UNSET else store,
        metrics=metrics,
        logger=logger or logging.getLogger("edge.plugins.test"),
        extras=extras,
    )


def make_plugin(plugin_cls: type[Plugin], settings: Mapping[str, Any] | None = None,
                services: Services | None = None) -> Plugin:
    """Check ``plugin_cls`` as the loader does, validate ``settings`` with its ``Config``
    (a ``ConfigError`` names ``plugins.<name>.<key>``) and instantiate it."""
    return _build(plugin_cls, settings, services)[0]


def _build(plugin_cls: type[Plugin], settings: Mapping[str, Any] | None,
           services: Services | None) -> tuple[Plugin, Any]:
    check_plugin_class(plugin_cls, plugin_cls.__module__)
    config = validate_settings(plugin_cls, settings or {}, "<test>", f"plugins.{plugin_cls.name}")
    return plugin_cls(config, services if services is not None else make_services()), config


@dataclasses.dataclass
class PluginRun:
    """What happened when ``run_plugin`` passed one exchange through a plugin."""

    ctx: RequestContext                  # after on_request: what the backend would get
    plugin: Plugin
    answered: Response | None            # the Response on_request returned (short-circuit), else None
    upstream: UpstreamResponse | None    # the fake backend answer after on_response (None if answered)
    status: int                          # status the client gets
    headers: Headers                     # response headers the client gets
    body: bytes                          # response body the client gets (after on_body filters)
    request_body: bytes | None           # request body after on_request_body filters (None if none given)
    errors: Counter[tuple[str, str]]     # (plugin, hook) failures, with isolate=True

    @property
    def request_headers(self) -> Headers:
        """The request headers the backend would get."""
        return self.ctx.headers

    @property
    def replaced(self) -> bool:
        """True when on_response replaced the backend's answer."""
        return self.upstream is not None and self.upstream.replacement is not None


class _RaisingRegistry:
    """Failure sink for ``isolate=False``: re-raise instead of answering 500."""

    def __init__(self) -> None:
        self.errors: Counter[tuple[str, str]] = Counter()

    def record(self, entry: _Entry, hook: str, exc: BaseException, ctx: Any, overrun: bool) -> None:
        self.errors[(entry.name, hook)] += 1
        raise exc


class _CountingRegistry(_RaisingRegistry):
    def record(self, entry: _Entry, hook: str, exc: BaseException, ctx: Any, overrun: bool) -> None:
        self.errors[(entry.name, hook)] += 1


def run_plugin(
    plugin_cls: type[Plugin],
    settings: Mapping[str, Any] | None = None,
    ctx: RequestContext | None = None,
    response: UpstreamResponse | None = None,
    body: bytes | Iterable[bytes] = _UNSET,
    *,
    request_body: bytes | Iterable[bytes] | None = None,
    services: Services | None = None,
    isolate: bool = False,
) -> PluginRun:
    """Pass one exchange through ``plugin_cls`` as the proxy would.

    on_request; unless it answered: on_request_body_complete (when ``request_body`` is
    given and the plugin's ``request_body_buffer`` asks for it; a body over a ``reject``
    cap gives the proxy's 413) and on_request_body (when ``request_body`` is given),
    on_response on ``response`` (default: an empty 200), on_body over ``body`` (default:
    the response's own body); then on_log in every case. ``settings`` are validated by
    the plugin's ``Config`` (a ``ConfigError`` names the key). With ``isolate=True``
    failures give the proxy's outcome (500/503 or skip) and are counted in ``errors``.
    """
    plugin, config = _build(plugin_cls, settings, services)
    sink = _CountingRegistry() if isolate else _RaisingRegistry()
    entry = _Entry(plugin_cls.name, plugin, config, "<test>", plugin_cls.__name__)
    chain = Chain([entry], sink.record)
    ctx = ctx if ctx is not None else make_ctx()

    answered = chain.run_request(ctx)
    upstream = None
    filtered_request: bytes | None = None
    chunks: Iterable[bytes] = ()
    if answered is None and request_body is not None:
        chunks = [bytes(request_body)] if isinstance(request_body, (bytes, bytearray)) else list(request_body)
        if chain.request_body_buffer is not None:
            # as the request path does: the whole body (up to the cap) before the backend is asked
            length = sum(len(c) for c in chunks) if isinstance(request_body, (bytes, bytearray)) else None
            try:
                answered, chunks, _ = chain.inspect_request_body(ctx, chunks, length)
            except EdgeError as e:
                ctx.error = e
                answered = Response.error(e.status, e.public, ctx.request_id)
    if answered is not None:
        status, headers, out = answered.status, answered.headers, answered.body
    else:
        if request_body is not None:
            filtered_request = b"".join(chain.filter_request_body(ctx, chunks))
        upstream = response if response is not None else make_upstream_response()
        if body is not _UNSET:
            upstream.body = [body] if isinstance(body, (bytes, bytearray)) else list(body)
        chain.run_response(ctx, upstream)
        if upstream.replacement is not None:
            final = upstream.replacement
            status, headers, out = final.status, final.headers, final.body
        else:
            status, headers = upstream.status, upstream.headers
            out = b"".join(chain.filter_body(ctx, upstream.body or ()))
            if chain.has_body_filters:
                # as the request path does: a filter may change the length, so the response goes chunked
                headers.remove("Content-Length")
    ctx.status = status
    ctx.response_headers = headers
    ctx.bytes_sent = len(out)
    chain.run_log(ctx)
    return PluginRun(ctx, plugin, answered, upstream, status, headers, out, filtered_request, sink.errors)


# =========================================================================== end-to-end fixture


class EdgeServer:
    """A real edge (gunicorn master + workers) in front of real demo origins, for one test.

    Built by the ``edge_server`` fixture; every process is stopped by PID when the test ends.

    - ``url`` (``http://127.0.0.1:<port>``), ``port``: where edge listens;
    - ``origin``: the first demo origin (``scripts/origin.py``); ``origins``: all of them;
      ``pools``: upstream pool name -> its origins. Each origin answers with
      ``X-Origin: <pool><i>`` (``origin0``, ``origin1``, ... for the default pool);
    - ``process``: the ``edge.launch.EdgeProcess`` (``pid``, ``worker_pids()``, ``signal()``);
    - ``config()``: the configuration file as a dict, server and store sections included;
    - ``write_config(config)``: write a new configuration for the next reload, keeping the
      fixture's ``server`` and ``store`` sections (``bind`` always stays; other ``server``
      keys given in ``config`` win; ``store`` only if ``config`` has none);
    - ``reload()``: HUP, then wait until every worker that ran before has exited and
      edge answers, so from the return on only the new configuration and plugin code
      serve; raises ``edge.launch.ReloadRefused`` if edge refused the file;
    - ``reconfigure(config)``: ``write_config`` then ``reload``;
    - ``log()``: edge's output so far (gunicorn's error log and edge's log lines).
    """

    def __init__(self, process: Any, pools: Mapping[str, list[Any]]) -> None:
        self.process = process
        self.pools = {name: list(procs) for name, procs in pools.items()}
        self.origins = [o for procs in self.pools.values() for o in procs]
        self.origin = self.origins[0]
        self.url = process.url
        self.port = process.port

    def config(self) -> dict[str, Any]:
        return self.process.config()

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.process.write_config(dict(config))

    def reload(self, timeout_s: float = 30.0) -> None:
        self.process.reload(wait=True, timeout_s=timeout_s)

    def reconfigure(self, config: Mapping[str, Any], timeout_s: float = 30.0) -> None:
        self.write_config(config)
        self.reload(timeout_s)

    def log(self) -> str:
        return self.process.log()


@pytest.fixture
def edge_server(tmp_path):
    """Factory fixture: start a real edge with your plugins in front of real demo origins.

    ``edge_server(plugins=None, plugin_dirs=(), routes=None, workers=1, extra=None, origins=1)``
    returns an ``EdgeServer``:

    - ``plugins``: plugins enabled on every route, ``{name: settings}`` as under
      ``plugins:`` in edge.yaml;
    - ``plugin_dirs``: directories searched for plugins after the shipped ``plugins/``;
    - ``origins``: how many demo origins to start in the pool ``origin`` (an int), or
      ``{pool name: count}`` for several pools (``{"eu": 2, "us": 1}``);
    - ``routes``: the ``routes:`` list; default one route ``/`` to the first pool;
    - ``workers``: edge worker processes (default 1);
    - ``extra``: further top-level sections (``store``, ``headers``, ``server`` keys
      such as ``accesslog`` ...), merged last.

    Edge and the origins listen on free loopback ports, each edge gets its own
    ``local`` store directory under the test's ``tmp_path``, and the call returns once
    every worker has booted and edge answers::

        def test_my_plugin(edge_server):
            edge = edge_server(plugins={"maintenance": {"paths": ["/down"]}}, plugin_dirs=["my_plugins"])
            assert requests.get(edge.url + "/down").status_code == 503
    """
    from edge.launch import start_edge, start_origin

    started: list[Any] = []

    def start(plugins: Mapping[str, Any] | None = None, plugin_dirs: Iterable[str] = (), routes: list | None = None,
              workers: int = 1, extra: Mapping[str, Any] | None = None,
              origins: int | Mapping[str, int] = 1) -> EdgeServer:
        counts = {"origin": origins} if isinstance(origins, int) else dict(origins)
        if not counts or any(not isinstance(n, int) or n < 1 for n in counts.values()):
            raise ValueError(f"origins: a count >= 1 or {{pool: count >= 1}} (got {origins!r})")
        pools: dict[str, list[Any]] = {}
        for pool, n in counts.items():
            pools[pool] = []
            for i in range(n):
                o = start_origin(f"{pool}{i}", log_dir=str(tmp_path))
                started.append(o)
                pools[pool].append(o)
        config: dict[str, Any] = {
            "upstreams": {pool: {"servers": [f"127.0.0.1:{o.port}" for o in procs]} for pool, procs in pools.items()},
            "routes": routes if routes is not None else [
                {"name": "default", "match": {"path": "/"}, "upstream": next(iter(pools))}],
            "plugins": dict(plugins or {}),
            "plugin_dirs": [str(d) for d in plugin_dirs],
            **dict(extra or {}),
        }
        d = tmp_path / f"edge{len(started)}"
        d.mkdir()
        process = start_edge(config, workers=workers, work_dir=str(d))
        started.append(process)
        return EdgeServer(process, pools)

    yield start
    for p in reversed(started):
        p.stop()
