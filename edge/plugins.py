"""The plugin contract, the loader, per-route chains and isolation (DESIGN.md §5).

Theory of operation
-------------------
A plugin is one module (``foo.py``) or package (``foo/__init__.py``) in a plugins
directory: the shipped ``plugins/`` first, then each of ``EdgeConfig.plugin_dirs``.
Each defines exactly one subclass of :class:`Plugin`. ``load_plugins`` imports every
one of them afresh (a unique module name per load, never the ``sys.modules`` cache,
so a reload runs new code), checks each class (name, priority, ``Config``, hook
names and signatures) and refuses the whole load with ``PluginLoadError`` naming
file, class and reason. A plugin that is merely present but not enabled is still
imported and checked: a broken file refuses the start (or the reload) either way.

Enabled plugins are instantiated once per worker per *effective settings*: the
global settings (``plugins.<name>``) with a route's settings (``routes[i].plugins.
<name>``) shallow-merged over them; ``false`` on a route disables a global plugin
there. Routes whose effective settings are equal share one instance.

For the default (global) plugins and for each route, a :class:`Chain` is built at
load. It holds, per phase, a tuple of ``(entry, bound_method)`` for only the
plugins that override that hook, so a hook nobody defines costs one empty-tuple
test per request. Request-side phases (``on_connect``, ``on_request``,
``on_request_body_complete``, ``on_request_body``) run by priority, highest first;
``on_response``, ``on_body``, ``on_error`` and ``on_log`` run in the reverse order (the plugin that saw the
request first sees the response last, like nested middleware).

Whole request bodies: bodies stream, unless a plugin on the route declares, from
its settings on that route, that it needs the whole body (``request_body_buffer(config)``
returns a ``BodyBuffer``: a byte cap and what to do past it). The chain combines
those at load (largest cap; ``reject`` if any plugin rejects), so the request path
knows per route, without a per-request lookup, whether to read the body first.
``Chain.inspect_request_body`` then reads up to the cap before the backend is
contacted, runs ``on_request_body_complete`` (a ``Response`` answers: no byte
reaches the backend) and hands back the body to replay with its length. A body
over a ``reject`` cap is a 413 (``BodyTooLarge``), refused from its
``Content-Length`` before any byte is read when it has one.

Isolation: every hook call is wrapped. An exception (or, for request-side hooks,
an overrun of the plugin's ``timeout``) is counted in ``PluginRegistry.errors``
and the ``plugin.<name>.<hook>.error`` metric, logged (an exception with its
traceback) at most once per ``ERROR_LOG_INTERVAL_S`` per plugin, hook and kind of
failure (raised, overran, unavailable), so a timeout right after an exception is
still shown; a throttled burst ends with one line saying how many failures were not
shown (``edge.logs.ThrottledLog``). Then ``on_failure: closed`` answers 500 (503 for
an overrun or an unavailable plugin) and the error is what the access log shows
(``ctx.error``), while ``open`` skips the plugin as if it had returned ``None``. The
worker keeps serving.

Construction: in a worker (``load_plugins(..., defer_init_failures=True)``) a plugin
whose ``__init__`` raises does not stop the worker from booting (gunicorn would halt
the master on a worker that cannot boot). Its hooks are replaced by stand-ins that
fail with ``PluginUnavailable``: ``closed`` answers 503 on its routes, ``open`` skips
it. ``PluginRegistry.start_init_retries`` builds it again with backoff
(``INIT_RETRY_FIRST_S`` doubling up to ``INIT_RETRY_MAX_S``), logging and counting
(``plugin.<name>.init_error``) each failure; once built, its real hooks run, with
no reload. What can be known before any worker starts is checked earlier: the master
and ``edge check`` build every plugin in a short-lived child (``edge.boot``) and
refuse a configuration whose plugin fails there, unless the failure is one of
``TRANSIENT_INIT_ERRORS`` (a service that is down now), which a worker retries.

References: a plugin's ``Config`` can name upstream pools and routes with the
``UpstreamName`` and ``RouteName`` types; the loader validates settings with the
names the configuration defines, so an unknown one is a configuration error with
file, key and reason. ``Services.upstreams`` and ``Services.routes`` hold the same
names for ``__init__``.

Upstream choice: ``Chain.run_request`` notes in ``ctx.facts[UPSTREAM_SET_BY]`` the
name of the last plugin that changed ``ctx.upstream``, so a pool name that does not
exist is reported against the plugin that chose it (``edge.app``).

The time budget is a raw gevent loop timer, created once per phase and restarted
around each request-side hook call (about 0.1 µs per hook; a ``gevent.Timeout``
object costs about 1.4 µs). When it
fires it throws ``PluginTimeout`` (a ``BaseException``, like ``gevent.Timeout``,
so a plugin's ``except Exception`` does not swallow it) into the greenlet. As
with any gevent timeout, it can only interrupt a hook that waits (network I/O,
``gevent.sleep``, a lock); a pure CPU loop runs to its end and is not cut.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import itertools
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Annotated, Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping

import gevent
from gevent import getcurrent, get_hub
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from edge.config import Duration, EdgeConfig, _key_path, _reason, combine_errors
from edge.context import RequestContext, Response, UpstreamResponse
from edge.errors import BodyTooLarge, ClientError, ConfigError, EdgeError, PluginError, PluginLoadError, StoreUnavailable
from edge.logs import RequestLabel, ThrottledLog
from edge.store.base import DEFAULT_PLUGIN_TIMEOUT_S

__all__ = [
    "HOOKS", "Plugin", "PluginConfig", "Services", "Chain", "PluginRegistry", "PluginTimeout",
    "PluginUnavailable", "UpstreamName", "RouteName", "TRANSIENT_INIT_ERRORS", "UPSTREAM_SET_BY", "BodyBuffer",
    "load_plugins", "load_plugin_file", "validate_settings", "SHIPPED_DIR",
]

log = logging.getLogger("edge.plugins")

#: The shipped plugins directory (``<repo>/plugins``).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "plugins"

#: Known hooks and the positional arguments each receives after ``self``.
HOOKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "on_connect": ("conn",),
    "on_request": ("ctx",),
    "on_request_body": ("ctx", "chunk", "end"),
    "on_request_body_complete": ("ctx", "body", "truncated"),
    "on_response": ("ctx", "response"),
    "on_body": ("ctx", "chunk", "end"),
    "on_error": ("ctx", "error"),
    "on_log": ("ctx",),
})

#: A failing plugin+hook+kind is logged (with its traceback) at most once per this many seconds.
ERROR_LOG_INTERVAL_S = 10.0

#: A plugin whose ``__init__`` failed in a worker is built again after this long, ...
INIT_RETRY_FIRST_S = 0.5
#: ... the delay doubling after each failure up to this.
INIT_RETRY_MAX_S = 5.0
#: Once the delay is at its cap, one failed attempt in this many is logged (all are counted).
INIT_LOG_EVERY = 12

#: ``ctx.facts`` key: name of the last plugin whose ``on_request`` changed ``ctx.upstream``.
UPSTREAM_SET_BY = "edge.upstream_set_by"

_NAME_RE = re.compile(r"[a-z][a-z0-9_\-]*")


# --------------------------------------------------------------------------- contract


class PluginConfig(BaseModel):
    """Base of every plugin's ``Config``: frozen, unknown keys refused.

    Subclasses add their own fields (with ``description=`` for the docs). The two
    common fields apply to every plugin and may be set per plugin, globally or per route.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: Duration = Field(
        DEFAULT_PLUGIN_TIMEOUT_S,  # 250 ms: one store call at the default store.timeout fits (edge.store.base)
        description="time budget of each request-side hook call (on_connect, on_request, on_request_body)"
    )
    on_failure: Literal["closed", "open"] = Field(
        "closed",
        description="when the plugin raises or overruns: `closed` answers 500 (503 for an overrun), `open` skips the plugin",
    )

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be positive (got {v})")
        return v


