"""edge.proxyproto: the PROXY protocol v1/v2 parser, from tables (valid, incomplete, malformed)."""

from __future__ import annotations

import struct

import pytest

from edge.proxyproto import (V1_MAX_BYTES, V2_MAX_PAYLOAD_BYTES, V2_SIGNATURE, MissingHeader, ProxyHeader,
                             ProxyProtocolError, build_v1, build_v2, parse)

HTTP = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(ver_cmd: int, fam: int, payload: bytes, length: int | None = None) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(payload) if length is None else length) + payload


V4_BLOCK = bytes([192, 0, 2, 1]) + bytes([198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)
V6_BLOCK = (b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01") + (b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x02") \
    + struct.pack("!HH", 1, 2)

VALID = [
    # (bytes, version, local, src, sport, dst, dport)
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n", 1, False, "192.0.2.1", 56324, "198.51.100.7", 443),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n", 1, False, "2001:db8::1", 0, "2001:db8::2", 65535),
    (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n", 1, False, "::ffff:c000:201", 1, "::1", 2),
    (b"PROXY UNKNOWN\r\n", 1, True, None, 0, None, 0),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 1, True, None, 0, None, 0),
    (v2(0x21, 0x11, V4_BLOCK), 2, False, "192.0.2.1", 56324, "198.51.100.7", 443),
    (v2(0x21, 0x21, V6_BLOCK), 2, False, "2001:db8::1", 1, "2001:db8::2", 2),
    # TLVs after the addresses are skipped (type 0x02 authority "example.com", 0x05 unique id)
    (v2(0x21, 0x11, V4_BLOCK + b"\x02\x00\x0bexample.com" + b"\x05\x00\x02ab"), 2, False, "192.0.2.1", 56324,
     "198.51.100.7", 443),
    (v2(0x20, 0x00, b""), 2, True, None, 0, None, 0),                 # LOCAL (a health check)
    (v2(0x20, 0x11, V4_BLOCK), 2, True, None, 0, None, 0),            # LOCAL: the block is discarded
    (v2(0x21, 0x00, b""), 2, True, None, 0, None, 0),                 # PROXY over UNSPEC: real endpoints
    (v2(0x21, 0x31, b"\x00" * 216), 2, True, None, 0, None, 0),       # AF_UNIX: no IP to use
]


@pytest.mark.parametrize("data,version,local,src,sport,dst,dport", VALID)
def test_valid_headers(data, version, local, src, sport, dst, dport):
    h = parse(data + HTTP)
    assert h == ProxyHeader(version, len(data), local, src, sport, dst, dport)
    assert (data + HTTP)[h.length:] == HTTP


@pytest.mark.parametrize("data", [row[0] for row in VALID])
def test_every_strict_prefix_asks_for_more(data):
    for n in range(1, len(data)):
        assert parse(data[:n]) is None, n


MALFORMED = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n", "CRLF"),
    (b"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n", "TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n", "6 fields"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n", "6 fields"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n", "6 fields"),
    (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n", "IPv4"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n", "port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 080 2\r\n", "port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n", "port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.7 1 +2\r\n", "port"),
    (b"PROXY \r\n", "protocol"),
    (b"PROXY TCP4 " + b"1" * (V1_MAX_BYTES - 11), "longer than 107"),
    (v2(0x11, 0x11, V4_BLOCK), "version must be 2"),
    (v2(0x31, 0x11, V4_BLOCK), "version must be 2"),
    (v2(0x22, 0x11, V4_BLOCK), "unknown command"),
    (v2(0x21, 0x41, V4_BLOCK), "unknown address family"),
    (v2(0x21, 0x13, V4_BLOCK), "unknown transport"),
    (v2(0x21, 0x12, V4_BLOCK), "STREAM"),
    (v2(0x21, 0x11, V4_BLOCK[:11]), "cannot hold"),
    (v2(0x21, 0x21, V4_BLOCK), "cannot hold"),
    (v2(0x21, 0x11, b"", length=V2_MAX_PAYLOAD_BYTES + 1), "at most"),
]


@pytest.mark.parametrize("data,reason", MALFORMED)
def test_malformed_headers_are_refused(data, reason):
    with pytest.raises(ProxyProtocolError, match=reason) as e:
        parse(data + HTTP)
    assert not isinstance(e.value, MissingHeader)
    assert e.value.status == 400


def test_version_byte_checked_before_the_fixed_part_is_complete():
    with pytest.raises(ProxyProtocolError, match="version must be 2"):
        parse(V2_SIGNATURE + b"\x11")


@pytest.mark.parametrize("data", [HTTP, b"POST / HTTP/1.1\r\n", b"PROPFIND / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00",
                                  b"proxy TCP4", b"\r\n\r\nGET", b"\r\n\r\n\x00\r\nQUIX\n"])
def test_other_protocols_are_missing_headers(data):
    with pytest.raises(MissingHeader):
        parse(data)


def test_empty_buffer_asks_for_more():
    assert parse(b"") is None


@pytest.mark.parametrize("header", [
    build_v1("192.0.2.9", "127.0.0.1", 1000, 80),
    build_v1("2001:db8::9", "::1", 1000, 80),
    build_v2("192.0.2.9", "127.0.0.1", 1000, 80),
    build_v2("2001:db8::9", "::1", 1000, 80, tlvs=b"\x04\x00\x00"),
])
def test_builders_round_trip(header):
    h = parse(header)
    assert (h.src_ip, h.src_port, h.dst_port, h.length, h.local) == (h.src_ip, 1000, 80, len(header), False)
    assert h.src_ip in ("192.0.2.9", "2001:db8::9")
    assert parse(build_v2(None)).local


@pytest.mark.parametrize("server,tls,error", [
    ({"proxy_protocol": {"enabled": True}}, False, "server.proxy_protocol.trusted: give the CIDRs"),
    ({"proxy_protocol": {"enabled": True, "trusted": ["10.0.0.0/x"]}}, False,
     "server.proxy_protocol.trusted: not an IP network"),
    ({"proxy_protocol": {"enabled": True, "trusted": ["10.0.0.0/8"], "timeout": "0s"}}, False,
     "server.proxy_protocol.timeout"),
    ({"proxy_protocol": {"enabled": True, "trusted": ["10.0.0.0/8"]}}, True,
     "server.proxy_protocol.enabled: not supported together with tls"),
])
def test_config_errors(server, tls, error):
    from edge.config import parse_config
    from edge.errors import ConfigError
    data = {"server": server, **({"tls": {"certfile": "c.pem", "keyfile": "k.pem"}} if tls else {})}
    with pytest.raises(ConfigError, match=error):
        parse_config(data, "x.yaml")


def test_config_default_is_off():
    from edge.config import parse_config
    pp = parse_config({}).server.proxy_protocol
    assert (pp.enabled, pp.required, pp.timeout) == (False, True, 5.0)
