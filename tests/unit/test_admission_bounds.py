"""The accuracy bounds of tests/fixtures/admission.py against the pure GCRA maths (issue 8).

A correct limiter must pass whatever the demand looks like (steady, with stalls longer
than the bucket's fill time, with wide brackets), and a limiter at twice or half the
rate must fail: otherwise the integration accuracy tests would either flake on a busy
machine or stop catching a broken limiter.
"""

from __future__ import annotations

import random

import pytest

from edge.ratelimit import gcra_step
from tests.fixtures.admission import AdmissionBounds, gcra_bounds, refusal_chain

RATE, BURST = 100.0, 20
T0 = 1_700_000_000.0


def demand(seconds: float, per_s: float, stalls: list[tuple[float, float]], seed: int) -> list[float]:
    """Request instants at about ``per_s`` over ``seconds``, none inside the ``stalls`` (start, length)."""
    rnd, t, out = random.Random(seed), 0.0, []
    while t < seconds:
        t += rnd.expovariate(per_s)
        if not any(s <= t < s + d for s, d in stalls):
            out.append(T0 + t)
    return out


def decide(instants: list[float], rate: float, burst: int, width_s: float, seed: int):
    """Run the pure GCRA; each decision gets a bracket of up to ``width_s`` around its instant."""
    rnd, tat, admitted, refused = random.Random(seed), None, [], []
    for now in instants:
        tat, d = gcra_step(tat, now, 1.0, rate, burst)
        before = rnd.uniform(0, width_s)
        bracket = (now - before, now + rnd.uniform(0, width_s) + (0.5 if rnd.random() < 0.01 else 0))  # a few stalls
        (admitted if d.allowed else refused).append(bracket)
    return admitted, refused


SCENARIOS = [  # (name, seconds, offered per s, stalls)
    ("steady", 5.0, 2000, []),
    ("stalls longer than the fill time", 5.0, 2000, [(1.0, 0.8), (2.5, 0.3), (4.0, 1.2)]),
    ("offered just above the rate", 5.0, 130, [(2.0, 0.5)]),
    ("offered below the rate", 5.0, 60, []),
]


@pytest.mark.parametrize("name, seconds, per_s, stalls", SCENARIOS, ids=[s[0] for s in SCENARIOS])
@pytest.mark.parametrize("width_s", [0.0005, 0.02])
def test_a_correct_limiter_is_inside_the_bounds(name, seconds, per_s, stalls, width_s):
    for seed in range(5):
        admitted, refused = decide(demand(seconds, per_s, stalls, seed), RATE, BURST, width_s, seed)
        b = gcra_bounds(admitted, refused, RATE, BURST)
        assert b.holds(slack=0), (seed, b)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_limiter_at_the_wrong_rate_is_caught(factor):
    stalls = [(1.0, 0.8), (3.0, 0.4)]
    for seed in range(5):
        admitted, refused = decide(demand(5.0, 2000, stalls, seed), RATE * factor, BURST, 0.02, seed)
        b = gcra_bounds(admitted, refused, RATE, BURST)
        assert not b.holds(slack=0.02 * (RATE * 5 + BURST)), (seed, b)


def test_a_limiter_that_ignores_the_burst_is_caught():
    admitted, refused = decide(demand(3.0, 2000, [], 1), RATE, BURST * 5, 0.001, 1)
    assert not gcra_bounds(admitted, refused, RATE, BURST).holds(slack=5)


def test_steady_saturation_gives_tight_bounds():
    admitted, refused = decide(demand(5.0, 2000, [], 3), RATE, BURST, 0.002, 3)
    b = gcra_bounds(admitted, refused, RATE, BURST)
    assert b.high - b.admitted < 0.02 * b.admitted and b.admitted_in_chain - b.low < 0.02 * b.admitted
    assert b.saturated_s > 4.5


@pytest.mark.parametrize("refused, chain", [
    ([], []),
    ([(0.0, 1.0)], [(0.0, 1.0)]),
    ([(0.0, 1.0), (0.5, 0.6), (0.7, 0.8), (0.75, 2.0)], [(0.5, 0.6), (0.7, 0.8)]),  # short ones first
    ([(2.0, 2.1), (0.0, 0.1), (1.0, 1.1)], [(0.0, 0.1), (1.0, 1.1), (2.0, 2.1)]),
])
def test_refusal_chain_is_disjoint_and_ordered(refused, chain):
    assert refusal_chain(refused) == chain


@pytest.mark.parametrize("admitted, refused, want", [
    ([], [], AdmissionBounds(0, 21.0, 0, 0.0, 0.0)),
    ([(0.0, 0.0)] * 20, [(0.0, 0.0)], AdmissionBounds(20, 21.0, 0, 0.0, 0.0)),  # one refusal: no lower bound
    # refusals 1 s apart: the bucket is full again after (20 - 1) / 100 s, so only 0.19 s count
    ([(0.5, 0.5)] * 100, [(0.0, 0.0), (1.0, 1.0)], AdmissionBounds(100, 21.0, 100, 100 * 0.19 - 1, 0.19)),
])
def test_bounds_table(admitted, refused, want):
    got = gcra_bounds(admitted, refused, RATE, BURST)
    assert (got.admitted, got.admitted_in_chain) == (want.admitted, want.admitted_in_chain)
    assert got.high == pytest.approx(want.high) and got.low == pytest.approx(want.low)
    assert got.saturated_s == pytest.approx(want.saturated_s)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        gcra_bounds([], [], 0, 1)
