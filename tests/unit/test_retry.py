"""Retry policy, retry budget, Retry-After and ReplayBody (pure; injected clocks; issue 9 item 4)."""

from __future__ import annotations

import calendar
import itertools

import pytest
import yaml

from edge.config import UpstreamConfig
from edge.upstream.retry import (
    Action,
    BodyState,
    Cause,
    HoldSet,
    ReplayBody,
    RetryBudget,
    RetryPolicy,
    causes_for,
    parse_http_date,
    parse_retry_after,
)

NOT_PULLED = BodyState()
KEPT = BodyState(pulled_bytes=10, replayable=True)
NOT_KEPT = BodyState(pulled_bytes=70000, replayable=False)
ALL_ON = causes_for(["connect_error", "reset", "read_timeout", "502", "503", "504"])

# ---------------------------------------------------------------- decisions

# Per cause: (retried without being in `on`, needs an idempotent method, counted against, the action).
# "fresh" counts fresh connections after a stale pooled one (same server); "servers" counts attempts.
RULES = {
    Cause.CONNECT_ERROR: (False, False, "servers", Action.NEXT_SERVER),
    Cause.CONNECT_TIMEOUT: (False, False, "servers", Action.NEXT_SERVER),
    Cause.STALE_WRITE: (True, False, "fresh", Action.FRESH_CONNECTION),   # nothing reached the backend
    Cause.STALE_READ: (True, True, "fresh", Action.FRESH_CONNECTION),     # RFC 9112 §9.3.1
    Cause.RESET: (False, True, "servers", Action.NEXT_SERVER),
    Cause.READ_TIMEOUT: (False, True, "servers", Action.NEXT_SERVER),
    Cause.STATUS_502: (False, True, "servers", Action.NEXT_SERVER),
    Cause.STATUS_503: (False, True, "servers", Action.NEXT_SERVER),
    Cause.STATUS_504: (False, True, "servers", Action.NEXT_SERVER),
}
assert set(RULES) == set(Cause)

METHODS = {"GET": True, "HEAD": True, "PUT": True, "DELETE": True, "OPTIONS": True, "POST": False, "PATCH": False}
BODIES = {"not_pulled": NOT_PULLED, "kept": KEPT, "not_kept": NOT_KEPT}


def _expected(cause, method, body, over_limit, in_on):
    always, needs_idempotent, _, action = RULES[cause]
    if not BODIES[body].resendable:
        return Action.GIVE_UP
    if not (always or in_on):
        return Action.GIVE_UP
    if needs_idempotent and not METHODS[method]:
        return Action.GIVE_UP
    if over_limit:
        return Action.GIVE_UP
    return action


@pytest.mark.parametrize(
    "cause,method,body,over_limit,in_on",
    list(itertools.product(list(Cause), list(METHODS), list(BODIES), [False, True], [False, True])),
)
def test_every_decision(cause, method, body, over_limit, in_on):
    policy = RetryPolicy(attempts=3, on=ALL_ON if in_on else frozenset())
    attempt, fresh_tried = (3, 1) if over_limit else (2, 0)
    assert policy.decide(method, cause, BODIES[body], attempt, fresh_tried) is _expected(cause, method, body, over_limit, in_on)


@pytest.mark.parametrize("cause,method,body,attempt,fresh_tried,expected", [
    # The rows that carry the rules, spelled out.
    (Cause.CONNECT_ERROR, "POST", NOT_PULLED, 1, 0, Action.NEXT_SERVER),    # nothing sent: any method
    (Cause.CONNECT_TIMEOUT, "POST", KEPT, 1, 0, Action.NEXT_SERVER),
    (Cause.CONNECT_ERROR, "GET", NOT_PULLED, 2, 0, Action.GIVE_UP),         # attempts=2: two servers tried
    (Cause.CONNECT_ERROR, "PUT", NOT_KEPT, 1, 0, Action.GIVE_UP),           # body pulled and not kept
    (Cause.RESET, "GET", NOT_PULLED, 1, 0, Action.NEXT_SERVER),
    (Cause.RESET, "POST", KEPT, 1, 0, Action.GIVE_UP),                      # RFC 9112 §9.3.1: may have been applied
    (Cause.STATUS_502, "GET", NOT_PULLED, 1, 0, Action.GIVE_UP),            # 502 not in the default `on`
    (Cause.READ_TIMEOUT, "GET", NOT_PULLED, 1, 0, Action.GIVE_UP),          # nor read_timeout
    (Cause.STALE_WRITE, "POST", NOT_PULLED, 1, 0, Action.FRESH_CONNECTION),
    (Cause.STALE_WRITE, "POST", NOT_KEPT, 1, 0, Action.GIVE_UP),
    (Cause.STALE_WRITE, "GET", NOT_PULLED, 1, 1, Action.GIVE_UP),           # once only
    (Cause.STALE_READ, "PUT", KEPT, 1, 0, Action.FRESH_CONNECTION),
    (Cause.STALE_READ, "POST", NOT_PULLED, 1, 0, Action.GIVE_UP),
])
def test_default_policy_rows(cause, method, body, attempt, fresh_tried, expected):
    assert RetryPolicy().decide(method, cause, body, attempt, fresh_tried) is expected


