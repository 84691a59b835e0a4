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

Validating includes *building* every enabled plugin, because a plugin whose
``__init__`` raises would otherwise pass, and then every new worker would fail to
boot and gunicorn would halt the master (edge down). The master must not hold what
a plugin opens (store clients, sockets, threads), so ``check_construction`` forks a
short-lived child that builds the real ``Services`` and the plugins, reports each
failure on a pipe and exits without serving anything. A failure there refuses the
start or the reload (``PluginLoadError``: file, class, reason), except a *transient*
one (``edge.plugins.TRANSIENT_INIT_ERRORS``: a service down right now), which is a
warning: workers retry it with backoff. The parent reads the pipe, not the exit
status, because gunicorn's SIGCHLD handler may reap the child first.

``gunicorn.conf.py`` also installs the hooks here: ``on_starting`` and
``on_reload`` (master) and ``post_fork`` (worker) route edge's loggers through
gunicorn's error log (``edge.logs.route_to_gunicorn``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from edge.config import DEFAULT_CONFIG_PATH, EdgeConfig, combine_errors, effective_listeners, load_config
from edge.errors import ConfigError, PluginLoadError
from edge.logs import route_to_gunicorn

log = logging.getLogger("edge.boot")

#: The child that builds the worker state gets this long; past it the configuration is
#: refused: a plugin that blocks in ``__init__`` would block every worker's boot too.
CONSTRUCT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Loaded:
    path: str
    config: EdgeConfig
    plugins: Any  # edge.plugins catalog: validated plugin classes, instantiated per worker
    warnings: tuple[str, ...] = ()  # transient plugin construction failures (workers retry them)
    termination: Any = None  # edge.tls.Termination: certificates validated and contexts built here (see edge/tls.py)


_current: Loaded | None = None  # set in the master only; read-only in workers (inherited by fork)
_routed = False  # edge's loggers write to gunicorn's error log (set by the on_starting hook)


def current() -> Loaded | None:
    return _current


def validate(path: str, construct: bool = True) -> Loaded:
    """Load the config file and the plugin code it enables; raise ConfigError on any problem.

    With ``construct``, also build every enabled plugin in a child process (see the
    module docstring); transient failures there are logged as warnings."""
    from edge.plugins import discover_plugins  # imports plugin code: only when validating
    from edge.routing import compile_routes
    from edge.tls import load_termination

    cfg = load_config(path)
    compile_routes(cfg)  # a route table that cannot be built must refuse the start, not the first request
    termination = load_termination(cfg)  # certificates read and checked here; workers inherit the contexts
    loaded = Loaded(path, cfg, discover_plugins(cfg), termination=termination)
    if construct:
        loaded = Loaded(path, cfg, loaded.plugins, tuple(check_construction(loaded)), termination)
    return loaded


