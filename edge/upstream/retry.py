"""When a failed upstream attempt may be repeated, and how often (pure: no sockets, no clock).

Theory of operation. ``UpstreamPool.exchange`` (client.py) runs a loop of attempts. After
each failed one it names the ``Cause`` and asks ``RetryPolicy.decide`` for an ``Action``:

==================  =========================================  ===========================
cause               what happened                              request reached a backend?
==================  =========================================  ===========================
CONNECT_ERROR       connect refused / unreachable              no
CONNECT_TIMEOUT     connect did not finish in time             no
STALE_WRITE         first write on a *reused* connection       no (the backend had closed
                    failed (reset, broken pipe)                the idle connection)
STALE_READ          a reused connection closed before the      yes
                    first response byte
RESET               a fresh connection reset or closed         yes
                    before the first response byte (or a
                    write failed after the first one)
READ_TIMEOUT        no response head within the read timeout   yes
                    (or ``per_try_timeout``)
STATUS_502/503/504  the backend answered 502/503/504           yes
==================  =========================================  ===========================

The rules, in the order ``decide`` applies them:

1. The body must be sendable again: nothing was pulled from the client yet, or every
   pulled byte is still held (``ReplayBody`` keeps up to ``limits.retry_body_bytes``).
   Bodies are not rewindable (urllib3 ``rewind_body`` learnt the same); sending a retry
   from a partly consumed iterator loses the first chunk of a chunked upload, or makes a
   Content-Length upload hang short of its length (issue 7, defect 3).
2. A stale pooled connection (the backend's idle timer fired as we reused it) is retried
   on a fresh connection to the same server, ``fresh_connections`` times (always on:
   nothing was wrong with the server). After STALE_READ only for an idempotent method.
3. Any other cause is retried only when it is in ``on`` (config ``retry.on``; default:
   connect errors and resets).
4. RFC 9112 §9.3.1: "A user agent MUST NOT automatically retry a request with a
   non-idempotent method unless it has some means to know that the request semantics
   are actually idempotent". A cause whose request reached a backend (RESET,
   READ_TIMEOUT, 5xx) is retried only for idempotent methods (RFC 9110 §9.2.2).
5. At most ``attempts`` servers are tried for one request, the first included.

A retry then needs a server not yet tried (the pick) and, except for causes that cost a
backend nothing (CONNECT_ERROR, STALE_*), a token from the pool's ``RetryBudget``: retries
may be at most ``ratio`` of the recent requests plus ``min_per_s`` per second (Finagle's
RetryBudget, Envoy's retry budget), so a pool that fails everything gets
``1 + ratio`` times its traffic, not ``attempts`` times (no retry storm).

``parse_retry_after`` reads a 503's ``Retry-After`` (RFC 9110 §10.2.3); the client holds
that server out of rotation for that long (capped): ``HoldSet`` until the health module
takes over (see its docstring).
"""

from __future__ import annotations

import calendar
import enum
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

# RFC 9110 §9.2.2: "PUT, DELETE, and safe request methods are idempotent."
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Cause(enum.Enum):
    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    STALE_WRITE = "stale_write"
    STALE_READ = "stale_read"
    RESET = "reset"
    READ_TIMEOUT = "read_timeout"
    STATUS_502 = "502"
    STATUS_503 = "503"
    STATUS_504 = "504"


#: The response statuses that may be retried, and their cause.
STATUS_CAUSES = {502: Cause.STATUS_502, 503: Cause.STATUS_503, 504: Cause.STATUS_504}

#: Causes after which the request (or part of it) reached a backend: RFC 9112 §9.3.1 applies.
SENT_CAUSES = frozenset({Cause.STALE_READ, Cause.RESET, Cause.READ_TIMEOUT, *STATUS_CAUSES.values()})

#: Causes whose retry cost a backend nothing, so the retry budget does not pay for them.
FREE_CAUSES = frozenset({Cause.CONNECT_ERROR, Cause.STALE_WRITE, Cause.STALE_READ})

