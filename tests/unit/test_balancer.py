"""Balancers and server selection (issue 9): pure, with an injected clock and random source."""

from __future__ import annotations

import random
from collections import Counter, deque

import gevent
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import parse_config
from edge.errors import ConfigError
from edge.upstream.balancer import (
    UNMEASURED_BUSY_COST,
    HashRing,
    LeastConn,
    Load,
    PeakEwmaP2C,
    Random,
    RoundRobin,
    server_identities,
)
from edge.upstream.queue import WaitQueue
from edge.app import _affinity_key
from edge.context import RequestContext
from edge.upstream.selection import (
    Affinity,
    Selector,
    ServerLoad,
    ServerSpec,
    StickyCookie,
    default_algorithm,
    selector_from_config,
)

WEIGHTS = [5, 3, 2, 1]
PICKS = 10_000


def specs(*weights, **per_index):
    """ServerSpecs with the given weights; ``per_index={i: {field: value}}`` overrides."""
    over = per_index.get("over", {})
    return [ServerSpec(f"10.0.0.{i}:80", w, **over.get(i, {})) for i, w in enumerate(weights)]


def run(sel: Selector, picks: int = PICKS, window: int = 0, latency=lambda i: 0.05, rnd_key=None) -> Counter:
    """Pick ``picks`` times at 1 ms steps; each request stays in flight for ``window`` further picks."""
    got: Counter = Counter()
    held: deque = deque()
    now = 0.0
    for n in range(picks):
        now += 0.001
        i = sel.pick(frozenset(), rnd_key(n) if rnd_key else None, now)
        sel.started(i)
        got[i] += 1
        held.append(i)
        while len(held) > window:
            j = held.popleft()
            sel.finished(j, latency(j), True, now)
    return got


def assert_shares(got: Counter, weights, tolerance: float) -> None:
    """Each server's picks within ``tolerance`` (relative) of its weight's share; 0: exact up to one round."""
    total = sum(weights)
    n = sum(got.values())
    for i, w in enumerate(weights):
        expected = n * w / total
        assert abs(got[i] - expected) <= max(tolerance * expected, w), (i, got[i], expected, dict(got))


# ---------------------------------------------------------------------------- distribution


def test_round_robin_shares_are_exact():
    got = run(Selector(specs(*WEIGHTS), "round_robin"))
    assert_shares(got, WEIGHTS, 0.0)


@pytest.mark.parametrize("window", [0, 50])
def test_least_conn_shares_follow_weights(window):
    # Idle pool (window 0): ties every time, broken by the smooth round robin: exact shares.
    # Loaded pool: in_flight/weight is levelled, so shares follow the weights too.
    got = run(Selector(specs(*WEIGHTS), "least_conn"), window=window)
    assert_shares(got, WEIGHTS, 0.0 if window == 0 else 0.1)


def test_random_shares_follow_weights():
    got = run(Selector(specs(*WEIGHTS), "random", rand=random.Random(1).random))
    assert_shares(got, WEIGHTS, 0.08)


def test_p2c_ewma_shares_follow_weights_when_latencies_are_equal():
    got = run(Selector(specs(*WEIGHTS), "p2c_ewma", rand=random.Random(2).random), window=50)
    assert_shares(got, WEIGHTS, 0.15)


def test_p2c_ewma_uniform_pool_spreads_evenly():
    got = run(Selector(specs(*[1] * 10), "p2c_ewma", rand=random.Random(3).random), window=20)
    assert_shares(got, [1] * 10, 0.1)


def test_hash_shares_of_distinct_keys_follow_weights():
    sel = Selector(specs(*WEIGHTS), "hash", affinity=(Affinity.HEADER, "X-User"))
    got = run(sel, rnd_key=lambda n: f"user-{n}")
    assert_shares(got, WEIGHTS, 0.25)  # 160 points per unit of weight: a ring is not perfectly even


