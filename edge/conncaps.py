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
``REFRESH_S``). A dead worker's connections are simply not re-counted: they vanish
from the node's count at the next epoch boundary, within ``EPOCH_S``. A slot
remembers the epoch it is counted in: released in that epoch, it is decremented
there; released after the boundary but before the re-count, it is in neither key
(its old key is going away, the new one never got it), so counts stay exact. A
connection admitted while the store failed is counted at the next re-count.

Cost: the caps off, nothing; the per-worker caps, two dict operations per
connection; the node cap, two LMDB transactions (~10 µs each) per connection.

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

#: node counters live per epoch of this many seconds; a dead worker's counts vanish within one
EPOCH_S = 10.0
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
            key = node_key(epoch, ip)
            try:
                count = self.store.incr(key, 1, ttl_s=2 * EPOCH_S)
            except StoreUnavailable:
                # fail open: a node-local store that fails is a broken disk, not an attack;
                # the slot is counted at the next re-count
                self._store_failed()
                epoch = None
                self._uncounted += 1
            else:
                if count > self.max_per_ip_node:
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
            elif slot.epoch == self._now_epoch():
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
                    s.epoch = None  # tried again at the next look
                self._uncounted += len(slots)
                continue
            for s in slots:
                s.epoch = epoch
        return True

    def _decrement(self, key: str) -> None:
        try:
            self.store.incr(key, -1, ttl_s=2 * EPOCH_S)
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
