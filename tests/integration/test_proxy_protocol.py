"""PROXY protocol v1 and v2 through a real edge: raw sockets play the load balancer.

Only 127.0.0.4 is a trusted source. The backend (/echo) shows the X-Forwarded-For edge
built, i.e. the peer address edge believed for the connection."""

from __future__ import annotations

import json
import time

import pytest

from edge.launch import start_edge, start_origin
from edge.proxyproto import build_v1, build_v2
from tests.integration import rawhttp

LB = "127.0.0.4"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    d = tmp_path_factory.mktemp("proxyproto")
    origin = start_origin("o1", log_dir=str(d))
    (d / "edge").mkdir()
    config = {
        "server": {"proxy_protocol": {"enabled": True, "trusted": [f"{LB}/32"], "timeout": "2s"},
                   "accesslog": str(d / "access.log")},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [{"match": {"path": "/"}, "upstream": "app"}],
    }
    e = start_edge(config, workers=2, work_dir=str(d / "edge"))
    e.access_log = d / "access.log"
    yield e
    e.stop()
    origin.stop()


def seen_client(reply) -> str:
    assert reply is not None and reply.status == 200, reply
    headers = {k.lower(): v for k, v in json.loads(reply.body)["headers"]}
    return headers["x-forwarded-for"]


@pytest.mark.parametrize("prefix,client", [
    (build_v1("192.0.2.10", "127.0.0.1", 40000, 80), "192.0.2.10"),
    (build_v1("2001:db8::10", "::1", 40000, 80), "2001:db8::10"),
    (build_v2("192.0.2.11", "127.0.0.1", 40000, 80), "192.0.2.11"),
    (build_v2("2001:db8::11", "::1", 40000, 80, tlvs=b"\x02\x00\x04test\x05\x00\x01x"), "2001:db8::11"),
    (build_v2(None, local=True), LB),                  # LOCAL (balancer health check): its own address
    (b"PROXY UNKNOWN\r\n", LB),
])
def test_trusted_source_header_sets_the_client(edge, prefix, client):
    assert seen_client(rawhttp.request(edge.port, LB, "/echo", prefix=prefix)) == client


def test_access_log_names_the_proxy_source(edge):
    assert seen_client(rawhttp.request(edge.port, LB, "/echo", prefix=build_v1("192.0.2.21", "127.0.0.1", 9, 80))) \
        == "192.0.2.21"
    deadline = time.monotonic() + 10
    entries = []
    while time.monotonic() < deadline:
        text = edge.access_log.read_text() if edge.access_log.exists() else ""
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        if any(x.get("client") == "192.0.2.21" for x in entries):
            break
        time.sleep(0.05)
    assert any(x.get("client") == "192.0.2.21" for x in entries), entries[-3:]


def test_header_trickled_byte_by_byte_and_keep_alive(edge):
    header = build_v2("192.0.2.12", "127.0.0.1", 40000, 80)
    with rawhttp.connect(edge.port, LB) as s:
        for i in range(len(header)):
            s.sendall(header[i:i + 1])
            time.sleep(0.002)
        for _ in range(2):          # the address holds for every request of the connection
            s.sendall(rawhttp.head("GET", "/echo"))
            assert seen_client(rawhttp.read_reply(s)) == "192.0.2.12"


def test_header_and_request_in_one_segment(edge):
    with rawhttp.connect(edge.port, LB) as s:
        s.sendall(build_v1("192.0.2.13", "127.0.0.1", 1, 80) + rawhttp.head("GET", "/echo"))
        assert seen_client(rawhttp.read_reply(s)) == "192.0.2.13"


@pytest.mark.parametrize("data", [
    rawhttp.head("GET", "/echo"),                                      # no header although required
    b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 80\r\n" + rawhttp.head(),  # malformed v1
    b"PROXY TCP4 192.0.2.1 127.0.0.1 1 80\n" + rawhttp.head(),        # bare LF
    build_v2("192.0.2.1", "127.0.0.1", 1, 80)[:12] + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 byte
])
def test_trusted_source_with_a_bad_or_missing_header_is_closed(edge, data):
    with rawhttp.connect(edge.port, LB) as s:
        s.sendall(data)
        assert rawhttp.closed_without_answer(s)


def test_trusted_source_too_slow_is_closed(edge):
    with rawhttp.connect(edge.port, LB) as s:
        s.sendall(b"PROXY TCP4 192.0.2.1")
        started = time.monotonic()
        assert rawhttp.closed_without_answer(s)
        assert time.monotonic() - started >= 1.5        # the 2 s header timeout, not at once


@pytest.mark.parametrize("prefix", [build_v1("192.0.2.66", "127.0.0.1", 1, 80), build_v2("192.0.2.66", "127.0.0.1", 1, 80)])
def test_untrusted_source_cannot_spoof(edge, prefix):
    reply = rawhttp.request(edge.port, "127.0.0.1", "/echo", prefix=prefix)
    assert reply is not None and reply.status == 400     # not read as PROXY: malformed HTTP
    # and a plain request from it keeps its own address
    assert seen_client(rawhttp.request(edge.port, "127.0.0.1", "/echo")) == "127.0.0.1"


def test_not_required_lets_a_trusted_source_speak_http_directly(tmp_path):
    origin = start_origin("o2", log_dir=str(tmp_path))
    try:
        config = {
            "server": {"proxy_protocol": {"enabled": True, "trusted": [LB], "required": False}},
            "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
            "routes": [{"match": {"path": "/"}, "upstream": "app"}],
        }
        e = start_edge(config, workers=1, work_dir=str(tmp_path))
        try:
            assert seen_client(rawhttp.request(e.port, LB, "/echo")) == LB
            prefix = build_v1("192.0.2.20", "127.0.0.1", 1, 80)
            assert seen_client(rawhttp.request(e.port, LB, "/echo", prefix=prefix)) == "192.0.2.20"
            with rawhttp.connect(e.port, LB) as s:       # still strict about a header that is malformed
                s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 x 80\r\n" + rawhttp.head())
                assert rawhttp.closed_without_answer(s)
        finally:
            e.stop()
    finally:
        origin.stop()