def test_sticky_fallback_shares_follow_weights():
    sel = Selector(specs(*WEIGHTS), "sticky", fallback="round_robin",
                   sticky=StickyCookie.build("s", server_identities([s.authority for s in specs(*WEIGHTS)]), "k"))
    assert_shares(run(sel), WEIGHTS, 0.0)


def test_default_algorithm():
    assert default_algorithm([1, 1, 1]) == "p2c_ewma"
    assert default_algorithm([2, 1]) == "round_robin"


# ---------------------------------------------------------------------------- least connections


def test_least_conn_follows_in_flight():
    load = Load(3)
    lc = LeastConn([1, 1, 1], [0, 1, 2], load)
    load.in_flight[:] = [3, 1, 2]
    assert lc.pick() == 1
    load.in_flight[:] = [0, 1, 2]
    assert lc.pick() == 0
    assert lc.pick({0}) == 1
    assert lc.pick({0, 1, 2}) is None


def test_least_conn_weighs_in_flight():
    load = Load(2)
    lc = LeastConn([4, 1], [0, 1], load)
    load.in_flight[:] = [3, 1]   # 3/4 < 1/1: the heavy server still has room
    assert lc.pick() == 0
    load.in_flight[:] = [5, 1]   # 5/4 > 1/1
    assert lc.pick() == 1


# ---------------------------------------------------------------------------- P2C over peak EWMA


def two_server_p2c(rand=None):
    load = Load(2, decay=10.0, failure_cost=2.0)
    return load, PeakEwmaP2C([1, 1], [0, 1], load, rand or random.Random(0).random)


def test_p2c_prefers_the_faster_server():
    load, p2c = two_server_p2c()
    load.started(0); load.finished(0, 0.100, True, now=1.0)   # slow
    load.started(1); load.finished(1, 0.010, True, now=1.0)   # fast
    picks = Counter(p2c.pick(frozenset(), None, 1.0 + k * 1e-4) for k in range(1000))
    assert picks == {1: 1000}  # with two servers both are always the two choices


def test_p2c_counts_in_flight_in_the_cost():
    load, p2c = two_server_p2c()
    load.started(0); load.finished(0, 0.010, True, now=1.0)
    load.started(1); load.finished(1, 0.030, True, now=1.0)
    for _ in range(3):
        load.started(0)   # 0.010 x 4 > 0.030 x 1
    assert p2c.pick(frozenset(), None, 1.0) == 1


def test_p2c_decays_an_old_peak_so_the_slow_server_is_probed_again():
    load, p2c = two_server_p2c()
    load.started(0); load.finished(0, 0.100, True, now=0.0)     # slow, measured long ago
    load.started(1); load.finished(1, 0.010, True, now=100.0)   # fast, just measured
    assert p2c.cost(0, 100.0) < p2c.cost(1, 100.0)             # 0.1 x e^-10 < 0.01
    assert p2c.pick(frozenset(), None, 100.0) == 0
    assert p2c.pick(frozenset(), None, 1.0) == 1                # at t=1 the peak was still fresh


def test_peak_ewma_takes_a_peak_at_once_and_a_drop_gradually():
    load = Load(1, decay=10.0)
    load.finished(0, 0.010, True, now=0.0)
    load.finished(0, 0.500, True, now=0.1)
    assert load.estimate[0] == 0.5                      # peak: at once
    load.finished(0, 0.010, True, now=0.2)
    assert 0.49 < load.estimate[0] < 0.5                # 0.1 s of a 10 s time constant: barely moved
    load.finished(0, 0.010, True, now=30.2)
    assert load.estimate[0] < 0.04                      # after 3 time constants: mostly the new level
    assert load.latency(0, 30.2) == load.estimate[0]
    assert load.latency(0, 40.2) < load.estimate[0]


