"""The configuration the master validated, handed to the workers it forks.

gunicorn executes ``gunicorn.conf.py`` at start and again on every ``kill -HUP``.
That file calls ``load_for_master``, which validates the edge configuration (and
loads the plugin code) before any worker sees it. At start a failure exits with
the file, key and reason. On a reload a failure must *not* take the master down
(gunicorn would exit on an exception there), so the previous, valid configuration
stays current, the refusal is logged, and the workers gunicorn starts anyway keep
serving the old configuration and the old plugin code.

``current()`` is read by each worker after fork: the objects are inherited through
fork, so a worker never re-reads a file that the master did not validate.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from edge.config import DEFAULT_CONFIG_PATH, EdgeConfig, load_config
from edge.errors import ConfigError

log = logging.getLogger("edge.boot")


@dataclass(frozen=True, slots=True)
class Loaded:
    path: str
    config: EdgeConfig
    plugins: Any  # edge.plugins catalog: validated plugin classes, instantiated per worker


_current: Loaded | None = None  # set in the master only; read-only in workers (inherited by fork)


def current() -> Loaded | None:
    return _current


def validate(path: str) -> Loaded:
    """Load the config file and the plugin code it enables; raise ConfigError on any problem."""
    from edge.plugins import discover_plugins  # imports plugin code: only when validating
    from edge.routing import compile_routes

    cfg = load_config(path)
    compile_routes(cfg)  # a route table that cannot be built must refuse the start, not the first request
    return Loaded(path, cfg, discover_plugins(cfg))


def load_for_master(path: str | None = None) -> Loaded:
    global _current
    path = path or os.environ.get("EDGE_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        loaded = validate(path)
    except ConfigError as e:
        if _current is None:
            print(f"edge: refusing to start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        print(f"edge: reload refused, keeping the running configuration: {e}", file=sys.stderr, flush=True)
        log.error("reload refused, keeping the running configuration: %s", e)
        return _current
    _current = loaded
    return loaded


def gunicorn_settings(loaded: Loaded) -> dict[str, Any]:
    """gunicorn setting names and values derived from the edge configuration."""
    cfg = loaded.config
    s = cfg.server
    settings: dict[str, Any] = {
        "bind": list(s.bind),
        "workers": s.workers or (os.cpu_count() or 1),
        "worker_class": "edge.worker.EdgeWorker",
        "worker_connections": s.worker_connections,
        # gunicorn takes whole seconds here
        "keepalive": max(1, math.ceil(s.keepalive)),
        "graceful_timeout": max(1, math.ceil(s.graceful_timeout)),
        "timeout": 30,
        "limit_request_line": s.max_request_line,
        "limit_request_fields": s.max_header_fields,
        "limit_request_field_size": s.max_header_field_size,
        # edge resolves forwarding headers itself (trusted_proxies); gunicorn must not
        # rewrite the scheme or drop headers on its own authority.
        "forwarded_allow_ips": "",
        "secure_scheme_headers": {},
        "errorlog": s.errorlog,
        "loglevel": s.loglevel,
        # The access log is edge's own (edge/accesslog.py, both HTTP/1 and HTTP/2); gunicorn's stays off.
        "accesslog": None,
        "pidfile": s.pidfile,
        "proc_name": "edge",
    }
    if s.control_socket:
        settings["control_socket"] = s.control_socket
    else:
        settings["control_socket_disable"] = True
    if cfg.tls is not None:
        settings["certfile"] = cfg.tls.certfile
        settings["keyfile"] = cfg.tls.keyfile
        settings["http_protocols"] = "h2,h1" if cfg.tls.http2 else "h1"
    if cfg.metrics.statsd:
        settings["statsd_host"] = cfg.metrics.statsd
        settings["statsd_prefix"] = cfg.metrics.prefix
    return settings


def validate_default() -> Loaded:
    """For a worker that was not forked from an edge master (a plain gunicorn worker class, tests)."""
    global _current
    _current = validate(os.environ.get("EDGE_CONFIG") or DEFAULT_CONFIG_PATH)
    return _current
