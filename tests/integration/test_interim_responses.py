"""A backend's 1xx interim responses reach the client (RFC 9110 §15.2; issue 10).

"A proxy MUST forward 1xx responses unless the proxy itself requested the generation of
the 1xx response", and "A server MUST NOT send a 1xx response to an HTTP/1.0 client".
One edge (two workers, a plain and a TLS listener) in front of a scripted origin
(tests/fixtures/scripted_origin.py: canned 1xx heads, then the final one, in one write)
and a raw origin whose 102 is held apart from its final answer by a gate the test opens,
so that a 1xx is seen to reach the client before the backend has answered. The interim
heads are read off raw sockets (http.client, and so requests, takes a 103 for the final
response) and HTTP/2 HEADERS frames.
"""

from __future__ import annotations

import socket
import threading
import time

import gevent
import pytest

from edge.launch import free_port, start_edge
from edge.tls import generate_self_signed
from tests.fixtures.scripted_origin import Canned, ScriptedOrigin
from tests.fixtures.statsd import StatsdSink
from tests.integration.raw_origin import RawOrigin
from tests.integration.rawhttp import TIMEOUT_S, messages, send_until_close

MAX_INTERIM = 3
LINKS = (("Link", "</style.css>; rel=preload; as=style"), ("Link", "</app.js>; rel=preload; as=script"))
# hop-by-hop fields in a 1xx: removed as from a final response (RFC 9110 §7.6.1)
HOP = (("Connection", "X-Hop-Option"), ("X-Hop-Option", "1"), ("Keep-Alive", "timeout=5"),
       ("Proxy-Authenticate", "Basic"), ("Proxy-Connection", "keep-alive"))
GATE_WAIT_S = 20.0


def _gated(conn, origin) -> None:
    """102 at once, the final answer when the test opens the path's gate."""
    while True:
        req = conn.read_request()
        if req is None:
            return
        path = req["line"].split(" ")[1]
        if not conn.send(b"HTTP/1.1 102 Processing\r\nX-Step: working\r\n\r\n"):
            return
        origin.gates.setdefault(path, threading.Event()).wait(GATE_WAIT_S)
        body = path.encode()
        if not conn.send(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)):
            return


class Env:
    def __init__(self, edge, origin: ScriptedOrigin, gated: RawOrigin, plain: int, secure: int, statsd: StatsdSink) -> None:
        self.edge, self.origin, self.gated, self.plain, self.secure = edge, origin, gated, plain, secure
        self.statsd = statsd
        self._n = 0

    def misses(self, at_least: int = 0, timeout_s: float = 30.0) -> int:
        """edge's ``cache.miss`` count once it reaches ``at_least`` and stops moving (statsd: each
        increment is sent as it happens; the sink, a greenlet, reads them while we wait)."""
        counts = self.statsd.counts
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline and (counts["edge.cache.miss"] < at_least or counts["edge.cache.miss"] != last):
            last = counts["edge.cache.miss"]
            gevent.sleep(0.2)
        return counts["edge.cache.miss"]

    def path(self, prefix: str, name: str) -> str:
        self._n += 1
        return f"/{prefix}/{name}-{self._n}"

    def raw(self, path: str, version: str = "1.1", extra: str = "") -> list[tuple[int, list[tuple[str, str]], bytes]]:
        data = f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}Connection: close\r\n\r\n".encode("latin-1")
        return messages(send_until_close(self.plain, data))


def names(fields) -> set[str]:
    return {n.lower() for n, _ in fields}


