"""Which server of a pool gets a request: groups, limits and affinity over a balancer (pure).

Theory of operation. ``Selector`` is built once per pool and worker from the pool's
configuration and is what the client asks: ``pick(excluded, key, now)``. It splits
the servers into

- primaries: weight > 0, not ``drain``, not ``backup``;
- backups: ``backup: true`` (weight > 0, not ``drain``), asked only when every primary
  is excluded: down, already tried by this request, or at its ``max_conns``;
- the rest (weight 0 or ``drain: true``): never picked. Requests already on them
  finish normally, because nothing here touches a request once it is picked.

Each group has its own balancer (``balancer.py``) of the pool's algorithm. The
selector keeps the per-server feedback (``balancer.Load``): ``started(i)`` when a
request is assigned to ``i``, ``finished(i, latency_s, ok, now)`` exactly once when
that request is over (body read or abandoned, or the attempt failed). A server whose
in-flight count reached its ``max_conns`` is excluded like a down one until a request
on it finishes; ``finished`` returns True then, so the client can wake a request
waiting in the pool's queue, and ``blocked(excluded)`` tells the client that waiting
can help (some server is only full, not down). The limits are per worker: each
worker process counts its own requests (as nginx's ``max_conns`` without a shared
zone).

Affinity. ``affinity`` says which request attribute the pool needs as ``key``
(client address, a header, a cookie, the path; or the sticky cookie), so the request
path computes it only for pools that use it. Sticky sessions: edge sets a cookie
whose value names the server through a keyed BLAKE2b hash of its identity: it reveals
neither the address nor the list position, and cannot be forged to reach a server
by guessing. A request whose cookie names a server that is eligible goes there; an
unknown, invalid or excluded one falls back to the pool's balancer, and the client
gets a new cookie for the server that answered (``sticky.set_cookie_for``).

Nothing here reads the clock, does I/O or draws randomness itself: ``now`` comes
from the caller and ``rand`` is injected (``random.random`` by default).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from hashlib import blake2b
from typing import Sequence

from edge.config import StickyConfig
from edge.cookies import set_cookie_field
from edge.upstream.balancer import (
    HashRing,
    LeastConn,
    Load,
    PeakEwmaP2C,
    Rand,
    Random,
    RoundRobin,
    server_identities,
)

ALGORITHMS = ("round_robin", "least_conn", "p2c_ewma", "random", "hash", "sticky")
#: the balancers a hash ring or a sticky cookie falls back on
FALLBACKS = ("round_robin", "least_conn", "p2c_ewma", "random")


class Affinity(enum.Enum):
    """The request attribute a pool balances on."""

    CLIENT_IP = "client_ip"
    HEADER = "header"
    COOKIE = "cookie"
    PATH = "path"
    STICKY = "sticky"   # the sticky cookie edge sets


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What the selector needs to know of one server (from ``ServerAddress``)."""

    authority: str
    weight: int = 1
    backup: bool = False
    drain: bool = False
    max_conns: int = 0  # 0: no limit

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0 (got {self.weight})")
        if self.max_conns < 0:
            raise ValueError(f"max_conns: must be >= 0 (got {self.max_conns})")


@dataclass(frozen=True, slots=True)
class StickyCookie:
    """The sticky cookie of a pool: its name, and per server the value and the whole Set-Cookie field."""

    name: str
    values: tuple[str, ...]    # per server index
    fields: tuple[str, ...]    # per server index: the Set-Cookie field value, checked at build

    def set_cookie_for(self, index: int, sent: str | None) -> str | None:
        """The Set-Cookie field value to add to a reply from server ``index``, or None when the client's cookie already names it."""
        return None if sent == self.values[index] else self.fields[index]

    @classmethod
    def build(cls, name: str, identities: Sequence[str], secret: str, *, max_age: int | None = None,
              path: str = "/", domain: str | None = None, secure: bool = False, httponly: bool = True,
              samesite: str | None = "Lax") -> "StickyCookie":
        key = blake2b(secret.encode("utf-8"), digest_size=32).digest()
        values = tuple(blake2b(ident.encode("utf-8"), key=key, digest_size=12).hexdigest() for ident in identities)
        fields = []
        for value in values:
            try:
                field = set_cookie_field(name, value, max_age=max_age, path=path, domain=domain, secure=secure,
                                         httponly=httponly, samesite=samesite)
            except ValueError as e:
                raise ValueError(f"sticky cookie: {e}") from None
            fields.append(field)
        return cls(name, values, tuple(fields))


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """One server as the selector sees it, for status output (``Selector.state``)."""

    authority: str
    role: str                  # "primary", "backup", or "off" (weight 0 or drain)
    in_flight: int
    latency_s: float | None    # decayed peak-EWMA estimate; None: never measured
    full: bool                 # at its max_conns