def load_for_master(path: str | None = None) -> Loaded:
    global _current
    path = path or os.environ.get("EDGE_CONFIG") or DEFAULT_CONFIG_PATH
    try:
        loaded = validate(path)
    except ConfigError as e:
        if _current is None:
            # gunicorn's error log does not exist yet: stderr, once, and a non-zero exit
            print(f"edge: refusing to start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        # on a reload edge's loggers already write to gunicorn's error log (on_starting)
        log.error("reload refused, keeping the running configuration: %s", e)
        return _current
    _current = loaded
    if _routed:  # a reload; at start gunicorn's log does not exist yet: on_starting writes them
        _log_warnings(loaded)
    return loaded


def _log_warnings(loaded: Loaded) -> None:
    for warning in loaded.warnings:
        log.warning("%s", warning)


# --------------------------------------------------------------------------- plugin construction check


def check_construction(loaded: Loaded, timeout_s: float = CONSTRUCT_TIMEOUT_S) -> list[str]:
    """Build a worker's state and its plugins in a forked child; raise ``PluginLoadError``
    (or a ``ConfigErrors`` of them) for each plugin that fails in a way a retry cannot
    fix (a ``ConfigError`` if the rest of the worker state cannot be built), and return
    one warning line per transient failure."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: build, report, exit; never returns
        os.close(read_fd)
        _child_construct(loaded, write_fd)
    os.close(write_fd)
    try:
        raw, finished = _read_until_eof(read_fd, timeout_s)
    finally:
        os.close(read_fd)
        if pid:
            _reap(pid)
    if not finished:
        # every worker would block as long at boot (and be killed by gunicorn's timeout)
        raise ConfigError(loaded.path, "plugins", f"building a worker's state (its plugins) took longer than "
                                                  f"{timeout_s:g}s: a plugin __init__ blocks")
    try:
        result = json.loads(raw.decode())
    except ValueError:
        result = {"refused": [[loaded.path, "plugins", "the process building the worker state died "
                               f"before reporting (output {raw[:80]!r})"]], "unavailable": []}
    refused = [PluginLoadError(f, c, r) if c else ConfigError(f, c, r) for f, c, r in result["refused"]]
    if refused:
        raise combine_errors(refused)
    return [f"{f}: {c}: {r} (a transient failure: workers retry it; its routes follow its on_failure meanwhile)"
            for f, c, r in result["unavailable"]]


def _child_construct(loaded: Loaded, write_fd: int) -> None:
    status = 0
    try:
        # The master's signal handlers (gunicorn's) are not this process's business,
        # and the plugins' own failure logging would repeat what the report says.
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        logging.disable(logging.CRITICAL)
        result = _construct_all(loaded)
    except BaseException as e:  # whatever happens, the parent gets a report
        result = {"refused": [[loaded.path, "plugins", f"building the plugins failed: {type(e).__name__}: {e}"]],
                  "unavailable": []}
        status = 1
    try:
        data = json.dumps(result).encode()
        while data:
            data = data[os.write(write_fd, data):]
    finally:
        os._exit(status)


def _construct_all(loaded: Loaded) -> dict[str, list[list[str]]]:
    """What a worker builds at boot (state, plugins, request path), in this child: a
    failure here would make every new worker fail to boot."""
    from edge.app import Proxy
    from edge.plugins import TRANSIENT_INIT_ERRORS
    from edge.runtime import build_worker_state

    cfg = loaded.config
    try:
        state = build_worker_state(loaded, start_retries=False)
        Proxy(state)
    except Exception as e:
        return {"refused": [[cfg.source, "", f"a worker cannot be built from this configuration: "
                                             f"{type(e).__name__}: {e}"]], "unavailable": []}
    refused: list[list[str]] = []
    unavailable: list[list[str]] = []
    for entry in state.plugins.pending:
        err = entry.init_error
        line = [entry.file, entry.cls_name, f"__init__ failed: {type(err).__name__}: {err}"]
        (unavailable if isinstance(err, TRANSIENT_INIT_ERRORS) else refused).append(line)
    return {"refused": refused, "unavailable": unavailable}


def _read_until_eof(fd: int, timeout_s: float) -> tuple[bytes, bool]:
    deadline = time.monotonic() + timeout_s
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except InterruptedError:  # a signal for the master (SIGCHLD from this very child)
            continue
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


def _reap(pid: int) -> None:
    """Make sure the child is gone and reaped (gunicorn's SIGCHLD handler may have reaped it)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass  # already reaped by gunicorn's SIGCHLD handler


# --------------------------------------------------------------------------- gunicorn hooks


def on_starting(server: Any) -> None:
    """Master, once gunicorn's error log exists: edge's lines go through it."""
    global _routed
    route_to_gunicorn()
    _routed = True
    if _current is not None:
        _log_warnings(_current)
        _log_tls(_current)


def _log_tls(loaded: Loaded) -> None:
    """gunicorn's "Listening at: http://..." line does not know edge wraps TLS itself: say which listeners do."""
    term = loaded.termination
    if term is None:
        return
    tls_binds = [lc.bind for lc in effective_listeners(loaded.config) if lc.tls]
    names = "; ".join(", ".join(c.names) for c in term.certificates)
    log.info("TLS (edge) on %s: %d certificate(s): %s", ", ".join(tls_binds), len(term.certificates), names)


def on_reload(server: Any) -> None:
    """Master, after a HUP (gunicorn rebuilt its log handlers; the level may have changed)."""
    route_to_gunicorn()
    if _current is not None:
        _log_tls(_current)


def post_fork(server: Any, worker: Any) -> None:
    """Each worker, right after fork."""
    route_to_gunicorn()


def gunicorn_settings(loaded: Loaded) -> dict[str, Any]:
    """gunicorn setting names and values derived from the edge configuration."""
    cfg = loaded.config
    s = cfg.server
    settings: dict[str, Any] = {
        "bind": [lc.bind for lc in effective_listeners(cfg)],
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
        "on_starting": on_starting,
        "on_reload": on_reload,
        "post_fork": post_fork,
    }
    if s.control_socket:
        settings["control_socket"] = s.control_socket
    else:
        settings["control_socket_disable"] = True
    if cfg.tls is not None:
        # No certfile for gunicorn: it would wrap every listener in TLS. edge wraps the TLS
        # listeners itself and offers h2 over ALPN (edge/tls.py); gunicorn's HTTP/2
        # connection still serves the h2 ones, with these settings.
        h2 = cfg.tls.http2_settings
        settings.update({
            "http2_max_concurrent_streams": h2.max_concurrent_streams,
            "http2_initial_window_size": h2.initial_window_size,
            "http2_max_frame_size": h2.max_frame_size,
            "http2_max_header_list_size": h2.max_header_list_size,
        })
    if cfg.metrics.statsd:
        settings["statsd_host"] = cfg.metrics.statsd
        settings["statsd_prefix"] = cfg.metrics.prefix
        # gunicorn's statsd logger with one warning line for an unreachable statsd
        settings["logger_class"] = "edge.logs.StatsdLogger"
    return settings


def validate_default() -> Loaded:
    """For a worker that was not forked from an edge master (a plain gunicorn worker class, tests)."""
    global _current
    _current = validate(os.environ.get("EDGE_CONFIG") or DEFAULT_CONFIG_PATH, construct=False)
    return _current
