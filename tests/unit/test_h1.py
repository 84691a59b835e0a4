"""HTTP/1 request framing rules and the chunked decoder (pure)."""

import pytest

from edge.errors import BadRequest
from edge.h1 import ChunkedDecoder, ExpectationFailed, NotImplementedCoding, request_framing, split_target


@pytest.mark.parametrize("headers, cl, chunked, expected", [
    ((), -1, False, (0, False, False)),
    (((b"Content-Length", b"10"),), 10, False, (10, False, False)),
    (((b"Transfer-Encoding", b"chunked"),), -1, True, (None, True, False)),
    (((b"transfer-encoding", b"Chunked"),), -1, True, (None, True, False)),
    (((b"Content-Length", b"3"), (b"Expect", b"100-Continue")), 3, False, (3, False, True)),
])
def test_request_framing(headers, cl, chunked, expected):
    assert request_framing(headers, cl, chunked) == expected


@pytest.mark.parametrize("headers, chunked, error", [
    (((b"Transfer-Encoding", b"gzip"),), False, BadRequest),          # no determinable length: 400
    (((b"Transfer-Encoding", b"gzip, chunked"),), True, NotImplementedCoding),  # a coding edge cannot decode: 501
    (((b"Transfer-Encoding", b"chunked, chunked"),), True, NotImplementedCoding),
    (((b"Expect", b"200-ok"),), False, ExpectationFailed),
])
def test_request_framing_refusals(headers, chunked, error):
    with pytest.raises(error):
        request_framing(headers, -1, chunked)


@pytest.mark.parametrize("target, expected", [
    ("/a/b?x=1&y", ("/a/b", "x=1&y", None)),
    ("/", ("/", "", None)),
    ("http://Example.com:8080/p?q", ("/p", "q", "Example.com:8080")),
    ("https://example.com", ("/", "", "example.com")),
    ("http://example.com?q=1", ("/", "q=1", "example.com")),
    ("*", ("*", "", None)),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["a/b", "/a#frag", "ftp://x/y"])
def test_split_target_refusals(target):
    with pytest.raises(BadRequest):
        split_target(target)


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