#: The names of config ``retry.on`` and the causes each one enables.
ON_NAMES: dict[str, frozenset[Cause]] = {
    "connect_error": frozenset({Cause.CONNECT_ERROR, Cause.CONNECT_TIMEOUT}),
    "reset": frozenset({Cause.RESET}),
    "read_timeout": frozenset({Cause.READ_TIMEOUT}),
    "502": frozenset({Cause.STATUS_502}),
    "503": frozenset({Cause.STATUS_503}),
    "504": frozenset({Cause.STATUS_504}),
}
DEFAULT_ON = ("connect_error", "reset")


def causes_for(names: Iterable[str]) -> frozenset[Cause]:
    """The causes enabled by config ``retry.on`` names; ValueError names an unknown one."""
    out: set[Cause] = set()
    for name in names:
        try:
            out |= ON_NAMES[str(name)]
        except KeyError:
            raise ValueError(f"unknown retry cause {name!r} (expected one of {', '.join(ON_NAMES)})") from None
    return frozenset(out)


class Action(enum.Enum):
    GIVE_UP = "give_up"
    NEXT_SERVER = "next_server"
    FRESH_CONNECTION = "fresh_connection"  # same server, new connection


@dataclass(frozen=True, slots=True)
class BodyState:
    """What a retry needs to know about the request body: may it be sent again from its start?"""

    pulled_bytes: int = 0     # taken from the client's stream so far
    replayable: bool = True   # every pulled byte is still held (ReplayBody under its cap)

    @property
    def resendable(self) -> bool:
        return self.pulled_bytes == 0 or self.replayable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failed attempts are repeated (see the module docstring for the rules).

    ``attempts``: servers tried in all for one request, the first included (config
    ``retry.attempts``, or the older ``retries`` + 1). ``on``: the causes retried on another
    server. ``per_try_timeout``: seconds one attempt may wait for its response head once the
    request is sent (None: only the read timeout between two reads applies); the pool's or
    route's ``timeouts.total`` still bounds the whole exchange.
    """

    attempts: int = 2
    on: frozenset[Cause] = ON_NAMES["connect_error"] | ON_NAMES["reset"]
    fresh_connections: int = 1   # attempts on a fresh connection after a stale pooled one
    per_try_timeout: float | None = None
    retry_after_max_s: float = 60.0  # longest a 503's Retry-After holds a server out of rotation

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: must be >= 1 (got {self.attempts})")
        if self.fresh_connections < 0:
            raise ValueError(f"fresh_connections: must be >= 0 (got {self.fresh_connections})")
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise ValueError(f"per_try_timeout: must be positive (got {self.per_try_timeout})")
        if self.retry_after_max_s < 0:
            raise ValueError(f"retry_after_max_s: must be >= 0 (got {self.retry_after_max_s})")
        unknown = [c for c in self.on if not isinstance(c, Cause)]
        if unknown:
            raise ValueError(f"on: not a Cause: {unknown[0]!r}")

    @classmethod
    def from_config(cls, ucfg) -> "RetryPolicy":
        """From an ``UpstreamConfig`` (its ``retry`` section and the older ``retries`` key)."""
        r = ucfg.retry
        attempts = r.attempts if r.attempts is not None else ucfg.retries + 1
        return cls(attempts=attempts, on=causes_for(r.on), per_try_timeout=r.per_try_timeout,
                   retry_after_max_s=r.retry_after_max)

    def decide(self, method: str, cause: Cause, body: BodyState, attempt: int, fresh_tried: int = 0) -> Action:
        """The next step after ``cause``. ``attempt`` counts the servers tried so far (>= 1);
        ``fresh_tried`` the fresh-connection attempts already made after stale ones."""
        if not body.resendable:
            return Action.GIVE_UP
        if cause is Cause.STALE_WRITE or cause is Cause.STALE_READ:
            if fresh_tried >= self.fresh_connections:
                return Action.GIVE_UP
            if cause is Cause.STALE_READ and method not in IDEMPOTENT_METHODS:
                return Action.GIVE_UP
            return Action.FRESH_CONNECTION
        if cause not in self.on:
            return Action.GIVE_UP
        if cause in SENT_CAUSES and method not in IDEMPOTENT_METHODS:
            return Action.GIVE_UP
        if attempt >= self.attempts:
            return Action.GIVE_UP
        return Action.NEXT_SERVER


class RetryBudget:
    """Retries allowed while ``retries <= ratio * requests + min_per_s * window_s`` over the
    last ``window_s`` seconds (Finagle's RetryBudget; Envoy's retry budget caps the same share
    of active requests). One per pool per worker; the caller passes ``now`` (monotonic s).

    The window slides in ``slots`` steps: counts live in a ring of per-slot counters plus
    running totals, so ``request`` and ``try_retry`` cost a few integer operations.
    """

    __slots__ = ("ratio", "min_per_s", "window_s", "_slot_s", "_requests", "_retries", "_total_requests",
                 "_total_retries", "_slot", "_i", "_slot_end", "exhausted")

    def __init__(self, ratio: float, min_per_s: float, window_s: float = 10.0, slots: int = 10) -> None:
        if ratio < 0:
            raise ValueError(f"ratio: must be >= 0 (got {ratio})")
        if min_per_s < 0:
            raise ValueError(f"min_per_s: must be >= 0 (got {min_per_s})")
        if window_s <= 0 or slots < 1:
            raise ValueError(f"window_s and slots: must be positive (got {window_s}, {slots})")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._slot_s = window_s / slots
        self._requests = [0] * slots
        self._retries = [0] * slots
        self._total_requests = 0
        self._total_retries = 0
        self._slot: int | None = None   # absolute slot number of the newest counters
        self._i = 0                     # its index in the ring
        self._slot_end = float("-inf")  # when it ends: before that, counting needs no clearing
        self.exhausted = 0              # retries refused, for tests and status

    def _advance(self, now: float) -> None:
        if now < self._slot_end:
            return  # the hot path; a clock that went backwards (a test's may) counts in the newest slot
        slot = int(now // self._slot_s)
        last = self._slot
        n = len(self._requests)
        if last is not None:
            # Clear the slots that left the window (at most all of them).
            for s in range(last + 1, min(slot, last + n) + 1):
                i = s % n
                self._total_requests -= self._requests[i]
                self._total_retries -= self._retries[i]
                self._requests[i] = 0
                self._retries[i] = 0
        self._slot = slot
        self._i = slot % n
        self._slot_end = (slot + 1) * self._slot_s

    def request(self, now: float) -> None:
        """One request started (first attempts only: retries are counted by ``try_retry``)."""
        if now >= self._slot_end:
            self._advance(now)
        self._requests[self._i] += 1
        self._total_requests += 1

    def allowed(self, now: float) -> bool:
        self._advance(now)
        return self._total_retries + 1 <= self.ratio * self._total_requests + self.min_per_s * self.window_s

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget: True if it may go, False (and counted) if exhausted."""
        if not self.allowed(now):
            self.exhausted += 1
            return False
        self._retries[self._i] += 1
        self._total_retries += 1
        return True