def test_status_and_timeout_retries_are_for_idempotent_methods_only():
    policy = RetryPolicy(attempts=2, on=causes_for(["502", "503", "504", "read_timeout"]))
    for cause in (Cause.STATUS_502, Cause.STATUS_503, Cause.STATUS_504, Cause.READ_TIMEOUT):
        assert policy.decide("GET", cause, NOT_PULLED, 1) is Action.NEXT_SERVER
        assert policy.decide("PUT", cause, KEPT, 1) is Action.NEXT_SERVER
        assert policy.decide("POST", cause, NOT_PULLED, 1) is Action.GIVE_UP
        assert policy.decide("PUT", cause, NOT_KEPT, 1) is Action.GIVE_UP
    # connect_error in `on` also enables connect timeouts; without it neither is retried
    assert policy.decide("GET", Cause.CONNECT_ERROR, NOT_PULLED, 1) is Action.GIVE_UP


@pytest.mark.parametrize("kwargs,named", [
    ({"attempts": 0}, "attempts"),
    ({"fresh_connections": -1}, "fresh_connections"),
    ({"per_try_timeout": 0}, "per_try_timeout"),
    ({"retry_after_max_s": -1}, "retry_after_max_s"),
    ({"on": frozenset({"502"})}, "on"),
])
def test_policy_refuses_bad_values(kwargs, named):
    with pytest.raises(ValueError, match=named):
        RetryPolicy(**kwargs)


def test_causes_for_names_unknown_causes():
    assert causes_for(["connect_error"]) == {Cause.CONNECT_ERROR, Cause.CONNECT_TIMEOUT}
    with pytest.raises(ValueError, match="'500'"):
        causes_for(["500"])


# ---------------------------------------------------------------- config


def _upstream(text: str) -> UpstreamConfig:
    return UpstreamConfig.model_validate(yaml.safe_load(text))


def test_config_retry_section_with_an_unquoted_yaml_on_key():
    cfg = _upstream("servers: [127.0.0.1:1]\nretry: {attempts: 3, on: [502, 503, read_timeout], per_try_timeout: 500ms,"
                    " budget: {ratio: 0.1, min_per_s: 1}, retry_after_max: 30s}")
    policy = RetryPolicy.from_config(cfg)
    assert policy == RetryPolicy(attempts=3, on=causes_for(["502", "503", "read_timeout"]), per_try_timeout=0.5,
                                 retry_after_max_s=30.0)
    assert (cfg.retry.budget.ratio, cfg.retry.budget.min_per_s, cfg.retry.budget.window) == (0.1, 1.0, 10.0)


def test_config_defaults_and_the_older_retries_key():
    assert RetryPolicy.from_config(_upstream("servers: [127.0.0.1:1]")) == RetryPolicy(attempts=2)
    assert RetryPolicy.from_config(_upstream("servers: [127.0.0.1:1]\nretries: 0")).attempts == 1
    assert RetryPolicy.from_config(_upstream("servers: [127.0.0.1:1]\nretries: 3")).attempts == 4


@pytest.mark.parametrize("text,message", [
    ("retries: 2\nretry: {attempts: 3}", "either retries or retry.attempts"),
    ("retry: {on: [500]}", "Input should be"),
    ("retry: {per_try_timeout: 0s}", "must be positive"),
    ("retry: {budget: {ratio: -1}}", "greater than or equal"),
    ("retry: {tries: 2}", "Extra inputs"),
])
def test_config_refuses_bad_retry_settings(text, message):
    with pytest.raises(Exception, match=message):
        _upstream("servers: [127.0.0.1:1]\n" + text)


# ---------------------------------------------------------------- budget


def test_budget_allows_the_minimum_then_a_share_of_requests():
    b = RetryBudget(ratio=0.2, min_per_s=0.3, window_s=10.0)   # 3 retries per window whatever the traffic
    now = 100.0
    assert [b.try_retry(now) for _ in range(4)] == [True, True, True, False]
    assert b.exhausted == 1
    for _ in range(10):
        b.request(now)  # 10 requests: 20% of them is 2 more
    assert [b.try_retry(now) for _ in range(3)] == [True, True, False]
    assert b.exhausted == 2