def _balancer(algorithm: str, members: list[int], specs: Sequence[ServerSpec], load: Load, rand: Rand):
    weights = [specs[i].weight for i in members]
    if algorithm == "round_robin":
        return RoundRobin(weights, members)
    if algorithm == "least_conn":
        return LeastConn(weights, members, load)
    if algorithm == "p2c_ewma":
        return PeakEwmaP2C(weights, members, load, rand)
    if algorithm == "random":
        return Random(weights, members, rand)
    raise ValueError(f"unknown balancing algorithm {algorithm!r}")


class Selector:
    """Picks a server of one pool for a request; see the module docstring."""

    __slots__ = ("algorithm", "specs", "load", "affinity", "sticky", "_sticky_index", "_primary", "_backup",
                 "_primaries", "_usable", "_is_backup", "_max_conns", "_full", "_limited")

    def __init__(self, specs: Sequence[ServerSpec], algorithm: str = "p2c_ewma", *, fallback: str = "p2c_ewma",
                 affinity: tuple[Affinity, str | None] | None = None, sticky: StickyCookie | None = None,
                 decay: float = 10.0, failure_cost: float = 1.0, rand: Rand = random.random) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"balance: unknown algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback: must be one of {', '.join(FALLBACKS)} (got {fallback!r})")
        if not specs:
            raise ValueError("a pool needs at least one server")
        if algorithm == "hash" and (affinity is None or affinity[0] is Affinity.STICKY):
            raise ValueError("balance hash needs a key: client_ip, header, cookie or path")
        if algorithm == "sticky" and sticky is None:
            raise ValueError("balance sticky needs its cookie")
        self.algorithm = algorithm
        self.specs = tuple(specs)
        n = len(specs)
        self.load = Load(n, decay, failure_cost)
        identities = server_identities([s.authority for s in specs])
        usable = [i for i, s in enumerate(specs) if s.weight > 0 and not s.drain]
        self._primaries = tuple(i for i in usable if not specs[i].backup)
        self._usable = tuple(usable)
        backups = [i for i in usable if specs[i].backup]
        base = fallback if algorithm in ("hash", "sticky") else algorithm

        def group(members: list[int]):
            if not members:
                return None
            b = _balancer(base, members, specs, self.load, rand)
            if algorithm == "hash":
                return HashRing([specs[i].weight for i in members], members, identities, b)
            return b

        self._primary = group(list(self._primaries))
        self._backup = group(backups)
        self._is_backup = tuple(s.backup for s in specs)
        self._max_conns = tuple(s.max_conns for s in specs)
        self._limited = any(self._max_conns)
        self._full: set[int] = set()
        if algorithm == "sticky":
            self.affinity = (Affinity.STICKY, sticky.name)
            self.sticky = sticky
            eligible = set(usable)
            self._sticky_index = {v: i for i, v in enumerate(sticky.values) if i in eligible}
        else:
            self.affinity = affinity if algorithm == "hash" else None
            self.sticky = None
            self._sticky_index = None

    # ------------------------------------------------------------------ picking

    def pick(self, excluded: frozenset[int] | set[int], key: str | None, now: float) -> int | None:
        """A server for a request: a primary not in ``excluded`` nor full, else such a backup, else None."""
        if self._full:
            excluded = self._full.union(excluded)  # allocates only while some server is at its max_conns
        if self._sticky_index is not None and key is not None:
            i = self._sticky_index.get(key)
            if i is not None and i not in excluded:
                if not self._is_backup[i] or self._primaries_excluded(excluded):
                    return i
            key = None
        if self._primary is not None:
            i = self._primary.pick(excluded, key, now)
            if i is not None:
                return i
        if self._backup is not None:
            return self._backup.pick(excluded, key, now)
        return None

    def _primaries_excluded(self, excluded) -> bool:
        for i in self._primaries:
            if i not in excluded:
                return False
        return True

    def can_take(self, excluded: frozenset[int] | set[int]) -> bool:
        """Whether some server (primary or backup) could take a new request now: not drained or of
        weight 0 by configuration, not in ``excluded``, not at its ``max_conns``. No side effects."""
        full = self._full
        for i in self._usable:
            if i not in excluded and i not in full:
                return True
        return False

    def blocked(self, excluded: frozenset[int] | set[int]) -> bool:
        """True when ``pick`` found nothing only because some eligible server is at its ``max_conns``:
        a request may wait for a slot. False when waiting cannot help."""
        for i in self._full:
            if i not in excluded:
                return True
        return False

    # ------------------------------------------------------------------ feedback

    def started(self, i: int) -> None:
        """A request was assigned to server ``i`` (call right after ``pick``, before any wait)."""
        self.load.in_flight[i] += 1
        if self._limited:
            m = self._max_conns[i]
            if m and self.load.in_flight[i] >= m:
                self._full.add(i)

    def finished(self, i: int, latency_s: float, ok: bool | None, now: float) -> bool:
        """The request on ``i`` is over: ``latency_s`` to its response head (or its failure), ``ok``:
        a response head arrived; None: no verdict (see ``Load.finished``). True when this opened a
        slot on a full server."""
        self.load.finished(i, latency_s, ok, now)
        if self._full and i in self._full and self.load.in_flight[i] < self._max_conns[i]:
            self._full.discard(i)
            return True
        return False

    def in_flight(self, i: int) -> int:
        return self.load.in_flight[i]

    def state(self, now: float) -> tuple[ServerLoad, ...]:
        """Every server's role, in-flight count, latency estimate and fullness (this worker's view)."""
        out = []
        for i, s in enumerate(self.specs):
            role = "off" if s.weight == 0 or s.drain else ("backup" if s.backup else "primary")
            out.append(ServerLoad(s.authority, role, self.load.in_flight[i], self.load.latency(i, now), i in self._full))
        return tuple(out)