class PluginUnavailable(Exception):
    """Something a plugin needs is not there *now* (an auth service, a database).

    Raised from ``__init__`` it means "build me again later": ``edge check``, a start
    and a reload accept the configuration with a warning, and each worker retries with
    backoff while the plugin's routes get 503 (``on_failure: closed``) or skip it
    (``open``). Also what the stand-in hooks of a plugin not yet built raise.
    """


#: ``__init__`` failures that a worker retries instead of refusing the configuration:
#: a network or file error, a store that is down, or an explicit ``PluginUnavailable``.
TRANSIENT_INIT_ERRORS: tuple[type[BaseException], ...] = (OSError, StoreUnavailable, PluginUnavailable,
                                                          gevent.Timeout)


def _known(kind: str) -> Callable[[str, ValidationInfo], str]:
    def check(value: str, info: ValidationInfo) -> str:
        names = (info.context or {}).get(kind)
        if names is not None and value not in names:
            known = ", ".join(sorted(names)) or "none defined"
            raise ValueError(f"unknown {kind[:-1]} {value!r} (known: {known})")
        return value
    return check


#: A plugin setting naming an upstream pool; the loader refuses a name ``upstreams`` lacks.
UpstreamName = Annotated[str, AfterValidator(_known("upstreams"))]
#: A plugin setting naming a route (its ``name``); the loader refuses an unknown one.
RouteName = Annotated[str, AfterValidator(_known("routes"))]