class HoldSet:
    """Servers held out of rotation until a time: a 503 with ``Retry-After`` (per worker).

    The shape of the pool's health object (``excluded(now)``, ``observe(...)``,
    ``hold(index, seconds, now)``; see docs of issue 9) so that the client calls the same
    three methods whichever object sits in ``UpstreamPool.health``; this one knows only
    holds, and ``observe`` has nothing to learn. A hold never empties a pool: when every
    server is held, none is excluded (the backends' advice cannot turn the whole pool into
    edge's own 503s; the held servers' own answers reach the clients instead).
    """

    __slots__ = ("_until", "_size", "_excluded", "_next_change")

    def __init__(self, size: int) -> None:
        self._until: dict[int, float] = {}
        self._size = size
        self._excluded: frozenset[int] = frozenset()
        self._next_change = float("inf")   # earliest hold end: the cached set is valid before it

    def hold(self, index: int, seconds: float, now: float) -> None:
        if seconds <= 0:
            return
        until = now + seconds
        if self._until.get(index, 0.0) < until:
            self._until[index] = until
        self._refresh(now)

    def observe(self, index: int, outcome, now: float) -> None:
        """Outcomes matter to outlier detection, not to holds."""

    def excluded(self, now: float) -> frozenset[int]:
        if now >= self._next_change:
            self._refresh(now)
        return self._excluded

    def _refresh(self, now: float) -> None:
        self._until = {i: t for i, t in self._until.items() if t > now}
        held = frozenset(self._until)
        self._excluded = held if len(held) < self._size else frozenset()
        self._next_change = min(self._until.values(), default=float("inf"))


