"""The HTTP/1 connection's pure parts: state table, head scanning and bounds, reply head, chunked decoder."""

import gunicorn_h1c
import pytest

from edge import framing
from edge.context import Reply
from edge.errors import BadRequest, HeaderTooLarge, InvalidResponseField
from edge.h1 import (TRANSITIONS, ChunkedDecoder, Clock, Connection, Event, HeadLimits, IllegalTransition, State, UriTooLong,
                     check_partial_head, head_end, interim_head, next_state, parse_head, reply_head)

LIMITS = HeadLimits(8190, 100, 8190, 65536)


# ---------------------------------------------------------------------------- state machine

# One request per line: the legal paths through the table.
PATHS = [
    ([Event.HEAD, Event.REPLY, Event.KEEP], State.IDLE),                    # whole head in one recv, keep-alive
    ([Event.BYTES, Event.HEAD, Event.REPLY, Event.CLOSE], State.CLOSED),     # trickled head, then close
    ([Event.HEAD, Event.UPGRADE, Event.CLOSE], State.CLOSED),                # WebSocket
    ([Event.BYTES, Event.REFUSE, Event.CLOSE], State.CLOSED),                # 400/408/414/431
    ([Event.REFUSE, Event.CLOSE], State.CLOSED),
    ([Event.CLOSE], State.CLOSED),                                           # idle keep-alive closed
    ([Event.BYTES, Event.CLOSE], State.CLOSED),                              # client vanished mid-head
    ([Event.HEAD, Event.CLOSE], State.CLOSED),
]


@pytest.mark.parametrize("events, final", PATHS)
def test_legal_paths(events, final):
    state = State.IDLE
    for ev in events:
        state = next_state(state, ev)
    assert state is final


@pytest.mark.parametrize("state, event", [
    (s, e) for s in State for e in Event if (s, e) not in TRANSITIONS
])
def test_every_illegal_transition_raises_naming_the_state(state, event):
    with pytest.raises(IllegalTransition) as exc:
        next_state(state, event)
    assert state.value in str(exc.value) and event.value in str(exc.value)


def test_keep_alive_only_after_a_reply():
    with pytest.raises(IllegalTransition):
        next_state(State.HANDLING, Event.KEEP)   # keep-alive is decided by writing, nowhere else
    with pytest.raises(IllegalTransition):
        next_state(State.TUNNEL, Event.KEEP)


# ---------------------------------------------------------------------------- reading


@pytest.mark.parametrize("buf, scanned, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, 27),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT", 0, 27),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 25, 27),   # the end straddles the previous recv
    (b"GET / HTTP/1.1\r\nHost: x\r\n", 0, -1),
    (b"GET / HTTP/1.1\nHost: x\n\n", 0, 24),           # bare LF: handed to the parser, which refuses it
])
def test_head_end(buf, scanned, expected):
    assert head_end(buf, scanned) == expected


@pytest.mark.parametrize("buf, error", [
    (b"GET /" + b"a" * 9000, UriTooLong),                                 # request line without an end
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, HeaderTooLarge),            # field line without an end
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 14000, HeaderTooLarge),      # the whole head
])
def test_partial_head_bounds(buf, error):
    with pytest.raises(error):
        check_partial_head(buf, LIMITS)


def test_partial_head_within_bounds():
    check_partial_head(b"GET / HTTP/1.1\r\nX: " + b"a" * 8000, LIMITS)


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
])
def test_parser_refuses_what_admission_trusts_it_with(raw):
    # admission.admit(..., fields_checked=True) relies on these refusals.
    with pytest.raises(BadRequest):
        parse_head(raw, LIMITS)


def test_parser_limits_map_to_statuses():
    with pytest.raises(UriTooLong):
        parse_head(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", LIMITS)
    with pytest.raises(HeaderTooLarge):
        parse_head(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", LIMITS)
    assert isinstance(gunicorn_h1c.LimitRequestLine("x", 1), Exception)


# ---------------------------------------------------------------------------- writing


def _reply(status=200, headers=(("Content-Type", "text/plain"),), length=5, reason="OK"):
    return Reply(status, reason, list(headers), b"hello", length)


def test_reply_head_length_and_date():
    r = _reply()
    head = reply_head(r, framing.plan("GET", 200, 5, True), "DATE")
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: DATE\r\nContent-Length: 5\r\n\r\n"


def test_reply_head_chunked_close_and_own_date():
    r = _reply(headers=[("date", "D0")], length=None)
    head = reply_head(r, framing.plan("GET", 200, None, True, keep_alive=False), "DATE")
    assert head == b"HTTP/1.1 200 OK\r\ndate: D0\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("headers, reason", [
    ([("X-Bad", "a\r\nSet-Cookie: x=1")], "OK"),     # response splitting
    ([("X-Bad", "a\x00")], "OK"),
    ([("Bad Name", "v")], "OK"),
    ([("X", 5)], "OK"),                                 # not a str (a plugin bug)
    ([("X", "v")], "OK\r\nX: y"),                       # reason phrase
])
def test_reply_head_refuses_invalid_fields(headers, reason):
    with pytest.raises(InvalidResponseField):
        reply_head(_reply(headers=headers, reason=reason), framing.plan("GET", 200, 5, True), "DATE")


