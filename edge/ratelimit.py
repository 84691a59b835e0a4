"""Rate-limit arithmetic (pure) and a small ``Limiter`` over a Store.

Theory of operation
-------------------
A limit is ``count`` requests per ``period_s`` with a ``burst``. Two algorithms:

**GCRA** (generic cell rate algorithm, a token bucket stored as one number).
The emission interval is ``T = period_s / count``; the burst tolerance is
``tau = burst * T``. The only state is the *theoretical arrival time* ``tat``:
the instant at which the bucket would be full again. A request of ``cost`` at
``now`` is admitted when ``max(tat, now) + cost*T - tau <= now``, and then
``tat = max(tat, now) + cost*T``. Starting empty, exactly ``burst`` requests
pass at once, and afterwards one per ``T`` — so over ``t`` seconds at most
``burst + count * t / period_s`` are admitted. A refusal does not change the
state, so denials need no write (which matters for the CAS loop on memcached).

**Sliding window** (the two-window weighted approximation, as used by
Cloudflare). State is ``(window_index, prev_count, curr_count)`` for fixed
windows of ``period_s``; the estimate is ``prev * (1 - elapsed/period) + curr``
and a request passes when ``estimate + cost <= count``. We chose it over an
exact log of timestamps because its state is three numbers whatever the limit
(an exact log of ``5000/h`` is 5000 timestamps per key, rewritten on every
step on a remote store), and the error is bounded: it assumes the previous
window's requests were spread evenly. Refused requests are not counted.

Both step functions take the stored state (or ``None``) and ``now`` and return
``(new_state, Decision)``; the caller writes ``new_state`` back atomically
(``Store.ratelimit_step``). Nothing here reads a clock or does I/O (STYLE.md §1).
The Redis backend runs a Lua transcription of exactly these formulas
(``edge/store/redis.py``); a test runs the same sequence through both.

Floating point: ``now`` is Unix time (~1.7e9) whose float spacing is ~2.4e-7 s,
so comparisons allow ``EPS_S`` (1 µs) of slack; otherwise ``burst`` requests
at the same instant could come out as ``burst - 1``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from edge.units import parse_rate

if TYPE_CHECKING:
    from edge.store.base import Store

EPS_S = 1e-6  # slack in time comparisons (see module docstring)


class Algorithm(enum.Enum):
    GCRA = "gcra"
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` per ``period_s``; GCRA admits up to ``burst`` at once (default: ``count``)."""

    count: float
    period_s: float
    burst: int = 0  # 0 means "same as count"
    algorithm: Algorithm = Algorithm.GCRA
    # computed once: stores key per-limit precomputations by Limit, once per request, and
    # the generated dataclass __hash__ (a tuple of four fields) costs ~0.4 µs per lookup
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if not (self.count > 0 and math.isfinite(self.count)):
            raise ValueError(f"count must be positive (got {self.count!r})")
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise ValueError(f"period_s must be positive (got {self.period_s!r})")
        if self.burst < 0:
            raise ValueError(f"burst must not be negative (got {self.burst!r})")
        if self.burst == 0:
            object.__setattr__(self, "burst", max(1, int(self.count)))
        # (no str or enum in it: their hashes differ between processes, and a Limit may be pickled)
        object.__setattr__(self, "_hash", hash((self.count, self.period_s, self.burst, self.algorithm is Algorithm.GCRA)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, rate: str, burst: int = 0, algorithm: Algorithm | str = Algorithm.GCRA) -> "Limit":
        """``Limit.parse("100/s", burst=20)``; ValueError on a bad rate."""
        count, period_s = parse_rate(rate)
        return cls(count, period_s, burst, Algorithm(algorithm))

    @property
    def interval_s(self) -> float:
        """GCRA emission interval: seconds between two requests at the sustained rate."""
        return self.period_s / self.count

    def ttl_s(self, state_horizon_s: float) -> float:
        """How long a state must be kept: past this it is equivalent to no state."""
        if self.algorithm is Algorithm.GCRA:
            return max(state_horizon_s, 0.0) + EPS_S
        return 2 * self.period_s


class Decision(NamedTuple):
    """The outcome of one step. ``retry_after_s`` is 0 when allowed; ``reset_after_s`` is
    the time until the limit is fully replenished (for the RateLimit header).

    Immutable like the other values (STYLE.md §3), but a ``NamedTuple`` rather than a frozen
    dataclass: one is built per limit per request, and a frozen dataclass's ``__init__``
    (an ``object.__setattr__`` per field) costs ~1.2 µs against ~0.5 µs (issue 4 benchmark)."""

    allowed: bool
    remaining: int
    retry_after_s: float
    reset_after_s: float
    limit: int = 0


_decision = tuple.__new__  # Decision without the generated __new__ (see gcra_step)

# --------------------------------------------------------------------------- GCRA


def gcra_step(
    tat: float | None, now: float, period_s: float, count: float, burst: int, cost: float = 1
) -> tuple[float | None, Decision]:
    """One GCRA step. Returns ``(new_tat, decision)``; ``new_tat`` is ``tat`` unchanged on refusal."""
    t = period_s / count
    tau = burst * t
    base = now if tat is None or tat < now else tat
    new_tat = base + cost * t
    allow_at = new_tat - tau
    if now + EPS_S < allow_at:
        remaining = max(0, math.floor((now + tau - base + EPS_S) / t))
        return tat, Decision(False, remaining, allow_at - now, base - now, burst)
    # the admitted path runs once per request: int() is floor() here (r > 0), and the
    # tuple is built without NamedTuple's Python-level __new__
    r = (now + tau - new_tat + EPS_S) / t
    return new_tat, _decision(Decision, (True, int(r) if r > 0 else 0, 0.0, new_tat - now, burst))


def encode_gcra(tat: float) -> bytes:
    # repr() is the shortest string that round-trips the float exactly (Lua: %.17g)
    return repr(float(tat)).encode()


def decode_gcra(raw: bytes | None) -> float | None:
    return None if raw is None else float(raw)


# --------------------------------------------------------------------------- sliding window

WindowState = tuple[int, float, float]  # (window_index, prev_count, curr_count)


def window_step(
    state: WindowState | None, now: float, period_s: float, count: float, cost: float = 1
) -> tuple[WindowState | None, Decision]:
    """One sliding-window step. Returns ``(new_state, decision)``; state unchanged on refusal."""
    w = math.floor(now / period_s)
    prev, curr = 0.0, 0.0
    if state is not None:
        sw, sp, sc = state
        if sw == w:
            prev, curr = sp, sc
        elif sw == w - 1:
            prev = sc
    elapsed = now - w * period_s
    estimate = prev * (1 - elapsed / period_s) + curr
    limit = int(count)
    if estimate + cost <= count + 1e-9:
        curr += cost
        remaining = max(0, math.floor(count - estimate - cost + 1e-9))
        return (w, prev, curr), Decision(True, remaining, 0.0, (w + 2) * period_s - now, limit)
    if curr + cost <= count:
        # enough room once the previous window's weight has decayed far enough
        needed = period_s * (1 - (count - cost - curr) / prev)
        retry = max(0.0, needed - elapsed)
    elif cost <= count:
        # wait for the next window, then for this window's weight to decay
        needed = period_s * (1 - (count - cost) / curr)
        retry = (w + 1) * period_s - now + max(0.0, needed)
    else:
        retry = math.inf
    reset = (w + 2) * period_s - now if curr > 0 else (w + 1) * period_s - now if prev > 0 else 0.0
    remaining = max(0, math.floor(count - estimate + 1e-9))
    return state, Decision(False, remaining, retry, reset, limit)


def encode_window(state: WindowState) -> bytes:
    w, prev, curr = state
    return f"{int(w)}:{float(prev)!r}:{float(curr)!r}".encode()


def decode_window(raw: bytes | None) -> WindowState | None:
    if raw is None:
        return None
    w, prev, curr = raw.split(b":")
    return int(w), float(prev), float(curr)


# --------------------------------------------------------------------------- one step on encoded state


def step_encoded(
    raw: bytes | None, now: float, limit: Limit, cost: float = 1
) -> tuple[bytes | None, float, Decision]:
    """Run one step on the stored bytes; returns ``(new_raw or None if unchanged, ttl_s, decision)``.

    Shared by the memory, local and memcached backends so the encoding lives in one place.
    """
    if limit.algorithm is Algorithm.GCRA:
        # decode_gcra, encode_gcra and Limit.ttl_s inlined: this runs once per request
        new_tat, d = gcra_step(None if raw is None else float(raw), now, limit.period_s, limit.count, limit.burst,
                               cost)
        if not d.allowed or new_tat is None:
            return None, 0.0, d
        horizon_s = new_tat - now
        return repr(float(new_tat)).encode(), (horizon_s if horizon_s > 0.0 else 0.0) + EPS_S, d
    state = decode_window(raw)
    new_state, d = window_step(state, now, limit.period_s, limit.count, cost)
    if not d.allowed or new_state is None:
        return None, 0.0, d
    return encode_window(new_state), limit.ttl_s(0.0), d


class Limiter:
    """Convenience over a Store: ``Limiter(store).hit("user:42", Limit.parse("100/s", 20))``.

    ``now`` defaults to the store's own clock (the Redis server clock on redis).
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def hit(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        return self._store.ratelimit_step(key, limit, cost=cost, now=now)