# ---------------------------------------------------------------- Retry-After (RFC 9110 §10.2.3)

_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 §5.6.7: IMF-fixdate, and the two obsolete formats a recipient MUST accept.
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MONTH}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")


def parse_http_date(value: str, now: float) -> float | None:
    """Seconds since the epoch of an HTTP-date (RFC 9110 §5.6.7), or None when it is not one.
    ``now`` (epoch seconds) resolves the two-digit year of the rfc850 form."""
    if m := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        # "Recipients of a timestamp value in rfc850-date format, which uses a two-digit year,
        # MUST interpret a timestamp that appears to be more than 50 years in the future as
        # representing the most recent year in the past that had the same last two digits."
        this_year = int(_gm_year(now))
        year = this_year - this_year % 100 + int(yy)
        if year > this_year + 50:
            year -= 100
    else:
        return None
    try:
        fields = (int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss))
    except (KeyError, ValueError):
        return None
    y, mo, d, h, mi, s = fields
    if not (1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 61):
        return None
    return float(calendar.timegm((y, mo, d, h, mi, min(s, 59), 0, 0, 0)))


def _gm_year(epoch: float) -> int:
    # 1970 + days / 365.2425 can be a year off near New Year; walk to the exact one.
    year = 1970 + int(epoch // 31556952)
    while calendar.timegm((year, 1, 1, 0, 0, 0, 0, 0, 0)) > epoch:
        year -= 1
    while calendar.timegm((year + 1, 1, 1, 0, 0, 0, 0, 0, 0)) <= epoch:
        year += 1
    return year


#: delay-seconds longer than this many digits are read as 10**this (int() of thousands of digits is
#: slow, and float() of them overflows): any such value is far above every cap
MAX_DELAY_DIGITS = 9


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None when it is invalid.

    RFC 9110 §10.2.3: ``Retry-After = HTTP-date / delay-seconds``, ``delay-seconds = 1*DIGIT``.
    A date in the past waits 0 s. ``now`` is epoch seconds (the wall clock: dates are absolute).
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        # 1*DIGIT has no upper bound; a day's worth of digits is plenty (the caller caps the hold)
        return float(int(value)) if len(value) <= MAX_DELAY_DIGITS else float(10 ** MAX_DELAY_DIGITS)
    when = parse_http_date(value, now)
    if when is None:
        return None
    return max(0.0, when - now)


class ReplayBody:
    """The request body for one exchange: hands out chunks and keeps them, up to a cap, so that
    a retried attempt can send them again before pulling more from the client.

    ``attempt()`` starts an attempt: the iterator it returns yields the kept chunks first,
    then pulls new ones. Once more than ``keep_bytes`` were pulled the kept chunks are
    dropped and ``state().replayable`` turns False for good. ``release()`` drops them when
    no retry can happen any more (the response is the one the client gets).
    """

    __slots__ = ("_source", "_kept", "_kept_bytes", "_pulled", "_replayable", "_keep_bytes", "_exhausted")

    def __init__(self, source: Iterable[bytes], keep_bytes: int) -> None:
        self._source = iter(source)
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._pulled = 0
        self._replayable = True
        self._keep_bytes = keep_bytes
        self._exhausted = False

    def state(self) -> BodyState:
        return BodyState(self._pulled, self._replayable)

    def release(self) -> None:
        self._kept = []
        self._replayable = False

    def attempt(self) -> Iterator[bytes]:
        if self._pulled and not self._replayable:
            raise RuntimeError("request body was partly consumed and not kept: it cannot be sent again")
        return self._chunks(tuple(self._kept))

    def _chunks(self, replay: tuple[bytes, ...]) -> Iterator[bytes]:
        yield from replay
        if self._exhausted:
            return
        for chunk in self._source:
            if not chunk:
                continue
            self._pulled += len(chunk)
            if self._replayable:
                if self._kept_bytes + len(chunk) <= self._keep_bytes:
                    self._kept.append(chunk)
                    self._kept_bytes += len(chunk)
                else:
                    self.release()
            yield chunk
        self._exhausted = True