def config_refs(cfg: EdgeConfig) -> dict[str, frozenset[str]]:
    """The names plugin settings may refer to (the validation context of every ``Config``)."""
    return {
        "upstreams": frozenset(cfg.upstreams),
        "routes": frozenset(r.name for r in cfg.routes if r.name),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class BodyBuffer:
    """What a plugin needs of the request body on a route: the whole of it, up to ``max_bytes``.

    Returned by ``Plugin.request_body_buffer(config)``. ``oversize`` says what happens to a
    longer body: ``reject`` (the safe default) answers 413 before a byte reaches the backend
    (at once when ``Content-Length`` says so, else as soon as ``max_bytes`` is crossed);
    ``truncate`` gives the hook the first ``max_bytes`` with ``truncated=True`` and then
    streams the whole body to the backend (what the hook did not see is not inspected).
    """

    max_bytes: int
    oversize: Literal["reject", "truncate"] = "reject"

    def __post_init__(self) -> None:
        if type(self.max_bytes) is not int or self.max_bytes < 1:
            raise ValueError(f"max_bytes: a positive integer (got {self.max_bytes!r})")
        if self.oversize not in ("reject", "truncate"):
            raise ValueError(f"oversize: reject or truncate (got {self.oversize!r})")

    @staticmethod
    def combine(buffers: Iterable["BodyBuffer"]) -> "BodyBuffer | None":
        """One route's need from its plugins': the largest cap, ``reject`` if any plugin rejects."""
        bs = tuple(buffers)
        if not bs:
            return None
        reject = any(b.oversize == "reject" for b in bs)
        return BodyBuffer(max(b.max_bytes for b in bs), "reject" if reject else "truncate")


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """What a plugin may use to reach the world, built once per worker.

    ``extras`` holds optional services by name (``geo``, ...); they read as
    attributes too: ``services.geo`` is ``services.extras["geo"]``. ``upstreams``
    and ``routes`` are the names of the configured pools and (named) routes, for a
    plugin that checks a reference in ``__init__``. ``logger`` is the plugin's own
    (``edge.plugin.<name>`` in a worker), written to edge's error log.
    """

    store: Any = None
    metrics: Any = None
    logger: logging.Logger | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    upstreams: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails (an extra, or a typo).
        if name.startswith("__") or name == "extras":
            raise AttributeError(name)
        try:
            return self.extras[name]
        except KeyError:
            raise AttributeError(f"no service {name!r} (have: store, metrics, logger, upstreams, routes"
                                 + "".join(f", {k}" for k in self.extras) + ")") from None


class Plugin:
    """Base class of every plugin. Subclass it once per module; define only the hooks you need.

    Class attributes:
        name      the key used in the configuration (``plugins.<name>``); unique.
        priority  request phase: higher runs first; response, body and log phases: reverse.
        Config    a ``PluginConfig`` subclass: the schema of the plugin's settings.

    ``__init__(config, services)`` runs once per worker and effective settings: compile
    everything there, the hooks then only read attributes.

    Every hook is a plain blocking call (each connection is its own greenlet, so a hook
    may call Redis or an HTTP service directly). ``None`` always means *continue*: a
    forgotten ``return`` is harmless.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig, services: Services) -> None:
        self.config = config
        self.services = services

    # The stubs below document the hooks; the chain only calls hooks a subclass overrides.

    def on_connect(self, conn: Any) -> Response | None:
        """A client connected, before any request was read (budgeted).

        ``conn`` is the worker's connection object (peer address, socket). Return a
        ``Response`` to answer it and close the connection (an IP deny list, a connection
        cap); ``None`` to continue. Only global plugins run here: no route is known yet.
        """
        return None

    def on_request(self, ctx: RequestContext) -> Response | None:
        """The request head has been read and a route matched; the body has not (budgeted).

        May change ``ctx.path``, ``ctx.query``, ``ctx.headers`` (what the backend gets),
        ``ctx.upstream`` (the pool to forward to) and ``ctx.facts``. Return a ``Response``
        to answer now (403, 429, a redirect, a CORS preflight); the remaining plugins'
        ``on_request`` hooks are then skipped. ``None``: continue.
        """
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        """Streaming filter of the request body, chunk by chunk (budgeted, per call).

        Return the bytes to send on (``b""`` to hold them back); ``end`` is true on the
        last call, whose ``chunk`` may be ``b""``. Returning ``None`` passes ``chunk`` on
        unchanged. A filter that changes the length makes the upstream request chunked.
        Raising an ``edge.errors.ClientError`` (``BodyTooLarge``) refuses the request: the
        client gets its status, the backend request is abandoned (its connection closed).
        """
        return chunk

    @classmethod
    def request_body_buffer(cls, config: PluginConfig) -> BodyBuffer | None:
        """How much of the request body this plugin needs whole on a route with ``config``.

        ``None`` (the default): none, the body streams. A plugin that defines
        ``on_request_body_complete`` overrides this; a ``BodyBuffer`` makes edge read the
        body (up to its cap) before anything is sent to the backend, on the routes whose
        settings ask for it. Called once per route at load, never per request.
        """
        return None

    def on_request_body_complete(self, ctx: RequestContext, body: bytes, truncated: bool) -> Response | None:
        """The request body, read whole before the backend is contacted (budgeted).

        Runs only on routes where ``request_body_buffer(config)`` gave a ``BodyBuffer``,
        after every ``on_request`` passed. ``body`` is at most that buffer's ``max_bytes``;
        ``truncated`` is true when the body was longer (``oversize: truncate`` only; with
        ``reject`` edge answered 413 already). Return a ``Response`` to answer now (a WAF's
        403): no byte of the body reaches the backend. ``None``: the body is sent on,
        replayed with its length.
        """
        return None

    def on_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        """The response head from the backend (or the cache) is known, no body byte sent yet.

        May edit ``response.status`` and ``response.headers``, or replace the whole answer
        by setting ``response.replacement = Response(...)`` (returning a ``Response`` does
        the same). Later plugins still run and see ``response.replacement``.
        """
        return None

    def on_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes:
        """Streaming filter of the response body (compression, rewriting).

        Return the bytes to send (``b""`` to hold them back, e.g. to buffer a small
        window); ``end`` is true on the last call, whose ``chunk`` may be ``b""``: flush
        what you hold there. ``None`` passes ``chunk`` on unchanged. When any body filter
        is enabled the response loses its ``Content-Length`` and is sent chunked.
        """
        return chunk

    def on_error(self, ctx: RequestContext, error: EdgeError) -> Response | None:
        """The upstream failed (connect error, timeout, no healthy server) before a response
        head was sent. Return a ``Response`` to answer instead of edge's default error
        (a custom 502/503/504 page); the first plugin that returns one wins. ``None``: the
        default. ``error.status`` is the status edge would send.
        """
        return None

    def on_log(self, ctx: RequestContext) -> None:
        """After the last byte was sent (or the exchange failed). ``ctx.status``,
        ``ctx.bytes_sent``, ``ctx.upstream_time``, ``ctx.error`` are final. Cannot change
        the exchange; exceptions are counted and swallowed.
        """
        return None


class PluginTimeout(BaseException):
    """Thrown into a hook that overran its ``timeout``. A ``BaseException``, like
    ``gevent.Timeout``, so ``except Exception`` in a plugin does not swallow it."""


# --------------------------------------------------------------------------- chains


def _expire(glet: Any) -> None:
    # Runs in the hub when a hook's budget is spent: interrupt the hook where it waits.
    glet.throw(PluginTimeout())


class _Entry:
    """One plugin instance as a chain sees it: what isolation needs, precomputed.

    ``instance`` is None while a plugin whose ``__init__`` failed in this worker waits
    for its next attempt (``PluginRegistry.start_init_retries``); ``init_error`` is then
    the last failure.
    """

    __slots__ = ("name", "instance", "timeout_s", "open", "file", "cls_name", "cls", "config", "services",
                 "init_error", "init_attempts")

    def __init__(self, name: str, instance: Plugin | None, config: PluginConfig, file: str,
                 cls: type[Plugin] | str, services: Services | None = None,
                 init_error: BaseException | None = None) -> None:
        self.name = name
        self.instance = instance
        self.timeout_s = config.timeout
        self.open = config.on_failure == "open"
        self.file = file
        # edge.testing passes the class name of a built instance
        self.cls = type(instance) if isinstance(cls, str) else cls
        self.cls_name = cls if isinstance(cls, str) else cls.__name__
        self.config = config
        self.services = services
        self.init_error = init_error
        self.init_attempts = 1

    def __repr__(self) -> str:
        return f"<plugin {self.name}>"


class _NotBuiltYet:
    """Stands in for the bound hook of a plugin whose ``__init__`` failed in this worker.

    Raises ``PluginUnavailable`` (so the chain applies ``on_failure``) until the retry
    greenlet has built the instance; from then on it calls the real hook.
    """

    __slots__ = ("entry", "hook")

    def __init__(self, entry: _Entry, hook: str) -> None:
        self.entry, self.hook = entry, hook

    def __call__(self, *args: Any) -> Any:
        instance = self.entry.instance
        if instance is None:
            raise PluginUnavailable(f"not initialised: {type(self.entry.init_error).__name__}: {self.entry.init_error}")
        return getattr(instance, self.hook)(*args)


Hook = tuple[_Entry, Callable[..., Any]]


class Chain:
    """The plugins of one route (or the global ones), per phase, in call order.

    Built once per worker at load; every method here is on the request path and only
    reads precomputed tuples. The request path calls, in this order::

        run_connect(conn)            # default chain only, per connection
        run_request(ctx)             # -> Response to answer now, or None
        inspect_request_body(ctx, chunks, length)   if request_body_buffer: -> (Response | None, chunks, length)
        filter_request_body(ctx, chunks)   if has_request_body_filters
        run_response(ctx, upstream_response)   # then send upstream_response.replacement if set
        filter_body(ctx, chunks)     if has_body_filters (drop Content-Length then)
        run_error(ctx, error)        # instead of run_response when the upstream failed
        run_log(ctx)                 # after the last byte; never raises
    """

    __slots__ = (
        "plugin_names", "has_body_filters", "has_request_body_filters", "has_connect_hooks", "has_response_hooks",
        "request_body_buffer", "_connect", "_request", "_request_body", "_request_body_complete", "_response", "_body",
        "_error", "_log", "_fail",
    )

    def __init__(self, entries: Iterable[_Entry], fail: "Callable[[_Entry, str, BaseException, Any, bool], None]") -> None:
        # Request order: priority descending, name as a stable tie-break.
        ordered = sorted(entries, key=lambda e: (-e.cls.priority, e.name))
        reverse = ordered[::-1]

        def hooks(order: list[_Entry], hook: str) -> tuple[Hook, ...]:
            # An instance may opt out of a hook its class defines by setting it to None in
            # __init__ (limits without a body limit: no per-chunk call, the body keeps its length).
            return tuple((e, getattr(e.instance, hook) if e.instance is not None else _NotBuiltYet(e, hook))
                         for e in order if _overrides(e.cls, hook)
                         and (e.instance is None or getattr(e.instance, hook) is not None))

        self.plugin_names: tuple[str, ...] = tuple(e.name for e in ordered)
        self._connect = hooks(ordered, "on_connect")
        self._request = hooks(ordered, "on_request")
        self._request_body = hooks(ordered, "on_request_body")
        # whole-body hooks: only the plugins whose settings on this route ask for the body
        needs = [(e, e.cls.request_body_buffer(e.config))
                 for e in ordered if _overrides(e.cls, "on_request_body_complete")]
        self._request_body_complete = tuple(
            (e, e.instance.on_request_body_complete if e.instance is not None
             else _NotBuiltYet(e, "on_request_body_complete"), buf)
            for e, buf in needs if buf is not None)
        #: the route's need of a whole request body (None: bodies stream untouched)
        self.request_body_buffer: BodyBuffer | None = BodyBuffer.combine(b for _, _, b in self._request_body_complete)
        self._response = hooks(reverse, "on_response")
        self._body = hooks(reverse, "on_body")
        self._error = hooks(reverse, "on_error")
        self._log = hooks(reverse, "on_log")
        self.has_body_filters = bool(self._body)
        self.has_request_body_filters = bool(self._request_body)
        self.has_connect_hooks = bool(self._connect)
        self.has_response_hooks = bool(self._response)
        self._fail = fail

    def __repr__(self) -> str:
        return f"<Chain {', '.join(self.plugin_names) or '(empty)'}>"

    def hooks(self, phase: str) -> tuple[str, ...]:
        """Names of the plugins that run in ``phase`` (e.g. ``"on_response"``), in call order."""
        return tuple(h[0].name for h in getattr(self, "_" + phase[3:]))

    # -- request side (budgeted) ------------------------------------------------

    def run_connect(self, conn: Any) -> Response | None:
        """Run ``on_connect`` hooks; a ``Response`` means answer it and close."""
        if not self._connect:
            return None
        return self._run_answering(self._connect, "on_connect", None, conn)

    def run_request(self, ctx: RequestContext) -> Response | None:
        """Run ``on_request`` hooks by priority; the first ``Response`` answers the request."""
        if not self._request:
            return None
        return self._run_answering(self._request, "on_request", ctx, ctx)

    def _run_answering(self, hooks: tuple[Hook, ...], hook_name: str, ctx: Any, arg: Any) -> Response | None:
        # One loop timer per phase, restarted around each hook (about 0.1 µs); a new one
        # only when the next plugin has a different budget.
        loop = get_hub().loop
        glet = getcurrent()
        timer = None
        timer_s = 0.0
        upstream = ctx.upstream if ctx is not None else None
        try:
            for entry, hook in hooks:
                if timer is None or entry.timeout_s != timer_s:
                    if timer is not None:
                        timer.close()
                    timer_s = entry.timeout_s
                    timer = loop.timer(timer_s)
                timer.start(_expire, glet, update=True)
                try:
                    r = hook(arg)
                except (Exception, PluginTimeout) as exc:
                    timer.stop()
                    answer = self._failed(entry, hook_name, exc, ctx)
                    if answer is not None:
                        return answer
                    continue
                # Anything else (GreenletExit, an outer gevent.Timeout) is not ours: the
                # finally below disarms the timer and it propagates.
                timer.stop()
                if ctx is not None and ctx.upstream is not upstream:
                    # who chose the pool, for the error if it does not exist (edge.app)
                    upstream = ctx.upstream
                    ctx.facts[UPSTREAM_SET_BY] = entry.name
                if r is not None:
                    if isinstance(r, Response):
                        return r
                    answer = self._failed(entry, hook_name, TypeError(
                        f"{hook_name} returned {type(r).__name__}; expected a Response or None"), ctx)
                    if answer is not None:
                        return answer
            return None
        finally:
            if timer is not None:
                timer.close()

    def inspect_request_body(self, ctx: RequestContext, chunks: Iterable[bytes],
                             length: int | None) -> tuple[Response | None, Iterable[bytes], int | None]:
        """Read the request body up to ``request_body_buffer`` and run ``on_request_body_complete``.

        ``chunks`` is the body as the front end delivers it, ``length`` its Content-Length
        (None: chunked or unsized). Returns ``(answer, chunks, length)``: a ``Response``
        when a plugin answered (nothing was sent upstream), else the body to send on: the
        bytes read, replayed with their length, or (``truncate`` past the cap) the bytes
        read followed by the rest of the stream. Raises ``BodyTooLarge`` (413) for a body
        over a ``reject`` cap, before reading it when ``length`` says so.
        """
        buf = self.request_body_buffer
        if buf is None:
            return None, chunks, length
        cap = buf.max_bytes
        reject = buf.oversize == "reject"
        if reject and length is not None and length > cap:
            raise BodyTooLarge(f"request body of {length} bytes over the {cap}-byte inspection limit")
        it = iter(chunks)
        held: list[bytes] = []
        n = 0
        for chunk in it:
            held.append(chunk)
            n += len(chunk)
            if n > cap:
                break
        over = n > cap
        if over and reject:
            raise BodyTooLarge(f"request body over the {cap}-byte inspection limit")
        body = b"".join(held)
        answer = self._run_body_complete(ctx, body, over)
        if answer is not None:
            return answer, (), None
        if over:
            return None, itertools.chain((body,), it), length
        return None, ((body,) if body else ()), len(body)

    def _run_body_complete(self, ctx: RequestContext, body: bytes, over: bool) -> Response | None:
        for entry, hook, buf in self._request_body_complete:
            cap = buf.max_bytes
            truncated = over or len(body) > cap
            if truncated and buf.oversize == "reject":
                raise BodyTooLarge(f"request body over the {cap}-byte inspection limit of plugin {entry.name}")
            try:
                r = self._call_budgeted(entry, hook, ctx, body[:cap] if len(body) > cap else body, truncated)
            except (Exception, PluginTimeout) as exc:
                answer = self._failed(entry, "on_request_body_complete", exc, ctx)
                if answer is not None:
                    return answer
                continue
            if r is not None:
                if isinstance(r, Response):
                    return r
                answer = self._failed(entry, "on_request_body_complete", TypeError(
                    f"on_request_body_complete returned {type(r).__name__}; expected a Response or None"), ctx)
                if answer is not None:
                    return answer
        return None

    def filter_request_body(self, ctx: RequestContext, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The request body through every ``on_request_body`` filter, in request order."""
        if not self._request_body:
            return iter(chunks)
        return self._filter(ctx, chunks, self._request_body, "on_request_body", True)

    # -- response side ------------------------------------------------------------

    def run_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        """Run ``on_response`` hooks (reverse order). The caller then sends
        ``response.replacement`` if a plugin set one, else ``response`` as edited."""
        for entry, hook in self._response:
            try:
                r = hook(ctx, response)
            except Exception as exc:
                answer = self._failed(entry, "on_response", exc, ctx)
                if answer is not None:
                    response.replacement = answer
                    return
                continue
            if r is not None and isinstance(r, Response):
                response.replacement = r

    def filter_body(self, ctx: RequestContext, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The response body through every ``on_body`` filter (reverse order).

        Each chunk passes through all filters with ``end=False``; when ``chunks`` is
        exhausted each filter is called once more with ``end=True`` and whatever the
        previous filters flushed (possibly ``b""``). Empty outputs are not yielded. A
        fail-closed filter that raises ends the stream with ``PluginError`` (the head is
        already sent, so the request path can only abort the connection).
        """
        if not self._body:
            return iter(chunks)
        return self._filter(ctx, chunks, self._body, "on_body", False)

    def _filter(self, ctx: RequestContext, chunks: Iterable[bytes], filters: tuple[Hook, ...],
                hook_name: str, budgeted: bool) -> Iterator[bytes]:
        active = filters
        call = self._call_budgeted if budgeted else None
        try:
            for chunk in itertools.chain(chunks, (None,)):
                end = chunk is None
                data = b"" if end else chunk
                dead = None
                for entry, f in active:
                    try:
                        out = call(entry, f, ctx, data, end) if call else f(ctx, data, end)
                    except (Exception, PluginTimeout) as exc:
                        if budgeted and isinstance(exc, ClientError):
                            # a request-body filter refusing the request (limits: 413): not a failure;
                            # the request path answers exc.status and abandons the backend request
                            raise
                        if self._failed(entry, hook_name, exc, ctx) is not None:
                            raise _plugin_error(entry, hook_name, exc) from exc
                        # fail-open: this chunk passes unchanged; the filter sits out the rest of this body
                        dead = (dead or set()) | {entry}
                        continue
                    if out is not None:
                        data = out
                if dead:
                    active = tuple(h for h in active if h[0] not in dead)
                if data:
                    yield data
        finally:
            # Closed early (a client abort, a failing filter): what the filters read from is closed
            # too, so a backend body gives its connection and server slot back now, not at a GC pass.
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _call_budgeted(entry: _Entry, f: Callable[..., Any], ctx: Any, data: bytes, end: bool) -> Any:
        timer = get_hub().loop.timer(entry.timeout_s)
        timer.start(_expire, getcurrent(), update=True)
        try:
            return f(ctx, data, end)
        finally:
            timer.close()

    def run_error(self, ctx: RequestContext, error: EdgeError) -> Response | None:
        """Run ``on_error`` hooks (reverse order); the first ``Response`` returned wins.
        A failing ``on_error`` is counted and skipped: edge's default error answer stands."""
        for entry, hook in self._error:
            try:
                r = hook(ctx, error)
            except Exception as exc:
                self._fail(entry, "on_error", exc, ctx, False)
                continue
            if r is not None and isinstance(r, Response):
                return r
        return None

    def run_log(self, ctx: RequestContext) -> None:
        """Run ``on_log`` hooks (reverse order). Never raises: failures are counted and logged."""
        for entry, hook in self._log:
            try:
                hook(ctx)
            except Exception as exc:
                self._fail(entry, "on_log", exc, ctx, False)

    # -- isolation ------------------------------------------------------------------

    def _failed(self, entry: _Entry, hook: str, exc: BaseException, ctx: Any) -> Response | None:
        """Count and log a failure; the answer a fail-closed plugin gives, or None (fail-open).

        A fail-closed failure is also the request's error (``ctx.error``): the access log
        names it instead of showing a 500 with no cause."""
        overrun = isinstance(exc, PluginTimeout)
        self._fail(entry, hook, exc, ctx, overrun)
        if entry.open:
            return None
        err = _plugin_error(entry, hook, exc)
        if ctx is not None:
            ctx.error = err
        return Response.error(err.status, err.public, getattr(ctx, "request_id", None))


def _plugin_error(entry: _Entry, hook: str, exc: BaseException) -> PluginError:
    """The error a fail-closed failure answers with: 503 for an overrun or a plugin not
    built yet (a dependency is down: retrying later may work), else 500."""
    err = PluginError(entry.name, hook, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, PluginTimeout):
        err.status, err.metric, err.public = 503, "plugin_timeout", "service unavailable"
    elif isinstance(exc, PluginUnavailable):
        err.status, err.metric, err.public = 503, "plugin_unavailable", "service unavailable"
    return err


def _overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Plugin, hook)


# --------------------------------------------------------------------------- registry


class PluginRegistry:
    """Everything ``load_plugins`` built for one worker: classes, instances, chains, counters."""

    def __init__(self, classes: Mapping[str, type[Plugin]], files: Mapping[str, str],
                 services: Services, source: str = "<string>") -> None:
        self.classes = MappingProxyType(dict(classes))   # every plugin found, enabled or not
        self.files = MappingProxyType(dict(files))       # name -> file it was loaded from
        self.services = services
        self.source = source
        self.errors: Counter[tuple[str, str]] = Counter()   # (plugin, hook) -> failures
        self.init_failures: Counter[str] = Counter()        # plugin -> failed __init__ attempts in this worker
        self.default_chain: Chain = Chain((), self._record)
        self._route_chains: tuple[Chain, ...] = ()
        self.instances: tuple[Plugin, ...] = ()
        self.pending: tuple[_Entry, ...] = ()               # plugins whose __init__ failed here, not built yet
        self._logger = services.logger or log
        self._incr = getattr(services.metrics, "incr", None)
        self._throttle = ThrottledLog(ERROR_LOG_INTERVAL_S, 1, self._closing_line)
        self.request_id_header: str | None = None   # set by the worker: request ids in failure lines
        self._retrying: list[Any] = []

    @property
    def plugin_names(self) -> tuple[str, ...]:
        """Names of all plugins found (enabled or not), sorted."""
        return tuple(sorted(self.classes))

    def chain_for(self, route_index: int) -> Chain:
        """The chain of route ``route_index`` (its index in ``cfg.routes``)."""
        return self._route_chains[route_index]

    # -- failures -------------------------------------------------------------------

    def _record(self, entry: _Entry, hook: str, exc: BaseException, ctx: Any, overrun: bool) -> None:
        self.errors[(entry.name, hook)] += 1
        unavailable = isinstance(exc, PluginUnavailable)
        if self._incr is not None:
            self._incr(f"plugin.{entry.name}.{hook}.error")
            if overrun:
                self._incr(f"plugin.{entry.name}.{hook}.timeout")
            elif unavailable:
                self._incr(f"plugin.{entry.name}.{hook}.unavailable")
        kind = "overran" if overrun else ("unavailable" if unavailable else "raised")
        outcome = "skipped (on_failure: open)" if entry.open else "request failed (on_failure: closed)"

        def write(_more: int) -> None:
            label = RequestLabel(ctx, self.request_id_header) if isinstance(ctx, RequestContext) else ctx
            if overrun:
                self._logger.error("plugin %s %s overran its budget of %gms; %s; request %s",
                                   entry.name, hook, entry.timeout_s * 1000, outcome, label)
            elif unavailable:
                self._logger.warning("plugin %s %s unavailable (%s); %s; request %s",
                                     entry.name, hook, exc, outcome, label)
            else:
                self._logger.error("plugin %s %s raised %s: %s; %s; request %s",
                                   entry.name, hook, type(exc).__name__, exc, outcome, label, exc_info=exc)

        self._throttle.emit((entry.name, hook, kind), write)

    def _closing_line(self, key: Any, count: int) -> None:
        name, hook, kind = key
        self._logger.error("plugin %s %s %s %d more times in the last %gs (not logged one by one)",
                           name, hook, kind, count, ERROR_LOG_INTERVAL_S)

    # -- construction retried in a worker --------------------------------------------

    def start_init_retries(self) -> None:
        """In a worker: one greenlet per plugin not built yet, retrying with backoff."""
        for entry in self.pending:
            self._retrying.append(gevent.spawn(self._retry_init, entry))

    def stop_init_retries(self) -> None:
        gevent.killall(self._retrying, block=False)
        self._retrying.clear()

    def _retry_init(self, entry: _Entry) -> None:
        delay = INIT_RETRY_FIRST_S
        while entry.instance is None:
            gevent.sleep(delay)
            entry.init_attempts += 1
            try:
                instance = entry.cls(entry.config, entry.services)
            except (Exception, SystemExit) as e:  # the same isolation as a hook: count, log, try later
                entry.init_error = e
                self._init_failed(entry, e, delay)
                delay = min(delay * 2, INIT_RETRY_MAX_S)
                continue
            entry.instance = instance
            self.instances = (*self.instances, instance)
            self.pending = tuple(e for e in self.pending if e is not entry)
            if self._incr is not None:
                self._incr(f"plugin.{entry.name}.init_ok")
            self._logger.warning("plugin %s initialised after %d attempts; its hooks run from now on",
                                 entry.name, entry.init_attempts)

    def _init_failed(self, entry: _Entry, exc: BaseException, delay_s: float) -> None:
        self.init_failures[entry.name] += 1
        if self._incr is not None:
            self._incr(f"plugin.{entry.name}.init_error")
        outcome = "skipped (on_failure: open)" if entry.open else "its routes answer 503 (on_failure: closed)"
        retry_s = min(delay_s * 2, INIT_RETRY_MAX_S) if entry.init_attempts > 1 else delay_s
        if retry_s >= INIT_RETRY_MAX_S and entry.init_attempts % INIT_LOG_EVERY:
            return   # a long outage: about one line a minute, not one per attempt
        # the first failure with its traceback, then one line per logged attempt
        self._logger.error("plugin %s (%s) __init__ failed (attempt %d): %s: %s; %s; retrying in %gs",
                           entry.name, entry.file, entry.init_attempts, type(exc).__name__, exc, outcome, retry_s,
                           exc_info=exc if entry.init_attempts == 1 else None)


# --------------------------------------------------------------------------- loading

_load_counter = itertools.count(1)


def _display(path: Path) -> str:
    """A path as error messages show it: relative to the working directory when inside it."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def _import_fresh(path: Path) -> ModuleType:
    """Import ``path`` (a ``.py`` file or a package directory) under a new unique module name."""
    stem = path.stem if path.is_file() else path.name
    modname = f"edge_plugin_{stem.replace('-', '_')}_{next(_load_counter)}"
    display = _display(path)
    if path.is_dir():
        init = path / "__init__.py"
        spec = importlib.util.spec_from_file_location(modname, init, submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(display, "", "cannot be imported")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec so pydantic, dataclasses and relative imports can find it.
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(modname, None)
        raise PluginLoadError(display, "", f"syntax error line {e.lineno}: {e.msg}") from None
    except Exception as e:
        sys.modules.pop(modname, None)
        raise PluginLoadError(display, "", f"import failed: {type(e).__name__}: {e}") from e
    return module


def _find_class(module: ModuleType, display: str) -> type[Plugin]:
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin
             and obj.__module__ == module.__name__]
    if not found:
        raise PluginLoadError(display, "", "no Plugin subclass (define one class derived from edge.plugins.Plugin)")
    if len(found) > 1:
        names = ", ".join(sorted(c.__name__ for c in found))
        raise PluginLoadError(display, names, f"one Plugin subclass per module (found {len(found)})")
    return found[0]


def check_plugin_class(cls: type[Plugin], display: str) -> None:
    """The loader's checks on one class; raises ``PluginLoadError(file, class, reason)``."""
    cname = cls.__name__
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise PluginLoadError(display, cname,
                              f"name must be a string of lowercase letters, digits, '_' or '-' (got {name!r})")
    priority = getattr(cls, "priority", None)
    if type(priority) is not int:
        raise PluginLoadError(display, cname, f"priority must be an integer (got {priority!r})")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, PluginConfig)):
        raise PluginLoadError(display, cname, f"Config must be a subclass of edge.plugins.PluginConfig (got {config!r})")
    mc = config.model_config
    if mc.get("frozen") is not True or mc.get("extra") != "forbid":
        raise PluginLoadError(display, cname, "Config must stay frozen with extra='forbid' (do not override model_config)")
    for attr in sorted(dir(cls)):
        if not attr.startswith("on_"):
            continue
        if attr not in HOOKS:
            close = difflib.get_close_matches(attr, HOOKS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(HOOKS)}"
            raise PluginLoadError(display, cname, f"{attr} is not a known hook ({hint})")
        if not _overrides(cls, attr):
            continue
        raw = inspect.getattr_static(cls, attr)
        expected = f"def {attr}(self, {', '.join(HOOKS[attr])})"
        if not inspect.isfunction(raw):
            raise PluginLoadError(display, cname, f"{attr} must be a plain method: {expected}")
        if inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw):
            raise PluginLoadError(display, cname, f"{attr} must not be async (hooks are plain blocking calls under gevent)")
        if inspect.isgeneratorfunction(raw):
            raise PluginLoadError(display, cname, f"{attr} must not be a generator: {expected}")
        try:
            inspect.signature(raw).bind(None, *HOOKS[attr])
        except TypeError:
            raise PluginLoadError(display, cname,
                                  f"{attr}{inspect.signature(raw)} does not accept the hook's arguments: {expected}") from None
    declared = inspect.getattr_static(cls, "request_body_buffer")
    default = inspect.getattr_static(Plugin, "request_body_buffer")
    if declared is not default and not isinstance(declared, classmethod):
        raise PluginLoadError(display, cname, "request_body_buffer must be a classmethod: "
                                              "def request_body_buffer(cls, config) -> BodyBuffer | None")
    if _overrides(cls, "on_request_body_complete") and declared is default:
        raise PluginLoadError(display, cname, "on_request_body_complete needs a request_body_buffer(cls, config) "
                                              "classmethod returning a BodyBuffer (the cap on what edge reads)")


