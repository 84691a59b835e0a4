"""ratelimit: when a failing store is treated as down (issue 8, part 3), with an injected clock.

One failure is not a dead store: the request whose call failed is decided by the
policy, the next one tries the store again. Only failures spanning
``STORE_DOWN_AFTER_S`` with no success in between switch the worker to the fallback
(then the store is left alone for ``STORE_RETRY_S``).
"""

from __future__ import annotations

import logging

import pytest

from edge.testing import make_plugin
from tests.unit.plugins.test_ratelimit import ONE, FakeMetrics, FlakyStore, RateLimit, hit, rl_module, services


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plugin(policy: str, settings=ONE):
    store, metrics, clock = FlakyStore(), FakeMetrics(), Clock()
    p = make_plugin(RateLimit, {**settings, "on_store_error": policy}, services(store, metrics=metrics))
    p._clock = clock
    return p, store, metrics, clock


@pytest.mark.parametrize(
    "gaps_s, calls, switched",
    [
        # failures at one moment (one timed-out batch, or a burst on a dead server): each
        # request tries the store and falls back alone; no switch yet
        ((0.0, 0.0, 0.0, 0.0), 4, False),
        # failures spread over less than STORE_DOWN_AFTER_S: still trying
        ((0.0, 0.03, 0.03, 0.03), 4, False),
        # failing for STORE_DOWN_AFTER_S: switched; the next ones go straight to the fallback
        ((0.0, 0.06, 0.06, 0.0, 0.0), 3, True),
    ],
)
def test_store_declared_down_only_after_failing_for_a_span(gaps_s, calls, switched, caplog):
    p, store, metrics, clock = plugin("closed")
    store.down = True
    with caplog.at_level(logging.WARNING):
        for gap in gaps_s:
            clock.now += gap
            assert hit(p)[0] == 503  # the policy decides every failed request
    assert store.calls == calls
    assert p.fallbacks == len(gaps_s) == metrics.counts["plugin.ratelimit.fallback.closed"]
    assert (p._state is rl_module._State.DOWN) is switched
    assert len([r for r in caplog.records if "store unavailable" in r.getMessage()]) == int(switched)


def test_a_success_between_failures_starts_the_span_again():
    p, store, _, clock = plugin("open", {"limits": [{"rate": "1000/s"}]})
    for step in range(10):  # a late answer every 40 ms, successes in between: never down
        store.down = step % 2 == 0
        clock.now += 0.04
        assert hit(p)[0] == 200
    assert p._state is rl_module._State.UP
    assert store.calls == 10 and p.fallbacks == 5


def test_one_failed_call_per_request_then_the_fallback_decides():
    # two limits: once the first call failed, the second limit does not cost another call
    store, clock = FlakyStore(), Clock()
    p = make_plugin(RateLimit, {"limits": [{"rate": "5/s"}, {"rate": "100/h"}], "on_store_error": "open"},
                    services(store))
    p._clock = clock
    store.down = True
    assert hit(p)[0] == 200
    assert store.calls == 1 and p.fallbacks == 1


def test_switched_store_is_retried_after_store_retry_s_and_back_on_success():
    p, store, _, clock = plugin("open")
    store.down = True
    hit(p)
    clock.now += rl_module.STORE_DOWN_AFTER_S
    hit(p)
    assert p._state is rl_module._State.DOWN
    calls = store.calls
    clock.now += rl_module.STORE_RETRY_S / 2
    hit(p)
    assert store.calls == calls  # left alone
    store.down = False
    clock.now += rl_module.STORE_RETRY_S
    assert hit(p)[0] == 200
    assert store.calls == calls + 1 and p._state is rl_module._State.UP