def test_budget_recovers_as_the_window_slides():
    b = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10.0, slots=10)
    for _ in range(10):
        b.request(0.0)
    assert sum(b.try_retry(0.5) for _ in range(10)) == 5          # exhausted at 50%
    assert not b.try_retry(9.9)                                     # still inside the window
    # At 10.0 s the first slot (requests and retries of t=0) leaves the window: nothing counted,
    # nothing allowed without new requests; the refusals are counted.
    assert not b.try_retry(10.0)
    assert b.exhausted == 7
    for _ in range(4):
        b.request(10.0)
    assert [b.try_retry(10.5) for _ in range(3)] == [True, True, False]


def test_budget_under_steady_traffic_caps_retries_at_the_ratio():
    b = RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0)
    granted = 0
    for step in range(3000):          # 100 requests per second for 30 s, each failing once
        now = step / 100.0
        b.request(now)
        granted += b.try_retry(now)
    assert 0.19 * 3000 <= granted <= 0.2 * 3000 + 1
    assert b.exhausted == 3000 - granted


def test_budget_forgets_everything_after_a_long_pause():
    b = RetryBudget(ratio=0.0, min_per_s=0.1, window_s=10.0)
    assert b.try_retry(0.0) and not b.try_retry(1.0)
    assert b.try_retry(1000.0) and not b.try_retry(1000.0)


def test_budget_refuses_bad_values():
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(-0.1, 1)
    with pytest.raises(ValueError, match="min_per_s"):
        RetryBudget(0.1, -1)


# ---------------------------------------------------------------- holds (503 + Retry-After)


def test_hold_excludes_a_server_until_its_time():
    h = HoldSet(3)
    assert h.excluded(0.0) == frozenset()
    h.hold(1, 5.0, now=10.0)
    assert h.excluded(10.0) == {1} and h.excluded(14.9) == {1}
    assert h.excluded(15.0) == frozenset()
    h.hold(2, 0, now=20.0)  # Retry-After: 0 holds nothing
    assert h.excluded(20.0) == frozenset()


def test_a_later_hold_extends_and_an_earlier_one_does_not_shorten():
    h = HoldSet(3)
    h.hold(0, 10.0, now=0.0)
    h.hold(0, 2.0, now=1.0)
    assert h.excluded(5.0) == {0}
    h.hold(0, 20.0, now=5.0)
    assert h.excluded(24.0) == {0} and h.excluded(25.0) == frozenset()


def test_holds_never_empty_the_pool():
    h = HoldSet(2)
    h.hold(0, 10.0, now=0.0)
    h.hold(1, 5.0, now=0.0)
    assert h.excluded(1.0) == frozenset()     # both held: neither is excluded
    assert h.excluded(5.0) == {0}             # server 1's hold ended: server 0 is held again
    h.observe(0, "success", 6.0)              # outcomes do not lift a hold
    assert h.excluded(6.0) == {0}


# ---------------------------------------------------------------- Retry-After (RFC 9110 §10.2.3)

NOW = float(calendar.timegm((2026, 11, 30, 12, 0, 0, 0, 0, 0)))


