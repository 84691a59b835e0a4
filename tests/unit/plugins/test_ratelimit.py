"""plugins/ratelimit.py through edge.testing, on the memory store (no sockets, no clock games:
the limits are slow enough that a test run never refills a token)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from edge.errors import ConfigError, StoreUnavailable
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.store.memory import MemoryStore
from edge.testing import make_ctx, make_plugin, make_services, make_upstream_response, run_plugin

RateLimit = load_plugin_file(SHIPPED_DIR / "ratelimit.py")
rl_module = __import__(RateLimit.__module__)


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def incr(self, name: str, count: int = 1) -> None:
        self.counts[name] += count


class FlakyStore(MemoryStore):
    """A memory store that raises StoreUnavailable while ``down``."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__(key_prefix="edge:")
        self.down = False
        self.calls = 0

    def ratelimit_step(self, key, limit, cost=1, now=None):
        self.calls += 1
        if self.down:
            raise StoreUnavailable("flaky: down")
        return super().ratelimit_step(key, limit, cost, now)

    def incr(self, key, amount=1, ttl_s=None):
        self.calls += 1
        if self.down:
            raise StoreUnavailable("flaky: down")
        return super().incr(key, amount, ttl_s)


class Route:
    def __init__(self, name: str) -> None:
        self.name = name


def services(store=None, **kw):
    return make_services(store=store if store is not None else MemoryStore(key_prefix="edge:"),
                         metrics=kw.pop("metrics", FakeMetrics()), **kw)


def hit(plugin, ctx=None, response=None):
    """One exchange through an existing plugin instance (shared state), like run_plugin."""
    ctx = ctx if ctx is not None else make_ctx()
    answer = plugin.on_request(ctx)
    if answer is not None:
        return answer.status, answer.headers, ctx
    resp = response if response is not None else make_upstream_response()
    plugin.on_response(ctx, resp)
    plugin.on_log(ctx)
    return resp.status, resp.headers, ctx


ONE = {"limits": [{"rate": "1/m", "burst": 3}]}


