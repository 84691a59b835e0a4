"""Server health of one upstream pool (pure: no sockets, no store, no clock; the caller passes ``now``).

Theory of operation
-------------------
Two state machines per server, each a table of ``(state, event) -> state`` (STYLE §2);
a pair missing from a table is a bug and raises ``IllegalTransition`` naming both.

*Active* (``ACTIVE_TABLE``): the prober's verdict. ``HEALTHY ⇄ UNHEALTHY`` with
HAProxy's ``rise``/``fall`` counters: ``active_step`` classifies a probe result as
``PASS``/``FAIL``, or as ``RISE``/``FALL`` when it completes a run of ``rise`` passes
(while unhealthy) or ``fall`` failures (while healthy). Only one prober per node runs
it (``edge.upstream.checker``); workers receive its verdicts through the store.

*Passive / outlier detection* (``OUTLIER_TABLE``), run by every worker on its own
traffic (``ServerOutlier``): an attempt that fails (connect failure, timeout, or a
status in ``passive.on_5xx``) counts; ``consecutive_failures`` of them in a row
``TRIP`` an ejection, unless the pool already has as many servers ejected as
``max_ejected_percent`` allows (then the server stays in). An ejection lasts
``base_ejection × 2^(k-1)``, capped at ``max_ejection``, where ``k`` counts this
server's ejections; ``k`` drops by one for every ``max_ejection`` the server then
stays healthy. When the time is over the server is ``HALF_OPEN``: it is offered to
the balancer again, and the first request picked for it (``PICK`` -> ``TRIAL``; the
server gets nothing else meanwhile) decides: success -> ``HEALTHY``, failure ->
``EJECTED`` for the next, longer, time. A trial whose outcome never comes (``LOST``:
the client went away, or the attempt ended without a verdict) reopens ``HALF_OPEN``.
``hold`` (a 503 with ``Retry-After``) ejects for the time the server asked for
without counting as an ejection. Ejections decided by another worker of the node
arrive as ``TRIP`` or ``RECOVERED`` (``apply_shared``), and so does the prober's verdict
that a server is back up: it ends an ejection (as Envoy's
``successful_active_health_check_uneject_host``).

``PoolHealth`` joins, per pool and per worker, the active verdicts, the runtime drain
flags (both read from the store by the checker) and the outlier machines into
``excluded(now)``: the cached frozenset of server indexes that must get no new
request. It is recomputed only when something changes (a transition here, new
shared state, or the next ejection expiry in time), so the hot path is one
comparison and an attribute read. State changes that other workers must learn are
queued in ``PoolHealth.changes`` for the checker to write (a success on a healthy
server changes nothing, so it costs no store I/O).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable


class IllegalTransition(RuntimeError):
    """A (state, event) pair that a health table does not have."""

    def __init__(self, table: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(f"{table}: no transition from {state.name} on {event.name}")
        self.state, self.event = state, event


# ---------------------------------------------------------------------------- active


class Active(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Probe(enum.Enum):
    PASS = "pass"   # a passing probe that completes no run
    FAIL = "fail"   # a failing probe that completes no run
    RISE = "rise"   # the rise-th consecutive pass while unhealthy
    FALL = "fall"   # the fall-th consecutive failure while healthy


ACTIVE_TABLE: dict[tuple[Active, Probe], Active] = {
    (Active.HEALTHY, Probe.PASS): Active.HEALTHY,
    (Active.HEALTHY, Probe.FAIL): Active.HEALTHY,
    (Active.HEALTHY, Probe.FALL): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.FAIL): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.PASS): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.RISE): Active.HEALTHY,
}


def active_next(state: Active, event: Probe) -> Active:
    try:
        return ACTIVE_TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition("active health", state, event) from None


@dataclass(frozen=True, slots=True)
class ActiveStatus:
    """One server's active state: ``streak`` counts the consecutive results that disagree with it."""

    state: Active = Active.HEALTHY
    streak: int = 0
    since: float = 0.0
    error: str = ""   # why the last probe failed ("" after a pass)