def test_unmeasured_server_is_probed_once_then_waits_for_its_answer():
    load, p2c = two_server_p2c()
    load.started(0); load.finished(0, 0.010, True, now=1.0)
    assert p2c.pick(frozenset(), None, 1.0) == 1        # never measured and idle: costs 0
    load.started(1)
    assert p2c.cost(1, 1.0) == UNMEASURED_BUSY_COST     # its probe is in flight: not a burst
    assert p2c.pick(frozenset(), None, 1.0) == 0
    load.finished(1, 0.002, True, now=1.1)
    assert p2c.pick(frozenset(), None, 1.1) == 1        # measured faster


def test_failure_counts_at_least_the_failure_cost():
    load = Load(1, decay=10.0, failure_cost=2.0)
    load.started(0)
    load.finished(0, 0.0001, False, now=1.0)            # a refused connect is fast, not good
    assert load.estimate[0] == 2.0 and load.in_flight[0] == 0


def test_p2c_skips_excluded_servers():
    load = Load(5)
    p2c = PeakEwmaP2C([1] * 5, range(5), load, random.Random(5).random)
    for now in range(200):
        assert p2c.pick({0, 1, 2, 3}, None, float(now)) == 4
        assert p2c.pick({0, 2}, None, float(now)) in (1, 3, 4)
    assert p2c.pick({0, 1, 2, 3, 4}, None, 0.0) is None


def test_random_skips_excluded_servers():
    r = Random([5, 1, 1], [0, 1, 2], random.Random(9).random)
    assert {r.pick({0, 1}) for _ in range(100)} == {2}
    assert r.pick({0, 1, 2}) is None


# ---------------------------------------------------------------------------- consistent hashing


def ring(authorities, weights=None):
    weights = weights or [1] * len(authorities)
    members = list(range(len(authorities)))
    return HashRing(weights, members, server_identities(authorities), RoundRobin(weights, members))


def mapping(r: HashRing, authorities, keys) -> list[str]:
    return [authorities[r.owner(k)] for k in keys]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=2, max_value=12), which=st.integers(min_value=0, max_value=11),
       salt=st.integers(min_value=0, max_value=10**6))
def test_ring_remaps_about_one_nth_on_remove_and_add(n, which, salt):
    addrs = [f"10.1.{salt % 250}.{i}:8080" for i in range(n + 1)]
    keys = [f"client-{salt}-{k}" for k in range(3000)]
    before = mapping(ring(addrs[:n]), addrs, keys)
    # Remove one of N: exactly the keys it held move (to the others), about 1/N of them.
    gone = addrs[which % n]
    rest = [a for a in addrs[:n] if a != gone]
    after = mapping(ring(rest), rest, keys)
    moved = [k for k, (a, b) in enumerate(zip(before, after)) if a != b]
    assert all(before[k] == gone for k in moved)
    assert all(b != gone for b in after)
    assert 0.45 / n <= len(moved) / len(keys) <= 1.7 / n
    # Add one to N: only keys that now land on the new server move, about 1/(N+1) of them.
    added = mapping(ring(addrs[: n + 1]), addrs, keys)
    moved = [k for k, (a, b) in enumerate(zip(before, added)) if a != b]
    assert all(added[k] == addrs[n] for k in moved)
    assert 0.45 / (n + 1) <= len(moved) / len(keys) <= 1.7 / (n + 1)


def test_ring_does_not_depend_on_list_order_and_walks_past_excluded():
    addrs = ["a:1", "b:1", "c:1"]
    r1, r2 = ring(addrs), ring(list(reversed(addrs)))
    keys = [f"k{k}" for k in range(200)]
    assert mapping(r1, addrs, keys) == mapping(r2, list(reversed(addrs)), keys)
    for k in keys:
        owner = r1.owner(k)
        nxt = r1.pick({owner}, k)
        assert nxt is not None and nxt != owner
        assert r1.pick({owner}, k) == nxt                       # stable: the next server on the ring
        assert r1.pick({0, 1, 2}, k) is None