def test_burst_then_429_with_retry_after_and_ietf_headers():
    p = make_plugin(RateLimit, ONE, services())
    statuses = [hit(p)[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, headers, ctx = hit(p)
    assert status == 429
    assert headers.get("Retry-After") == "60"          # one token per minute, rounded up to whole seconds
    assert headers.get("RateLimit-Policy") == '"default";q=1;w=60'
    assert headers.get("RateLimit") == '"default";r=0;t=60'
    assert ctx.facts["ratelimit"].allowed is False
    assert p.refused == 1


def test_admitted_responses_carry_remaining_and_reset():
    p = make_plugin(RateLimit, {"limits": [{"rate": "100/s", "burst": 20}]}, services())
    status, headers, ctx = hit(p)
    assert status == 200
    assert headers.get("RateLimit-Policy") == '"default";q=100;w=1'
    assert headers.get("RateLimit") == '"default";r=19;t=1'
    assert ctx.facts["ratelimit"].allowed is True


def test_policy_quota_is_an_integer_for_big_limits():
    p = make_plugin(RateLimit, {"limits": [{"rate": "1000000/s"}]}, services())
    assert hit(p)[1].get("RateLimit-Policy") == '"default";q=1000000;w=1'


def test_headers_can_be_turned_off():
    p = make_plugin(RateLimit, {**ONE, "headers": False}, services())
    assert "RateLimit" not in hit(p)[1]
    for _ in range(3):
        hit(p)
    status, headers, _ = hit(p)
    assert status == 429 and headers.get("Retry-After") == "60" and "RateLimit-Policy" not in headers


def test_on_response_edits_a_replacement():
    from edge.context import Response

    p = make_plugin(RateLimit, ONE, services())
    ctx = make_ctx()
    assert p.on_request(ctx) is None
    resp = make_upstream_response()
    resp.replacement = Response(502)
    p.on_response(ctx, resp)
    assert resp.replacement.headers.get("RateLimit") == '"default";r=2;t=60'
    assert "RateLimit" not in resp.headers


def test_origin_ratelimit_fields_are_replaced_not_repeated():
    p = make_plugin(RateLimit, ONE, services())
    origin = [("Server", "o"), ("ratelimit", "origin's"), ("X-A", "1"), ("RATELIMIT-POLICY", "a"),
              ("RateLimit-Policy", "b")]
    _, headers, _ = hit(p, response=make_upstream_response(headers=origin))
    assert [h for h in headers if h[0] != "Content-Length"] == [("Server", "o"), ("RateLimit", '"default";r=2;t=60'), ("X-A", "1"),
                               ("RateLimit-Policy", '"default";q=1;w=60')]
    _, headers, _ = hit(p, response=make_upstream_response(headers=[("Server", "o")]))
    assert [h for h in headers if h[0] != "Content-Length"] == [("Server", "o"), ("RateLimit-Policy", '"default";q=1;w=60'),
                               ("RateLimit", '"default";r=1;t=120')]


def test_run_plugin_end_to_end():
    run = run_plugin(RateLimit, ONE, services=services())
    assert run.status == 200 and run.headers.get("RateLimit-Policy") == '"default";q=1;w=60'


# --------------------------------------------------------------------------- keys


def store_keys(store: MemoryStore) -> list[str]:
    return list(store._data)


@pytest.mark.parametrize("key, ctx_kw, expected", [
    ("client_ip", {"client_ip": "192.0.2.7"}, "192.0.2.7"),
    ("client_net", {"client_ip": "192.0.2.7"}, "192.0.2.0/24"),
    ("client_net", {"client_ip": "::ffff:192.0.2.7"}, "192.0.2.0/24"),
    ("client_net", {"client_ip": "2001:db8:1:2:3:4:5:6"}, "2001:db8:1:2::/64"),
    ("route", {"route": Route("api")}, "api"),
    ("route", {}, "_none"),
    ("header:X-Api-Key", {"headers": {"X-API-Key": "secret"}}, rl_module._hash("secret")),
    ("cookie:session", {"headers": {"Cookie": "a=1; session=abc; b=2"}}, rl_module._hash("abc")),
    (["route", "client_ip"], {"route": Route("api"), "client_ip": "192.0.2.7"}, "api|192.0.2.7"),
])
def test_key_strings_are_the_same_on_every_backend(key, ctx_kw, expected):
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {**ONE, "key": key}, services(store))
    hit(p, make_ctx(**ctx_kw))
    assert store_keys(store) == [f"edge:rl:default:1/60g:{expected}"]


def test_fact_keys_come_from_earlier_plugins():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {**ONE, "key": ["fact:consumer", "fact:country"]}, services(store))
    ctx = make_ctx()
    ctx.facts.update(consumer="alice", country="FR")
    hit(p, ctx)
    ctx = make_ctx()
    ctx.facts.update(consumer="has|bar and spaces", country=42)
    hit(p, ctx)
    assert store_keys(store) == ["edge:rl:default:1/60g:alice|FR",
                                 f"edge:rl:default:1/60g:{rl_module._hash('has|bar and spaces')}|42"]


def test_clients_in_one_net_share_a_bucket_with_client_net():
    p = make_plugin(RateLimit, {**ONE, "key": "client_net"}, services())
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert hit(p, make_ctx(client_ip=ip))[0] == 200
    assert hit(p, make_ctx(client_ip="192.0.2.200"))[0] == 429
    assert hit(p, make_ctx(client_ip="192.0.3.1"))[0] == 200


def test_clients_have_their_own_buckets_with_client_ip():
    p = make_plugin(RateLimit, {"limits": [{"rate": "1/m", "burst": 1}]}, services())
    assert hit(p, make_ctx(client_ip="192.0.2.1"))[0] == 200
    assert hit(p, make_ctx(client_ip="192.0.2.1"))[0] == 429
    assert hit(p, make_ctx(client_ip="192.0.2.2"))[0] == 200


def test_missing_key_part_shares_the_anonymous_bucket_by_default():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {"limits": [{"rate": "1/m", "burst": 2}], "key": ["route", "header:X-Api-Key"]},
                    services(store))
    assert [hit(p, make_ctx(client_ip=f"192.0.2.{i}", route=Route("api")))[0] for i in range(3)] == [200, 200, 429]
    assert store_keys(store) == ["edge:rl:default:1/60g:api|~anon"]
    assert hit(p, make_ctx(headers={"X-Api-Key": "k1"}, route=Route("api")))[0] == 200


def test_missing_key_part_can_skip_limiting():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {"limits": [{"rate": "1/m", "burst": 1}], "key": "header:X-Api-Key",
                                "missing_key": "skip"}, services(store))
    for _ in range(5):
        status, headers, ctx = hit(p)
        assert status == 200 and "RateLimit" not in headers and "ratelimit" not in ctx.facts
    assert store_keys(store) == []
    assert hit(p, make_ctx(headers={"X-Api-Key": "k"}))[0] == 200
    assert hit(p, make_ctx(headers={"X-Api-Key": "k"}))[0] == 429