def values(fields, name: str) -> list[str]:
    return [v for n, v in fields if n.lower() == name.lower()]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    origin = ScriptedOrigin()
    gated = RawOrigin(_gated)
    gated.gates = {}
    d = tmp_path_factory.mktemp("edge-interim")
    cert, key = generate_self_signed(d / "tls")
    plain, secure = free_port(), free_port()
    upstream = {"retries": 0, "health": {"passive": {"consecutive_failures": 0}}}
    sink = StatsdSink()
    config = {
        "metrics": {"statsd": sink.address},
        "server": {"listeners": [{"bind": f"127.0.0.1:{plain}"}, {"bind": f"127.0.0.1:{secure}", "tls": True}]},
        "tls": {"certfile": str(cert), "keyfile": str(key)},
        "upstreams": {
            "app": {"servers": [f"127.0.0.1:{origin.port}"], "limits": {"max_interim_responses": MAX_INTERIM}, **upstream},
            "gated": {"servers": [f"127.0.0.1:{gated.port}"], **upstream},
        },
        "routes": [
            {"name": "cached", "match": {"path": "/cached/"}, "upstream": "app", "cache": {"enabled": True}},
            {"name": "gated", "match": {"path": "/gated/"}, "upstream": "gated", "cache": {"enabled": True}},
            {"name": "app", "match": {"path": "/"}, "upstream": "app"},
        ],
    }
    edge = start_edge(config, workers=2, port=plain, work_dir=str(d))
    yield Env(edge, origin, gated, plain, secure, sink)
    edge.stop()
    sink.close()
    gated.stop()
    origin.stop()


def test_early_hints_reach_the_client_before_the_final_response(env):
    p = env.path("plain", "hints")
    env.origin.script(p, Canned(200, [("X-Final", "yes")], interim=((103, LINKS + HOP),)))
    got = env.raw(p)
    assert [m[0] for m in got] == [103, 200]
    hints, final = got
    assert values(hints[1], "Link") == [v for _, v in LINKS]          # the fields intact, in order
    assert not names(hints[1]) & {n.lower() for n, _ in HOP}          # hop-by-hop fields removed
    assert not names(hints[1]) & {"content-length", "transfer-encoding"}
    assert values(hints[1], "Via") == ["1.1 edge"]
    assert values(final[1], "X-Final") == ["yes"] and final[2] == f"{p} 1\n".encode()


def test_several_interim_responses_in_order(env):
    p = env.path("plain", "two")
    env.origin.script(p, Canned(200, interim=((102, (("X-Step", "1"),)), (103, LINKS[:1]))))
    got = env.raw(p)
    assert [(m[0], values(m[1], "X-Step") or values(m[1], "Link")) for m in got[:2]] == \
        [(102, ["1"]), (103, [LINKS[0][1]])]
    assert got[2][0] == 200 and len(got) == 3


def test_no_interim_response_to_an_http10_client(env):
    # RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0 client."
    p = env.path("plain", "http10")
    env.origin.script(p, Canned(200, interim=((103, LINKS),)))
    got = env.raw(p, version="1.0")
    assert [m[0] for m in got] == [200] and got[0][2] == f"{p} 1\n".encode()


def test_more_interim_responses_than_allowed_is_502(env):
    p = env.path("plain", "too-many")
    env.origin.script(p, Canned(200, interim=tuple((103, LINKS) for _ in range(MAX_INTERIM + 1))))
    got = env.raw(p)
    assert got[-1][0] == 502 and all(m[0] == 103 for m in got[:-1]) and len(got) <= MAX_INTERIM + 1


def test_interim_passes_through_on_a_miss_and_is_never_replayed_from_the_cache(env):
    # RFC 9111 §3: only a final response is stored; the 102 goes to the client that caused the fetch
    p = env.path("cached", "processing")
    env.origin.script(p, Canned(200, [("Cache-Control", "max-age=600")], interim=((102, ()),)))
    miss = env.raw(p)
    assert [m[0] for m in miss] == [102, 200]
    hit = env.raw(p)
    assert [m[0] for m in hit] == [200] and hit[0][2] == miss[1][2]
    # from the store: a hit, or "collapsed" when it arrived while the miss's fill was still being
    # committed (just after that answer's last byte) and was answered from that fill
    status = values(hit[0][1], "Cache-Status")[0]
    assert ("hit" in status or "collapsed" in status) and env.origin.count(p) == 1


