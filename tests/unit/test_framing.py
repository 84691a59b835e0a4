"""Reply framing: one decision for HTTP/1 and HTTP/2 (pure, from a table)."""

import pytest

from edge.framing import BodyLengthMismatch, ErrorAfterHead, check_complete, on_error_after_head, plan

# columns: method, status, length, has_body, kw -> body, announce_length, chunked, close_delimited, trailers, keep
TABLE = [
    ("GET", 200, 10, True, {}, (True, True, False, False, False, True)),
    ("GET", 200, None, True, {}, (True, False, True, False, True, True)),            # chunked, trailers possible
    ("GET", 200, None, True, {"http11": False}, (True, False, False, True, False, False)),  # 1.0: close-delimited
    ("GET", 200, 10, True, {"http11": False}, (True, True, False, False, False, True)),
    ("GET", 200, 10, True, {"keep_alive": False}, (True, True, False, False, False, False)),
    ("HEAD", 200, 1234, False, {}, (False, True, False, False, False, True)),       # HEAD keeps the length
    ("HEAD", 200, None, False, {}, (False, False, False, False, False, True)),
    ("GET", 204, 0, False, {}, (False, False, False, False, False, True)),          # never a length on 204
    ("GET", 304, 50, True, {}, (False, True, False, False, False, True)),           # 304 keeps the selected length
    ("GET", 101, None, False, {}, (False, False, False, False, False, True)),
    ("GET", 103, None, False, {}, (False, False, False, False, False, True)),
    ("GET", 200, 0, True, {}, (True, True, False, False, False, True)),
    # HTTP/2: no chunked, no close-delimited; the connection is not a per-reply matter
    ("GET", 200, None, True, {"http2": True}, (True, False, False, False, True, True)),
    ("GET", 200, 10, True, {"http2": True, "keep_alive": False}, (True, True, False, False, False, True)),
    ("HEAD", 200, 1234, False, {"http2": True}, (False, True, False, False, False, True)),
    ("HEAD", 200, 1234, True, {"http2": True}, (False, True, False, False, False, True)),
    ("GET", 204, None, False, {"http2": True}, (False, False, False, False, False, True)),
]


@pytest.mark.parametrize("method, status, length, has_body, kw, expected", TABLE)
def test_plan(method, status, length, has_body, kw, expected):
    p = plan(method, status, length, has_body, **kw)
    assert (p.body, p.announce_length, p.chunked, p.close_delimited, p.trailers, p.keep_alive) == expected


def test_plans_are_shared_constants_and_frozen():
    assert plan("GET", 200, 5, True) is plan("GET", 201, 7, True)
    with pytest.raises(AttributeError):
        plan("GET", 200, 5, True).keep_alive = False


def test_error_after_head():
    assert on_error_after_head(False) == ErrorAfterHead.ABORT_CONNECTION
    assert on_error_after_head(True) == ErrorAfterHead.RESET_STREAM


def test_check_complete():
    check_complete(None, 5)
    check_complete(5, 5)
    with pytest.raises(BodyLengthMismatch):
        check_complete(10, 5)