def load_plugin_file(path: str | os.PathLike[str]) -> type[Plugin]:
    """Import one plugin file (or package directory) afresh and check it as the loader does."""
    p = Path(path)
    display = _display(p)
    if not p.exists():
        raise PluginLoadError(display, "", "no such file")
    cls = _find_class(_import_fresh(p), display)
    check_plugin_class(cls, display)
    return cls


def _candidates(directory: Path) -> list[Path]:
    out = []
    for p in sorted(directory.iterdir()):
        if p.name.startswith(("_", ".")):
            continue
        if p.is_file() and p.suffix == ".py":
            out.append(p)
        elif p.is_dir() and (p / "__init__.py").is_file():
            out.append(p)
    return out


def discover(dirs: Iterable[Path]) -> tuple[dict[str, type[Plugin]], dict[str, str]]:
    """Import and check every plugin in ``dirs``; ``(name -> class, name -> file)``."""
    classes: dict[str, type[Plugin]] = {}
    files: dict[str, str] = {}
    for d in dirs:
        for p in _candidates(d):
            display = _display(p)
            cls = _find_class(_import_fresh(p), display)
            check_plugin_class(cls, display)
            if cls.name in classes:
                other = classes[cls.name]
                raise PluginLoadError(display, cls.__name__,
                                      f"duplicate plugin name {cls.name!r} (also {files[cls.name]}: {other.__name__})")
            classes[cls.name] = cls
            files[cls.name] = display
    return classes, files


