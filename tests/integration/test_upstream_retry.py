"""Retries on a fresh connection after a stale pooled one never resend a partly consumed body (issue 7, defect 3).

A raw-socket backend keeps the connection edge pooled idle, and resets it (RST) at the
moment edge is waiting for the client's request body: edge has taken the pooled
connection for a request with ``Expect: 100-continue`` and answered ``100 Continue``;
only then does the client send the body. Before the fix, edge pulled the first chunk,
wrote it to the dead connection, and retried on a fresh one from the iterator without
that chunk: a chunked upload reached the backend without its first chunk, and a
Content-Length upload hung until the read timeout.
"""

from __future__ import annotations

import socket

import pytest

from tests.integration.raw_origin import RawOrigin, response


def _echo_handler(drop_request: int | None = None):
    """Answers every request with its body; with ``drop_request=n``, reads request n of each
    connection and closes without answering (a backend whose idle timer fired as it arrived)."""

    def handler(conn, origin):
        while True:
            req = conn.read_request()
            if req is None:
                return
            if drop_request is not None and req["n"] == drop_request:
                return  # close: FIN, no answer
            if not conn.send(response(200, b"got:" + req["body"])):
                return

    return handler


def _cfg(port: int) -> dict:
    return {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{port}"], "retries": 0, "timeouts": {"read": "3s"}}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }


def _read_response(c: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = c.recv(65536)
        if not data:
            raise AssertionError(f"edge closed before a response head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = c.recv(65536)
        if not data:
            break
        rest += data
    return status, rest[:length]


@pytest.fixture
def origin():
    o = RawOrigin(_echo_handler())
    yield o
    o.stop()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upload_retried_after_pooled_connection_reset_arrives_whole(origin, edge_factory, framing):
    e = edge_factory(_cfg(origin.port), workers=2)
    with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
        # One client connection: both requests go to the same worker, which pools the backend connection.
        c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(c) == (200, b"got:")
        assert origin.connections == 1
        frame = "Transfer-Encoding: chunked" if framing == "chunked" else "Content-Length: 10"
        c.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{frame}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            data = c.recv(1)
            assert data, "edge closed instead of 100 Continue"
            got += data
        assert got.startswith(b"HTTP/1.1 100"), got
        # Edge is now reading the body: the backend resets the idle pooled connection.
        assert origin.reset_idle_connection()
        body = b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n" if framing == "chunked" else b"helloworld"
        c.sendall(body)
        status, answer = _read_response(c)
    assert (status, answer) == (200, b"got:helloworld")
    assert [r["body"] for r in origin.requests if r["line"].startswith("POST")] == [b"helloworld"]


@pytest.mark.parametrize("size", [10, 40_000])
def test_idempotent_upload_resent_whole_when_backend_drops_it_on_a_reused_connection(edge_factory, size):
    # The backend reads the second request of every connection and closes without answering:
    # a PUT (idempotent, body within the kept 64 KiB) is sent again, whole, on a fresh connection.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            status, answer = _read_response(c)
        assert status == 200 and answer == b"got:" + body
        puts = [r for r in o.requests if r["line"].startswith("PUT")]
        assert [len(r["body"]) for r in puts] == [size, size] and all(r["body"] == body for r in puts)
        assert [r["conn"] for r in puts] == [1, 2]
    finally:
        o.stop()


def test_upload_larger_than_kept_bytes_is_not_resent(edge_factory):
    # 200 KiB: more than the 64 KiB edge keeps, so a dropped request is answered 502, not resent short.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        body = b"y" * 200_000
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            status, _ = _read_response(c)
        assert status == 502
        assert [len(r["body"]) for r in o.requests if r["line"].startswith("PUT")] == [200_000]
        assert "cannot be sent again" in e.log()
    finally:
        o.stop()


def test_post_dropped_after_it_was_sent_is_not_retried(edge_factory):
    # RFC 9112 §9.3.1: the backend may have acted on it; a non-idempotent request is not repeated.
    o = RawOrigin(_echo_handler(drop_request=2))
    try:
        e = edge_factory(_cfg(o.port), workers=1)
        with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
            c.sendall(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(c)[0] == 200
            c.sendall(b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            status, _ = _read_response(c)
        assert status == 502
        assert len([r for r in o.requests if r["line"].startswith("POST")]) == 1
    finally:
        o.stop()


def test_body_not_invited_when_no_backend_is_reachable(edge_factory):
    # The body is pulled only once a connection exists: with every server refusing, a client
    # that sent "Expect: 100-continue" gets the 502 instead of a 100 and an upload that goes nowhere.
    from edge.launch import free_port

    e = edge_factory(_cfg(free_port()), workers=1)
    with socket.create_connection(("127.0.0.1", e.port), timeout=15) as c:
        c.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        status, _ = _read_response(c)
    assert status == 502


# ---------------------------------------------------------------- issue 9 item 4: retries across servers

import http.client  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from tests.fixtures.statsd import statsd  # noqa: E402,F401  (the fixture)


def _answer(status: int, name: str, *extra: str, delay_s: float = 0.0, methods=None):
    """Answers every request with ``status`` and a body naming the origin; with ``methods``, only
    those methods get ``status`` (others 200). ``delay_s`` waits (bounded) before answering."""

    def handler(conn, origin):
        while True:
            req = conn.read_request()
            if req is None:
                return
            code = status if methods is None or req["line"].split(" ")[0] in methods else 200
            if delay_s:
                time.sleep(delay_s)
            if not conn.send(response(code, f"{name}:{len(req['body'])}".encode(), f"X-Origin: {name}", *extra)):
                return

    return handler


def _drop(conn, origin):
    """Reads each request and closes without a byte of answer (a backend that crashed on it)."""
    conn.read_request()


class _Origins:
    def __init__(self, *handlers) -> None:
        self.all = [RawOrigin(h) for h in handlers]

    def __getitem__(self, i: int) -> RawOrigin:
        return self.all[i]

    def hits(self, i: int, method: str | None = None) -> int:
        return len([r for r in self.all[i].requests if method is None or r["line"].startswith(method + " ")])

    def stop(self) -> None:
        for o in self.all:
            o.stop()


@pytest.fixture
def origins():
    made: list[_Origins] = []

    def make(*handlers) -> _Origins:
        o = _Origins(*handlers)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


def _pool_cfg(origins: _Origins, retry: dict | None = None, statsd_addr: str | None = None, **extra) -> dict:
    # round robin: these tests count which server got what (the default p2c_ewma would steer
    # away from a slow or failing server, which is the balancer's business, not the retries')
    up = {"servers": [f"127.0.0.1:{o.port}" for o in origins.all], "balance": "round_robin", "timeouts": {"read": "5s"},
          **extra}
    if retry is not None:
        up["retry"] = retry
    # A stopping worker waits out its graceful timeout while it holds pooled connections to a
    # RawOrigin (5 s by default in tests); these tests do not look at stopping.
    cfg = {"upstreams": {"app": up}, "routes": [{"match": {"path": "/"}, "upstream": "app"}],
           "server": {"graceful_timeout": "1s"}}
    if statsd_addr:
        cfg["metrics"] = {"statsd": statsd_addr}
    return cfg


def _request(port: int, method: str = "GET", body: bytes | None = None, chunked: bool = False):
    """One request on its own connection (so the two workers share the load): status, headers, body."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        if chunked:
            c.putrequest(method, "/r")
            c.putheader("Transfer-Encoding", "chunked")
            c.endheaders()
            for i in range(0, len(body), 8192):
                piece = body[i:i + 8192]
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.send(b"0\r\n\r\n")
        else:
            c.request(method, "/r", body=body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("configured", [True, False])
def test_idempotent_get_retried_on_another_server_only_when_configured(origins, edge_factory, status, configured):
    o = origins(_answer(status, "bad"), _answer(200, "good"))
    on = ["connect_error", "reset", str(status)] if configured else ["connect_error", "reset"]
    e = edge_factory(_pool_cfg(o, {"on": on}))
    n = 16
    got = [_request(e.port) for _ in range(n)]
    bad = o.hits(0)
    assert bad >= 1, "round robin never picked the failing server"
    if configured:
        assert [s for s, _, _ in got] == [200] * n
        assert o.hits(1) == n and bad <= n          # every request once at the good server
    else:
        assert o.hits(0) + o.hits(1) == n           # nothing sent twice
        failed = [(s, h.get("x-origin"), b) for s, h, b in got if s != 200]
        # The backend's own answer, not one edge made up.
        assert failed == [(status, "bad", b"bad:0")] * bad


def test_post_reaching_a_backend_is_never_retried_even_with_502_in_on(origins, edge_factory):
    # One server answers 502, the other reads the POST and closes without answering.
    o = origins(_answer(502, "bad"), _drop)
    e = edge_factory(_pool_cfg(o, {"attempts": 3, "on": ["connect_error", "reset", "read_timeout", "502", "503", "504"]}))
    n = 8
    statuses = [_request(e.port, "POST", b"order")[0] for _ in range(n)]
    assert statuses == [502] * n
    assert o.hits(0, "POST") + o.hits(1, "POST") == n   # each POST reached exactly one backend once
    assert o.hits(0, "POST") >= 1 and o.hits(1, "POST") >= 1


def test_get_reset_before_any_response_byte_goes_to_another_server(origins, edge_factory):
    # Default `on` (connect_error, reset): a fresh connection closed before the answer is retried for GET.
    o = origins(_drop, _answer(200, "good"))
    e = edge_factory(_pool_cfg(o))
    n = 8
    assert [_request(e.port)[0] for _ in range(n)] == [200] * n
    assert o.hits(0) >= 1 and o.hits(1) == n


@pytest.mark.parametrize("timeouts", [{"read": "800ms"}, {"per_try": "800ms"}])
def test_read_timeout_retried_for_get_only(origins, edge_factory, timeouts):
    # The slow server answers after 2.5 s: past the read timeout (or the per-try timeout), which
    # leaves the fast one (a thread that answers at once) ample time even on a busy machine.
    o = origins(_answer(200, "slow", delay_s=2.5), _answer(200, "fast"))
    retry = {"on": ["connect_error", "reset", "read_timeout"]}
    extra = {}
    if "per_try" in timeouts:
        retry["per_try_timeout"] = timeouts["per_try"]
    else:
        extra["timeouts"] = {"read": timeouts["read"]}
    cfg = _pool_cfg(o, retry)
    cfg["upstreams"]["app"].update(extra)
    e = edge_factory(cfg)
    gets = [_request(e.port) for _ in range(4)]
    assert [(s, h["x-origin"]) for s, h, _ in gets] == [(200, "fast")] * 4
    assert o.hits(0, "GET") >= 1 and o.hits(1, "GET") == 4
    posts = [_request(e.port, "POST", b"p")[0] for _ in range(4)]
    slow_posts = o.hits(0, "POST")
    assert slow_posts >= 1 and slow_posts + o.hits(1, "POST") == 4
    assert sorted(posts) == sorted([504] * slow_posts + [200] * (4 - slow_posts))


@pytest.mark.parametrize("retry_503", [True, False])
def test_503_with_retry_after_holds_that_server(origins, edge_factory, retry_503):
    o = origins(_answer(503, "busy", "Retry-After: 30"), _answer(200, "good"))
    on = ["connect_error", "reset", "503"] if retry_503 else ["connect_error"]
    e = edge_factory(_pool_cfg(o, {"on": on}), workers=2)
    n = 20
    got = [_request(e.port) for _ in range(n)]
    busy = o.hits(0)
    # Each worker sends the busy server one request at most, then holds it for 30 s.
    assert 1 <= busy <= 2
    assert o.hits(1) == (n if retry_503 else n - busy)
    answers = [(s, h.get("x-origin"), h.get("retry-after")) for s, h, _ in got]
    if retry_503:
        assert answers == [(200, "good", None)] * n
    else:
        assert sorted(answers, key=str) == sorted([(503, "busy", "30")] * busy + [(200, "good", None)] * (n - busy), key=str)


def test_503_with_retry_after_and_no_other_server_reaches_the_client(origins, edge_factory):
    # A hold never empties a pool: the one server keeps getting requests, and its own 503 (with
    # its Retry-After) reaches the client, never a 503 made up by edge.
    o = origins(_answer(503, "only", "Retry-After: 30"))
    e = edge_factory(_pool_cfg(o, {"on": ["connect_error", "503"]}), workers=1)
    got = [_request(e.port) for _ in range(3)]
    assert [(s, h["x-origin"], h["retry-after"]) for s, h, _ in got] == [(503, "only", "30")] * 3
    assert o.hits(0) == 3


def _counter(sink, name: str, at_least: int, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while sink.counts[name] < at_least and time.monotonic() < deadline:
        gevent.sleep(0.05)
    return sink.counts[name]


def test_retry_budget_caps_retries_against_an_always_failing_pool(origins, edge_factory, statsd):
    o = origins(_answer(503, "a"), _answer(503, "b"))
    ratio, min_per_s, window_s = 0.1, 0.1, 10.0   # per worker: 10% of requests + 1 retry per 10 s
    retry = {"attempts": 2, "on": ["connect_error", "503"], "budget": {"ratio": ratio, "min_per_s": min_per_s}}
    e = edge_factory(_pool_cfg(o, retry, statsd.address), workers=2)
    n = 60
    started = time.monotonic()
    statuses = []
    for _ in range(n):
        statuses.append(_request(e.port)[0])
        gevent.sleep(0)  # the statsd sink (a greenlet) empties its socket buffer between requests
    elapsed = time.monotonic() - started
    assert statuses == [503] * n
    retries = o.hits(0) + o.hits(1) - n
    # Without the budget every request would be tried twice (60 retries). With it, each worker's
    # retries in any window stay under ratio x its requests + min_per_s x window; the windows the
    # burst spans bound the minimum part.
    windows = 1 + int(elapsed // window_s) + 1
    assert 1 <= retries <= ratio * n + 2 * windows * min_per_s * window_s, (retries, elapsed)
    assert _counter(statsd, "edge.upstream.app.retry", retries) == retries
    assert _counter(statsd, "edge.upstream.app.retry.503", retries) == retries
    assert _counter(statsd, "edge.upstream.app.retry_budget_exhausted", n - retries) == n - retries


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_chunked_body_over_the_keep_cap_is_never_retried(origins, edge_factory, method):
    o = origins(_answer(503, "busy", methods={method}), _answer(200, "good"))
    cfg = _pool_cfg(o, {"attempts": 2, "on": ["connect_error", "reset", "503"]}, limits={"retry_body_bytes": "16KiB"})
    e = edge_factory(cfg)
    big = bytes(range(256)) * 160   # 40 KiB: over the 16 KiB kept
    got = [_request(e.port, method, big, chunked=True) for _ in range(6)]
    busy = o.hits(0, method)
    assert busy >= 1 and busy + o.hits(1, method) == 6       # each upload went out once
    assert sorted(s for s, _, _ in got) == sorted([503] * busy + [200] * (6 - busy))
    assert all(b == b"good:%d" % len(big) for s, _, b in got if s == 200)
    # A small body is kept: an idempotent PUT is sent again, whole, to the other server.
    small = b"s" * 1000
    got = [_request(e.port, method, small, chunked=True) for _ in range(6)]
    if method == "PUT":
        assert [(s, b) for s, _, b in got] == [(200, b"good:1000")] * 6
        assert o.hits(1, "PUT") == 6 + (6 - busy)
    else:
        assert o.hits(0, "POST") + o.hits(1, "POST") == 12   # never retried after it was sent


def test_a_retried_5xx_is_drained_when_whole_and_its_connection_closed_when_not(origins, edge_factory):
    seen_closed: list[bool] = []

    def slow_body_503(conn, origin):
        # The head and half the body now; the rest never comes: edge must close, not wait.
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 503 X\r\nContent-Length: 100000\r\nX-Origin: slow\r\n\r\n" + b"z" * 50000)
        seen_closed.append(conn.wait_closed_by_peer(10.0))

    o = origins(_answer(503, "whole"), slow_body_503, _answer(200, "good"))
    e = edge_factory(_pool_cfg(o, {"attempts": 3, "on": ["connect_error", "503"]}), workers=1)
    got = [_request(e.port) for _ in range(6)]
    assert [(s, h["x-origin"]) for s, h, _ in got] == [(200, "good")] * 6
    # A small 503 that arrived whole was read out and its connection reused for the next one.
    assert o.hits(0) >= 2 and o[0].connections == 1
    # An unfinished one: the connection was closed at once (before the 10 s the origin waits).
    deadline = time.monotonic() + 15
    while len(seen_closed) < o.hits(1) and time.monotonic() < deadline:
        time.sleep(0.05)  # the origin's thread notices the close on its next poll
    assert o.hits(1) >= 1 and seen_closed == [True] * o.hits(1)


def test_post_whose_connect_was_refused_goes_to_the_next_server(origins, edge_factory):
    # Nothing was sent, so any method moves on (and a refused connect costs no retry budget).
    from edge.launch import free_port

    o = origins(_answer(200, "good"))
    cfg = _pool_cfg(o, {"budget": {"ratio": 0, "min_per_s": 0}})
    cfg["upstreams"]["app"]["servers"].insert(0, f"127.0.0.1:{free_port()}")
    e = edge_factory(cfg)
    got = [_request(e.port, "POST", b"pay") for _ in range(6)]
    assert [(s, b) for s, _, b in got] == [(200, b"good:3")] * 6
    assert o.hits(0, "POST") == 6
