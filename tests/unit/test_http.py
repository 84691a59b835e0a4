"""Header rules between client and backend (edge/http.py), without sockets."""

import pytest

from edge import http as rules


def up(headers, **kw):
    args = dict(peer_ip="192.0.2.10", scheme="http", client_host="example.com", client_port=80,
                peer_trusted=False)
    args.update(kw)
    return rules.upstream_request_headers(headers, **args)


def names(pairs):
    return [k.lower() for k, _ in pairs]


def value(pairs, name):
    vals = [v for k, v in pairs if k.lower() == name.lower()]
    return vals[0] if len(vals) == 1 else vals


def test_hop_by_hop_and_connection_listed_fields_removed():
    out = up([("CONNECTION", "close, X-Secret"), ("X-SECRET", "s"), ("KEEP-ALIVE", "5"), ("TE", "trailers"),
              ("TRAILER", "X"), ("TRANSFER-ENCODING", "chunked"), ("PROXY-CONNECTION", "x"),
              ("PROXY-AUTHORIZATION", "Basic x"), ("HTTP2-SETTINGS", "x"), ("UPGRADE", "websocket"),
              ("CONTENT-LENGTH", "5"), ("EXPECT", "100-continue"), ("HOST", "example.com"), ("ACCEPT", "*/*")])
    assert names(out) == ["accept", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "via"]
    assert out[0] == ("Accept", "*/*")  # canonical case restored


def test_duplicates_kept_in_order():
    out = up([("COOKIE", "a=1"), ("X-A", "1"), ("COOKIE", "b=2")], x_forwarded=False, via=None)
    assert out == [("Cookie", "a=1"), ("X-A", "1"), ("Cookie", "b=2")]


def test_upgrade_kept_only_when_allowed():
    req = [("CONNECTION", "Upgrade"), ("UPGRADE", "websocket")]
    assert "upgrade" not in names(up(req))
    out = up(req, upgrade_protocols=frozenset({"websocket"}))
    assert ("Upgrade", "websocket") in out and ("Connection", "upgrade") in out


def test_x_forwarded_for_is_appended_never_overwritten():
    assert value(up([]), "X-Forwarded-For") == "192.0.2.10"
    out = up([("X-FORWARDED-FOR", "203.0.113.1"), ("X-FORWARDED-FOR", "198.51.100.2")])
    assert value(out, "X-Forwarded-For") == "203.0.113.1, 198.51.100.2, 192.0.2.10"


def test_single_valued_forwarding_claims_believed_only_from_trusted_peers():
    claims = [("X-FORWARDED-PROTO", "https"), ("X-FORWARDED-HOST", "evil"), ("X-FORWARDED-PORT", "1"),
              ("FORWARDED", "for=1.2.3.4")]
    out = up(claims, forwarded=True)
    assert value(out, "X-Forwarded-Proto") == "http"
    assert value(out, "X-Forwarded-Host") == "example.com"
    assert value(out, "X-Forwarded-Port") == "80"
    assert value(out, "Forwarded") == "for=192.0.2.10;host=example.com;proto=http"
    out = up(claims, forwarded=True, peer_trusted=True)
    assert value(out, "X-Forwarded-Proto") == "https"
    assert value(out, "Forwarded") == "for=1.2.3.4, for=192.0.2.10;host=example.com;proto=http"


def test_forwarded_quotes_ipv6():
    out = up([], forwarded=True, peer_ip="2001:db8::1")
    assert value(out, "Forwarded").startswith('for="[2001:db8::1]";')


def test_via_and_switches():
    assert value(up([]), "Via") == "1.1 edge"
    assert "via" not in names(up([], via=None))
    assert "x-forwarded-for" not in names(up([], x_forwarded=False))


