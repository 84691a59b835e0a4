"""Balancer and pool logic (pure; no sockets)."""

import pytest

from edge.upstream.balancer import RoundRobin
from edge.upstream.pool import ConnectionPool, PooledConnection


class FakeSock:
    closed = False

    def close(self):
        self.closed = True


def test_round_robin_uniform_cycles_and_skips_excluded():
    rr = RoundRobin([1, 1, 1])
    assert [rr.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert rr.pick({0}) == 1
    assert rr.pick({0, 1, 2}) is None


def test_smooth_weighted_round_robin_interleaves():
    rr = RoundRobin([5, 1, 1])
    picks = [rr.pick() for _ in range(7)]
    assert picks.count(0) == 5 and picks.count(1) == 1 and picks.count(2) == 1
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # nginx's smooth sequence, not 0,0,0,0,0,1,2


def test_round_robin_refuses_bad_weights():
    with pytest.raises(ValueError):
        RoundRobin([])
    with pytest.raises(ValueError):
        RoundRobin([1, 0])


def test_pool_is_lifo_and_expires_idle_connections():
    pool = ConnectionPool(max_idle=2, idle_timeout=10, max_requests=100)
    a, b = PooledConnection(FakeSock(), pool), PooledConnection(FakeSock(), pool)
    pool.put(a, now=0)
    pool.put(b, now=1)
    assert pool.get(now=2) is b
    assert pool.get(now=11) is None  # a went idle at 0: past the 10 s idle timeout
    assert a.sock.closed


def test_pool_bounds_idle_and_retires_old_connections():
    pool = ConnectionPool(max_idle=1, idle_timeout=10, max_requests=3)
    a, b = PooledConnection(FakeSock(), pool), PooledConnection(FakeSock(), pool)
    pool.put(a, 0)
    pool.put(b, 0)
    assert b.sock.closed and pool.idle_count() == 1
    c = PooledConnection(FakeSock(), pool)
    c.requests = 3
    pool.get(0)
    pool.put(c, 0)
    assert c.sock.closed  # served max_requests: retired


def test_backend_keepalive_hint_expires_connection():
    pool = ConnectionPool(max_idle=4, idle_timeout=60, max_requests=100)
    a = PooledConnection(FakeSock(), pool)
    a.expires = 5
    pool.put(a, 0)
    assert pool.get(6) is None and a.sock.closed
