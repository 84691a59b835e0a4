"""edge.logs: the burst throttle (a table, injected clock), request labels, client-error lines."""

from __future__ import annotations

import logging

import pytest

from edge.logs import ClientErrorLog, RequestLabel, Throttle, ThrottledLog, request_label, route_to_gunicorn
from edge.testing import make_ctx

# (time, key) events -> (logged?, suppressed_before) for Throttle(interval_s=10, burst=2)
THROTTLE_TABLE = [
    (0.0, "a", True, 0),
    (1.0, "a", True, 0),     # second of the burst
    (2.0, "a", False, 0),    # over the burst: counted
    (3.0, "b", True, 0),     # keys are independent
    (9.9, "a", False, 0),
    (10.0, "a", True, 2),    # a new window: the old count rides on it (due() was not called)
    (10.5, "a", True, 0),
]


def test_throttle_table():
    t = Throttle(10.0, burst=2)
    for now, key, logged, before in THROTTLE_TABLE:
        a = t.admit(key, now)
        assert (a.log, a.suppressed_before) == (logged, before), (now, key)


def test_throttle_due_reports_each_ended_burst_once():
    t = Throttle(10.0, burst=1)
    t.admit("x", 0.0)
    t.admit("x", 1.0)
    t.admit("x", 2.0)
    t.admit("y", 5.0)        # no suppression: nothing to report for y
    assert t.next_deadline() == 10.0
    assert t.due(9.0) == []
    assert t.due(10.0) == [("x", 2)]
    assert t.due(20.0) == []     # reported once, and y's window ended silently
    assert t.next_deadline() is None
    assert t.admit("x", 21.0).suppressed_before == 0


@pytest.mark.parametrize("interval_s, burst", [(0, 1), (-1, 1), (1, 0)])
def test_throttle_refuses_bad_settings(interval_s, burst):
    with pytest.raises(ValueError):
        Throttle(interval_s, burst)


def test_throttled_log_writes_closing_line_when_burst_ends():
    now = [0.0]
    written, closing = [], []
    tl = ThrottledLog(10.0, 1, lambda key, n: closing.append((key, n)), clock=lambda: now[0])
    assert tl.emit("k", lambda before: written.append(before)) is True
    for t in (1.0, 2.0, 3.0):
        now[0] = t
        assert tl.emit("k", lambda before: written.append(before)) is False
    assert written == [0] and closing == []
    now[0] = 10.0
    tl.flush()
    assert closing == [("k", 3)]
    tl.flush()
    assert closing == [("k", 3)]


def test_throttled_log_timer_flushes_without_a_further_event():
    import gevent

    closing = []
    tl = ThrottledLog(0.05, 1, lambda key, n: closing.append((key, n)))
    for _ in range(4):
        tl.emit("k", lambda before: None)
    gevent.sleep(0.2)   # the armed timer ends the burst with its count
    assert closing == [("k", 3)]


@pytest.mark.parametrize("kw, header, expected", [
    ({"method": "GET", "path": "/x"}, None, "GET /x"),
    ({"method": "POST", "path": "/a", "query": "q=1"}, None, "POST /a?q=1"),
    ({"method": "GET", "path": "/x", "headers": {"X-Request-ID": "abc"}}, "X-Request-ID", "GET /x request_id=abc"),
])
def test_request_label(kw, header, expected):
    ctx = make_ctx(**kw)
    assert str(request_label(ctx, header)) == expected


def test_request_label_prefers_ctx_request_id_and_is_lazy():
    ctx = make_ctx(method="GET", path="/y", headers={"X-Request-ID": "from-header"})
    label = RequestLabel(ctx, "X-Request-ID")
    ctx.request_id = "rid-7"            # set later by a plugin: the label reads it when written
    assert f"{label}" == "GET /y request_id=rid-7"
    assert "RequestContext" not in "%s" % (label,)


def test_client_error_log_rate_limited_with_suppressed_line(caplog):
    now = [0.0]
    cel = ClientErrorLog(logging.getLogger("edge.client.test"), interval_s=10.0, burst=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="edge.client.test"):
        for i in range(5):
            now[0] = float(i)
            cel.log("192.0.2.7", 431, "request headers too large")
        now[0] = 11.0
        cel.log("192.0.2.8", 400, "bad request line", "GET /x request_id=r1")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "client error 431 from 192.0.2.7: request headers too large",
        "client error 431 from 192.0.2.7: request headers too large",
        "3 more client errors suppressed in the last 10s",
        "client error 400 from 192.0.2.8: bad request line (GET /x request_id=r1)",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_route_to_gunicorn_uses_gunicorns_handlers_as_they_are_now():
    gerr = logging.getLogger("gunicorn.error")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    saved = (gerr.handlers[:], logging.getLogger("edge").level, logging.getLogger("edge").propagate,
             logging.getLogger().level, logging.getLogger("edge").handlers[:], logging.getLogger().handlers[:])
    try:
        gerr.handlers = [Keep()]
        route_to_gunicorn("info")
        route_to_gunicorn("info")             # idempotent: one line per record
        logging.getLogger("edge.plugin.x").info("one")
        gerr.handlers = [Keep()]              # gunicorn replaced its handlers (a reload)
        logging.getLogger("edge.plugin.x").info("two")
        logging.getLogger("some.lib").info("below warning")
        logging.getLogger("some.lib").warning("three")
        assert records == ["one", "two", "three"]
    finally:
        gerr.handlers = saved[0]
        edge = logging.getLogger("edge")
        edge.setLevel(saved[1])
        edge.propagate = saved[2]
        logging.getLogger().setLevel(saved[3])
        edge.handlers = saved[4]
        logging.getLogger().handlers = saved[5]
