"""Rate-limit arithmetic with an injected clock: exact admits, refill, retry_after, window boundaries."""

from __future__ import annotations

import math

import pytest

from edge.ratelimit import (
    Algorithm,
    Decision,
    Limit,
    decode_gcra,
    decode_window,
    encode_gcra,
    encode_window,
    gcra_step,
    step_encoded,
    window_step,
)
from edge.store.memory import MemoryStore

T0 = 1_700_000_000.0  # a realistic Unix time: float spacing ~2.4e-7 s, the case EPS_S exists for


def run_gcra(times, period_s=1.0, count=10, burst=5, cost=1, tat=None):
    out = []
    for now in times:
        tat, d = gcra_step(tat, now, period_s, count, burst, cost)
        out.append(d)
    return tat, out


# --------------------------------------------------------------------------- Limit


def test_limit_parse_uses_units_and_defaults_burst_to_count():
    assert Limit.parse("100/s", burst=20) == Limit(100.0, 1.0, 20)
    assert Limit.parse("5000/h").burst == 5000
    assert Limit.parse("10/5m", algorithm="window") == Limit(10.0, 300.0, 10, Algorithm.WINDOW)
    assert Limit(0.5, 1.0).burst == 1  # never a bucket that admits nothing


@pytest.mark.parametrize("kwargs, field", [
    ({"count": 0, "period_s": 1}, "count"),
    ({"count": 1, "period_s": 0}, "period_s"),
    ({"count": 1, "period_s": math.inf}, "period_s"),
    ({"count": 1, "period_s": 1, "burst": -1}, "burst"),
])
def test_limit_refuses_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Limit(**kwargs)


def test_limit_parse_refuses_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        Limit.parse("100 per second")


# --------------------------------------------------------------------------- GCRA


@pytest.mark.parametrize("t0", [0.0, 1000.0, T0])
def test_gcra_admits_exactly_burst_at_one_instant(t0):
    _, ds = run_gcra([t0] * 8, count=10, burst=5)
    assert [d.allowed for d in ds] == [True] * 5 + [False] * 3
    assert [d.remaining for d in ds[:5]] == [4, 3, 2, 1, 0]
    assert ds[5].retry_after_s == pytest.approx(0.1, abs=1e-6)
    assert ds[5].remaining == 0


def test_gcra_big_burst_at_unix_time_is_exact():
    _, ds = run_gcra([T0] * 21, count=100, burst=20)
    assert sum(d.allowed for d in ds) == 20


def test_gcra_first_admit_reports_reset_and_no_retry():
    _, (d,) = run_gcra([T0], count=10, burst=5)
    assert d == Decision(True, 4, 0.0, pytest.approx(0.1, abs=1e-6), 5)


def test_gcra_refills_one_per_interval():
    tat, ds = run_gcra([T0] * 5, count=10, burst=5)  # bucket empty, tat = T0 + 0.5
    assert all(d.allowed for d in ds)
    _, ds = run_gcra([T0 + 0.25] * 3, count=10, burst=5, tat=tat)
    assert [d.allowed for d in ds] == [True, True, False]  # 0.25 s at 10/s = 2 requests
    assert ds[2].retry_after_s == pytest.approx(0.05, abs=1e-6)


def test_gcra_retry_after_is_exactly_when_the_next_request_passes():
    tat, ds = run_gcra([T0] * 6, count=10, burst=5)
    wait = ds[5].retry_after_s
    _, (early,) = run_gcra([T0 + wait - 0.001], tat=tat)
    _, (on_time,) = run_gcra([T0 + wait], tat=tat)
    assert not early.allowed and on_time.allowed


def test_gcra_full_after_reset_after():
    tat, ds = run_gcra([T0] * 5, count=10, burst=5)
    _, ds2 = run_gcra([T0 + ds[-1].reset_after_s] * 6, tat=tat)
    assert sum(d.allowed for d in ds2) == 5


def test_gcra_sustained_admits_burst_plus_rate_times_elapsed():
    # 10 s of a request every millisecond against 10/s burst 5: 5 + 10 * 10
    times = [T0 + i * 0.001 for i in range(10_001)]
    _, ds = run_gcra(times, count=10, burst=5)
    assert sum(d.allowed for d in ds) == 5 + 100


def test_gcra_refusal_leaves_state_unchanged():
    tat, _ = run_gcra([T0] * 5, count=10, burst=5)
    new_tat, d = gcra_step(tat, T0, 1.0, 10, 5)
    assert not d.allowed and new_tat == tat