# --------------------------------------------------------------------------- several limits, algorithms


def test_several_limits_all_apply_and_are_checked_shortest_period_first():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {"limits": [{"rate": "3/h", "burst": 3}, {"rate": "1/m", "burst": 2, "name": "minute"}]},
                    services(store))
    status, headers, _ = hit(p)
    assert status == 200
    assert headers.get("RateLimit-Policy") == '"minute";q=1;w=60, "default-0";q=3;w=3600'
    assert headers.get("RateLimit") == '"minute";r=1;t=60, "default-0";r=2;t=1200'
    assert hit(p)[0] == 200
    status, headers, _ = hit(p)  # the minute limit refuses: the hourly token is not spent
    assert status == 429 and headers.get("RateLimit") == '"minute";r=0;t=60'
    assert sorted(store_keys(store)) == ["edge:rl:default-0:3/3600g:127.0.0.1", "edge:rl:minute:1/60g:127.0.0.1"]
    tat = float(store.get("rl:default-0:3/3600g:127.0.0.1"))
    assert 2 * 1200 - 5 < tat - __import__("time").time() <= 2 * 1200  # two hourly tokens spent, not three


def test_hourly_limit_refuses_when_the_short_one_admits():
    p = make_plugin(RateLimit, {"limits": [{"rate": "100/s", "burst": 100}, {"rate": "2/h", "burst": 2}]}, services())
    assert [hit(p)[0] for _ in range(3)] == [200, 200, 429]
    status, headers, _ = hit(p)
    assert int(headers.get("Retry-After")) == 1800


def test_window_algorithm():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {"limits": [{"rate": "2/h"}], "algorithm": "window"}, services(store))
    assert [hit(p)[0] for _ in range(3)] == [200, 200, 429]
    assert store_keys(store) == ["edge:rl:default:2/3600w:127.0.0.1"]


# --------------------------------------------------------------------------- dry run


def test_dry_run_counts_and_logs_but_admits(caplog):
    metrics = FakeMetrics()
    p = make_plugin(RateLimit, {**ONE, "dry_run": True}, services(metrics=metrics))
    with caplog.at_level(logging.INFO):
        results = [hit(p) for _ in range(6)]
    assert [r[0] for r in results] == [200] * 6
    assert all("RateLimit" not in r[1] for r in results)
    assert p.dry_run_refused == 3 and p.refused == 0
    assert metrics.counts["plugin.ratelimit.dry_run_refused"] == 3
    logged = [r for r in caplog.records if "dry run" in r.getMessage()]
    assert len(logged) == 1  # throttled: once per DRY_RUN_LOG_INTERVAL_S


# --------------------------------------------------------------------------- store failures


@pytest.fixture
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(rl_module, "STORE_RETRY_S", 0.0)
    monkeypatch.setattr(rl_module, "STORE_DOWN_AFTER_S", 0.0)  # the first failure switches (issue 8)


def flaky_plugin(settings, local=None):
    store, metrics = FlakyStore(), FakeMetrics()
    extras = {"local_store": local} if local is not None else {}
    p = make_plugin(RateLimit, settings, services(store, metrics=metrics, **extras))
    return p, store, metrics


def test_open_admits_while_the_store_is_down_counted_and_logged_once(caplog, no_retry_delay):
    p, store, metrics = flaky_plugin({**ONE, "on_store_error": "open"})
    store.down = True
    with caplog.at_level(logging.WARNING):
        assert [hit(p)[0] for _ in range(10)] == [200] * 10
    assert p.fallbacks == 10 and metrics.counts["plugin.ratelimit.fallback.open"] == 10
    assert len([r for r in caplog.records if "store unavailable" in r.getMessage()]) == 1
    store.down = False
    with caplog.at_level(logging.WARNING):
        assert [hit(p)[0] for _ in range(4)] == [200, 200, 200, 429]  # shared limits again
    assert len([r for r in caplog.records if "available again" in r.getMessage()]) == 1
    assert p.fallbacks == 10


def test_closed_answers_503_while_the_store_is_down(no_retry_delay):
    p, store, metrics = flaky_plugin({**ONE, "on_store_error": "closed"})
    store.down = True
    status, headers, ctx = hit(p)
    assert status == 503 and headers.get("Retry-After") == "1"
    assert ctx.facts["ratelimit"].fallback == "closed"
    assert metrics.counts["plugin.ratelimit.fallback.closed"] == 1
    store.down = False
    assert hit(p)[0] == 200