def classify_probe(status: ActiveStatus, passed: bool, rise: int, fall: int) -> Probe:
    if passed:
        if status.state is Active.UNHEALTHY and status.streak + 1 >= rise:
            return Probe.RISE
        return Probe.PASS
    if status.state is Active.HEALTHY and status.streak + 1 >= fall:
        return Probe.FALL
    return Probe.FAIL


def active_step(status: ActiveStatus, passed: bool, rise: int, fall: int, now: float, error: str = "") -> ActiveStatus:
    """The status after one probe result."""
    event = classify_probe(status, passed, rise, fall)
    state = active_next(status.state, event)
    if state is not status.state:
        return ActiveStatus(state, 0, now, error)
    # a result that agrees with the state resets the run; one that disagrees extends it
    disagrees = passed == (state is Active.UNHEALTHY)
    return ActiveStatus(state, status.streak + 1 if disagrees else 0, status.since, error)


# ---------------------------------------------------------------------------- passive


class Outcome(enum.Enum):
    """What one attempt tells about the server (reported by ``UpstreamPool.exchange``)."""

    SUCCESS = "success"
    CONNECT_FAILURE = "connect_failure"
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"     # a status in the pool's ``passive.on_5xx``
    NO_VERDICT = "no_verdict"         # the attempt ended without saying anything about the server


FAILURES = frozenset({Outcome.CONNECT_FAILURE, Outcome.TIMEOUT, Outcome.SERVER_ERROR})