def test_gcra_cost_takes_several_tokens():
    tat, (d,) = run_gcra([T0], count=10, burst=5, cost=3)
    assert d.allowed and d.remaining == 2
    _, (d2,) = run_gcra([T0], count=10, burst=5, cost=3, tat=tat)
    assert not d2.allowed and d2.remaining == 2
    assert d2.retry_after_s == pytest.approx(0.1, abs=1e-6)


def test_gcra_old_state_is_as_good_as_none():
    _, (d,) = run_gcra([T0 + 3600], count=10, burst=5, tat=T0)
    assert d.allowed and d.remaining == 4


# --------------------------------------------------------------------------- sliding window

P = 60.0
W0 = 1_700_000_040.0  # a multiple of 60: the start of a window


def run_window(times, count=10, cost=1, state=None, period_s=P):
    out = []
    for now in times:
        state, d = window_step(state, now, period_s, count, cost)
        out.append(d)
    return state, out


def test_window_admits_count_in_one_window():
    state, ds = run_window([W0 + 1] * 11)
    assert [d.allowed for d in ds] == [True] * 10 + [False]
    assert [d.remaining for d in ds[:10]] == list(range(9, -1, -1))
    assert state == (int(W0 // P), 0.0, 10.0)


def test_window_full_current_window_waits_for_previous_weight_to_decay():
    state, ds = run_window([W0] * 11)
    # next window starts in 60 s; then 10 * (1 - e/60) + 1 <= 10 needs e >= 6 s
    assert ds[10].retry_after_s == pytest.approx(66.0)
    _, (early,) = run_window([W0 + P + 5.9], state=state)
    _, (on_time,) = run_window([W0 + P + 6.0], state=state)
    assert not early.allowed and on_time.allowed


def test_window_weights_the_previous_window_by_the_unelapsed_fraction():
    state, _ = run_window([W0 + 1] * 10)  # previous window full
    # 30 s into the next window the previous one weighs 5: five more pass
    state2, ds = run_window([W0 + P + 30] * 6, state=state)
    assert [d.allowed for d in ds] == [True] * 5 + [False]
    # room again when 10 * (1 - e/60) + 5 + 1 <= 10, i.e. e >= 36 s: 6 s from now
    assert ds[5].retry_after_s == pytest.approx(6.0)
    _, (d,) = run_window([W0 + P + 36], state=state2)
    assert d.allowed


def test_window_state_older_than_two_windows_is_forgotten():
    state, _ = run_window([W0 + 1] * 10)
    _, ds = run_window([W0 + 2 * P + 1] * 11, state=state)
    assert sum(d.allowed for d in ds) == 10


def test_window_boundary_instant_belongs_to_the_new_window():
    state, _ = run_window([W0 + P - 1e-3] * 10)
    # at the boundary the previous window weighs fully: nothing passes yet
    _, (d,) = run_window([W0 + P], state=state)
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(6.0)


def test_window_reset_after_reaches_the_end_of_the_next_window():
    _, (d,) = run_window([W0 + 10])
    assert d.reset_after_s == pytest.approx(2 * P - 10)


def test_window_cost_larger_than_limit_never_passes():
    _, (d,) = run_window([W0], count=10, cost=11)
    assert not d.allowed and d.retry_after_s == math.inf


# --------------------------------------------------------------------------- encoding, Limiter


@pytest.mark.parametrize("tat", [T0, T0 + 0.1, 0.30000000000000004, 1e-9])
def test_gcra_encoding_round_trips_exactly(tat):
    assert decode_gcra(encode_gcra(tat)) == tat


def test_window_encoding_round_trips_exactly():
    state = (28333334, 7.0, 3.5)
    assert decode_window(encode_window(state)) == state
    assert decode_window(None) is None


def test_step_encoded_writes_nothing_on_refusal_and_ttl_covers_state():
    limit = Limit(10, 1.0, 1)
    raw, ttl_s, d = step_encoded(None, T0, limit)
    assert d.allowed and ttl_s == pytest.approx(0.1, abs=1e-5)
    raw2, _, d2 = step_encoded(raw, T0, limit)
    assert not d2.allowed and raw2 is None


def test_limiter_over_memory_store_with_injected_clock():
    from edge.ratelimit import Limiter

    now = [T0]
    limiter = Limiter(MemoryStore(clock=lambda: now[0]))
    limit = Limit.parse("2/s", burst=2)
    assert [limiter.hit("k", limit).allowed for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert limiter.hit("k", limit).allowed
    assert limiter.hit("other", limit).allowed  # keys are independent