def test_hash_without_key_uses_the_fallback():
    sel = Selector(specs(1, 1), "hash", fallback="round_robin", affinity=(Affinity.CLIENT_IP, None))
    assert [sel.pick(frozenset(), None, 0.0) for _ in range(4)] == [0, 1, 0, 1]
    assert len({sel.pick(frozenset(), "198.51.100.7", 0.0) for _ in range(20)}) == 1


# ---------------------------------------------------------------------------- selection: groups and limits


def test_backup_only_when_every_primary_is_excluded():
    sel = Selector(specs(1, 1, 1, over={2: {"backup": True}}), "round_robin")
    assert {sel.pick(frozenset(), None, 0.0) for _ in range(20)} == {0, 1}
    assert sel.pick({0}, None, 0.0) == 1
    assert sel.pick({0, 1}, None, 0.0) == 2
    assert sel.pick({0, 1, 2}, None, 0.0) is None


@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn", "p2c_ewma", "random"])
def test_drain_and_weight_zero_get_no_new_requests(algorithm):
    sel = Selector(specs(1, 0, 1, 1, over={2: {"drain": True}}), algorithm, rand=random.Random(4).random)
    got = run(sel, picks=500, window=3)
    assert set(got) == {0, 3}
    assert sel.pick({0, 3}, None, 1.0) is None


def test_max_conns_excludes_a_full_server_and_reopens_it():
    sel = Selector(specs(1, 1, over={0: {"max_conns": 2}, 1: {"max_conns": 1}}), "round_robin")
    picked = []
    for _ in range(3):
        i = sel.pick(frozenset(), None, 0.0)
        sel.started(i)
        picked.append(i)
    assert sorted(picked) == [0, 0, 1]
    assert sel.pick(frozenset(), None, 0.0) is None
    assert sel.blocked(frozenset())          # full, not down: waiting can help
    assert not sel.blocked({0, 1})           # both already tried: waiting cannot
    assert sel.finished(1, 0.01, True, 1.0)  # a slot opened
    assert sel.pick(frozenset(), None, 1.0) == 1
    sel.started(1)
    assert sel.finished(0, 0.01, True, 1.0) and sel.in_flight(0) == 1   # 0 was full at 2: a slot opened
    assert not sel.finished(0, 0.01, True, 1.0)                           # 0 was not full: nothing to wake
    assert sel.pick(frozenset(), None, 1.0) == 0


def test_backup_takes_overflow_when_primaries_are_full():
    sel = Selector(specs(1, 1, over={0: {"max_conns": 1}, 1: {"backup": True}}), "round_robin")
    assert sel.pick(frozenset(), None, 0.0) == 0
    sel.started(0)
    assert sel.pick(frozenset(), None, 0.0) == 1
    sel.finished(0, 0.01, True, 0.1)
    assert sel.pick(frozenset(), None, 0.1) == 0


def test_state_reports_roles_load_and_latency():
    sel = Selector(specs(1, 1, 0, 1, over={1: {"backup": True, "max_conns": 1}, 3: {"drain": True}}), "least_conn")
    sel.started(1)
    sel.started(0)
    sel.finished(0, 0.02, True, 5.0)
    assert sel.state(5.0) == (
        ServerLoad("10.0.0.0:80", "primary", 0, 0.02, False),
        ServerLoad("10.0.0.1:80", "backup", 1, None, True),
        ServerLoad("10.0.0.2:80", "off", 0, None, False),
        ServerLoad("10.0.0.3:80", "off", 0, None, False),
    )


def test_in_flight_never_goes_negative():
    sel = Selector(specs(1), "least_conn")
    sel.finished(0, 0.01, True, 0.0)
    assert sel.in_flight(0) == 0


def test_selector_refuses_inconsistent_settings():
    with pytest.raises(ValueError):
        Selector(specs(1), "hash")
    with pytest.raises(ValueError):
        Selector(specs(1), "sticky")
    with pytest.raises(ValueError):
        Selector(specs(1), "fastest")
    with pytest.raises(ValueError):
        ServerSpec("a:1", -1)