@pytest.mark.parametrize("value,expected", [
    ("120", 120.0),
    ("0", 0.0),
    (" 7 ", 7.0),
    ("Mon, 30 Nov 2026 12:00:30 GMT", 30.0),        # IMF-fixdate
    ("Monday, 30-Nov-26 12:01:00 GMT", 60.0),       # obsolete RFC 850 form
    ("Mon Nov 30 12:00:05 2026", 5.0),              # asctime
    ("Mon Nov  1 12:00:05 2027", 336 * 86400 + 5.0),  # asctime, space-padded day
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),         # in the past: no wait
    ("-5", None),
    ("1.5", None),
    ("", None),
    ("soon", None),
    ("Mon, 30 Nov 2026 12:00:30 UTC", None),        # only GMT
    ("Mon, 31 Nov 2026 12:00:30 GMT", None),        # no such day
    ("Mon, 30 Nov 2026 25:00:30 GMT", None),
    ("١٢٠", None),                                  # digits, but not ASCII DIGIT
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_rfc850_two_digit_years_never_lie_more_than_50_years_ahead():
    # RFC 9110 §5.6.7: more than 50 years in the future means the most recent past year.
    assert parse_http_date("Tuesday, 01-Jan-75 00:00:00 GMT", NOW) == calendar.timegm((2075, 1, 1, 0, 0, 0, 0, 0, 0))
    assert parse_http_date("Sunday, 01-Jan-77 00:00:00 GMT", NOW) == calendar.timegm((1977, 1, 1, 0, 0, 0, 0, 0, 0))


# ---------------------------------------------------------------- ReplayBody (issue 7, defect 3)


def test_replay_body_resends_kept_chunks_then_continues_the_stream():
    body = ReplayBody(iter([b"ab", b"cd", b"ef"]), keep_bytes=10)
    first = body.attempt()
    assert next(first) == b"ab"
    assert body.state() == BodyState(2, True)
    second = body.attempt()  # the first attempt failed after one chunk
    assert list(second) == [b"ab", b"cd", b"ef"]
    assert body.state() == BodyState(6, True)
    assert list(body.attempt()) == [b"ab", b"cd", b"ef"]  # exhausted source: the kept bytes are the body


def test_replay_body_over_its_cap_cannot_be_resent():
    body = ReplayBody(iter([b"a" * 6, b"b" * 6, b"c"]), keep_bytes=10)
    it = body.attempt()
    assert next(it) == b"a" * 6 and body.state().resendable
    assert next(it) == b"b" * 6
    assert body.state() == BodyState(12, False) and not body.state().resendable
    with pytest.raises(RuntimeError):
        body.attempt()


def test_replay_body_released_after_the_answer():
    body = ReplayBody(iter([b"x"]), keep_bytes=10)
    assert list(body.attempt()) == [b"x"]
    body.release()
    assert not body.state().resendable


def test_the_retries_example_in_docs_upstreams_md_is_valid():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "upstreams.md").read_text()
    section = text[text.index("## Retries"):]
    block = section[section.index("```yaml") + len("```yaml"):]
    block = block[:block.index("```")]
    api = UpstreamConfig.model_validate(yaml.safe_load(block)["upstreams"]["api"])
    assert RetryPolicy.from_config(api) == RetryPolicy(attempts=3, on=ALL_ON, per_try_timeout=2.0)
    assert api.limits.retry_body_bytes == 65536


@pytest.mark.parametrize("section,message", [
    ("retry:\n      on: [connect_error, 500]",
     "upstreams.app.retry.on[1]: Input should be 'connect_error', 'reset', 'read_timeout', '502', '503' or '504' (got '500')"),
    ("retries: 2\n    retry:\n      attempts: 2", "upstreams.app: give either retries or retry.attempts, not both"),
])
def test_config_errors_name_the_key(tmp_path, section, message):
    from edge.config import load_config
    from edge.errors import ConfigError

    path = tmp_path / "edge.yaml"
    path.write_text("upstreams:\n  app:\n    servers: [127.0.0.1:9000]\n    " + section
                    + "\nroutes:\n  - {match: {path: /}, upstream: app}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value) == f"{path}: {message}"


# ---------------------------------------------------------------- a discarded response leaks nothing


class _FakeSock:
    closed = False

    def close(self):
        self.closed = True


def _reply_with_body(started: bool):
    from edge.upstream.client import Server, UpstreamReply
    from edge.upstream.pool import ConnectionPool, PooledConnection

    pool = ConnectionPool(max_idle=4, idle_timeout=60, max_requests=100)
    conn = PooledConnection(_FakeSock(), pool)
    reply = UpstreamReply(503, "X", [], Server(0, "127.0.0.1", 1, pool))
    reply._conn = conn

    def body():
        try:
            yield b"a"
            yield b"b"
        finally:
            conn.close()

    reply.body = body()
    if started:
        assert next(reply.body) == b"a"
    return reply, conn


@pytest.mark.parametrize("started", [False, True])
def test_closing_a_reply_closes_its_connection_even_before_the_body_started(started):
    # A generator closed before its first step never runs its finally: close() must not rely on it.
    reply, conn = _reply_with_body(started)
    reply.close()
    assert conn.sock.closed


def test_retry_after_with_thousands_of_digits_is_a_long_wait_not_an_error():
    from edge.upstream.retry import parse_retry_after

    assert parse_retry_after("9" * 5000, 0.0) == 1e9
    assert parse_retry_after("120", 0.0) == 120.0


def test_a_tls_handshake_failure_counts_as_a_connect_failure_for_outlier_detection():
    from edge.errors import TLSHandshakeError
    from edge.upstream.client import _outcome_of_error
    from edge.upstream.health import Outcome

    assert _outcome_of_error(TLSHandshakeError("bad certificate")) is Outcome.CONNECT_FAILURE
    assert _outcome_of_error(ValueError("not the server's doing")) is Outcome.NO_VERDICT