def validate_settings(cls: type[Plugin], settings: Mapping[str, Any], source: str, key_path: str,
                      route_keys: Mapping[str, Any] | None = None, route_path: str = "",
                      refs: Mapping[str, frozenset[str]] | None = None) -> PluginConfig:
    """``cls.Config`` from ``settings``; a ``ConfigError`` naming ``source``, the key path and pydantic's reason
    (every error of these settings, one per line, when there are several).

    With ``route_keys``, an error on a key the route set is reported under ``route_path``.
    ``refs`` (``config_refs(cfg)``) lets ``UpstreamName``/``RouteName`` fields check their names.
    """
    try:
        return cls.Config.model_validate(dict(settings), context=refs)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = tuple(err["loc"])
            base = route_path if (route_keys is not None and loc and loc[0] in route_keys) else key_path
            sub = _key_path(loc)
            errors.append(ConfigError(source, f"{base}.{sub}" if sub else base, _reason(err)))
        raise combine_errors(errors) from None


def _canonical(config: PluginConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, default=str)


def plugin_dirs(cfg: EdgeConfig, shipped_dir: Path = SHIPPED_DIR) -> list[Path]:
    """The shipped directory, then the configured ones (each must exist)."""
    dirs = [Path(shipped_dir)]
    for i, d in enumerate(cfg.plugin_dirs):
        p = Path(d)
        if not p.is_dir():
            raise ConfigError(cfg.source, f"plugin_dirs[{i}]", f"not a directory: {d}")
        dirs.append(p)
    return dirs


