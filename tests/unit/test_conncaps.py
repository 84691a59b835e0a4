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
    more = [live.admit("192.0.2.1")[0] for _ in range(2)]
    assert all(more) and live.admit("192.0.2.1")[1] is Refusal.PER_IP_NODE
    live.release(kept)
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 2


def test_release_after_the_boundary_before_the_recount_counts_nowhere():
    clock, st = Clock(), store()
    w = ConnectionCaps(None, None, 5, st, clock=clock)
    a, b = w.admit("192.0.2.1")[0], w.admit("192.0.2.1")[0]
    clock.t += EPOCH_S
    w.release(a)           # counted in the old epoch's key, which is going away
    w.refresh()
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 1
    w.release(b)
    assert int(st.get(node_key(int(clock() // EPOCH_S), "192.0.2.1"))) == 0


class FailingStore:
    def __init__(self) -> None:
        self.down = True
        self.inner = MemoryStore()

    def incr(self, key, amount=1, ttl_s=None):
        if self.down:
            raise StoreUnavailable("down")
        return self.inner.incr(key, amount, ttl_s=ttl_s)


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
