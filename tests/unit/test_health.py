"""Upstream health (edge.upstream.health): every transition of both tables, with an injected clock;
the shared state in a memory store (edge.upstream.shared_state, edge.upstream.checker.sync_once)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from edge.config import UpstreamConfig
from edge.store.memory import MemoryStore
from edge.upstream import shared_state as shared
from edge.upstream.health import (
    ACTIVE_TABLE,
    OUTLIER_TABLE,
    Active,
    ActiveStatus,
    Event,
    IllegalTransition,
    Outcome,
    Outlier,
    OutlierPolicy,
    PoolHealth,
    Probe,
    active_next,
    active_step,
    metric_label,
    outlier_next,
)

# ----------------------------------------------------------------------------- active table

ACTIVE_EXPECTED = {
    (Active.HEALTHY, Probe.PASS): Active.HEALTHY,
    (Active.HEALTHY, Probe.FAIL): Active.HEALTHY,
    (Active.HEALTHY, Probe.FALL): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.PASS): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.FAIL): Active.UNHEALTHY,
    (Active.UNHEALTHY, Probe.RISE): Active.HEALTHY,
}


@pytest.mark.parametrize(("pair", "after"), ACTIVE_EXPECTED.items(), ids=lambda v: str(v))
def test_active_transition(pair, after):
    assert active_next(*pair) is after


def test_active_table_is_exactly_the_expected_one():
    assert ACTIVE_TABLE == ACTIVE_EXPECTED


@pytest.mark.parametrize("pair", [(Active.HEALTHY, Probe.RISE), (Active.UNHEALTHY, Probe.FALL)])
def test_active_illegal_pair_names_state_and_event(pair):
    with pytest.raises(IllegalTransition, match=f"{pair[0].name}.*{pair[1].name}"):
        active_next(*pair)


def run_probes(results, rise=2, fall=3, start=ActiveStatus()):
    status, states = start, []
    for t, passed in enumerate(results, 1):
        status = active_step(status, passed, rise, fall, float(t), "" if passed else "status 500")
        states.append(status.state)
    return status, states


def test_fall_consecutive_failures_mark_down_at_the_fall_th():
    status, states = run_probes([False, False, False], fall=3)
    assert states == [Active.HEALTHY, Active.HEALTHY, Active.UNHEALTHY]
    assert status.since == 3.0 and status.error == "status 500" and status.streak == 0


def test_a_pass_resets_the_failure_run():
    _, states = run_probes([False, False, True, False, False], fall=3)
    assert Active.UNHEALTHY not in states


def test_rise_consecutive_passes_bring_back_and_a_failure_restarts_the_run():
    down = ActiveStatus(Active.UNHEALTHY, 0, 0.0)
    _, states = run_probes([True, False, True, True], rise=2, start=down)
    assert states == [Active.UNHEALTHY, Active.UNHEALTHY, Active.UNHEALTHY, Active.HEALTHY]


def test_rise_and_fall_of_one_flip_at_once():
    status, states = run_probes([False, True], rise=1, fall=1)
    assert states == [Active.UNHEALTHY, Active.HEALTHY]


# ----------------------------------------------------------------------------- outlier table

O, E = Outlier, Event
OUTLIER_EXPECTED = {
    (O.HEALTHY, E.SUCCESS): O.HEALTHY, (O.HEALTHY, E.FAILURE): O.HEALTHY, (O.HEALTHY, E.TRIP): O.EJECTED,
    (O.HEALTHY, E.HOLD): O.EJECTED, (O.HEALTHY, E.LOST): O.HEALTHY, (O.HEALTHY, E.RECOVERED): O.HEALTHY,
    (O.EJECTED, E.SUCCESS): O.EJECTED, (O.EJECTED, E.FAILURE): O.EJECTED, (O.EJECTED, E.LOST): O.EJECTED,
    (O.EJECTED, E.TRIP): O.EJECTED, (O.EJECTED, E.HOLD): O.EJECTED, (O.EJECTED, E.EXPIRE): O.HALF_OPEN,
    (O.EJECTED, E.RECOVERED): O.HEALTHY,
    (O.HALF_OPEN, E.PICK): O.TRIAL, (O.HALF_OPEN, E.SUCCESS): O.HEALTHY, (O.HALF_OPEN, E.FAILURE): O.EJECTED,
    (O.HALF_OPEN, E.TRIP): O.EJECTED, (O.HALF_OPEN, E.HOLD): O.EJECTED, (O.HALF_OPEN, E.LOST): O.HALF_OPEN,
    (O.HALF_OPEN, E.RECOVERED): O.HEALTHY,
    (O.TRIAL, E.SUCCESS): O.HEALTHY, (O.TRIAL, E.FAILURE): O.EJECTED, (O.TRIAL, E.TRIP): O.EJECTED,
    (O.TRIAL, E.HOLD): O.EJECTED, (O.TRIAL, E.LOST): O.HALF_OPEN, (O.TRIAL, E.EXPIRE): O.HALF_OPEN,
    (O.TRIAL, E.RECOVERED): O.HEALTHY,
}
ILLEGAL = [p for p in itertools.product(Outlier, Event) if p not in OUTLIER_EXPECTED]


@pytest.mark.parametrize(("pair", "after"), OUTLIER_EXPECTED.items(), ids=lambda v: str(v))
def test_outlier_transition(pair, after):
    assert outlier_next(*pair) is after


def test_outlier_table_is_exactly_the_expected_one():
    assert OUTLIER_TABLE == OUTLIER_EXPECTED


@pytest.mark.parametrize("pair", ILLEGAL, ids=str)
def test_outlier_illegal_pair_names_state_and_event(pair):
    with pytest.raises(IllegalTransition, match=f"{pair[0].name}.*{pair[1].name}"):
        outlier_next(*pair)


def test_illegal_pairs_are_the_expected_ones():
    assert set(ILLEGAL) == {(O.HEALTHY, E.EXPIRE), (O.HEALTHY, E.PICK), (O.EJECTED, E.PICK),
                            (O.HALF_OPEN, E.EXPIRE), (O.TRIAL, E.PICK)}


# ----------------------------------------------------------------------------- PoolHealth


class Counter:
    def __init__(self):
        self.names = []

    def incr(self, name, count=1):
        self.names.append(name)


POLICY = OutlierPolicy(consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=35.0, max_ejected_percent=50)


def pool(n=4, policy=POLICY, on_5xx=(502, 503)):
    return PoolHealth("api", [f"10.0.0.{i}:80" for i in range(n)], policy, on_5xx, Counter(), trial_patience_s=5.0)


def fail(h, i, times, now, outcome=Outcome.CONNECT_FAILURE):
    for _ in range(times):
        h.picked(i, now)
        h.observe(i, outcome, now, 0.01, "refused")


def test_consecutive_failures_eject_for_the_base_time():
    h = pool()
    fail(h, 1, 2, now=100.0)
    assert h.excluded(100.0) == frozenset() and h.state_of(1) is Outlier.HEALTHY
    fail(h, 1, 1, now=100.0)
    assert h.state_of(1) is Outlier.EJECTED and h.excluded(100.0) == {1}
    assert h.excluded(109.9) == {1}
    assert h.metrics.names == ["upstream.api.10_0_0_1_80.ejected"]
    (change,) = h.take_changes()
    assert (change.index, change.until, change.count, change.reason) == (1, 110.0, 1, "refused")


@pytest.mark.parametrize("outcome", [Outcome.CONNECT_FAILURE, Outcome.TIMEOUT, Outcome.SERVER_ERROR])
def test_every_failure_kind_counts(outcome):
    h = pool()
    fail(h, 0, 3, 0.0, outcome)
    assert h.state_of(0) is Outlier.EJECTED


def test_a_success_resets_the_run_and_costs_no_shared_write():
    h = pool()
    fail(h, 0, 2, 0.0)
    h.picked(0, 0.0)
    h.observe(0, Outcome.SUCCESS, 0.0, 0.01)
    fail(h, 0, 2, 0.0)
    assert h.state_of(0) is Outlier.HEALTHY
    assert h.take_changes() == []


def test_no_verdict_counts_neither_way():
    h = pool()
    fail(h, 0, 2, 0.0)
    fail(h, 0, 1, 0.0, Outcome.NO_VERDICT)
    fail(h, 0, 1, 0.0)
    assert h.state_of(0) is Outlier.EJECTED


def test_outcome_of_status_follows_on_5xx():
    h = pool(on_5xx=(503,))
    assert h.outcome_of(503) is Outcome.SERVER_ERROR
    assert h.outcome_of(500) is Outcome.SUCCESS and h.outcome_of(200) is Outcome.SUCCESS


def test_zero_consecutive_failures_disables_ejection():
    h = pool(policy=OutlierPolicy(0, 10.0, 35.0, 100))
    fail(h, 0, 50, 0.0)
    assert h.state_of(0) is Outlier.HEALTHY


def test_half_open_after_the_ejection_then_one_trial_decides_success():
    h = pool()
    fail(h, 2, 3, now=0.0)
    assert h.excluded(10.0) == frozenset()            # over: half-open, offered again
    assert h.state_of(2) is Outlier.HALF_OPEN
    h.picked(2, 10.0)                                 # the trial
    assert h.state_of(2) is Outlier.TRIAL
    assert h.excluded(10.0) == {2}                    # nothing else while the trial is in flight
    h.observe(2, Outcome.SUCCESS, 10.5, 0.5)
    assert h.state_of(2) is Outlier.HEALTHY and h.excluded(10.5) == frozenset()
    changes = h.take_changes()
    assert [(c.index, c.until) for c in changes] == [(2, 0.0)]   # shared: back in


def test_failed_trial_ejects_longer_then_grows_to_the_cap():
    h = pool()
    fail(h, 0, 3, now=0.0)                            # 10 s
    seen = []
    now = 0.0
    for _ in range(4):
        now = h.servers[0].until
        h.excluded(now)
        h.picked(0, now)
        h.observe(0, Outcome.TIMEOUT, now, 1.0)
        seen.append(h.servers[0].until - now)
    assert seen == [20.0, 35.0, 35.0, 35.0]           # doubled, capped at max_ejection
    assert h.servers[0].count == 5


def test_lost_trial_reopens_half_open():
    h = pool()
    fail(h, 0, 3, now=0.0)
    h.excluded(10.0)
    h.picked(0, 10.0)
    h.observe(0, Outcome.NO_VERDICT, 10.1)
    assert h.state_of(0) is Outlier.HALF_OPEN and h.excluded(10.1) == frozenset()


def test_trial_without_outcome_expires_after_its_patience():
    h = pool()
    fail(h, 0, 3, now=0.0)
    h.excluded(10.0)
    h.picked(0, 10.0)
    assert h.excluded(14.9) == {0}
    assert h.excluded(15.0) == frozenset() and h.state_of(0) is Outlier.HALF_OPEN


def test_ejection_count_decays_while_healthy():
    h = pool()
    fail(h, 0, 3, now=0.0)
    h.excluded(10.0)
    h.picked(0, 10.0)
    h.observe(0, Outcome.TIMEOUT, 10.0)               # second ejection: 20 s
    h.excluded(30.0)
    h.picked(0, 30.0)
    h.observe(0, Outcome.SUCCESS, 30.0)               # healthy again at 30, count 2
    fail(h, 0, 3, now=30.0 + 35.0)                    # one max_ejection later: count 2 -> 1, this is the 2nd
    assert h.servers[0].count == 2 and h.servers[0].until == 65.0 + 20.0
    h.excluded(85.0)
    h.picked(0, 85.0)
    h.observe(0, Outcome.SUCCESS, 85.0)
    fail(h, 0, 3, now=85.0 + 10 * 35.0)               # long healthy: back to the first ejection's time
    assert h.servers[0].count == 1 and h.servers[0].until == 435.0 + 10.0


def test_max_ejected_percent_caps_ejections():
    h = pool(n=4)                                     # 50 % of 4: two at most
    for i in range(4):
        fail(h, i, 3, now=0.0)
    assert h.excluded(0.0) == {0, 1}
    assert h.state_of(2) is Outlier.HEALTHY and h.state_of(3) is Outlier.HEALTHY
    # when one comes back, the next failure of another may eject it
    h.excluded(10.0)
    h.picked(0, 10.0)
    h.observe(0, Outcome.SUCCESS, 10.0)
    fail(h, 3, 1, now=10.0)
    assert h.state_of(3) is Outlier.EJECTED


def test_a_single_server_pool_is_never_ejected_at_50_percent():
    h = pool(n=1)
    fail(h, 0, 10, 0.0)
    assert h.excluded(0.0) == frozenset()


def test_hold_excludes_for_retry_after_without_counting_an_ejection():
    h = pool()
    h.hold(1, 4.0, now=0.0)
    assert h.excluded(3.9) == {1} and h.servers[1].count == 0
    assert h.excluded(4.0) == frozenset() and h.state_of(1) is Outlier.HALF_OPEN
    h.hold(2, 1000.0, now=0.0)
    assert h.servers[2].until == 35.0                 # capped at max_ejection
    h.hold(3, 1.0, now=0.0)
    assert h.state_of(3) is Outlier.HEALTHY           # the cap: 2 of 4 out already


def test_excluded_is_cached_until_something_changes():
    h = pool()
    first = h.excluded(0.0)
    assert h.excluded(1.0) is first
    fail(h, 0, 3, now=1.0)
    assert h.excluded(1.0) is not first and h.excluded(2.0) is h.excluded(3.0)


def test_inflight_and_latency_follow_picks_and_verdicts():
    h = pool()
    h.picked(0, 0.0)
    h.picked(0, 0.0)
    assert h.inflight[0] == 2
    h.observe(0, Outcome.SUCCESS, 0.1, 0.1)
    h.observe(0, Outcome.SUCCESS, 0.2, 0.2)
    assert h.inflight[0] == 0 and 0.1 < h.ewma_s[0] < 0.2


def test_shared_down_drain_and_ejections_are_applied():
    h = pool()
    h.apply_shared(down=[0], drained=[3], ejections={}, now=0.0)
    assert h.excluded(0.0) == {0, 3}
    h.apply_shared(down=[], drained=[], ejections={1: (10.0, 1, 0.5)}, now=1.0)
    assert h.excluded(1.0) == {1} and h.state_of(1) is Outlier.EJECTED
    assert h.take_changes() == []                     # adopted, not re-shared
    h.apply_shared(down=[], drained=[], ejections={1: (0.0, 1, 2.0)}, now=2.0)
    assert h.state_of(1) is Outlier.HEALTHY and h.excluded(2.0) == frozenset()
    # an older record than what we know is ignored
    h.apply_shared(down=[], drained=[], ejections={1: (50.0, 1, 1.5)}, now=3.0)
    assert h.state_of(1) is Outlier.HEALTHY


def test_adopted_ejections_respect_the_cap():
    h = pool(n=4)
    fail(h, 0, 3, now=0.0)
    fail(h, 1, 3, now=0.0)
    h.apply_shared(down=[], drained=[], ejections={2: (10.0, 1, 0.5)}, now=1.0)
    assert h.state_of(2) is Outlier.HEALTHY


def test_metric_label_is_statsd_safe():
    assert metric_label("127.0.0.1:8080") == "127_0_0_1_8080"
    assert metric_label("[::1]:80") == "__1_80"
    assert metric_label("api.internal:443") == "api_internal_443"


def test_policy_validation_names_the_field():
    with pytest.raises(ValueError, match="max_ejected_percent"):
        OutlierPolicy(5, 1.0, 2.0, 101)
    with pytest.raises(ValueError, match="consecutive_failures"):
        OutlierPolicy(-1, 1.0, 2.0, 50)


# ----------------------------------------------------------------------------- config


def test_health_config_statuses_and_classes():
    c = UpstreamConfig(servers=["127.0.0.1:80"], health={"active": {"expect_status": [204, "3xx"], "interval": "200ms"},
                                                          "passive": {"on_5xx": ["5xx"]}})
    assert c.health.active.expect_status[0] == 204 and 399 in c.health.active.expect_status
    assert c.health.active.interval == 0.2 and len(c.health.passive.on_5xx) == 100


@pytest.mark.parametrize(("health", "message"), [
    ({"active": {"path": "/a b"}}, "origin-form"),
    ({"active": {"method": "GE T"}}, "token"),
    ({"active": {"expect_status": [99]}}, "100-599"),
    ({"passive": {"on_5xx": [404]}}, "5xx"),
    ({"active": {"host": "a\r\nb"}}, "Host"),
    ({"passive": {"max_ejected_percent": 150}}, "less than or equal to 100"),
])
def test_health_config_refuses(health, message):
    with pytest.raises(ValueError, match=message):
        UpstreamConfig(servers=["127.0.0.1:80"], health=health)


# ----------------------------------------------------------------------------- shared state


def fake_cfg(**health):
    up = UpstreamConfig(servers=["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"], health=health)
    return SimpleNamespace(upstreams={"api": up})


def worker(cfg, store, wid, clock):
    from edge.upstream.checker import HealthService
    from edge.upstream.client import UpstreamPool

    pools = {"api": UpstreamPool("api", cfg.upstreams["api"])}
    return HealthService(cfg, pools, store, Counter(), worker_id=wid, wall=lambda: clock[0] + 1000.0, mono=lambda: clock[0])


def test_an_ejection_is_shared_with_the_other_workers_of_the_node():
    cfg = fake_cfg(passive={"consecutive_failures": 2, "base_ejection": "10s", "max_ejected_percent": 34})
    store, clock = MemoryStore(), [50.0]
    a, b = worker(cfg, store, "a", clock), worker(cfg, store, "b", clock)
    ha, hb = a.pools["api"].health, b.pools["api"].health
    fail(ha, 1, 2, now=50.0)
    a.sync_once()
    clock[0] = 51.0
    b.sync_once()
    assert hb.excluded(51.0) == {1}
    assert hb.servers[1].until == pytest.approx(60.0)
    # b's own trial after the time succeeds: a learns it is back
    clock[0] = 60.0
    assert hb.excluded(60.0) == frozenset()
    hb.picked(1, 60.0)
    hb.observe(1, Outcome.SUCCESS, 60.0)
    b.sync_once()
    clock[0] = 60.5
    a.sync_once()
    assert ha.state_of(1) is Outlier.HEALTHY


def test_drain_and_active_verdicts_reach_every_worker_and_the_status_table():
    cfg = fake_cfg()
    store, clock = MemoryStore(), [10.0]
    a = worker(cfg, store, "a", clock)
    assert shared.set_drain(store, "api", "127.0.0.1:8002", True, 1010.0)
    assert not shared.set_drain(store, "api", "127.0.0.1:8002", True, 1010.0)
    store.set(shared.active_key("api"), shared.encode({"127.0.0.1:8003": {"state": "unhealthy", "since": 1005.0, "error": "status 500"}}))
    h = a.pools["api"].health
    h.picked(0, 10.0)
    a.sync_once()
    assert h.excluded(10.0) == {1, 2}
    rows = shared.server_statuses(store, {"api": h.labels}, 1011.0)
    assert [(r.server, r.state, r.inflight) for r in rows] == [
        ("127.0.0.1:8001", "healthy", 1), ("127.0.0.1:8002", "healthy+drain", 0), ("127.0.0.1:8003", "down", 0)]
    assert rows[2].last_error == "probe: status 500" and rows[1].last_change == 1010.0
    assert shared.set_drain(store, "api", "127.0.0.1:8002", False, 1012.0)
    a.sync_once()
    assert h.excluded(10.0) == {2}


def test_a_store_that_fails_keeps_the_last_state_and_the_queued_changes():
    from edge.errors import StoreUnavailable

    class Flaky(MemoryStore):
        down = False

        def _check(self):
            if self.down:
                raise StoreUnavailable("down")

        def get_many(self, keys):
            self._check()
            return super().get_many(keys)

        def set(self, key, value, ttl_s=None):
            self._check()
            return super().set(key, value, ttl_s)

    cfg = fake_cfg(passive={"consecutive_failures": 1, "max_ejected_percent": 34})
    store, clock = Flaky(), [10.0]
    a = worker(cfg, store, "a", clock)
    shared.set_drain(store, "api", "127.0.0.1:8001", True, 1010.0)
    a.sync_once()
    h = a.pools["api"].health
    store.down = True
    fail(h, 2, 1, now=10.0)
    with pytest.raises(StoreUnavailable):
        a.sync_once()
    assert h.excluded(10.0) == {0, 2}                 # last known drain, and the local ejection
    store.down = False
    a.sync_once()
    assert shared.decode(store.get(shared.eject_key("api", "127.0.0.1:8003")), {})["count"] == 1


def test_default_expected_statuses_are_2xx_and_3xx():
    c = UpstreamConfig(servers=["127.0.0.1:80"], health={"active": {}})
    assert c.health.active.expect_status == tuple(range(200, 400))


def test_an_active_verdict_up_ends_an_ejection():
    h = pool()
    h.apply_shared(down=[1], drained=[], ejections={}, now=0.0)
    fail(h, 1, 3, now=0.0)
    assert h.state_of(1) is Outlier.EJECTED
    h.apply_shared(down=[], drained=[], ejections={}, now=1.0)
    assert h.state_of(1) is Outlier.HEALTHY and h.excluded(1.0) == frozenset()


# ----------------------------------------------------------------------------- the commands


def write_config(tmp_path, backend="local"):
    store = {"backend": backend, **({"path": str(tmp_path / "store")} if backend == "local" else {})}
    import yaml

    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "upstreams": {"api": {"servers": ["127.0.0.1:8001", "127.0.0.1:8002"]}},
        "routes": [{"upstream": "api"}],
        "store": store,
    }))
    return str(path)


def test_drain_undrain_and_status_commands(tmp_path, capsys):
    from edge.__main__ import main

    cfg = write_config(tmp_path)
    assert main(["drain", "api", "1", "--config", cfg]) == 0
    assert capsys.readouterr().out == "api 127.0.0.1:8002: drained\n"
    assert main(["drain", "api", "127.0.0.1:8002", "--config", cfg]) == 0
    assert "(already)" in capsys.readouterr().out
    assert main(["status", "--config", cfg]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["POOL", "SERVER", "STATE", "IN-FLIGHT", "LATENCY", "LAST", "ERROR", "LAST", "CHANGE"]
    assert out[1].split()[:5] == ["api", "127.0.0.1:8001", "healthy", "0", "-"]
    assert out[2].split()[:3] == ["api", "127.0.0.1:8002", "healthy+drain"] and out[2].endswith("ago")
    assert main(["undrain", "api", "127.0.0.1:8002", "--config", cfg]) == 0
    assert capsys.readouterr().out == "api 127.0.0.1:8002: in rotation\n"


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["drain", "web", "0"], 2, "unknown pool 'web' (pools: api)"),
    (["undrain", "api", "127.0.0.1:9"], 2, "pool api has no server '127.0.0.1:9' (servers: 127.0.0.1:8001, 127.0.0.1:8002)"),
    (["drain", "api", "5"], 2, "has no server '5'"),
])
def test_drain_refuses_unknown_names(tmp_path, capsys, argv, status, message):
    from edge.__main__ import main

    assert main([*argv, "--config", write_config(tmp_path)]) == status
    assert message in capsys.readouterr().err


def test_runtime_commands_refuse_the_per_worker_memory_store(tmp_path, capsys):
    from edge.__main__ import main

    assert main(["status", "--config", write_config(tmp_path, "memory")]) == 1
    assert "private to each worker" in capsys.readouterr().err