def test_local_enforces_the_node_share_on_the_local_store(no_retry_delay):
    local = MemoryStore(key_prefix="edge:")
    p, store, metrics = flaky_plugin({"limits": [{"rate": "1/m", "burst": 4}], "on_store_error": "local",
                                      "local_share": 0.5}, local)
    store.down = True
    assert [hit(p)[0] for _ in range(3)] == [200, 200, 429]  # half of the burst of 4
    assert list(local._data) == ["edge:rl:default:1/60g:127.0.0.1"]  # the same key string
    assert p.fallbacks == 3 and metrics.counts["plugin.ratelimit.fallback.local"] == 3


def test_a_failed_store_is_not_retried_for_a_while(monkeypatch):
    monkeypatch.setattr(rl_module, "STORE_DOWN_AFTER_S", 0.0)  # the first failure switches (issue 8)
    p, store, _ = flaky_plugin({**ONE, "on_store_error": "open"})
    store.down = True
    for _ in range(5):
        hit(p)
    assert store.calls == 1  # then straight to the fallback for STORE_RETRY_S


# --------------------------------------------------------------------------- concurrency


CONC = {"concurrency": {"max": 2}}


def test_concurrency_cap_and_release_in_on_log():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, CONC, services(store))
    a, b, c = make_ctx(), make_ctx(), make_ctx()
    assert p.on_request(a) is None and p.on_request(b) is None
    refused = p.on_request(c)
    assert refused.status == 429 and p.concurrency_refused == 1
    p.on_log(c)  # the refused request gives its count back too
    p.on_log(a)
    assert p.on_request(make_ctx()) is None
    assert make_ctx(client_ip="192.0.2.9") and p.on_request(make_ctx(client_ip="192.0.2.9")) is None
    (key,) = [k for k in store._data if k.endswith(":127.0.0.1")]
    assert key.startswith("edge:cc:") and store.get(key[len("edge:"):]) == b"2"


def test_concurrency_status_503_and_short_circuit_answers_release():
    p = make_plugin(RateLimit, {"concurrency": {"max": 1, "status": 503}}, services())
    a = make_ctx()
    assert p.on_request(a) is None
    b = make_ctx()
    assert p.on_request(b).status == 503
    p.on_log(b)
    # a request answered by a later plugin still runs on_log: the slot comes back
    p.on_log(a)
    assert p.on_request(make_ctx()) is None


def test_on_log_without_a_slot_does_nothing():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, CONC, services(store))
    p.on_log(make_ctx())  # e.g. an earlier plugin answered before ours ran
    assert store_keys(store) == []


def test_concurrency_rate_refusal_takes_no_slot():
    store = MemoryStore(key_prefix="edge:")
    p = make_plugin(RateLimit, {"limits": [{"rate": "1/m", "burst": 1}], **CONC}, services(store))
    assert hit(p)[0] == 200
    assert hit(p)[0] == 429
    assert not [k for k in store._data if ":cc:" in k and store._data[k][0] != b"0"]


def test_concurrency_local_fallback(no_retry_delay):
    local = MemoryStore(key_prefix="edge:")
    p, store, _ = flaky_plugin({"concurrency": {"max": 4}, "on_store_error": "local", "local_share": 0.5}, local)
    store.down = True
    ctxs = [make_ctx() for _ in range(3)]
    assert [p.on_request(c) is None for c in ctxs] == [True, True, False]
    for c in ctxs:
        p.on_log(c)
    assert all(v == b"0" for v, _ in local._data.values())


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("settings, message", [
    ({}, "give `limits`, `concurrency` or both"),
    ({"limits": [{"rate": "fast"}]}, "expected a rate such as '100/s'"),
    ({"limits": [{"rate": "1/s"}], "key": "ip"}, "unknown key part 'ip'"),
    ({"limits": [{"rate": "1/s"}], "key": []}, "give at least one key part"),
    ({"limits": [{"rate": "1/s"}], "on_store_error": "maybe"}, "on_store_error"),
    ({"limits": [{"rate": "1/s"}], "local_share": 0}, "local_share"),
    ({"limits": [{"rate": "1/s", "name": "a"}, {"rate": "1/h", "name": "a"}]}, "duplicate limit name 'a'"),
    ({"limits": [{"rate": "1/s", "brust": 2}]}, "brust"),
    ({"concurrency": {"max": 0}}, "concurrency.max"),
])
def test_bad_settings_are_refused_at_load(settings, message):
    with pytest.raises(ConfigError) as e:
        make_plugin(RateLimit, settings, services())
    assert message in str(e.value)