def test_interim_head_has_fields_and_no_framing_or_date():
    # RFC 9110 §15.2: a 1xx ends with its header section (no content, no framing)
    assert interim_head(103, "Early Hints", [("Link", "</a>; rel=preload"), ("Via", "1.1 edge")]) == \
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\nVia: 1.1 edge\r\n\r\n"
    assert interim_head(102, "Processing", []) == b"HTTP/1.1 102 Processing\r\n\r\n"


@pytest.mark.parametrize("status, fields, reason", [
    (103, [("X-Bad", "a\r\nSet-Cookie: x=1")], "EH"),   # response splitting
    (103, [("Bad Name", "v")], "EH"),
    (103, [], "EH\r\nX: y"),                           # reason phrase
    (101, [], "Switching Protocols"),                   # the upgrade path writes its own head
    (200, [], "OK"),
])
def test_interim_head_refuses_what_may_not_be_written(status, fields, reason):
    with pytest.raises(InvalidResponseField):
        interim_head(status, reason, fields)


def test_request_context_has_no_default_client_address():
    # A made-up 127.0.0.1 would pass loopback allow rules (issue 7, defect 10).
    from edge.context import RequestContext

    with pytest.raises(TypeError):
        RequestContext("GET", "/")


# ---------------------------------------------------------------------------- chunked bodies


def decode_all(pieces):
    d = ChunkedDecoder()
    out = []
    for p in pieces:
        out.extend(d.feed(p))
    return d, b"".join(out)


def test_chunked_decoder_whole_and_byte_by_byte():
    wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT"
    for pieces in ([wire], [wire[i:i + 1] for i in range(len(wire))]):
        d, body = decode_all(pieces)
        assert body == b"hello world"
        assert d.done
        assert d.trailers == [("X-Trailer", "yes")]
    d, _ = decode_all([wire])
    assert d.surplus == b"NEXT"  # the next pipelined request stays for the connection


@pytest.mark.parametrize("wire", [
    b"zz\r\nab\r\n0\r\n\r\n",              # not hex
    b"-1\r\n",                            # sign
    b"5\r\nhelloXX0\r\n\r\n",             # data not followed by CRLF
    b"5\nhello\r\n0\r\n\r\n",             # bare LF
    b"11111111111111111\r\n",             # size overflow (17 hex digits)
    b"0\r\nBad Trailer\r\n\r\n",          # trailer without colon
    b"3" + b" " * 5000 + b"\r\n",         # unbounded size line
])
def test_chunked_decoder_refuses_bad_framing(wire):
    with pytest.raises(BadRequest):
        decode_all([wire])


class _ResetSocket:
    """A keep-alive socket whose client reset the connection while it was idle."""

    def settimeout(self, t):
        pass

    def recv(self, n):
        raise ConnectionResetError(104, "Connection reset by peer")


def test_reset_while_idle_leaves_no_entry_in_the_idle_map():
    # The worker's idle map is what a stopping worker shuts down; a reset connection left in it
    # would be held (and shut down again) for the life of the worker.
    from types import SimpleNamespace as NS

    from edge.errors import ClientDisconnected

    cfg = NS(server=NS(keepalive=5, header_timeout=10, body_idle_timeout=10))
    worker = NS(proxy=NS(state=NS(cfg=cfg)), idle_connections={}, head_limits=HeadLimits(8190, 100, 8190, 65536),
                tunnel_idle_s=5, clock=Clock())
    conn = Connection(worker, _ResetSocket(), "192.0.2.1", 80, "http")
    conn.served = 1  # between two requests: the socket is in the idle map while it waits
    with pytest.raises(ClientDisconnected):
        conn.read_head()
    assert worker.idle_connections == {}