# ---------------------------------------------------------------------------- sticky sessions


def sticky_selector(*weights, secret="k", **over):
    sp = specs(*weights, **over)
    cookie = StickyCookie.build("srv", server_identities([s.authority for s in sp]), secret, max_age=600)
    return Selector(sp, "sticky", fallback="round_robin", sticky=cookie), cookie


def test_sticky_cookie_pins_and_falls_back():
    sel, cookie = sticky_selector(1, 1, 1)
    v1 = cookie.values[1]
    assert all(sel.pick(frozenset(), v1, 0.0) == 1 for _ in range(10))
    assert cookie.set_cookie_for(1, v1) is None                 # already pinned: no new cookie
    # Unknown, invalid or excluded server: the fallback balancer, and a cookie for the new server.
    for key in ("nope", "", "10.0.0.1:80"):
        assert {sel.pick(frozenset(), key, 0.0) for _ in range(6)} == {0, 1, 2}
    i = sel.pick({1}, v1, 0.0)
    assert i != 1
    assert cookie.set_cookie_for(i, v1) == cookie.fields[i]
    assert cookie.fields[i] == f"srv={cookie.values[i]}; Max-Age=600; Path=/; HttpOnly; SameSite=Lax"


def test_sticky_cookie_hides_the_address_and_depends_on_the_secret():
    _, a = sticky_selector(1, 1, secret="one")
    _, b = sticky_selector(1, 1, secret="two")
    assert a.values[0] != b.values[0] and len(set(a.values)) == 2
    assert all("10.0.0" not in v and ":" not in v for v in a.values)


def test_sticky_cookie_to_a_drained_or_backup_server_is_not_honoured_while_primaries_serve():
    sel, cookie = sticky_selector(1, 1, 1, over={1: {"drain": True}, 2: {"backup": True}})
    assert sel.pick(frozenset(), cookie.values[1], 0.0) == 0
    assert sel.pick(frozenset(), cookie.values[2], 0.0) == 0
    assert sel.pick({0}, cookie.values[2], 0.0) == 2


def test_sticky_cookie_refuses_bad_attributes():
    with pytest.raises(ValueError):
        StickyCookie.build("bad name", ["a:1"], "k")
    with pytest.raises(ValueError):
        StickyCookie.build("s", ["a:1"], "k", samesite="None", secure=False)


@pytest.mark.parametrize("affinity, expected", [
    ((Affinity.CLIENT_IP, None), "203.0.113.9"),
    ((Affinity.PATH, None), "/a/b"),
    ((Affinity.HEADER, "x-tenant"), "acme"),
    ((Affinity.HEADER, "X-Missing"), None),
    ((Affinity.COOKIE, "sid"), "42"),
    ((Affinity.STICKY, "edge_server"), "abc"),
    ((Affinity.COOKIE, "none"), None),
])
def test_affinity_key_comes_from_the_request(affinity, expected):
    ctx = RequestContext("GET", "/a/b", "q=1", [("X-Tenant", "acme"), ("Cookie", "sid=42; edge_server=abc")],
                         client_ip="203.0.113.9", peer_ip="10.0.0.1")
    assert _affinity_key(ctx, affinity) == expected


# ---------------------------------------------------------------------------- config


def parse_config_text(text: str):
    return parse_config(yaml.safe_load(text))


def pool_cfg(text: str):
    return parse_config(yaml.safe_load(text)).upstreams["app"]