class Outlier(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"   # ejection over: the next pick is the trial
    TRIAL = "trial"           # the trial request is in flight: no other request


class Event(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"       # a failure that ejects nothing (below the threshold, or capped)
    TRIP = "trip"             # eject (here: the threshold reached; or adopted from another worker)
    HOLD = "hold"             # eject for the time a 503 Retry-After asked
    EXPIRE = "expire"         # the ejection time, or the trial's patience, is over
    PICK = "pick"             # the balancer chose this half-open server: the trial starts
    LOST = "lost"             # an attempt ended without a verdict
    RECOVERED = "recovered"   # another worker's trial succeeded


O = Outlier
E = Event
OUTLIER_TABLE: dict[tuple[Outlier, Event], Outlier] = {
    (O.HEALTHY, E.SUCCESS): O.HEALTHY,
    (O.HEALTHY, E.FAILURE): O.HEALTHY,
    (O.HEALTHY, E.TRIP): O.EJECTED,
    (O.HEALTHY, E.HOLD): O.EJECTED,
    (O.HEALTHY, E.LOST): O.HEALTHY,
    (O.HEALTHY, E.RECOVERED): O.HEALTHY,
    # answers to requests sent before the ejection change nothing
    (O.EJECTED, E.SUCCESS): O.EJECTED,
    (O.EJECTED, E.FAILURE): O.EJECTED,
    (O.EJECTED, E.LOST): O.EJECTED,
    (O.EJECTED, E.TRIP): O.EJECTED,
    (O.EJECTED, E.HOLD): O.EJECTED,
    (O.EJECTED, E.EXPIRE): O.HALF_OPEN,
    (O.EJECTED, E.RECOVERED): O.HEALTHY,
    (O.HALF_OPEN, E.PICK): O.TRIAL,
    (O.HALF_OPEN, E.SUCCESS): O.HEALTHY,
    (O.HALF_OPEN, E.FAILURE): O.EJECTED,
    (O.HALF_OPEN, E.TRIP): O.EJECTED,
    (O.HALF_OPEN, E.HOLD): O.EJECTED,
    (O.HALF_OPEN, E.LOST): O.HALF_OPEN,
    (O.HALF_OPEN, E.RECOVERED): O.HEALTHY,
    (O.TRIAL, E.SUCCESS): O.HEALTHY,
    (O.TRIAL, E.FAILURE): O.EJECTED,
    (O.TRIAL, E.TRIP): O.EJECTED,
    (O.TRIAL, E.HOLD): O.EJECTED,
    (O.TRIAL, E.LOST): O.HALF_OPEN,
    (O.TRIAL, E.EXPIRE): O.HALF_OPEN,
    (O.TRIAL, E.RECOVERED): O.HEALTHY,
}
del O, E

#: states in which a server gets no new request
OUT = frozenset({Outlier.EJECTED, Outlier.TRIAL})
#: weight of the newest attempt in a server's latency average (status only)
EWMA_WEIGHT = 0.2
_SUCCESS, _HEALTHY = Outcome.SUCCESS, Outlier.HEALTHY


def outlier_next(state: Outlier, event: Event) -> Outlier:
    try:
        return OUTLIER_TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition("outlier detection", state, event) from None


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """``upstreams.*.health.passive`` as a value (seconds)."""

    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_percent: int = 50

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError(f"consecutive_failures: must be >= 0 (got {self.consecutive_failures})")
        if not 0 < self.base_ejection_s <= self.max_ejection_s:
            raise ValueError(f"base_ejection: must be positive and <= max_ejection (got {self.base_ejection_s})")
        if not 0 <= self.max_ejected_percent <= 100:
            raise ValueError(f"max_ejected_percent: must be 0-100 (got {self.max_ejected_percent})")

    @classmethod
    def from_config(cls, c) -> "OutlierPolicy":
        return cls(c.consecutive_failures, c.base_ejection, max(c.max_ejection, c.base_ejection), c.max_ejected_percent)

    def ejection_s(self, count: int) -> float:
        """How long the ``count``-th ejection (from 1) lasts."""
        if count <= 1:
            return self.base_ejection_s
        return min(self.base_ejection_s * 2.0 ** min(count - 1, 60), self.max_ejection_s)

    def max_ejected(self, servers: int) -> int:
        """Most servers of a pool of ``servers`` that may be ejected at once (rounded down)."""
        return servers * self.max_ejected_percent // 100

    def decayed(self, count: int, healthy_s: float) -> int:
        """The ejection count after ``healthy_s`` seconds healthy: one less per ``max_ejection``."""
        if count <= 0 or healthy_s <= 0:
            return max(count, 0)
        return max(0, count - int(healthy_s // self.max_ejection_s))


class ServerOutlier:
    """The outlier state machine of one server (mutable, per worker)."""

    __slots__ = ("state", "failures", "count", "until", "healthy_since", "since", "trial_deadline")

    def __init__(self) -> None:
        self.state = Outlier.HEALTHY
        self.failures = 0          # consecutive failed attempts
        self.count = 0             # ejections so far (decays while healthy)
        self.until = 0.0           # end of the current ejection
        self.healthy_since = 0.0
        self.since = 0.0           # time of the last state change
        self.trial_deadline = 0.0  # a trial without outcome by then is LOST

    def fire(self, event: Event, now: float) -> Outlier:
        new = outlier_next(self.state, event)
        if new is not self.state:
            self.since = now
            if new is Outlier.HEALTHY:
                self.healthy_since = now
                self.failures = 0
            elif new is Outlier.EJECTED:
                self.failures = 0
        self.state = new
        return new

    def eject(self, policy: OutlierPolicy, now: float, event: Event = Event.TRIP) -> None:
        if self.state is Outlier.HEALTHY:
            self.count = policy.decayed(self.count, now - self.healthy_since)
        self.count += 1
        self.until = now + policy.ejection_s(self.count)
        self.fire(event, now)


@dataclass(frozen=True, slots=True)
class Change:
    """An outlier state change to share with the other workers (written by the checker).

    ``until`` is in the caller's clock (``now``); 0 means the server is back in."""

    index: int
    until: float
    count: int
    at: float
    reason: str


def metric_label(authority: str) -> str:
    """A server's name in a metric: statsd splits on '.' and ':' (``127.0.0.1:8080`` -> ``127_0_0_1_8080``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", authority.strip("[]").replace("]:", ":"))


class _NullMetrics:
    def incr(self, name: str, count: int = 1) -> None:
        return None


class PoolHealth:
    """One pool's health in one worker: ``excluded(now)``, ``observe``, ``hold``, ``picked``.

    ``labels`` are the servers' ``host:port`` (their identity in the store and the
    metrics). ``on_5xx`` the statuses that count as SERVER_ERROR. ``metrics`` needs
    ``incr(name)`` and must not raise (``edge.metrics.Metrics``)."""

    def __init__(self, name: str, labels: Iterable[str], policy: OutlierPolicy = OutlierPolicy(),
                 on_5xx: Iterable[int] = (), metrics: Any = None, trial_patience_s: float = 30.0) -> None:
        self.name = name
        self.labels = tuple(labels)
        self.index_of = {label: i for i, label in enumerate(self.labels)}
        self.policy = policy
        self.on_5xx = frozenset(on_5xx)
        self.metrics = metrics or _NullMetrics()
        self.trial_patience_s = trial_patience_s
        n = len(self.labels)
        self.servers = [ServerOutlier() for _ in range(n)]
        self.down: frozenset[int] = frozenset()      # active checks (from the store)
        self.drained: frozenset[int] = frozenset()   # runtime drain (from the store)
        self.changes: dict[int, Change] = {}         # to share; the checker takes them
        self.last_error: list[tuple[str, float]] = [("", 0.0)] * n
        self.inflight = [0] * n
        self.ewma_s = [0.0] * n
        self._picked_at: dict[int, list[float]] = {}
        self._half_open: set[int] = set()
        self._excluded: frozenset[int] = frozenset()
        self._next_check = math.inf                  # the next time an ejection or a trial expires
        self._eject_names = tuple(f"upstream.{name}.{metric_label(lb)}.ejected" for lb in self.labels)
        self.notify = None                           # called when ``changes`` gets an entry (the checker wakes up)

    # -- hot path --------------------------------------------------------------------

    def excluded(self, now: float) -> frozenset[int]:
        """Indexes that must get no new request: down, drained, ejected, or on trial (O(1) unless a timer is due)."""
        if now >= self._next_check:
            self._expire(now)
        return self._excluded

    def picked(self, index: int, now: float) -> None:
        """The balancer chose ``index`` for an attempt (a half-open server's trial starts)."""
        self.inflight[index] += 1
        if self._half_open and index in self._half_open:
            s = self.servers[index]
            s.fire(Event.PICK, now)
            s.trial_deadline = now + self.trial_patience_s
            self._half_open.discard(index)
            self._recompute(now)

    def outcome_of(self, status: int) -> Outcome:
        return Outcome.SERVER_ERROR if status in self.on_5xx else Outcome.SUCCESS

    def observe(self, index: int, outcome: Outcome, now: float, latency_s: float | None = None, error: str = "") -> None:
        """The verdict of one attempt on ``index`` (each ``picked`` is followed by one ``observe``)."""
        inflight = self.inflight
        if inflight[index] > 0:
            inflight[index] -= 1
        if latency_s is not None:
            ewma = self.ewma_s
            prev = ewma[index]
            ewma[index] = prev + EWMA_WEIGHT * (latency_s - prev) if prev else latency_s
        s = self.servers[index]
        if outcome is _SUCCESS and s.state is _HEALTHY:
            s.failures = 0
            return  # the common case: nothing changes, nothing to share
        if outcome in FAILURES:
            self.last_error[index] = (error or outcome.value, now)
        before = s.state
        if outcome is Outcome.SUCCESS:
            s.fire(Event.SUCCESS, now)
        elif outcome is Outcome.NO_VERDICT:
            s.fire(Event.LOST, now)
        elif before is Outlier.HEALTHY:
            s.failures += 1
            limit = self.policy.consecutive_failures
            if limit and s.failures >= limit and self._room_for_one():
                s.eject(self.policy, now)
            else:
                s.fire(Event.FAILURE, now)
        elif before in (Outlier.HALF_OPEN, Outlier.TRIAL):
            s.eject(self.policy, now, Event.FAILURE)   # the trial failed: ejected longer
        else:
            s.fire(Event.FAILURE, now)
        if s.state is not before:
            self._changed(index, before, now, error or outcome.value)

    def hold(self, index: int, seconds: float, now: float) -> None:
        """A 503 with ``Retry-After: seconds``: no new request before then (capped at ``max_ejection``)."""
        s = self.servers[index]
        until = now + min(max(seconds, 0.0), self.policy.max_ejection_s)
        if until <= now or (s.state in OUT and s.until >= until):
            return
        if s.state is Outlier.HEALTHY and not self._room_for_one():
            return
        before = s.state
        s.until = until
        s.fire(Event.HOLD, now)
        self._changed(index, before, now, "503 Retry-After")

    # -- shared state (called by the checker) ----------------------------------------

    def apply_shared(self, down: Iterable[int], drained: Iterable[int], ejections: dict[int, tuple[float, int, float]],
                     now: float) -> None:
        """Adopt the node's view: active ``down`` set, ``drained`` set, and other workers'
        ejections ``{index: (until, count, at)}`` (``until`` in our clock, 0 = recovered)."""
        down, drained = frozenset(down), frozenset(drained)
        dirty = down != self.down or drained != self.drained
        for index in self.down - down:
            # the prober saw it come back (``rise`` passing probes): that ends an ejection too
            # (Envoy's successful_active_health_check_uneject_host)
            s = self.servers[index]
            if s.state is not Outlier.HEALTHY:
                s.fire(Event.RECOVERED, now)
                self._half_open.discard(index)
        self.down, self.drained = down, drained
        for index, (until, count, at) in ejections.items():
            if self._adopt(index, until, count, at, now):
                dirty = True
        if dirty:
            self._recompute(now)

    def _adopt(self, index: int, until: float, count: int, at: float, now: float) -> bool:
        s = self.servers[index]
        if at <= s.since:
            return False  # our own change, or older than what we know
        if until > now:
            if s.state in OUT and s.until >= until:
                return False
            if s.state is Outlier.HEALTHY and not self._room_for_one():
                return False
            s.until, s.count = until, max(s.count, count)
            s.fire(Event.TRIP, now)
            s.since = at
            self._half_open.discard(index)
            return True
        if until == 0.0 and s.state is not Outlier.HEALTHY:
            s.count = count
            s.fire(Event.RECOVERED, now)
            s.since = at
            self._half_open.discard(index)
            return True
        return False

    def state_of(self, index: int) -> Outlier:
        return self.servers[index].state

    def take_changes(self) -> list[Change]:
        out = list(self.changes.values())
        self.changes.clear()
        return out

    # -- internals -------------------------------------------------------------------

    def _room_for_one(self) -> bool:
        ejected = sum(1 for s in self.servers if s.state is not Outlier.HEALTHY)
        return ejected + 1 <= self.policy.max_ejected(len(self.servers))

    def _changed(self, index: int, before: Outlier, now: float, reason: str) -> None:
        s = self.servers[index]
        if s.state is Outlier.EJECTED and before is not Outlier.EJECTED:
            self.metrics.incr(self._eject_names[index])
        if s.state is Outlier.HALF_OPEN:
            self._half_open.add(index)
        else:
            self._half_open.discard(index)
        shared_until = s.until if s.state is Outlier.EJECTED else 0.0
        if s.state in (Outlier.EJECTED, Outlier.HEALTHY):
            self.changes[index] = Change(index, shared_until, s.count, now, reason)
            if self.notify is not None:
                self.notify()
        self._recompute(now)

    def _expire(self, now: float) -> None:
        for i, s in enumerate(self.servers):
            if s.state is Outlier.EJECTED and now >= s.until:
                s.fire(Event.EXPIRE, now)
                self._half_open.add(i)
            elif s.state is Outlier.TRIAL and now >= s.trial_deadline:
                s.fire(Event.EXPIRE, now)
                self._half_open.add(i)
        self._recompute(now)

    def _recompute(self, now: float) -> None:
        out = set(self.down) | self.drained
        nxt = math.inf
        for i, s in enumerate(self.servers):
            if s.state is Outlier.EJECTED:
                out.add(i)
                nxt = min(nxt, s.until)
            elif s.state is Outlier.TRIAL:
                out.add(i)
                nxt = min(nxt, s.trial_deadline)
        self._excluded = frozenset(out)
        self._next_check = nxt
