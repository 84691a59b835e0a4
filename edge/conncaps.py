"""Connection caps: per worker, per client address per worker, per client address per node.

Theory of operation. ``EdgeWorker.handle`` asks ``ConnectionCaps.admit(ip)`` for
every new client connection (after the PROXY header, so ``ip`` is the real client)
and gives the slot back with ``release(slot)`` when the connection ends, whatever
ended it. Three caps, each off unless configured (``server.*``):

- ``max_connections``: open connections of this worker. gunicorn's own bound,
  ``worker_connections``, stops *accepting* when reached, so clients wait in the
  kernel's accept queue for as long as the worker is full; below it, this cap
  answers at once, which a client (or a load balancer) can act on.
- ``max_connections_per_ip``: open connections of one address in this worker, a
  dict of counters.
- ``max_connections_per_ip_node``: open connections of one address in all workers
  of the node, counted in the node-local store (LMDB shared by the workers,
  ``WorkerState.local_store``) with one atomic ``incr`` per open and per close.

Leaks. A worker that dies (killed, crashed) never runs its ``release`` calls, so a
plain counter would keep its connections forever. Node counters are therefore
kept per *epoch* (``floor(now / EPOCH_S)``): the key ``conn:<epoch>:<ip>`` expires
after two epochs, and at each new epoch every live worker re-counts its own open
connections into the new key (``refresh``, from a greenlet that looks every
``REFRESH_S``), *moving* them: it adds them to the new epoch's key and takes them off
the previous epoch's key. A dead worker's connections are simply not re-counted.

The boundary. The workers do not re-count at the same instant (each within
``REFRESH_S``, later on a busy worker), so the node's count during an epoch is the
new key *plus* the previous key: the previous key then holds exactly the connections
of workers that have not re-counted yet (and of dead ones). ``admit`` compares that
sum with the cap, and first re-counts its own worker when the epoch changed, so the
cap holds across the boundary whatever the order; a slot released before its worker
re-counted is taken off the previous key, where it still counts. (Comparing only the
new key, as a first version did, let every boundary admit a whole cap's worth more:
the new key starts at 0.) A dead worker's connections are thus still counted during
the epoch after its last one and forgotten after that: within ``2 * EPOCH_S`` (10 s).
A connection admitted while the store failed is counted at the next re-count.

Cost: the caps off, nothing; the per-worker caps, two dict operations per
connection; the node cap, two LMDB transactions (~10 µs each) and one read per connection.

What the client gets over a cap is decided by the worker: ``503`` with
``Retry-After`` and ``Connection: close``, as nginx's ``limit_conn`` answers by
default (``limit_conn_status 503``) and HAProxy's ``tcp-request`` rejections are
usually configured; docs/security.md says why not 429.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from typing import Any, Callable

from edge.errors import StoreUnavailable

#: node counters live per epoch of this many seconds; a dead worker's counts vanish within two
EPOCH_S = 5.0
#: how often the refresher looks for a new epoch (the re-count runs once per epoch)
REFRESH_S = 0.25
KEY_PREFIX = "conn:"
M_REFUSED = "connections.refused."        # + the setting's name
M_STORE_ERROR = "connections.store_error"


class Refusal(enum.Enum):
    TOTAL = "max_connections"
    PER_IP = "max_connections_per_ip"
    PER_IP_NODE = "max_connections_per_ip_node"


class Slot:
    """One admitted connection: its address and the node epoch it is counted in (None: not counted)."""

    __slots__ = ("ip", "epoch")

    def __init__(self, ip: str, epoch: int | None) -> None:
        self.ip, self.epoch = ip, epoch


def node_key(epoch: int, ip: str) -> str:
    return f"{KEY_PREFIX}{epoch}:{ip}"


class ConnectionCaps:
    """The worker's connection counters (see the module docstring). ``clock`` is injectable for tests."""

    def __init__(self, max_total: int | None, max_per_ip: int | None, max_per_ip_node: int | None,
                 store: Any = None, metrics: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_ip_node = max_per_ip_node if store is not None else None
        self.store = store
        self.clock = clock
        self._incr_metric = getattr(metrics, "incr", None)
        self.open = 0
        self.per_ip: Counter[str] = Counter()
        self.slots: set[Slot] = set()   # only with the node cap: what ``refresh`` re-counts
        self.store_failures = 0
        self._uncounted = 0             # slots admitted while the store failed
        self._epoch = self._now_epoch()

    @property
    def enabled(self) -> bool:
        return bool(self.max_total or self.max_per_ip or self.max_per_ip_node)

    def _now_epoch(self) -> int:
        return int(self.clock() // EPOCH_S)

    def admit(self, ip: str) -> tuple[Slot | None, Refusal | None]:
        """A slot for a new connection from ``ip``, or the cap it would pass."""
        if self.max_total is not None and self.open >= self.max_total:
            return None, self._refused(Refusal.TOTAL)
        if self.max_per_ip is not None and self.per_ip[ip] >= self.max_per_ip:
            return None, self._refused(Refusal.PER_IP)
        epoch = None
        if self.max_per_ip_node is not None:
            epoch = self._now_epoch()
            if epoch != self._epoch:
                self.refresh()   # carry this worker's open connections into the new epoch first
            key = node_key(epoch, ip)
            # the previous key is read *before* the increment: a worker re-counting moves its
            # connections by adding to the new key first and taking off the old one after, so
            # in this order they are seen once or twice (too high), never in neither key
            earlier = self._not_recounted(epoch, ip)
            try:
                count = self.store.incr(key, 1, ttl_s=2 * EPOCH_S)
            except StoreUnavailable:
                # fail open: a node-local store that fails is a broken disk, not an attack;
                # the slot is counted at the next re-count
                self._store_failed()
                epoch = None
                self._uncounted += 1
            else:
                if earlier is None:
                    self._store_failed()   # fail open on the previous key too (counted once per admit)
                    earlier = 0
                if count + earlier > self.max_per_ip_node:
                    self._decrement(key)
                    return None, self._refused(Refusal.PER_IP_NODE)
        slot = Slot(ip, epoch)
        self.open += 1
        self.per_ip[ip] += 1
        if self.max_per_ip_node is not None:
            self.slots.add(slot)
        return slot, None

    def release(self, slot: Slot) -> None:
        self.open -= 1
        n = self.per_ip[slot.ip] - 1
        if n > 0:
            self.per_ip[slot.ip] = n
        else:
            del self.per_ip[slot.ip]
        if self.max_per_ip_node is not None:
            self.slots.discard(slot)
            if slot.epoch is None:
                self._uncounted -= 1
            elif slot.epoch >= self._now_epoch() - 1:
                # its epoch's key is still read: the current one, or the previous one before
                # this worker re-counted (which then counts it for the whole node)
                self._decrement(node_key(slot.epoch, slot.ip))

    def refresh(self) -> bool:
        """At a new epoch, count this worker's open connections into it; True when it did."""
        if self.max_per_ip_node is None:
            return False
        epoch = self._now_epoch()
        if epoch == self._epoch and not self._uncounted:
            return False
        self._epoch = epoch
        self._uncounted = 0
        moving: dict[str, list[Slot]] = {}
        for s in self.slots:
            if s.epoch != epoch:
                moving.setdefault(s.ip, []).append(s)
        for ip, slots in moving.items():
            try:
                self.store.incr(node_key(epoch, ip), len(slots), ttl_s=2 * EPOCH_S)
            except StoreUnavailable:
                self._store_failed()
                for s in slots:
                    s.epoch = None  # tried again at the next look (one still in the previous key
                                    # stays counted there too until the epoch ends: too high, not too low)
                self._uncounted += len(slots)
                continue
            # added to the new key first, then taken off the previous one: in between the
            # node count is too high, never too low
            previous = sum(1 for s in slots if s.epoch == epoch - 1)
            if previous:
                self._decrement(node_key(epoch - 1, ip), previous)
            for s in slots:
                s.epoch = epoch
        return True

    def _not_recounted(self, epoch: int, ip: str) -> int | None:
        """Connections of ``ip`` still counted only in the previous epoch's key: those of
        workers that have not re-counted into ``epoch`` yet (or never will: dead ones).
        None when the store failed."""
        try:
            raw = self.store.get(node_key(epoch - 1, ip))
        except StoreUnavailable:
            return None
        return max(0, int(raw)) if raw is not None else 0

    def _decrement(self, key: str, amount: int = 1) -> None:
        try:
            self.store.incr(key, -amount, ttl_s=2 * EPOCH_S)
        except StoreUnavailable:
            self._store_failed()  # the key expires with its epoch: the count heals then

    def _store_failed(self) -> None:
        self.store_failures += 1
        if self._incr_metric is not None:
            self._incr_metric(M_STORE_ERROR)

    def _refused(self, why: Refusal) -> Refusal:
        if self._incr_metric is not None:
            self._incr_metric(M_REFUSED + why.value)
        return why