def test_response_headers():
    resp = [("Server", "origin"), ("X-Powered-By", "php"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
            ("Transfer-Encoding", "chunked"), ("Content-Length", "3"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
            ("Keep-Alive", "timeout=5")]
    out = rules.downstream_response_headers(resp, hide=frozenset({"server", "x-powered-by"}))
    assert out == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Via", "1.1 edge")]


def test_101_response_keeps_upgrade():
    out = rules.downstream_response_headers([("Upgrade", "websocket"), ("Connection", "Upgrade")], keep_upgrade=True, via=None)
    assert out == [("Upgrade", "websocket"), ("Connection", "Upgrade")]


@pytest.mark.parametrize("method, status, body", [
    ("GET", 200, True), ("HEAD", 200, False), ("GET", 204, False), ("GET", 304, False), ("GET", 101, False),
    ("POST", 404, True),
])
def test_response_has_body(method, status, body):
    from edge.framing import has_content  # the framing step owns the rule (RFC 9110 §6.4.1)

    assert has_content(method, status) is body


@pytest.mark.parametrize("host, expected", [
    ("Example.COM", ("example.com", 80)), ("example.com:8080", ("example.com", 8080)),
    ("[::1]:8443", ("::1", 8443)), ("[::1]", ("::1", 80)), ("127.0.0.1:81", ("127.0.0.1", 81)),
])
def test_split_host_port(host, expected):
    assert rules.split_host_port(host, 80) == expected


@pytest.mark.parametrize("host", ["a:b:c", "[::1", "x:99999", "x:abc", "[::1]x"])
def test_split_host_port_refusals(host):
    with pytest.raises(ValueError):
        rules.split_host_port(host, 80)


@pytest.mark.parametrize("host, ok", [("example.com", True), ("a.b:80", True), ("[::1]:1", True),
                                      ("a b", False), ("a/b", False), ("user@host", False), ("", False)])
def test_valid_host(host, ok):
    assert rules.valid_host(host) is ok


def test_resolve_client_ip_walks_trusted_hops_from_the_right():
    trusted = rules.TrustedProxies(["10.0.0.0/8", "192.0.2.1"])
    assert rules.resolve_client_ip("198.51.100.5", ["1.2.3.4"], trusted) == "198.51.100.5"  # untrusted peer
    assert rules.resolve_client_ip("10.0.0.2", ["1.2.3.4, 10.0.0.9"], trusted) == "1.2.3.4"
    assert rules.resolve_client_ip("10.0.0.2", ["6.6.6.6, 1.2.3.4"], trusted) == "1.2.3.4"  # spoofed left entry ignored
    assert rules.resolve_client_ip("192.0.2.1", ["[2001:db8::7]:4711"], trusted) == "2001:db8::7"
    assert rules.resolve_client_ip("10.0.0.2", ["10.1.1.1"], trusted) == "10.1.1.1"  # all trusted: leftmost
    assert "::ffff:10.1.2.3" in trusted  # IPv4-mapped addresses match IPv4 networks


def test_canonical_name():
    assert rules.canonical_name("CONTENT-TYPE") == "Content-Type"
    assert rules.canonical_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert rules.canonical_name("ETAG") == "ETag"
    assert rules.canonical_name("x-request-id") == "X-Request-Id"



def test_underscore_names_dropped_so_cgi_backends_cannot_be_spoofed():
    out = up([("X_FORWARDED_FOR", "6.6.6.6"), ("X-REAL", "1")], via=None)
    assert "x_forwarded_for" not in names(out)
    assert value(out, "X-Forwarded-For") == "192.0.2.10"


# --------------------------------------------------------------------------- Host (issue 7, defect 2)

@pytest.mark.parametrize("host, expected", [
    ("example.com", ("example.com", None)), ("EXAMPLE.com:8080", ("example.com", 8080)),
    ("example.com.", ("example.com.", None)), ("a_b.internal:1", ("a_b.internal", 1)),
    ("192.0.2.1:65535", ("192.0.2.1", 65535)), ("[2001:DB8::1]", ("2001:db8::1", None)),
    ("[::1]:8443", ("::1", 8443)), ("example.com:", ("example.com", None)),  # RFC 3986 §3.2.3: empty port
])
def test_parse_host_accepts_reg_names_ip_literals_and_ports(host, expected):
    assert rules.parse_host(host) == expected


@pytest.mark.parametrize("host", [
    "evil,for=6.6.6.6", "a;b", "a=b", 'a"b', "a b", "a/b", "user@host", "", ":80", "a..b", ".a",
    "%65xample.com", "ex\\ample", "é.com", "a:b:c", "[::1", "[::1]x", "[1.2.3.4]", "[v1.x]", "[fe80::1%25eth0]",
    "x:0", "x:65536", "x:abc", "x:²", "x:+80", "x:-1", "x" * 256,
])
def test_parse_host_refusals(host):
    with pytest.raises(ValueError):
        rules.parse_host(host)
    assert rules.valid_host(host) is False


def test_forwarded_host_cannot_forge_an_element():
    # Before issue 7, Host "evil,for=6.6.6.6" produced "for=127.0.0.1;host=evil,for=6.6.6.6;proto=https".
    # Such a Host is refused by valid_host; whatever reaches the serialiser is quoted when not a token.
    out = up([], forwarded=True, client_host="evil,for=6.6.6.6")
    assert value(out, "Forwarded") == 'for=192.0.2.10;host="evil,for=6.6.6.6";proto=http'


@pytest.mark.parametrize("host, rendered", [
    ("example.com", "host=example.com"), ("example.com:8080", 'host="example.com:8080"'),
    ("[::1]:8443", 'host="[::1]:8443"'), ('a"b\\c', 'host="a\\"b\\\\c"'),
])
def test_forwarded_values_are_tokens_or_quoted_strings(host, rendered):
    out = up([], forwarded=True, client_host=host)
    assert f";{rendered};" in value(out, "Forwarded")


# --------------------------------------------------------------------------- Upgrade (defect 7)

WS = frozenset({"websocket"})


@pytest.mark.parametrize("offered, allowed, expected", [
    ("websocket", WS, "websocket"),
    ("WebSocket", WS, "WebSocket"),
    ("h2c", WS, None),
    ("anything/1.0", WS, None),
    ("h2c, websocket", WS, "websocket"),
    ("websocket", frozenset(), None),
    ("foo/2, bar", frozenset({"foo"}), "foo/2"),
    ("foo/2/3", frozenset({"foo"}), None),  # not token ["/" token]
    ("websocket", frozenset({"h2c"}), None),
])
def test_upgrade_forwards_only_the_protocols_the_route_allows(offered, allowed, expected):
    out = up([("CONNECTION", "Upgrade, HTTP2-Settings"), ("UPGRADE", offered), ("HTTP2-SETTINGS", "AAMAAABkAAQAAP__")],
             upgrade_protocols=allowed, x_forwarded=False, via=None)
    assert "http2-settings" not in names(out)
    if expected is None:
        assert out == []
    else:
        assert out == [("Upgrade", expected), ("Connection", "upgrade")]


def test_upgrade_without_connection_upgrade_is_not_forwarded():
    out = up([("UPGRADE", "websocket")], upgrade_protocols=WS, x_forwarded=False, via=None)
    assert out == []


# --------------------------------------------------------------------------- client address (defect 10)

@pytest.mark.parametrize("peer, xff, expected", [
    ("10.0.0.2", ["unknown"], "10.0.0.2"),                       # not an IP: the trusted peer's own address
    ("10.0.0.2", ["<script>, 1.2.3.4"], "1.2.3.4"),             # garbage left of the client is never reached
    ("10.0.0.2", ["1.2.3.4, _hidden, 10.0.0.9"], "10.0.0.9"),   # the trusted hop that vouched for garbage
    ("10.0.0.2", ["1.2.3.4:80"], "1.2.3.4"),
    ("10.0.0.2", ["2001:DB8::7"], "2001:db8::7"),                # canonical text
    ("10.0.0.2", ["[2001:db8::7]:4711"], "2001:db8::7"),
    ("10.0.0.2", ["1.2.3.4.5"], "10.0.0.2"),
    ("10.0.0.2", ["evil.example"], "10.0.0.2"),
    ("10.0.0.2", [" , "], "10.0.0.2"),
    ("10.0.0.2", ["1.2.3.4", "10.0.0.3"], "1.2.3.4"),            # several fields are one list
])
def test_resolve_client_ip_always_returns_an_ip_address(peer, xff, expected):
    import ipaddress
    trusted = rules.TrustedProxies(["10.0.0.0/8"])
    got = rules.resolve_client_ip(peer, xff, trusted)
    assert got == expected
    ipaddress.ip_address(got)


def test_no_host_means_no_empty_forwarding_claims():
    # HTTP/1.0 without Host: RFC 7239 §5.3 host= would be empty, which is no valid value
    out = dict(rules.upstream_request_headers([], peer_ip="192.0.2.1", scheme="http", client_host="", client_port=80,
                                        peer_trusted=False, forwarded=True))
    assert out["Forwarded"] == "for=192.0.2.1;proto=http"
    assert "X-Forwarded-Host" not in out


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Keep-Alive", "Trailer", "Upgrade"])
def test_framing_fields_are_the_writers(name):
    items = [("X-A", "1"), (name, "5"), ("X-B", "2")]
    assert rules.without_framing(items) == [("X-A", "1"), ("X-B", "2")]
    assert rules.framing_field_error(name) is not None


def test_without_framing_returns_the_same_list_when_clean():
    items = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]
    assert rules.without_framing(items) is items
    assert rules.framing_field_error("Content-Type") is None