def test_config_builds_each_algorithm():
    base = "upstreams:\n  app:\n    servers: ['127.0.0.1:1', {host: 127.0.0.1, port: 2, weight: 3}]\n"
    assert selector_from_config("app", pool_cfg(base)).algorithm == "round_robin"   # weights differ
    for algo in ("least_conn", "p2c_ewma", "random", "round_robin"):
        assert selector_from_config("app", pool_cfg(base + f"    balance: {algo}\n")).algorithm == algo
    s = selector_from_config("app", pool_cfg(base + "    balance: hash\n    hash: {key: header, name: X-User}\n"))
    assert s.affinity == (Affinity.HEADER, "X-User")
    s = selector_from_config("app", pool_cfg(base + "    balance: sticky\n"))
    assert s.affinity == (Affinity.STICKY, "edge_server") and s.sticky.name == "edge_server"
    s = selector_from_config("app", pool_cfg(base + "    balance: sticky\n    sticky: {cookie: pin, ttl: 1h, secure: true}\n"))
    assert s.sticky.fields[0].startswith("pin=") and "Max-Age=3600" in s.sticky.fields[0] and "Secure" in s.sticky.fields[0]


@pytest.mark.parametrize("extra, message", [
    ("    balance: hash\n", "hash: required"),
    ("    balance: hash\n    hash: {key: header}\n", "name: required"),
    ("    balance: hash\n    hash: {key: path, name: x}\n", "only for key"),
    ("    hash: {key: path}\n", "only with balance 'hash'"),
    ("    sticky: {cookie: s}\n", "only with balance 'sticky'"),
    ("    balance: sticky\n    sticky: {cookie: 'a b'}\n", "token"),
    ("    queue: {size: 2, timeout: 1s}\n", "max_conns"),
    ("    balance: sticky\n    sticky: {ttl: 500ms}\n", "at least 1s"),
    ("    balance: sticky\n    sticky: {samesite: None}\n", "secure"),
])
def test_config_refuses_inconsistent_balancing(extra, message):
    with pytest.raises(ConfigError) as e:
        parse_config_text("upstreams:\n  app:\n    servers: ['127.0.0.1:1']\n" + extra)
    assert message in str(e.value)


def test_config_accepts_server_flags():
    cfg = pool_cfg("upstreams:\n  app:\n    servers:\n      - {host: 127.0.0.1, port: 1, max_conns: 4}\n"
                   "      - {host: 127.0.0.1, port: 2, backup: true}\n      - {host: 127.0.0.1, port: 3, weight: 0}\n"
                   "      - {host: 127.0.0.1, port: 4, drain: true}\n    queue: {size: 8, timeout: 500ms}\n")
    assert [(s.max_conns, s.backup, s.weight, s.drain) for s in cfg.servers] == [
        (4, False, 1, False), (0, True, 1, False), (0, False, 0, False), (0, False, 1, True)]
    assert (cfg.queue.size, cfg.queue.timeout) == (8, 0.5)


# ---------------------------------------------------------------------------- the wait queue (gevent)


def test_wait_queue_is_bounded_fifo_and_times_out():
    q = WaitQueue(size=2, timeout=5.0)
    results = {}

    def waiter(name, timeout):
        results[name] = q.wait(timeout)

    a = gevent.spawn(waiter, "a", 5.0)
    b = gevent.spawn(waiter, "b", 5.0)
    gevent.sleep(0)
    assert len(q) == 2
    assert q.wait(5.0) is None            # full: no wait at all
    q.wake_one()
    a.join(1)
    assert results == {"a": True} and len(q) == 1
    b.kill()
    assert len(q) == 0                     # a killed waiter leaves the line
    assert q.wait(0.01) is False and len(q) == 0


def test_release_without_verdict_leaves_the_latency_estimate_alone():
    # a client that aborts its upload (or a refused body) must not make a healthy backend look slow
    from edge.upstream.balancer import Load

    load = Load(2, 10.0, 1.0)
    load.in_flight[0] = 1
    load.finished(0, 0.0, None, 100.0)
    assert load.in_flight[0] == 0 and load.latency(0, 100.0) is None
    load.in_flight[0] = 1
    load.finished(0, 0.02, True, 101.0)
    load.in_flight[0] = 1
    load.finished(0, 5.0, None, 102.0)
    assert load.latency(0, 102.0) == pytest.approx(0.02, rel=0.2)
