"""edge.conncaps: the three caps, and node counts that heal when a worker dies (injected clock)."""

from __future__ import annotations

import pytest

from edge.conncaps import EPOCH_S, ConnectionCaps, Refusal, node_key
from edge.errors import StoreUnavailable
from edge.store.memory import MemoryStore


class Clock:
    def __init__(self, t: float = 1000 * EPOCH_S) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_total_cap():
    caps = ConnectionCaps(2, None, None)
    a, _ = caps.admit("192.0.2.1")
    b, _ = caps.admit("192.0.2.2")
    assert caps.admit("192.0.2.3") == (None, Refusal.TOTAL)
    caps.release(a)
    assert caps.admit("192.0.2.3")[1] is None
    assert caps.open == 2


def test_per_ip_cap_leaves_other_addresses_alone():
    caps = ConnectionCaps(None, 2, None)
    slots = [caps.admit("192.0.2.1")[0] for _ in range(2)]
    assert caps.admit("192.0.2.1") == (None, Refusal.PER_IP)
    assert caps.admit("192.0.2.2")[1] is None
    caps.release(slots[0])
    assert caps.admit("192.0.2.1")[1] is None
    for s in slots[1:]:
        caps.release(s)
    assert caps.per_ip["192.0.2.1"] == 1 and "192.0.2.9" not in caps.per_ip


def test_disabled_caps():
    assert not ConnectionCaps(None, None, None).enabled
    assert not ConnectionCaps(None, None, 3, store=None).enabled   # no store: no node cap


def store():
    return MemoryStore()


def test_node_cap_is_shared_by_workers():
    clock, st = Clock(), store()
    w1, w2 = ConnectionCaps(None, None, 3, st, clock=clock), ConnectionCaps(None, None, 3, st, clock=clock)
    s = [w1.admit("192.0.2.1")[0], w2.admit("192.0.2.1")[0], w2.admit("192.0.2.1")[0]]
    assert all(s)
    assert w1.admit("192.0.2.1") == (None, Refusal.PER_IP_NODE)
    assert w2.admit("192.0.2.2")[1] is None
    w2.release(s[2])
    assert w1.admit("192.0.2.1")[1] is None
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 3


def test_refused_attempt_does_not_leave_a_count():
    clock, st = Clock(), store()
    w = ConnectionCaps(None, None, 1, st, clock=clock)
    w.admit("192.0.2.1")
    for _ in range(5):
        assert w.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 1


def test_live_connections_are_recounted_each_epoch_and_a_dead_worker_is_forgotten():
    clock, st = Clock(), store()
    live, dead = ConnectionCaps(None, None, 3, st, clock=clock), ConnectionCaps(None, None, 3, st, clock=clock)
    kept = live.admit("192.0.2.1")[0]
    dead.admit("192.0.2.1")
    dead.admit("192.0.2.1")
    assert live.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE     # 3 open on the node
    # the second worker dies without releasing; the next epoch begins
    clock.t += EPOCH_S
    assert live.refresh() is True
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 1   # only the live connection
    assert live.refresh() is False                                         # once per epoch
    # during that epoch the dead worker's connections still count (it might only be late to
    # re-count); one epoch later they are forgotten: within 2 * EPOCH_S of its death
    assert live.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE
    clock.t += EPOCH_S
    assert live.refresh() is True
    more = [live.admit("192.0.2.1")[0] for _ in range(2)]
    assert all(more) and live.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE
    live.release(kept)
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 2


def test_release_after_the_boundary_before_the_recount_leaves_the_previous_key():
    clock, st = Clock(), store()
    w = ConnectionCaps(None, None, 5, st, clock=clock)
    a, b = w.admit("192.0.2.1")[0], w.admit("192.0.2.1")[0]
    old = int(clock() // EPOCH_S)
    clock.t += EPOCH_S
    w.release(a)           # counted in the previous epoch's key, still read until this worker re-counts
    assert int(st.get(node_key(old, "192.0.2.1"))) == 1
    w.refresh()            # moves b: into the new key, out of the previous one
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 1
    assert int(st.get(node_key(old, "192.0.2.1"))) == 0
    w.release(b)
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 0


def test_node_cap_holds_across_epoch_boundaries_before_workers_recount():
    # issue 11 review: the new epoch's key started at 0, so until each worker re-counted
    # (up to REFRESH_S later) a cap of 10 let 20, then 30, then 40 connections be open
    clock, st = Clock(), store()
    ip, cap = "192.0.2.1", 10
    workers = [ConnectionCaps(None, None, cap, st, clock=clock) for _ in range(3)]
    held: list[tuple[ConnectionCaps, object]] = []

    def fill(order):
        for w in order:
            for _ in range(cap):
                slot, why = w.admit(ip)
                if slot is not None:
                    held.append((w, slot))
                else:
                    assert why is Refusal.PER_IP_NODE

    fill(workers[:2])
    assert len(held) == cap
    for boundary in range(5):
        clock.t += EPOCH_S
        # no refresher has run yet; workers take turns, some never re-counted before admitting
        fill(workers[boundary % 3:] + workers[:boundary % 3])
        assert len(held) == cap, boundary
        if boundary % 2:
            for w in workers:
                w.refresh()
            assert int(st.get(node_key(int(clock() // EPOCH_S), ip))) == cap
        # a connection closed before its worker re-counted makes room for exactly one
        w, slot = held.pop(0)
        w.release(slot)
        fill(workers)
        assert len(held) == cap, boundary


class FailingStore:
    def __init__(self) -> None:
        self.down = True
        self.inner = MemoryStore()

    def incr(self, key, amount=1, ttl_s=None):
        if self.down:
            raise StoreUnavailable("down")
        return self.inner.incr(key, amount, ttl_s=ttl_s)

    def get(self, key):
        if self.down:
            raise StoreUnavailable("down")
        return self.inner.get(key)


def test_store_failure_admits_and_counts_the_slot_later():
    clock, st = Clock(), FailingStore()
    w = ConnectionCaps(None, None, 1, st, clock=clock)
    assert w.admit("192.0.2.1")[1] is None
    assert w.admit("192.0.2.1")[1] is None        # fail open
    assert w.store_failures == 2
    st.down = False
    assert w.refresh() is True                    # the uncounted slots are counted now
    assert int(st.inner.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 2
    assert w.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE


def test_config_caps_off_by_default_and_max_connections_below_worker_connections():
    from edge.config import parse_config
    from edge.errors import ConfigError
    s = parse_config({}).server
    assert (s.max_connections, s.max_connections_per_ip, s.max_connections_per_ip_node) == (None, None, None)
    with pytest.raises(ConfigError, match=r"x.yaml: server.max_connections: must be below worker_connections \(100\)"):
        parse_config({"server": {"worker_connections": 100, "max_connections": 100}}, "x.yaml")
    with pytest.raises(ConfigError, match="server.max_connections_per_ip"):
        parse_config({"server": {"max_connections_per_ip": 0}}, "x.yaml")
