"""Balancer and pool logic (pure; no sockets)."""

import pytest

from edge.upstream.balancer import RoundRobin
from edge.upstream.pool import ConnectionPool, PooledConnection


class FakeSock:
    closed = False

    def close(self):
        self.closed = True


def test_round_robin_uniform_cycles_and_skips_excluded():
    rr = RoundRobin([1, 1, 1])
    assert [rr.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert rr.pick({0}) == 1
    assert rr.pick({0, 1, 2}) is None


def test_smooth_weighted_round_robin_interleaves():
    rr = RoundRobin([5, 1, 1])
    picks = [rr.pick() for _ in range(7)]
    assert picks.count(0) == 5 and picks.count(1) == 1 and picks.count(2) == 1
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # nginx's smooth sequence, not 0,0,0,0,0,1,2


def test_round_robin_refuses_bad_weights():
    with pytest.raises(ValueError):
        RoundRobin([])
    with pytest.raises(ValueError):
        RoundRobin([1, 0])


def test_pool_is_lifo_and_expires_idle_connections():
    pool = ConnectionPool(max_idle=2, idle_timeout=10, max_requests=100)
    a, b = PooledConnection(FakeSock(), pool), PooledConnection(FakeSock(), pool)
    pool.put(a, now=0)
    pool.put(b, now=1)
    assert pool.get(now=2) is b
    assert pool.get(now=11) is None  # a went idle at 0: past the 10 s idle timeout
    assert a.sock.closed


def test_pool_bounds_idle_and_retires_old_connections():
    pool = ConnectionPool(max_idle=1, idle_timeout=10, max_requests=3)
    a, b = PooledConnection(FakeSock(), pool), PooledConnection(FakeSock(), pool)
    pool.put(a, 0)
    pool.put(b, 0)
    assert b.sock.closed and pool.idle_count() == 1
    c = PooledConnection(FakeSock(), pool)
    c.requests = 3
    pool.get(0)
    pool.put(c, 0)
    assert c.sock.closed  # served max_requests: retired


def test_backend_keepalive_hint_expires_connection():
    pool = ConnectionPool(max_idle=4, idle_timeout=60, max_requests=100)
    a = PooledConnection(FakeSock(), pool)
    a.expires = 5
    pool.put(a, 0)
    assert pool.get(6) is None and a.sock.closed


from edge.errors import UnsendableRequest  # noqa: E402
from edge.upstream.client import Limits, _Parse, check_request  # noqa: E402

# Retry decisions and ReplayBody: tests/unit/test_retry.py


# ---------------------------------------------------------------- validate on the way out (issue 7)


@pytest.mark.parametrize("method,target,host,headers,named", [
    ("GET", "/a b", None, [], "request target"),
    ("GET", "/a\r\nX: y", None, [], "request target"),
    ("GET", "/admin#x", None, [], "request target"),
    ("GET", "a", None, [], "request target"),                  # not origin-form
    ("GET", "*", None, [], "request target"),                  # "*" only for OPTIONS
    ("GET", "/\u20ac", None, [], "request target"),            # no latin-1 byte for it
    ("GE T", "/", None, [], "method"),
    ("GET\r\n", "/", None, [], "method"),
    ("GET", "/", "h\r\nX: y", [], "Host"),
    ("GET", "/", "", [], "Host"),
    ("GET", "/", None, [("X-A", "ok"), ("X-B", "v\r\nInjected: 1")], "X-B"),
    ("GET", "/", None, [("X-A", "nul\x00")], "X-A"),
    ("GET", "/", None, [("X A", "ok")], "'X A'"),
    ("GET", "/", None, [("X-A:", "ok")], "'X-A:'"),
])
def test_check_request_refuses_and_names_the_field_not_the_value(method, target, host, headers, named):
    with pytest.raises(UnsendableRequest) as e:
        check_request(method, target, host, headers)
    assert named in str(e.value)
    assert "Injected" not in str(e.value) and "nul" not in str(e.value)
    assert e.value.status == 500


@pytest.mark.parametrize("method,target,host,headers", [
    ("GET", "/", None, []),
    ("GET", "/a/b?q=1&r=%20x", "example.com:8080", [("X-A", "tab\tin"), ("Accept", "*/*")]),
    ("OPTIONS", "*", "h", []),
    ("GET", "/caf\xe9", None, []),     # obs bytes pass as received (admission decides)
    ("PURGE", "/x", None, [("X-Empty", "")]),
])
def test_check_request_accepts_valid_requests(method, target, host, headers):
    check_request(method, target, host, headers)


# ---------------------------------------------------------------- response limits (issue 7, defect 4)


def _parse(data: bytes, limits: Limits = Limits()):
    import httptools

    p = _Parse(limits)
    parser = httptools.HttpResponseParser(p)
    p.status_of = parser.get_status_code
    parser.feed_data(data)
    return p, parser


def _head(n_fields: int, value: str = "v") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, value.encode()) for i in range(n_fields)) + b"Content-Length: 0\r\n\r\n"


