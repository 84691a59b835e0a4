"""Admission: the one protocol check every front end passes (pure, from tables)."""

import pytest

from edge.admission import (CHUNKED, LENGTH, NO_BODY, STREAM, ExpectationFailed, MethodNotAllowed,
                            NotImplementedCoding, admit, content_length, split_target)
from edge.errors import BadRequest

H = [("Host", "example.com")]


@pytest.mark.parametrize("method, target, expected", [
    ("GET", "/a/b?x=1&y", ("/a/b", "x=1&y", None)),
    ("GET", "/", ("/", "", None)),
    ("GET", "/a%20b?q=%C3%A9", ("/a%20b", "q=%C3%A9", None)),
    ("GET", "/p?a=/b?c", ("/p", "a=/b?c", None)),              # RFC 3986 §3.4: "/" and "?" in a query
    ("GET", "/a:b@c!$&'()*+,;=-._~", ("/a:b@c!$&'()*+,;=-._~", "", None)),
    ("GET", "http://Example.com:8080/p?q", ("/p", "q", "Example.com:8080")),
    ("GET", "https://example.com", ("/", "", "example.com")),
    ("GET", "http://example.com?q=1", ("/", "q=1", "example.com")),
    ("OPTIONS", "*", ("*", "", None)),
])
def test_split_target(method, target, expected):
    assert split_target(method, target) == expected


@pytest.mark.parametrize("method, target", [
    ("GET", "a/b"),                       # neither origin- nor absolute-form
    ("GET", "/a#frag"),                   # fragments are never sent (RFC 9112 §3.2)
    ("GET", "/admin#x"),
    ("GET", "/a b?q=1 HTTP/1.1"),         # request-line injection
    ("GET", "/admin HTTP/1.1"),
    ("GET", "/caf\u00e9"),                # raw non-ASCII (UTF-8 decoded)
    ("GET", "/caf\xc3\xa9"),              # raw non-ASCII (latin-1 decoded bytes)
    ("GET", "/\u20ac"),
    ("GET", "/p?q=a b"),                  # space in the query
    ("GET", "/p?q=\x01"),                 # CTL in the query
    ("GET", "/p?q=\x7f"),
    ("GET", "/p?q={x}"),                  # outside RFC 3986
    ("GET", "/p?q=%zz"),                  # not a pct-encoded triplet
    ("GET", "/a\\b"),
    ("GET", "*"),                         # asterisk-form only with OPTIONS
    ("GET", "ftp://x/y"),
    ("GET", "http:///p"),                 # empty authority
    ("GET", "http://ev il/p"),            # invalid authority
    ("GET", ""),
])
def test_split_target_refusals(method, target):
    with pytest.raises(BadRequest):
        split_target(method, target)


@pytest.mark.parametrize("method, error", [
    ("G@T", BadRequest), ("", BadRequest), ("GET ", BadRequest), ("CONNECT", MethodNotAllowed),
])
def test_method_refusals(method, error):
    with pytest.raises(error):
        admit(method, "/", H)


def test_extension_method_token_admitted():
    assert admit("PROPFIND", "/", H).method == "PROPFIND"


@pytest.mark.parametrize("fields, kw, body, length, expect", [
    (H, {}, NO_BODY, None, False),
    (H + [("Content-Length", "10")], {}, LENGTH, 10, False),
    (H + [("Content-Length", "0")], {}, NO_BODY, None, False),
    (H + [("Transfer-Encoding", "chunked")], {}, CHUNKED, None, False),
    (H + [("transfer-encoding", "Chunked")], {}, CHUNKED, None, False),
    (H + [("Content-Length", "3"), ("Expect", "100-Continue")], {}, LENGTH, 3, True),
    (H + [("Content-Length", "3"), ("Content-Length", "3")], {}, LENGTH, 3, False),
    # HTTP/2: the stream says whether DATA follows, whatever the method
    (H, {"http2": True, "stream_ended": True}, NO_BODY, None, False),
    (H, {"http2": True, "stream_ended": False}, STREAM, None, False),
    (H + [("content-length", "5")], {"http2": True, "stream_ended": False}, LENGTH, 5, False),
])
def test_body_framing(fields, kw, body, length, expect):
    a = admit("DELETE", "/", fields, **kw)
    assert (a.body, a.length, a.expect_continue) == (body, length, expect)


@pytest.mark.parametrize("fields, kw, error", [
    (H + [("Transfer-Encoding", "gzip")], {}, BadRequest),                # no determinable length: 400
    (H + [("Transfer-Encoding", "gzip, chunked")], {}, NotImplementedCoding),  # a coding edge cannot decode
    (H + [("Transfer-Encoding", "chunked, chunked")], {}, NotImplementedCoding),
    (H + [("Transfer-Encoding", "chunked"), ("Content-Length", "3")], {}, BadRequest),
    (H + [("Transfer-Encoding", "chunked")], {"http11": False}, BadRequest),  # chunked HTTP/1.0
    (H + [("Content-Length", "\u00b2")], {}, BadRequest),                 # str.isdigit() says True
    (H + [("Content-Length", "-1")], {}, BadRequest),
    (H + [("Content-Length", "1 2")], {}, BadRequest),
    (H + [("Content-Length", "3"), ("Content-Length", "4")], {}, BadRequest),
    (H + [("Expect", "200-ok")], {}, ExpectationFailed),
    ([], {}, BadRequest),                                                  # HTTP/1.1 without Host
    (H + H, {}, BadRequest),                                               # two Host fields
    (H + [("X-Bad", "a\r\nb")], {}, BadRequest),
    (H + [("X-Bad", "a\x00b")], {}, BadRequest),
    (H + [("Bad Name", "v")], {}, BadRequest),
    (H + [("", "v")], {}, BadRequest),
    (H + [("transfer-encoding", "chunked")], {"http2": True, "stream_ended": False}, BadRequest),
    (H, {"http2": True, "authority": "other.example"}, BadRequest),       # RFC 9113 §8.3.1
    (H + [("content-length", "5")], {"http2": True, "stream_ended": True}, BadRequest),
])
def test_admission_refusals(fields, kw, error):
    with pytest.raises(error) as e:
        admit("POST", "/", fields, **kw)
    assert e.value.status == error.status


def test_host_from_absolute_form_and_authority():
    assert admit("GET", "http://a.example/p", H).host == "a.example"
    assert admit("GET", "/", [], http2=True, authority="b.example:8443").host == "b.example:8443"
    assert admit("GET", "/", [], http11=False).host == ""   # HTTP/1.0 may omit Host


def test_fields_are_not_copied():
    fields = list(H)
    assert admit("GET", "/", fields).fields is fields


@pytest.mark.parametrize("value, expected", [("0", 0), ("10", 10), ("007", 7)])
def test_content_length(value, expected):
    assert content_length(value) == expected