def load_plugins(cfg: EdgeConfig, services: Services | None = None, shipped_dir: Path = SHIPPED_DIR,
                 *, discovered: tuple[dict[str, type[Plugin]], dict[str, str]] | None = None,
                 validated: Mapping[tuple[Any, str], PluginConfig] | None = None,
                 defer_init_failures: bool = False) -> PluginRegistry:
    """Import and check all plugins, validate their settings, instantiate the enabled ones
    and build the default chain and one chain per route. Raises ``ConfigError`` (or its
    subclass ``PluginLoadError``) on the first problem; nothing is half-built.

    ``discovered`` is the result of an earlier ``discover`` (the master's): the code is
    then not imported again. With ``defer_init_failures`` (a worker), a plugin whose
    ``__init__`` raises is left in ``registry.pending`` behind stand-in hooks instead
    of failing the load (see the module docstring). ``validated`` holds settings the
    master already validated (``PluginCatalog.validated``), keyed ``("plugins", name)``
    and ``(route index, name)``: a worker uses them as they are, so a plugin whose
    settings read a file (an htpasswd, a key set, a network list) gets the contents the
    master read and checked, never a file changed since (or broken by a refused reload)."""
    known = validated or {}
    if services is None:
        services = Services(logger=log)
    refs = config_refs(cfg)
    if not services.upstreams and not services.routes:
        services = dataclasses.replace(services, upstreams=refs["upstreams"], routes=refs["routes"])
    source = cfg.source
    classes, files = discovered if discovered is not None else discover(plugin_dirs(cfg, shipped_dir))
    _check_names(cfg, classes)

    registry = PluginRegistry(classes, files, services, source)
    instances: dict[tuple[str, str], _Entry] = {}
    base_logger = services.logger or log

    def entry_for(name: str, config: PluginConfig) -> _Entry:
        key = (name, _canonical(config))
        entry = instances.get(key)
        if entry is None:
            cls = classes[name]
            own = dataclasses.replace(services, logger=base_logger.getChild(name))
            try:
                inst: Plugin | None = cls(config, own)
                failure = None
            except (Exception, SystemExit) as e:  # sys.exit(3) in a worker would halt gunicorn's master
                if not defer_init_failures:
                    raise PluginLoadError(files[name], cls.__name__, f"__init__ failed: {type(e).__name__}: {e}") from e
                inst, failure = None, e
            entry = instances[key] = _Entry(name, inst, config, files[name], cls, own, failure)
            if failure is not None:
                registry._init_failed(entry, failure, INIT_RETRY_FIRST_S)
        return entry

    global_configs = {
        name: known[("plugins", name)] if ("plugins", name) in known
        else validate_settings(classes[name], settings, source, f"plugins.{name}", refs=refs)
        for name, settings in cfg.plugins.items()
    }
    registry.default_chain = Chain([entry_for(n, c) for n, c in global_configs.items()], registry._record)

    chains = []
    for i, route in enumerate(cfg.routes):
        entries = []
        for name in dict.fromkeys([*cfg.plugins, *route.plugins]):
            over = route.plugins.get(name)
            if over is False:
                continue
            if over is None or over is True:
                config = global_configs.get(name) or validate_settings(
                    classes[name], {}, source, f"routes[{i}].plugins.{name}", refs=refs)
            else:
                config = known[(i, name)] if (i, name) in known else validate_settings(
                    classes[name], {**cfg.plugins.get(name, {}), **over}, source, f"plugins.{name}",
                    route_keys=over, route_path=f"routes[{i}].plugins.{name}", refs=refs)
            entries.append(entry_for(name, config))
        chains.append(Chain(entries, registry._record))
    registry._route_chains = tuple(chains)
    registry.instances = tuple(e.instance for e in instances.values() if e.instance is not None)
    registry.pending = tuple(e for e in instances.values() if e.instance is None)
    return registry


