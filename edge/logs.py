"""Edge's log lines: where they go, what names a request, and how bursts are throttled.

Theory of operation
-------------------
*Where.* gunicorn owns the error log: its format (timestamp, PID, level), its level
(``server.loglevel``), its file (``server.errorlog``) and its reopening on ``USR1``.
``route_to_gunicorn()`` makes edge's loggers (``edge`` and below, so ``edge.plugin.<name>``
too) write through that log: one handler on the ``edge`` logger that hands each record
to the handlers gunicorn's ``gunicorn.error`` logger has *at that moment*. gunicorn
replaces those handlers on a reload and reopens them on ``USR1``; looking them up per
record means edge never holds a stale, closed handler. The root logger gets the same
handler at ``WARNING`` and above, so a plugin that logs to ``logging.getLogger(__name__)``
(or a library's warning) lands in the same file instead of on Python's last-resort
handler. It is called in the master (``on_starting``, ``on_reload``) and in each worker
(``post_fork``) by ``gunicorn.conf.py``.

*What names a request.* ``RequestLabel(ctx, header)`` renders ``GET /path request_id=abc``:
the method, the path as the client sent it and the id the access log carries (``ctx.
request_id``, else the configured request-id header), so an error line and its access-log
line can be matched. It is formatted only if the line is emitted (logging is lazy).

*Bursts.* ``Throttle`` is the pure core (no clock of its own: the caller passes ``now``):
per key, the first ``burst`` events of a window of ``interval_s`` are logged, the rest are
counted; ``due(now)`` hands back the keys whose window ended with events suppressed, so
every throttled burst ends with one line saying how many were not shown. ``ThrottledLog``
is the shell around it: it logs, and arms one gevent timer at the end of the earliest
open window to write those closing lines even when no further event comes.
``ClientErrorLog`` uses it for client errors (400, 414, 431...), at INFO, with the
client address and the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

__all__ = [
    "route_to_gunicorn", "RequestLabel", "request_label", "Throttle", "ThrottledLog", "ClientErrorLog",
    "StatsdLogger",
]

GUNICORN_ERROR_LOGGER = "gunicorn.error"

#: Client errors: at most this many lines per client-error window ...
CLIENT_ERROR_BURST = 5
#: ... of this many seconds (per worker); the rest are counted in one closing line.
CLIENT_ERROR_INTERVAL_S = 10.0
#: An unreachable statsd is reported at most once per this many seconds per process.
STATSD_WARN_INTERVAL_S = 600.0


# --------------------------------------------------------------------------- routing


class _ToGunicornErrorLog(logging.Handler):
    """Hands a record to the handlers of gunicorn's error logger as they are now."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger(GUNICORN_ERROR_LOGGER).handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def route_to_gunicorn(loglevel: str | int | None = None) -> None:
    """Send the ``edge`` loggers (at ``loglevel``) and other loggers' warnings through
    gunicorn's error log. Idempotent: called again on every reload and in each worker."""
    if loglevel is None:
        level = logging.getLogger(GUNICORN_ERROR_LOGGER).level or logging.INFO
    elif isinstance(loglevel, str):
        level = logging.getLevelName(loglevel.upper())
    else:
        level = loglevel
    for name, lvl in (("edge", level), ("", max(level, logging.WARNING))):
        logger = logging.getLogger(name)
        logger.setLevel(lvl)
        if not any(isinstance(h, _ToGunicornErrorLog) for h in logger.handlers):
            logger.addHandler(_ToGunicornErrorLog())
    # edge's records are written once, by the handler above, not again by the root's
    logging.getLogger("edge").propagate = False


# --------------------------------------------------------------------------- request label


class RequestLabel:
    """``GET /path request_id=abc`` for a log line; formatted only when the line is written."""

    __slots__ = ("ctx", "header")

    def __init__(self, ctx: Any, header: str | None = None) -> None:
        self.ctx = ctx
        self.header = header

    def __str__(self) -> str:
        ctx = self.ctx
        if ctx is None:
            return "(no request)"
        rid = getattr(ctx, "request_id", None)
        if not rid and self.header:
            headers = getattr(ctx, "headers", None)
            rid = headers.get(self.header) if headers is not None else None
        path = getattr(ctx, "raw_path", None) or getattr(ctx, "path", "")
        query = getattr(ctx, "query", "")
        label = f"{getattr(ctx, 'method', '-')} {path}{'?' + query if query else ''}"
        return f"{label} request_id={rid}" if rid else label

    __repr__ = __str__


def request_label(ctx: Any, header: str | None = None) -> RequestLabel:
    """The label of ``ctx`` for log lines (see ``RequestLabel``); pass it as a ``%s`` argument."""
    return RequestLabel(ctx, header)


# --------------------------------------------------------------------------- throttling


@dataclass(frozen=True, slots=True)
class Admit:
    log: bool              # write this event's line
    suppressed_before: int  # events of the previous window of this key not yet reported


