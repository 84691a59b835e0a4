"""Everything one worker needs, built once after fork from the frozen configuration.

``build_worker_state`` is called in the worker (``EdgeWorker.load_wsgi``), after
gevent's monkey-patching, so every socket it creates (backend pools, store client,
statsd) belongs to that worker. The request path only reads these objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edge import boot
from edge.config import EdgeConfig
from edge.metrics import Metrics
from edge.routing import RouteTable, compile_routes
from edge.upstream.client import Timeouts, UpstreamPool

log = logging.getLogger("edge.runtime")


@dataclass(slots=True)
class WorkerState:
    cfg: EdgeConfig
    routes: RouteTable
    pools: dict[str, UpstreamPool]
    route_timeouts: tuple[Timeouts | None, ...]
    plugins: Any
    store: Any
    metrics: Metrics
    scheme: str

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        if self.store is not None:
            self.store.close()


def build_worker_state(loaded: boot.Loaded | None = None) -> WorkerState:
    loaded = loaded or boot.current() or boot.validate_default()
    cfg = loaded.config
    from edge.plugins import Services
    from edge.store import build_store

    metrics = Metrics(cfg.metrics.statsd, cfg.metrics.prefix)
    store = build_store(cfg.store)
    services = Services(store=store, metrics=metrics, logger=logging.getLogger("edge.plugin"))
    plugins = loaded.plugins.instantiate(cfg, services)
    pools = {name: UpstreamPool(name, ucfg) for name, ucfg in cfg.upstreams.items()}
    route_timeouts = tuple(
        Timeouts.from_config(r.timeouts) if r.timeouts is not None else (pools[r.upstream].timeouts if r.upstream else None)
        for r in cfg.routes
    )
    return WorkerState(
        cfg=cfg,
        routes=compile_routes(cfg),
        pools=pools,
        route_timeouts=route_timeouts,
        plugins=plugins,
        store=store,
        metrics=metrics,
        scheme="https" if cfg.tls is not None else "http",
    )