def sticky_secret(pool_name: str, identities: Sequence[str], configured: str | None) -> str:
    """The key of the sticky cookie's hash: the configured secret, else one derived from the pool
    (its name and servers), which changes when the servers change; documented in docs/upstreams.md."""
    if configured:
        return configured
    return "\n".join(("edge-sticky", pool_name, *sorted(identities)))


def selector_from_config(pool_name: str, cfg, rand: Rand = random.random) -> Selector:
    """The selector of a pool from its ``UpstreamConfig`` (already validated by edge.config)."""
    specs = [ServerSpec(s.authority, s.weight, s.backup, s.drain, s.max_conns) for s in cfg.servers]
    algorithm = cfg.balance or default_algorithm([s.weight for s in cfg.servers if s.weight > 0])
    affinity = None
    sticky = None
    fallback = "p2c_ewma"
    if algorithm == "hash":
        h = cfg.hash
        affinity = (Affinity(h.key), h.name)
        fallback = h.fallback
    elif algorithm == "sticky":
        sc = cfg.sticky or StickyConfig()
        fallback = sc.fallback
        identities = server_identities([s.authority for s in specs])
        sticky = StickyCookie.build(
            sc.cookie, identities, sticky_secret(pool_name, identities, sc.secret),
            max_age=None if sc.ttl is None else int(sc.ttl), path=sc.path, domain=sc.domain,
            secure=sc.secure, httponly=sc.httponly, samesite=sc.samesite,
        )
    return Selector(specs, algorithm, fallback=fallback, affinity=affinity, sticky=sticky,
                    decay=cfg.ewma_decay, failure_cost=cfg.timeouts.connect, rand=rand)


def default_algorithm(weights: Sequence[int]) -> str:
    """P2C-EWMA for a pool of equal weights; smooth round robin when weights differ (exact shares)."""
    return "p2c_ewma" if len(set(weights)) <= 1 else "round_robin"