class Throttle:
    """Per-key burst limit for log lines (pure: ``now`` comes from the caller).

    A key's window opens at its first event and lasts ``interval_s``; its first ``burst``
    events are admitted, later ones counted. ``due(now)`` returns ``(key, count)`` for
    each window that ended with a count and forgets it, so the caller writes one closing
    line per burst. An event after a window ended opens a new one; if ``due`` was not
    called in between, the old count rides on that event (``suppressed_before``).
    """

    __slots__ = ("interval_s", "burst", "_windows")

    def __init__(self, interval_s: float, burst: int = 1) -> None:
        if interval_s <= 0 or burst < 1:
            raise ValueError(f"interval_s must be positive and burst >= 1 (got {interval_s}, {burst})")
        self.interval_s = interval_s
        self.burst = burst
        self._windows: dict[Hashable, list[float | int]] = {}   # key -> [start, admitted, suppressed]

    def admit(self, key: Hashable, now: float) -> Admit:
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.interval_s:
            before = int(w[2]) if w is not None else 0
            self._windows[key] = [now, 1, 0]
            return Admit(True, before)
        if w[1] < self.burst:
            w[1] += 1
            return Admit(True, 0)
        w[2] += 1
        return Admit(False, 0)

    def due(self, now: float) -> list[tuple[Hashable, int]]:
        out = []
        for key, w in list(self._windows.items()):
            if now - w[0] >= self.interval_s:
                del self._windows[key]
                if w[2]:
                    out.append((key, int(w[2])))
        return out

    def next_deadline(self) -> float | None:
        """When the earliest window with suppressed events ends (None: nothing to report)."""
        ends = [w[0] + self.interval_s for w in self._windows.values() if w[2]]
        return min(ends) if ends else None


class ThrottledLog:
    """A ``Throttle`` that writes: ``emit(key, fn)`` calls ``fn()`` (which logs) when admitted;
    ``closing(key, count)`` writes the "N suppressed" line at the end of a burst.

    The closing lines are written by a gevent timer armed at the end of the earliest
    burst window (workers run gevent), or by the next ``emit``/``flush``.
    """

    def __init__(self, interval_s: float, burst: int, closing: Callable[[Hashable, int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.throttle = Throttle(interval_s, burst)
        self._closing = closing
        self._clock = clock
        self._timer: Any = None

    def emit(self, key: Hashable, write: Callable[[int], None]) -> bool:
        """``write(suppressed_before)`` if admitted; returns whether it was."""
        now = self._clock()
        self.flush(now)
        a = self.throttle.admit(key, now)
        if a.suppressed_before:
            self._closing(key, a.suppressed_before)
        if a.log:
            write(a.suppressed_before)
            return True
        self._arm(now)
        return False

    def flush(self, now: float | None = None) -> None:
        """Write the closing line of every burst whose window has ended."""
        for key, count in self.throttle.due(self._clock() if now is None else now):
            self._closing(key, count)

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            return
        deadline = self.throttle.next_deadline()
        if deadline is None:
            return
        try:
            import gevent
        except ImportError:  # pragma: no cover - gevent is a dependency; the next emit flushes then
            return
        self._timer = gevent.spawn_later(max(0.0, deadline - now) + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        self.flush(now)
        if self.throttle.next_deadline() is not None:
            self._arm(now)


class ClientErrorLog:
    """Client errors (400, 408, 413, 414, 431...) at INFO, with address and reason, rate-limited.

    ``log(client_ip, status, reason, label=None)``: at most ``burst`` lines per window per
    worker, then one ``N client errors suppressed`` line when the burst ends.
    """

    def __init__(self, logger: logging.Logger | None = None, interval_s: float = CLIENT_ERROR_INTERVAL_S,
                 burst: int = CLIENT_ERROR_BURST, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger or logging.getLogger("edge.client")
        self._log = ThrottledLog(interval_s, burst, self._closing, clock)
        self.interval_s = interval_s

    def log(self, client_ip: str | None, status: int, reason: object, label: object = None) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if label is None:
            self._log.emit("client", lambda _n: self.logger.info("client error %d from %s: %s", status, client_ip, reason))
        else:
            self._log.emit("client", lambda _n: self.logger.info("client error %d from %s: %s (%s)",
                                                                 status, client_ip, reason, label))

    def _closing(self, _key: Hashable, count: int) -> None:
        self.logger.info("%d more client errors suppressed in the last %gs", count, self.interval_s)


# --------------------------------------------------------------------------- gunicorn's statsd


def _statsd_logger_class() -> type:
    from gunicorn.instrument.statsd import Statsd

    class StatsdLogger(Statsd):
        """gunicorn's statsd logger, with one warning line for an unreachable statsd.

        gunicorn's own logs a traceback at every failed send (``ECONNREFUSED`` on its
        connected UDP socket once the host answered "port unreachable"), in the master
        too. Here a failure is one warning line, and then at most one more per
        ``STATSD_WARN_INTERVAL_S`` with the count of sends lost meanwhile. (UDP cannot
        say when statsd is back: a send after a refused one may pass without reaching it.)
        A metric is never worth a traceback.
        """

        _failed = 0
        _warned_at: float | None = None

        def _sock_send(self, msg: Any) -> None:
            try:
                if isinstance(msg, str):
                    msg = msg.encode("ascii")
                if self.dogstatsd_tags:
                    msg = msg + b"|#" + self.dogstatsd_tags.encode("ascii")
                if self.sock:
                    self.sock.send(msg)
            except OSError as e:
                self._failed += 1
                now = time.monotonic()
                if self._warned_at is None or now - self._warned_at >= STATSD_WARN_INTERVAL_S:
                    self._warned_at = now
                    self.error_log.warning("statsd %s unreachable, metrics are dropped until it answers: %s "
                                           "(%d sends failed so far)", _address(self.cfg.statsd_host), e, self._failed)

    return StatsdLogger


def _address(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) == 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def __getattr__(name: str) -> Any:
    # gunicorn imports ``edge.logs.StatsdLogger`` (the ``logger_class`` setting); built on
    # first use so that importing edge.logs does not import gunicorn's statsd module.
    if name == "StatsdLogger":
        cls = _statsd_logger_class()
        globals()["StatsdLogger"] = cls
        return cls
    raise AttributeError(name)
