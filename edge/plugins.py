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
``on_request_body``) run by priority, highest first; ``on_response``, ``on_body``,
``on_error`` and ``on_log`` run in the reverse order (the plugin that saw the
request first sees the response last, like nested middleware).

Isolation: every hook call is wrapped. An exception (or, for request-side hooks,
an overrun of the plugin's ``timeout``) is counted in ``PluginRegistry.errors``
and the ``plugin.<name>.<hook>.error`` metric, logged with its traceback at most
once per ``ERROR_LOG_INTERVAL_S`` per plugin and hook, and then
``on_failure: closed`` answers 500 (503 for an overrun) while ``open`` skips the
plugin as if it had returned ``None``. The worker keeps serving.

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
import time
from collections import Counter
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping

from gevent import getcurrent, get_hub
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.config import Duration, EdgeConfig, _key_path, _reason
from edge.context import RequestContext, Response, UpstreamResponse
from edge.errors import ConfigError, EdgeError, PluginError, PluginLoadError
from edge.store.base import DEFAULT_PLUGIN_TIMEOUT_S

__all__ = [
    "HOOKS", "Plugin", "PluginConfig", "Services", "Chain", "PluginRegistry", "PluginTimeout",
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
    "on_response": ("ctx", "response"),
    "on_body": ("ctx", "chunk", "end"),
    "on_error": ("ctx", "error"),
    "on_log": ("ctx",),
})