def _check_names(cfg: EdgeConfig, classes: Mapping[str, type[Plugin]]) -> None:
    known = ", ".join(sorted(classes)) or "none"
    errors = [ConfigError(cfg.source, f"plugins.{name}", f"unknown plugin (known: {known})")
              for name in cfg.plugins if name not in classes]
    errors += [ConfigError(cfg.source, f"routes[{i}].plugins.{name}", f"unknown plugin (known: {known})")
               for i, route in enumerate(cfg.routes) for name in route.plugins if name not in classes]
    if errors:
        raise combine_errors(errors)


class PluginCatalog:
    """Plugin classes imported and checked in the master; instantiated per worker after fork.

    The master imports the code (so a reload with a broken plugin is refused before
    any worker is replaced) and validates every plugin's settings; workers inherit
    the classes through fork and only build instances and chains. Whether each
    enabled plugin can be *built* is checked apart, in a short-lived child process
    (``edge.boot.check_construction``): nothing a plugin opens lives in the master.
    """

    def __init__(self, cfg: EdgeConfig, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.classes, self.files = discover(plugin_dirs(cfg, shipped_dir))
        _check_names(cfg, self.classes)
        refs = config_refs(cfg)
        errors: list[ConfigError] = []
        #: settings validated here, inherited by the workers (see ``load_plugins``)
        self.validated: dict[tuple[Any, str], PluginConfig] = {}

        def check(key: tuple[Any, str], *args: Any, **kwargs: Any) -> None:
            try:
                self.validated[key] = validate_settings(*args, **kwargs)
            except ConfigError as e:
                errors.extend(getattr(e, "errors", (e,)))

        for name, settings in cfg.plugins.items():
            check(("plugins", name), self.classes[name], settings, cfg.source, f"plugins.{name}", refs=refs)
        for i, route in enumerate(cfg.routes):
            for name, over in route.plugins.items():
                if isinstance(over, dict):
                    check((i, name), self.classes[name], {**cfg.plugins.get(name, {}), **over},
                          cfg.source, f"plugins.{name}", route_keys=over,
                          route_path=f"routes[{i}].plugins.{name}", refs=refs)
        if errors:
            raise combine_errors(errors)

    def instantiate(self, cfg: EdgeConfig, services: Services, *, defer_init_failures: bool = False) -> PluginRegistry:
        """In the worker, after fork: instances and chains from the classes the master checked."""
        return load_plugins(cfg, services, discovered=(self.classes, self.files), validated=self.validated,
                            defer_init_failures=defer_init_failures)


def discover_plugins(cfg: EdgeConfig) -> PluginCatalog:
    return PluginCatalog(cfg)