def test_expect_100_continue_gets_exactly_one_100_when_the_backend_sends_one_too(env):
    # edge answers the expectation itself and does not send Expect on (RFC 9110 §10.1.1): the
    # backend's own 100 answers nothing the client asked, and is not forwarded as a second one
    p = env.path("plain", "expect")
    env.origin.script(p, Canned(200, interim=((100, ()), (103, LINKS[:1]))))
    with socket.create_connection(("127.0.0.1", env.plain), timeout=TIMEOUT_S) as s:
        s.sendall(f"POST {p} HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                  f"Connection: close\r\n\r\n".encode())
        first = b""
        while b"\r\n\r\n" not in first:
            chunk = s.recv(65536)
            assert chunk, "closed before the 100"
            first += chunk
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n")
        s.sendall(b"hello")
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    got = messages(first + rest)
    assert [m[0] for m in got] == [100, 103, 200]
    assert env.origin.requests(p)[0].body == b"hello" and env.origin.requests(p)[0].header("expect") is None


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def test_interim_response_is_relayed_as_it_arrives(env):
    # The origin holds its final answer until the client has seen the 102: relayed only with the
    # final head, the 102 would never arrive and the read below would time out.
    p = env.path("gated", "arrives")
    gate = env.gated.gates.setdefault(p, threading.Event())
    with socket.create_connection(("127.0.0.1", env.plain), timeout=TIMEOUT_S) as s:
        s.sendall(f"GET {p} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        head, rest = _read_head(s)
        assert head.startswith(b"HTTP/1.1 102 Processing\r\n") and b"X-Step: working" in head
        gate.set()
        while chunk := s.recv(65536):
            rest += chunk
    got = messages(rest)
    assert [m[0] for m in got] == [200] and got[0][2] == p.encode()


def test_a_request_waiting_on_another_fill_gets_no_interim_response(env):
    p = env.path("gated", "coalesced")
    gate = env.gated.gates.setdefault(p, threading.Event())
    request = f"GET {p} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
    before = env.misses()
    leader = socket.create_connection(("127.0.0.1", env.plain), timeout=TIMEOUT_S)
    try:
        leader.sendall(request)
        head, rest = _read_head(leader)  # the leader's fetch is at the origin, answered with 102
        assert head.startswith(b"HTTP/1.1 102")
        waiter: list[bytes] = []
        t = threading.Thread(target=lambda: waiter.append(send_until_close(env.plain, request)))
        t.start()
        try:
            # the waiter's miss is counted after its lookup found the fill in progress: from then
            # on it waits on that fill (coalesce_wait 5 s), however slow the machine
            env.misses(before + 2)
        finally:
            gate.set()
            t.join(TIMEOUT_S * 2)
        while chunk := leader.recv(65536):
            rest += chunk
    finally:
        leader.close()
    assert messages(rest)[0][0] == 200
    got = messages(waiter[0])
    assert [m[0] for m in got] == [200] and got[0][2] == p.encode()
    assert "collapsed" in values(got[0][1], "Cache-Status")[0]
    assert sum(1 for r in env.gated.requests if r["line"].split(" ")[1] == p) == 1


def test_http2_client_gets_interim_headers_frames(env):
    # RFC 9113 §8.1: a response may start with HEADERS frames carrying 1xx status codes
    from tests.integration.h2client import h2_exchange

    p = env.path("plain", "h2")
    env.origin.script(p, Canned(200, [("X-Final", "yes")], interim=((102, ()), (103, LINKS + HOP))))
    r = h2_exchange(env.secure, p)
    assert r.status == 200 and r.reset is None and r.headers["x-final"] == "yes" and r.data == f"{p} 1\n".encode()
    assert [status for status, _ in r.interim] == [102, 103]
    hints = r.interim[1][1]
    assert hints["link"] in {v for _, v in LINKS}  # (a dict keeps one of the two)
    assert not set(hints) & {n.lower() for n, _ in HOP}


def test_http2_interim_is_not_replayed_on_a_hit(env):
    from tests.integration.h2client import h2_exchange

    p = env.path("cached", "h2")
    env.origin.script(p, Canned(200, [("Cache-Control", "max-age=600")], interim=((103, LINKS),)))
    miss = h2_exchange(env.secure, p)
    hit = h2_exchange(env.secure, p)
    assert [s for s, _ in miss.interim] == [103] and miss.status == 200
    assert hit.interim == [] and hit.status == 200 and hit.data == miss.data and env.origin.count(p) == 1
