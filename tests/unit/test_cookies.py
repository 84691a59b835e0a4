"""edge.cookies: lenient reading of Cookie, strict writing of Set-Cookie (RFC 6265)."""

import pytest

from edge.context import Headers
from edge.cookies import cookie_error, get_cookie, parse_cookies, request_cookies, set_cookie
from edge.testing import make_ctx, make_upstream_response, run_plugin


@pytest.mark.parametrize("fields,expected", [
    ([], {}),
    (["a=1"], {"a": "1"}),
    (["a=1; b=2"], {"a": "1", "b": "2"}),
    (["a=1;b=2 ;  c = 3 "], {"a": "1", "b": "2", "c": "3"}),          # lenient about whitespace
    (['s="quoted value"'], {"s": "quoted value"}),                     # DQUOTEs of cookie-value dropped
    (['s="'], {"s": '"'}),                                              # a lone quote is a value
    (["a=1; junk; =nameless; b="], {"a": "1", "b": ""}),              # no '=' or no name: skipped
    (["a=x=y"], {"a": "x=y"}),                                          # '=' inside a value kept
    (["a=first; a=second"], {"a": "first"}),                           # first wins (RFC 6265 §5.4)
    (["a=1", "b=2; a=3"], {"a": "1", "b": "2"}),                       # HTTP/2 cookie crumbs
    (["t=%41%20"], {"t": "%41%20"}),                                    # never percent-decoded
])
def test_parse_cookies(fields, expected):
    headers = Headers([("Cookie", f) for f in fields] + [("X-Other", "a=9")])
    assert parse_cookies(headers) == expected
    for name, value in expected.items():
        assert get_cookie(headers, name) == value
    assert get_cookie(headers, "absent") is None


def test_request_cookies_reads_the_ctx_headers_case_insensitively():
    ctx = make_ctx(headers=[("cookie", "session=abc"), ("COOKIE", "theme=dark")])
    assert request_cookies(ctx) == {"session": "abc", "theme": "dark"}


@pytest.mark.parametrize("kwargs,field", [
    ({}, "sid=abc; Path=/"),
    ({"path": None}, "sid=abc"),
    ({"max_age": 3600, "httponly": True, "secure": True, "samesite": "Lax"},
     "sid=abc; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"),
    ({"max_age": 0}, "sid=abc; Max-Age=0; Path=/"),                      # deletion
    ({"domain": "example.com", "path": "/shop"}, "sid=abc; Domain=example.com; Path=/shop"),
    ({"samesite": "None", "secure": True}, "sid=abc; Path=/; Secure; SameSite=None"),
])
def test_set_cookie_writes_one_field(kwargs, field):
    headers = Headers([("Set-Cookie", "other=1")])
    assert set_cookie(headers, "sid", "abc", **kwargs) == field
    assert headers.get_all("Set-Cookie") == ["other=1", field]          # appended, never merged


@pytest.mark.parametrize("name,value,kwargs,reason", [
    ("bad name", "v", {}, "cookie name"),
    ("a;b", "v", {}, "cookie name"),
    ("", "v", {}, "cookie name"),
    ("n", "a b", {}, "cookie value"),
    ("n", "a;Domain=evil.example", {}, "cookie value"),                  # attribute injection
    ("n", "a\r\nX-Evil: 1", {}, "cookie value"),                         # field injection
    ("n", 'a"b', {}, "cookie value"),
    ("n", "caf\xe9", {}, "cookie value"),
    ("n", "v", {"max_age": -1}, "max_age"),
    ("n", "v", {"max_age": 1.5}, "max_age"),
    ("n", "v", {"max_age": True}, "max_age"),
    ("n", "v", {"path": "/a;Secure"}, "path"),
    ("n", "v", {"path": "/a\n"}, "path"),
    ("n", "v", {"path": "/a "}, "path"),
    ("n", "v", {"path": ""}, "path"),
    ("n", "v", {"domain": ".example.com"}, "domain"),
    ("n", "v", {"domain": "exa mple.com"}, "domain"),
    ("n", "v", {"domain": "-x.com"}, "domain"),
    ("n", "v", {"samesite": "lax"}, "samesite"),
    ("n", "v", {"samesite": "None"}, "secure"),
    ("__Secure-n", "v", {}, "__Secure-"),
    ("__Host-n", "v", {"secure": True, "path": "/x"}, "__Host-"),
    ("__Host-n", "v", {"secure": True, "domain": "example.com"}, "__Host-"),
])
def test_set_cookie_refuses_what_it_cannot_write(name, value, kwargs, reason):
    headers = Headers()
    with pytest.raises(ValueError, match=reason):
        set_cookie(headers, name, value, **kwargs)
    assert headers.items() == []                                          # nothing added
    assert reason in cookie_error(name, value, **kwargs)


def test_prefixed_cookies_with_their_requirements_are_accepted():
    headers = Headers()
    set_cookie(headers, "__Host-sid", "x", secure=True)
    set_cookie(headers, "__Secure-sid", "y", secure=True, domain="example.com")
    assert len(headers.get_all("Set-Cookie")) == 2


def test_a_plugin_sets_a_cookie_through_the_chain():
    from edge.plugins import Plugin, PluginConfig

    class Visit(Plugin):
        name = "visit"

        class Config(PluginConfig):
            pass

        def __init__(self, config, services):
            pass

        def on_response(self, ctx, response):
            if "visited" not in request_cookies(ctx):
                set_cookie(response.headers, "visited", "1", max_age=86400, httponly=True)

    first = run_plugin(Visit, ctx=make_ctx(), response=make_upstream_response(200))
    assert first.headers.get_all("Set-Cookie") == ["visited=1; Max-Age=86400; Path=/; HttpOnly"]
    again = run_plugin(Visit, ctx=make_ctx(headers={"Cookie": "visited=1"}))
    assert again.headers.get_all("Set-Cookie") == []


@pytest.mark.parametrize("fields,name,left,removed", [
    (["a=1; s=tok; b=2"], "s", ["a=1; b=2"], 1),
    (["s=tok"], "s", [], 1),
    (["a=1", "s=x; s=y"], "s", ["a=1"], 2),
    (["a=1; b=2"], "s", ["a=1; b=2"], 0),
    (["sx=1; s=2"], "s", ["sx=1"], 1),
])
def test_remove_cookie(fields, name, left, removed):
    from edge.context import Headers
    from edge.cookies import remove_cookie

    h = Headers([("Cookie", f) for f in fields])
    assert remove_cookie(h, name) == removed
    assert h.get_all("Cookie") == left
