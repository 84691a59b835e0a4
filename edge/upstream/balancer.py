"""Choosing a backend server: the balancing algorithms (pure: no I/O, no clock, injected randomness).

Theory of operation. Every balancer is built once per worker over a fixed group of
servers (``members``: indexes into the pool's server list, with their weights) and
answers ``pick(excluded, key, now) -> index | None``: a member not in ``excluded``
(the caller's set of servers that are down, full or already tried by this request),
or None when every member is excluded. ``key`` is the request's affinity key (hash
balancers only); ``now`` the caller's clock (P2C-EWMA only). Balancers that react to
load read a shared ``Load`` (in-flight requests and peak-EWMA latency per server)
that the selection layer (``selection.py``) updates from the request path. None of
them allocates on the common path (nothing excluded): per pick they read lists and
tuples built here, and draw from a bound ``random.random``.

- ``RoundRobin``: smooth weighted round robin as nginx does it. Each pick adds every
  server's weight to its running score, takes the highest and subtracts the total
  from it: over ``sum(weights)`` picks each server is chosen ``weight`` times, heavy
  ones interleaved with light ones rather than in a burst. Equal weights take a
  one-modulo fast path.
- ``LeastConn``: the member with the fewest in-flight requests per unit of weight
  (``in_flight / weight``, compared by cross-multiplication, as nginx's
  ``least_conn``); ties are broken by the smooth round robin among the tied members,
  so an idle pool is served in weighted turns rather than always by the first server.
- ``PeakEwmaP2C``: power of two choices (Mitzenmacher) over a peak-sensitive EWMA of
  the time to the response head (Finagle's and Linkerd's "peak EWMA"). Two distinct
  members are drawn at random (in proportion to weight when weights differ) and the
  cheaper one wins, where cost = latency estimate x (in_flight + 1) / weight. The
  estimate jumps to a sample above it at once (peak) and moves towards a lower sample
  with weight ``1 - exp(-dt/decay)``, dt the time since the previous sample; at pick
  time it is further decayed by the time since that sample, so a server that got no
  traffic for a while looks cheaper again and is probed. A server never measured
  costs 0 while idle (it is tried at once) and a large penalty while its first
  request is in flight (so it receives one probe, not a burst, before it is known).
- ``Random``: uniform, or weighted through a cumulative table and bisection.
- ``HashRing``: consistent hashing, ketama style: every server owns
  ``POINTS_PER_WEIGHT x weight`` points on a 64-bit ring, placed by hashing the
  server's identity (its address and its ordinal among equal addresses, never its
  list position), so adding or removing one of N servers moves only the keys that
  land on its points: about 1/N of them, and never a key between two other servers.
  A key maps to the first point clockwise from its hash; an excluded server's points
  are skipped. Hashes are BLAKE2b (stable across processes and nodes, unlike
  ``hash()``). A request without a key goes to the fallback balancer.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from hashlib import blake2b
from itertools import accumulate
from math import exp as _exp
from typing import Callable, Sequence

#: points on the ring per unit of weight (ketama uses 160 per server of weight 1)
POINTS_PER_WEIGHT = 160
#: cost of a never-measured server while its first request is in flight (seconds): larger than any real latency
UNMEASURED_BUSY_COST = 1e6
_NOTHING: frozenset[int] = frozenset()

Rand = Callable[[], float]


def _check(members: Sequence[int], weights: Sequence[int]) -> None:
    if not weights or len(members) != len(weights):
        raise ValueError("a balancer needs at least one server, and one weight per server")
    if any(w < 1 for w in weights):
        raise ValueError("every server needs a weight >= 1 (weight 0 servers are left out by the caller)")


class Load:
    """Per-server feedback shared by the load-aware balancers: in-flight requests and peak EWMA.

    Indexed by server index over the whole pool. ``started``/``finished`` are called by
    the selection layer; ``cost`` is read by P2C. ``decay`` is the EWMA time constant (s)."""

    __slots__ = ("in_flight", "estimate", "stamp", "decay", "failure_cost")

    def __init__(self, n: int, decay: float = 10.0, failure_cost: float = 1.0) -> None:
        if decay <= 0:
            raise ValueError(f"decay: must be positive (got {decay})")
        self.in_flight = [0] * n
        self.estimate = [-1.0] * n   # seconds; -1: never measured
        self.stamp = [0.0] * n        # time of the last sample
        self.decay = decay
        self.failure_cost = failure_cost

    def started(self, i: int) -> None:
        self.in_flight[i] += 1

    def finished(self, i: int, latency_s: float, ok: bool | None, now: float) -> None:
        """One request on ``i`` ended; ``latency_s`` its time to the response head (or to the failure).

        A failed attempt counts as at least ``failure_cost`` seconds: a server that refuses
        connections answers fast, and must not look like the best one. ``ok=None``: the
        attempt ended for a reason that says nothing about the server (the client went away,
        its body was refused): only the in-flight count is released, no latency sample, so a
        client cannot skew the estimates by aborting uploads."""
        if self.in_flight[i] > 0:
            self.in_flight[i] -= 1
        if ok is None:
            return
        sample = latency_s if ok else max(latency_s, self.failure_cost)
        est = self.estimate[i]
        if est < 0.0 or sample > est:
            self.estimate[i] = sample  # first sample, or a peak: taken at once
        else:
            dt = now - self.stamp[i]
            w = math.exp(-dt / self.decay) if dt > 0.0 else 1.0
            self.estimate[i] = est * w + sample * (1.0 - w)
        self.stamp[i] = now

    def latency(self, i: int, now: float) -> float | None:
        """The decayed latency estimate of ``i`` at ``now`` (None: never measured); for status output."""
        est = self.estimate[i]
        if est < 0.0:
            return None
        dt = now - self.stamp[i]
        return est * math.exp(-dt / self.decay) if dt > 0.0 else est


class RoundRobin:
    """Smooth weighted round robin over a fixed group of servers."""

    __slots__ = ("_members", "_weights", "_scores", "_uniform", "_next")

    def __init__(self, weights: Sequence[int], members: Sequence[int] | None = None) -> None:
        members = tuple(range(len(weights))) if members is None else tuple(members)
        _check(members, weights)
        self._members = members
        self._weights = tuple(weights)
        self._scores = [0] * len(weights)
        self._uniform = len(set(weights)) == 1
        self._next = 0

    def pick(self, excluded: frozenset[int] | set[int] = _NOTHING, key: str | None = None, now: float = 0.0) -> int | None:
        """The next server not in ``excluded``, or None."""
        members = self._members
        n = len(members)
        if self._uniform:
            # The common case costs one modulo.
            for _ in range(n):
                k = self._next
                self._next = (k + 1) % n
                i = members[k]
                if i not in excluded:
                    return i
            return None
        best = -1
        total = 0
        scores = self._scores
        for k, w in enumerate(self._weights):
            if members[k] in excluded:
                continue
            scores[k] += w
            total += w
            if best < 0 or scores[k] > scores[best]:
                best = k
        if best < 0:
            return None
        scores[best] -= total
        return members[best]


class LeastConn:
    """Fewest in-flight requests per unit of weight; smooth round robin among the tied."""

    __slots__ = ("_members", "_weights", "_scores", "_in_flight")

    def __init__(self, weights: Sequence[int], members: Sequence[int], load: Load) -> None:
        _check(members, weights)
        self._members = tuple(members)
        self._weights = tuple(weights)
        self._scores = [0] * len(weights)
        self._in_flight = load.in_flight

    def pick(self, excluded: frozenset[int] | set[int] = _NOTHING, key: str | None = None, now: float = 0.0) -> int | None:
        members, weights, in_flight = self._members, self._weights, self._in_flight
        # Pass 1: the least in_flight/weight (a/wa < b/wb  <=>  a*wb < b*wa: no floats).
        best_c, best_w = -1, 1
        for k, i in enumerate(members):
            if i in excluded:
                continue
            c, w = in_flight[i], weights[k]
            if best_c < 0 or c * best_w < best_c * w:
                best_c, best_w = c, w
        if best_c < 0:
            return None
        # Pass 2: smooth weighted round robin among the members at that level.
        scores = self._scores
        best = -1
        total = 0
        for k, i in enumerate(members):
            if i in excluded:
                continue
            w = weights[k]
            if in_flight[i] * best_w != best_c * w:
                continue
            scores[k] += w
            total += w
            if best < 0 or scores[k] > scores[best]:
                best = k
        scores[best] -= total
        return members[best]


class PeakEwmaP2C:
    """Power of two choices over peak-EWMA latency x (in-flight + 1) / weight."""

    __slots__ = ("_members", "_weights", "_inv_w", "_cum", "_total", "_uniform", "_rand", "_load",
                 "_estimate", "_stamp", "_in_flight", "_decay")

    def __init__(self, weights: Sequence[int], members: Sequence[int], load: Load, rand: Rand = random.random) -> None:
        _check(members, weights)
        self._members = tuple(members)
        self._weights = tuple(weights)
        self._uniform = len(set(weights)) == 1
        # Indexed by server index (not member position) so cost() needs no translation.
        inv = [1.0] * (max(members) + 1)
        for i, w in zip(members, weights):
            inv[i] = 1.0 if self._uniform else 1.0 / w
        self._inv_w = tuple(inv)
        self._cum = tuple(accumulate(weights))
        self._total = self._cum[-1]
        self._rand = rand
        self._load = load
        # The load's lists (updated in place, never replaced), bound here: a pick reads them directly.
        self._estimate, self._stamp, self._in_flight = load.estimate, load.stamp, load.in_flight
        self._decay = load.decay

    def cost(self, i: int, now: float) -> float:
        est = self._estimate[i]
        pending = self._in_flight[i]
        if est < 0.0:
            # Never measured: free while idle (probe it now), expensive while its probe runs.
            return 0.0 if pending == 0 else UNMEASURED_BUSY_COST * pending
        dt = now - self._stamp[i]
        if dt > 0.0:
            est *= _exp(-dt / self._decay)
        return est * (pending + 1) * self._inv_w[i]

    def _draw(self) -> int:
        """A member position, uniformly or in proportion to weight."""
        if self._uniform:
            return int(self._rand() * len(self._members))
        return bisect_right(self._cum, self._rand() * self._total)

    def pick(self, excluded: frozenset[int] | set[int] = _NOTHING, key: str | None = None, now: float = 0.0) -> int | None:
        members = self._members
        n = len(members)
        if n == 1:
            i = members[0]
            return None if i in excluded else i
        rand = self._rand
        if not excluded and self._uniform:
            # Two distinct positions with two draws, no retry.
            a = int(rand() * n)
            b = int(rand() * (n - 1))
            if b >= a:
                b += 1
            a, b = members[a], members[b]
            # cost(a) and cost(b), inlined: this is the per-request path of the default balancer.
            est, stamp, in_flight, decay = self._estimate, self._stamp, self._in_flight, self._decay
            ea, eb = est[a], est[b]
            if ea >= 0.0 and eb >= 0.0:
                da, db = now - stamp[a], now - stamp[b]
                ca = ea * (in_flight[a] + 1) * (_exp(-da / decay) if da > 0.0 else 1.0)
                cb = eb * (in_flight[b] + 1) * (_exp(-db / decay) if db > 0.0 else 1.0)
                return a if ca <= cb else b
        else:
            a = b = -1
            for _ in range(4):  # a few draws find two eligible members unless most are excluded
                i = members[self._draw()]
                if i in excluded:
                    continue
                if a < 0:
                    a = i
                elif i != a:
                    b = i
                    break
            if b < 0:
                return self._scan(excluded, now, a)
        return a if self.cost(a, now) <= self.cost(b, now) else b

    def _scan(self, excluded, now: float, drawn: int) -> int | None:
        """Most members excluded: choose among all the eligible ones (rare path; allocates)."""
        eligible = [i for i in self._members if i not in excluded]
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        a = drawn if drawn >= 0 else eligible[int(self._rand() * len(eligible))]
        rest = [i for i in eligible if i != a]
        b = rest[int(self._rand() * len(rest))]
        return a if self.cost(a, now) <= self.cost(b, now) else b


class Random:
    """A random server, in proportion to weight."""

    __slots__ = ("_members", "_weights", "_cum", "_total", "_uniform", "_rand")

    def __init__(self, weights: Sequence[int], members: Sequence[int], rand: Rand = random.random) -> None:
        _check(members, weights)
        self._members = tuple(members)
        self._weights = tuple(weights)
        self._cum = tuple(accumulate(weights))
        self._total = self._cum[-1]
        self._uniform = len(set(weights)) == 1
        self._rand = rand

    def pick(self, excluded: frozenset[int] | set[int] = _NOTHING, key: str | None = None, now: float = 0.0) -> int | None:
        members = self._members
        for _ in range(4):
            if self._uniform:
                i = members[int(self._rand() * len(members))]
            else:
                i = members[bisect_right(self._cum, self._rand() * self._total)]
            if i not in excluded:
                return i
        # Mostly excluded: draw among what is left (rare path; allocates).
        left = [(i, w) for i, w in zip(members, self._weights) if i not in excluded]
        if not left:
            return None
        x = self._rand() * sum(w for _, w in left)
        for i, w in left:
            x -= w
            if x < 0:
                return i
        return left[-1][0]


def ring_hash(data: str) -> int:
    """64-bit position on the ring of ``data`` (BLAKE2b: the same in every process and on every node)."""
    return int.from_bytes(blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def server_identities(authorities: Sequence[str]) -> tuple[str, ...]:
    """A stable identity per server: its address, plus its ordinal among servers with the same address."""
    seen: dict[str, int] = {}
    out = []
    for a in authorities:
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.append(a if n == 0 else f"{a}#{n}")
    return tuple(out)


class HashRing:
    """Consistent hashing on a ketama-style ring; keyless requests go to ``fallback``."""

    __slots__ = ("_points", "_owners", "_fallback", "_distinct")

    def __init__(self, weights: Sequence[int], members: Sequence[int], identities: Sequence[str], fallback) -> None:
        _check(members, weights)
        ring: list[tuple[int, int]] = []
        for i, w in zip(members, weights):
            ident = identities[i]
            for v in range(POINTS_PER_WEIGHT * w):
                ring.append((ring_hash(f"{ident}-{v}"), i))
        ring.sort()
        self._points = tuple(p for p, _ in ring)
        self._owners = tuple(i for _, i in ring)
        self._distinct = len(set(members))
        self._fallback = fallback

    def owner(self, key: str) -> int:
        """The server a key maps to when nothing is excluded."""
        k = bisect_right(self._points, ring_hash(key))
        return self._owners[k % len(self._owners)]

    def pick(self, excluded: frozenset[int] | set[int] = _NOTHING, key: str | None = None, now: float = 0.0) -> int | None:
        if key is None:
            return self._fallback.pick(excluded, None, now)
        owners = self._owners
        size = len(owners)
        k = bisect_right(self._points, ring_hash(key))
        i = owners[k % size]
        if i not in excluded:
            return i
        # Walk clockwise past the excluded servers' points: the key's next server on the ring,
        # the same one in every worker. Bounded by the ring size.
        seen = {i}
        for step in range(1, size):
            i = owners[(k + step) % size]
            if i in seen:
                continue
            if i not in excluded:
                return i
            seen.add(i)
            if len(seen) == self._distinct:
                break
        return None
