"""Backend responses are bounded: head size, field count, line length, 1xx count, trailers (issue 7, defect 4).

Over a limit the client gets 502 and edge discards the backend connection (the raw
backend sees it closed); within the limits the same shapes pass.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.raw_origin import RawOrigin, response

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


def _fields(n: int, value_len: int) -> list[str]:
    return [f"X-F{i}: " + "v" * value_len for i in range(n)]


def _chunked_with_trailers(trailers: bytes) -> bytes:
    return b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + trailers + b"\r\n"


def _answer(conn, path: str) -> bool:
    """Send the answer for ``path``; False when edge closed the connection while we sent."""
    if path == "/ok":
        return conn.send(response(200, b"ok"))
    if path == "/big-head":          # 50 fields of 2000 bytes: each fine, ~100 KB together
        return conn.send(response(200, b"x", *_fields(50, 2000)))
    if path == "/endless-field":     # one field line that never ends (8 MB, then the connection is dropped)
        if not conn.send(b"HTTP/1.1 200 X\r\nX-Endless: "):
            return False
        piece = b"a" * 65536
        return all(conn.send(piece) for _ in range(128))
    if path == "/many-fields":
        return conn.send(response(200, b"x", *_fields(150, 8)))
    if path == "/twenty-fields":
        return conn.send(response(200, b"x", *_fields(20, 8)))
    if path == "/long-line":
        return conn.send(response(200, b"x", "X-Long: " + "l" * 9000))
    if path == "/endless-1xx":       # 5000 interim answers, then a final one
        for _ in range(50):
            if not conn.send(EARLY_HINTS * 100):
                return False
        return conn.send(response(200, b"late"))
    if path == "/some-1xx":
        return conn.send(EARLY_HINTS * 3 + response(200, b"hinted"))
    if path == "/huge-trailer":
        return conn.send(_chunked_with_trailers(b"X-T: " + b"t" * 1_000_000 + b"\r\n"))
    if path == "/many-trailers":
        return conn.send(_chunked_with_trailers(b"".join(b"X-T%d: v\r\n" % i for i in range(150))))
    if path == "/small-trailer":
        return conn.send(b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                         b"2\r\nok\r\n0\r\nX-Sum: 1\r\n\r\n")
    if path == "/two-responses":     # a second, unasked-for response right behind the first
        return conn.send(response(200, b"ok") + response(200, b"smuggled", "X-Smuggled: 1"))
    return conn.send(response(404, b""))


def _handler(conn, origin):
    while True:
        req = conn.read_request()
        if req is None:
            return
        path = req["line"].split(" ")[1]
        sent = _answer(conn, path)
        if path in ("/ok", "/some-1xx", "/small-trailer", "/twenty-fields") and sent:
            continue
        # Over a limit (or refused): edge must drop this connection.
        if not sent or conn.wait_closed_by_peer(15):
            origin.closed_by_peer.append(conn.number)
        return


@pytest.fixture(scope="module")
def origin():
    o = RawOrigin(_handler)
    yield o
    o.stop()


@pytest.fixture(scope="module")
def edge(origin, tmp_path_factory):
    from edge.launch import start_edge

    cfg = {"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"], "retries": 0}},
           "routes": [{"match": {"path": "/"}, "upstream": "app"}]}
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


@pytest.mark.parametrize("path", ["/big-head", "/endless-field", "/many-fields", "/long-line",
                                  "/huge-trailer", "/many-trailers"])
def test_response_over_a_limit_is_502_and_connection_discarded(origin, edge, path):
    before = set(origin.closed_by_peer)
    r = requests.get(f"{edge.url}{path}", timeout=30)
    assert r.status_code == 502
    assert len(r.content) < 100
    # The connection that carried it was closed by edge, not pooled.
    from tests.integration.conftest import until

    until(lambda: set(origin.closed_by_peer) - before, timeout_s=20)
    assert requests.get(f"{edge.url}/ok", timeout=10).text == "ok"  # the worker serves on


def test_endless_interim_responses_are_502_after_the_allowed_ones(origin, edge):
    # The 1xx within max_interim_responses (8) are forwarded (RFC 9110 §15.2, issue 10); then 502,
    # and the connection is dropped. Raw: requests would take the first 103 for the answer.
    from tests.integration.conftest import until
    from tests.integration.rawhttp import messages, send_until_close

    before = set(origin.closed_by_peer)
    got = messages(send_until_close(edge.port, b"GET /endless-1xx HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    assert [m[0] for m in got] == [103] * 8 + [502]
    until(lambda: set(origin.closed_by_peer) - before, timeout_s=20)
    assert requests.get(f"{edge.url}/ok", timeout=10).text == "ok"


def test_some_interim_responses_pass_before_the_final_one(edge):
    from tests.integration.rawhttp import messages, send_until_close

    got = messages(send_until_close(edge.port, b"GET /some-1xx HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    assert [m[0] for m in got] == [103, 103, 103, 200] and got[-1][2] == b"hinted"


@pytest.mark.parametrize("path,body", [("/small-trailer", b"ok"), ("/twenty-fields", b"x")])
def test_response_within_limits_passes(edge, path, body):
    r = requests.get(f"{edge.url}{path}", timeout=10)
    assert r.status_code == 200 and r.content == body


def test_limits_are_configurable_per_upstream(origin, edge_factory):
    cfg = {"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"], "retries": 0, "limits": {"max_fields": 10}}},
           "routes": [{"match": {"path": "/"}, "upstream": "app"}]}
    e = edge_factory(cfg, workers=1)
    assert requests.get(f"{e.url}/twenty-fields", timeout=10).status_code == 502
    assert requests.get(f"{e.url}/ok", timeout=10).status_code == 200
    assert "more than 10 header fields" in e.log()


def test_second_response_to_one_request_is_dropped_with_its_connection(origin, edge):
    # Response splitting from the backend side: the client gets exactly the first response,
    # and the connection that carried the surplus is not reused for anyone else.
    before = set(origin.closed_by_peer)
    r = requests.get(f"{edge.url}/two-responses", timeout=10)
    assert r.status_code == 200 and r.content == b"ok" and "X-Smuggled" not in r.headers
    from tests.integration.conftest import until

    until(lambda: set(origin.closed_by_peer) - before, timeout_s=20)