@pytest.mark.parametrize("data,limits,error", [
    (_head(99), Limits(max_fields=100), None),
    (_head(100), Limits(max_fields=100), "more than 100 header fields"),
    (_head(1, "x" * 100), Limits(max_line_bytes=100), "field line longer than 100 bytes"),
    (_head(1, "x" * 90), Limits(max_line_bytes=100), None),
    (b"HTTP/1.1 200 " + b"r" * 200 + b"\r\nContent-Length: 0\r\n\r\n", Limits(max_line_bytes=100), "status line longer"),
    (b"HTTP/1.1 103 EH\r\n\r\n" * 3 + _head(0), Limits(max_interim_responses=3), None),
    (b"HTTP/1.1 103 EH\r\n\r\n" * 4 + _head(0), Limits(max_interim_responses=3), "more than 3 interim"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: v\r\n" * 11 + b"\r\n",
     Limits(max_fields=10), "more than 10 trailer fields"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: " + b"v" * 200 + b"\r\n\r\n",
     Limits(max_trailer_bytes=100), "trailer section larger than 100 bytes"),
])
def test_response_limits_table(data, limits, error):
    p, _ = _parse(data, limits)
    assert p.error == error or (error is not None and p.error is not None and p.error.startswith(error))


def test_interim_heads_are_dropped_and_the_final_one_kept():
    p, parser = _parse(b"HTTP/1.1 103 EH\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok")
    assert p.final and p.done and p.interim == 1 and p.status_of is None
    assert p.headers == [("X-Final", "1"), ("Content-Length", "2")]
    assert p.chunks == [b"ok"] and parser.get_status_code() == 200


def _parse_relayed(data: bytes, limits: Limits = Limits()):
    import httptools

    p = _Parse(limits, relay=lambda *head: None)
    parser = httptools.HttpResponseParser(p)
    p.status_of = parser.get_status_code
    parser.feed_data(data)
    return p


@pytest.mark.parametrize("data,heads", [
    # RFC 9110 §15.2: a proxy MUST forward 1xx responses, in order, with their fields
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nLink: </b>\r\n\r\n" + _head(0),
     [(103, "Early Hints", [("Link", "</a>"), ("Link", "</b>")])]),
    (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 EH\r\nX: 1\r\n\r\n" + _head(0),
     [(102, "Processing", []), (103, "EH", [("X", "1")])]),
    # 100 is edge's own business (it answers Expect itself, RFC 9110 §10.1.1): never forwarded
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 EH\r\n\r\n" + _head(0), [(103, "EH", [])]),
    (b"HTTP/1.1 199 Whatever\r\n\r\n" + _head(0), [(199, "Whatever", [])]),
    (_head(1), None),                                 # no 1xx: nothing collected, nothing allocated
])
def test_interim_heads_are_collected_for_the_relay(data, heads):
    p = _parse_relayed(data)
    assert p.final and p.heads == heads and p.headers[-1] == ("Content-Length", "0")


def test_interim_heads_over_the_limit_are_not_collected():
    p = _parse_relayed(b"HTTP/1.1 103 EH\r\n\r\n" * 3 + _head(0), Limits(max_interim_responses=2))
    assert p.error.startswith("more than 2 interim") and len(p.heads) == 2


def test_interim_heads_without_a_relay_are_dropped():
    p, _ = _parse(b"HTTP/1.1 103 EH\r\nLink: </a>\r\n\r\n" + _head(0))
    assert p.heads is None and p.interim == 1


def test_a_second_response_is_surplus_and_never_passed_on():
    p, _ = _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\nContent-Length: 3\r\n\r\nbad")
    assert p.surplus and p.done
    assert p.chunks == [b"ok"] and ("X-Smuggled", "1") not in p.headers + p.trailers
