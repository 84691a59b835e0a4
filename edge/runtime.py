"""Everything one worker needs, built once after fork from the frozen configuration.

``build_worker_state`` is called in the worker (``EdgeWorker.load_wsgi``), after
gevent's monkey-patching, so every socket it creates (backend pools, store client,
statsd) belongs to that worker. The request path only reads these objects.

Building the worker state must not fail because of something outside it: gunicorn
halts the master when a worker cannot boot, so one plugin whose ``__init__`` fails
here (its auth service or Redis is down while the worker starts) is left to retry
in the background (``PluginRegistry.start_init_retries``) and the worker serves.
``build_services`` is also what ``edge.boot`` uses to try the plugins in a
short-lived child before a start or a reload is accepted.
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass
from typing import Any

from edge import boot
from edge.accesslog import AccessLog
from edge.acme import build_manager as build_acme_manager
from edge.config import EdgeConfig
from edge.http import TrustedProxies
from edge.logs import ClientErrorLog, RequestLabel
from edge.metrics import Metrics
from edge.routing import RouteTable, compile_routes
from edge.upstream.checker import start_health
from edge.upstream.client import Timeouts, UpstreamPool

log = logging.getLogger("edge.runtime")


@dataclass(slots=True)
class WorkerState:
    cfg: EdgeConfig
    routes: RouteTable
    pools: dict[str, UpstreamPool]
    route_timeouts: dict[tuple[int, str], Timeouts]  # (route index, pool) -> merged timeouts, where a route overrides
    plugins: Any
    store: Any
    metrics: Metrics
    scheme: str
    access_log: AccessLog | None = None
    local_store: Any = None  # node-local fallback store (services.local_store); may be ``store`` itself
    health: Any = None  # edge.upstream.checker.HealthService: prober lease and shared health (its greenlets)
    acme: Any = None  # edge.acme.AcmeManager when tls.acme is set (started by the worker after fork)
    cache: Any = None  # edge.cache.cache.Cache when some route caches (it may own a store of its own)
    # client errors (400, 408, 413, 414, 431...) at INFO, rate-limited: client_errors.log(ip, status, reason, label)
    client_errors: ClientErrorLog = dataclasses.field(default_factory=ClientErrorLog)

    def label(self, ctx: Any) -> RequestLabel:
        """``GET /path request_id=...`` for a log line about ``ctx`` (formatted only if written)."""
        return RequestLabel(ctx, self.cfg.headers.request_id_header)

    def close(self) -> None:
        self.plugins.stop_init_retries()
        if self.health is not None:
            self.health.close()
        if self.acme is not None:
            self.acme.stop()
        for pool in self.pools.values():
            pool.close()
        if self.store is not None:
            self.store.close()
        if self.access_log is not None:
            self.access_log.close()
        if self.local_store is not None and self.local_store is not self.store:
            self.local_store.close()
        if self.cache is not None:
            self.cache.close()


class UpstreamAvailability:
    """``available(pool name) -> bool``: whether the pool has a server to take a new request now."""

    __slots__ = ("_pools",)

    def __init__(self, pools: dict[str, UpstreamPool]) -> None:
        self._pools = pools

    def __call__(self, name: str) -> bool:
        pool = self._pools.get(name)
        return pool is not None and pool.has_available_server()


def build_services(cfg: EdgeConfig) -> Any:
    """The ``Services`` given to plugins: store, node-local store, metrics, logger, names."""
    from edge.plugins import Services, config_refs
    from edge.store import build_local_fallback, build_store

    metrics = Metrics(cfg.metrics.statsd, cfg.metrics.prefix)
    store = build_store(cfg.store)
    # the ratelimit plugin's `on_store_error: local` needs a node-local store even when the
    # main one is remote; opened lazily, on first use (edge.store.build_local_fallback)
    local_store = build_local_fallback(cfg.store, store)
    refs = config_refs(cfg)
    return Services(store=store, metrics=metrics, logger=logging.getLogger("edge.plugin"),
                    extras={"local_store": local_store, "trusted_proxies": TrustedProxies(cfg.server.trusted_proxies)},
                    upstreams=refs["upstreams"], routes=refs["routes"])


def build_worker_state(loaded: boot.Loaded | None = None, start_retries: bool = True) -> WorkerState:
    loaded = loaded or boot.current() or boot.validate_default()
    cfg = loaded.config
    services = build_services(cfg)
    store, metrics, local_store = services.store, services.metrics, services.extras["local_store"]
    pools = {name: UpstreamPool(name, ucfg, metrics) for name, ucfg in cfg.upstreams.items()}
    # plugins that choose a pool (geo) ask whether it has a server to take the request
    services = dataclasses.replace(services, extras={**services.extras, "upstream_available": UpstreamAvailability(pools)})
    plugins = loaded.plugins.instantiate(cfg, services, defer_init_failures=True)
    plugins.request_id_header = cfg.headers.request_id_header  # plugin failure lines carry the request id
    if start_retries:
        plugins.start_init_retries()
    routes = compile_routes(cfg)
    # greenlets of the worker, never of the master or of a boot check (start_retries=False)
    health = start_health(cfg, pools, store, metrics) if start_retries else None
    route_timeouts = {
        (route.index, name): Timeouts.from_config(t)
        for route in routes.routes
        for name in pools
        if (t := route.timeouts_for(name)) is not None
    }
    from edge.cache.cache import build_cache

    return WorkerState(
        cache=build_cache(cfg, routes, store, metrics),
        cfg=cfg,
        routes=routes,
        pools=pools,
        route_timeouts=route_timeouts,
        plugins=plugins,
        store=store,
        metrics=metrics,
        scheme="https" if cfg.tls is not None and cfg.tls.certfile is not None else "http",
        local_store=local_store,
        health=health,
        acme=build_acme_manager(cfg, store, metrics),
        access_log=AccessLog(cfg.server.accesslog) if cfg.server.accesslog else None,
    )