#: A failing plugin+hook is logged with its traceback at most once per this many seconds.
ERROR_LOG_INTERVAL_S = 10.0

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


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """What a plugin may use to reach the world, built once per worker.

    ``extras`` holds optional services by name (``geo``, ...); they read as
    attributes too: ``services.geo`` is ``services.extras["geo"]``.
    """

    store: Any = None
    metrics: Any = None
    logger: logging.Logger | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails (an extra, or a typo).
        if name.startswith("__") or name == "extras":
            raise AttributeError(name)
        try:
            return self.extras[name]
        except KeyError:
            raise AttributeError(f"no service {name!r} (have: store, metrics, logger"
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
        """
        return chunk

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
    """One plugin instance as a chain sees it: what isolation needs, precomputed."""

    __slots__ = ("name", "instance", "timeout_s", "open", "file", "cls_name")

    def __init__(self, name: str, instance: Plugin, config: PluginConfig, file: str, cls_name: str) -> None:
        self.name = name
        self.instance = instance
        self.timeout_s = config.timeout
        self.open = config.on_failure == "open"
        self.file = file
        self.cls_name = cls_name

    def __repr__(self) -> str:
        return f"<plugin {self.name}>"


Hook = tuple[_Entry, Callable[..., Any]]


class Chain:
    """The plugins of one route (or the global ones), per phase, in call order.

    Built once per worker at load; every method here is on the request path and only
    reads precomputed tuples. The request path calls, in this order::

        run_connect(conn)            # default chain only, per connection
        run_request(ctx)             # -> Response to answer now, or None
        filter_request_body(ctx, chunks)   if has_request_body_filters
        run_response(ctx, upstream_response)   # then send upstream_response.replacement if set
        filter_body(ctx, chunks)     if has_body_filters (drop Content-Length then)
        run_error(ctx, error)        # instead of run_response when the upstream failed
        run_log(ctx)                 # after the last byte; never raises
    """

    __slots__ = (
        "plugin_names", "has_body_filters", "has_request_body_filters", "has_connect_hooks", "has_response_hooks",
        "_connect", "_request", "_request_body", "_response", "_body", "_error", "_log", "_fail",
    )

    def __init__(self, entries: Iterable[_Entry], fail: "Callable[[_Entry, str, BaseException, Any, bool], None]") -> None:
        # Request order: priority descending, name as a stable tie-break.
        ordered = sorted(entries, key=lambda e: (-type(e.instance).priority, e.name))
        reverse = ordered[::-1]

        def hooks(order: list[_Entry], hook: str) -> tuple[Hook, ...]:
            return tuple((e, getattr(e.instance, hook)) for e in order if _overrides(type(e.instance), hook))

        self.plugin_names: tuple[str, ...] = tuple(e.name for e in ordered)
        self._connect = hooks(ordered, "on_connect")
        self._request = hooks(ordered, "on_request")
        self._request_body = hooks(ordered, "on_request_body")
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
        return tuple(e.name for e, _ in getattr(self, "_" + phase[3:]))

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
        for chunk in itertools.chain(chunks, (None,)):
            end = chunk is None
            data = b"" if end else chunk
            dead = None
            for entry, f in active:
                try:
                    out = call(entry, f, ctx, data, end) if call else f(ctx, data, end)
                except (Exception, PluginTimeout) as exc:
                    if self._failed(entry, hook_name, exc, ctx) is not None:
                        err = PluginError(entry.name, hook_name, f"{type(exc).__name__}: {exc}")
                        if isinstance(exc, PluginTimeout):
                            err.status = 503
                        raise err from exc
                    # fail-open: this chunk passes unchanged; the filter sits out the rest of this body
                    dead = (dead or set()) | {entry}
                    continue
                if out is not None:
                    data = out
            if dead:
                active = tuple(h for h in active if h[0] not in dead)
            if data:
                yield data

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
        """Count and log a failure; the answer a fail-closed plugin gives, or None (fail-open)."""
        overrun = isinstance(exc, PluginTimeout)
        self._fail(entry, hook, exc, ctx, overrun)
        if entry.open:
            return None
        request_id = getattr(ctx, "request_id", None)
        if overrun:
            return Response.error(503, "service unavailable", request_id)
        return Response.error(500, "internal error", request_id)


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
        self.default_chain: Chain = Chain((), self._record)
        self._route_chains: tuple[Chain, ...] = ()
        self.instances: tuple[Plugin, ...] = ()
        self._logger = services.logger or log
        self._incr = getattr(services.metrics, "incr", None)
        self._last_logged: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    @property
    def plugin_names(self) -> tuple[str, ...]:
        """Names of all plugins found (enabled or not), sorted."""
        return tuple(sorted(self.classes))

    def chain_for(self, route_index: int) -> Chain:
        """The chain of route ``route_index`` (its index in ``cfg.routes``)."""
        return self._route_chains[route_index]

    def _record(self, entry: _Entry, hook: str, exc: BaseException, ctx: Any, overrun: bool) -> None:
        key = (entry.name, hook)
        self.errors[key] += 1
        if self._incr is not None:
            self._incr(f"plugin.{entry.name}.{hook}.error")
            if overrun:
                self._incr(f"plugin.{entry.name}.{hook}.timeout")
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            self._suppressed[key] += 1   # counted above; logged with the next burst
            return
        self._last_logged[key] = now
        more = self._suppressed.pop(key, 0)
        outcome = "skipped (on_failure: open)" if entry.open else "request failed (on_failure: closed)"
        what = f"overran its budget of {entry.timeout_s * 1000:g}ms" if overrun else "raised"
        if overrun:
            self._logger.error("plugin %s %s %s; %s; %d more since last logged; request %r",
                               entry.name, hook, what, outcome, more, ctx)
        else:
            self._logger.error("plugin %s %s %s; %s; %d more since last logged; request %r",
                               entry.name, hook, what, outcome, more, ctx, exc_info=exc)


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
                      route_keys: Mapping[str, Any] | None = None, route_path: str = "") -> PluginConfig:
    """``cls.Config`` from ``settings``; a ``ConfigError`` naming ``source``, the key path and pydantic's reason.

    With ``route_keys``, an error on a key the route set is reported under ``route_path``.
    """
    try:
        return cls.Config.model_validate(dict(settings))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        base = route_path if (route_keys is not None and loc and loc[0] in route_keys) else key_path
        sub = _key_path(loc)
        raise ConfigError(source, f"{base}.{sub}" if sub else base, _reason(err)) from None


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
                 *, discovered: tuple[dict[str, type[Plugin]], dict[str, str]] | None = None) -> PluginRegistry:
    """Import and check all plugins, validate their settings, instantiate the enabled ones
    and build the default chain and one chain per route. Raises ``ConfigError`` (or its
    subclass ``PluginLoadError``) on the first problem; nothing is half-built.

    ``discovered`` is the result of an earlier ``discover`` (the master's): the code is
    then not imported again."""
    if services is None:
        services = Services(logger=log)
    source = cfg.source
    classes, files = discovered if discovered is not None else discover(plugin_dirs(cfg, shipped_dir))
    known = ", ".join(sorted(classes)) or "none"

    for name in cfg.plugins:
        if name not in classes:
            raise ConfigError(source, f"plugins.{name}", f"unknown plugin (known: {known})")
    for i, route in enumerate(cfg.routes):
        for name in route.plugins:
            if name not in classes:
                raise ConfigError(source, f"routes[{i}].plugins.{name}", f"unknown plugin (known: {known})")

    registry = PluginRegistry(classes, files, services, source)
    instances: dict[tuple[str, str], _Entry] = {}

    def entry_for(name: str, config: PluginConfig) -> _Entry:
        key = (name, _canonical(config))
        entry = instances.get(key)
        if entry is None:
            cls = classes[name]
            try:
                inst = cls(config, services)
            except Exception as e:
                raise PluginLoadError(files[name], cls.__name__, f"__init__ failed: {type(e).__name__}: {e}") from e
            entry = instances[key] = _Entry(name, inst, config, files[name], cls.__name__)
        return entry

    global_configs = {
        name: validate_settings(classes[name], settings, source, f"plugins.{name}")
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
                    classes[name], {}, source, f"routes[{i}].plugins.{name}")
            else:
                merged = {**cfg.plugins.get(name, {}), **over}
                config = validate_settings(classes[name], merged, source, f"plugins.{name}",
                                           route_keys=over, route_path=f"routes[{i}].plugins.{name}")
            entries.append(entry_for(name, config))
        chains.append(Chain(entries, registry._record))
    registry._route_chains = tuple(chains)
    registry.instances = tuple(e.instance for e in instances.values())
    return registry


class PluginCatalog:
    """Plugin classes imported and checked in the master; instantiated per worker after fork.

    The master imports the code (so a reload with a broken plugin is refused before
    any worker is replaced) and validates every plugin's settings; workers inherit
    the classes through fork and only build instances and chains.
    """

    def __init__(self, cfg: EdgeConfig, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.classes, self.files = discover(plugin_dirs(cfg, shipped_dir))
        known = ", ".join(sorted(self.classes)) or "none"
        for name, settings in cfg.plugins.items():
            if name not in self.classes:
                raise ConfigError(cfg.source, f"plugins.{name}", f"unknown plugin (known: {known})")
            validate_settings(self.classes[name], settings, cfg.source, f"plugins.{name}")
        for i, route in enumerate(cfg.routes):
            for name, over in route.plugins.items():
                if name not in self.classes:
                    raise ConfigError(cfg.source, f"routes[{i}].plugins.{name}", f"unknown plugin (known: {known})")
                if isinstance(over, dict):
                    validate_settings(self.classes[name], {**cfg.plugins.get(name, {}), **over}, cfg.source,
                                      f"plugins.{name}", route_keys=over, route_path=f"routes[{i}].plugins.{name}")

    def instantiate(self, cfg: EdgeConfig, services: Services) -> PluginRegistry:
        """In the worker, after fork: instances and chains from the classes the master checked."""
        return load_plugins(cfg, services, discovered=(self.classes, self.files))


def discover_plugins(cfg: EdgeConfig) -> PluginCatalog:
    return PluginCatalog(cfg)
