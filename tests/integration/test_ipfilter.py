"""ipfilter end to end: IPv4, IPv6 and mapped clients (through the PROXY protocol), trusted-proxy
resolution, refusal at connect, per-route lists, and a deny file re-read on a real HUP."""

from __future__ import annotations

import json

import pytest

from edge.launch import free_port, start_edge, start_origin
from edge.proxyproto import build_v1, build_v2
from tests.integration import rawhttp


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ipfilter")
    origin = start_origin("o1", log_dir=str(d))
    deny_file = d / "deny.txt"
    deny_file.write_text("# reloaded on HUP\n127.0.0.6\n")
    port, port6 = free_port(), free_port("::1")
    config = {
        "server": {"bind": [f"127.0.0.1:{port}", f"[::1]:{port6}"], "trusted_proxies": ["127.0.0.3"],
                   "proxy_protocol": {"enabled": True, "trusted": ["127.0.0.4"]}},
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"match": {"path": "/v6"}, "upstream": "app", "plugins": {"ipfilter": {"allow": ["::1/128"]}}},
            {"match": {"path": "/admin"}, "upstream": "app", "plugins": {"ipfilter": {"allow": ["127.0.0.1"]}}},
            {"match": {"path": "/"}, "upstream": "app"},
        ],
        "plugins": {"ipfilter": {"deny": ["127.0.0.2", "192.0.2.0/24", "2001:db8:bad::/48"],
                                 "deny_files": [str(deny_file)], "message": "go away"}},
    }
    (d / "edge").mkdir()
    edge = start_edge(config, workers=2, port=port, work_dir=str(d / "edge"))
    edge.port6 = port6
    yield edge, origin, deny_file
    edge.stop()
    origin.stop()


def test_ipv4_denied_at_connect_before_any_request(setup):
    edge, _, _ = setup
    with rawhttp.connect(edge.port, "127.0.0.2") as s:
        reply = rawhttp.read_reply(s)       # nothing sent: the refusal comes before parsing
    assert reply.status == 403 and reply.body == b"403 go away\n"
    assert rawhttp.request(edge.port, "127.0.0.5").status == 200


def test_ipv6_peer(setup):
    edge, _, _ = setup
    assert rawhttp.request(edge.port6, "::1", "/v6", host="::1").status == 200
    assert rawhttp.request(edge.port, "127.0.0.1", "/v6").status == 403
    assert rawhttp.request(edge.port6, "::1", "/admin", host="::1").status == 403   # allow list of 127.0.0.1 only


def test_trusted_proxy_resolution(setup):
    edge, _, _ = setup
    # from the trusted proxy, the client is the X-Forwarded-For hop
    assert rawhttp.request(edge.port, "127.0.0.3", headers={"X-Forwarded-For": "192.0.2.66"}).status == 403
    assert rawhttp.request(edge.port, "127.0.0.3", headers={"X-Forwarded-For": "198.51.100.1"}).status == 200
    assert rawhttp.request(edge.port, "127.0.0.3", headers={"X-Forwarded-For": "127.0.0.2"}).status == 403
    # from anyone else the header is not believed: it cannot get a client denied or admitted
    assert rawhttp.request(edge.port, "127.0.0.1", headers={"X-Forwarded-For": "192.0.2.66"}).status == 200
    assert rawhttp.request(edge.port, "127.0.0.2", headers={"X-Forwarded-For": "198.51.100.1"}).status == 403


@pytest.mark.parametrize("prefix,status", [
    (build_v1("2001:db8:bad::1", "::1", 4000, 80), 403),
    (build_v2("2001:db8:bad:1::9", "::1", 4000, 80), 403),
    (build_v2("2001:db8:600d::1", "::1", 4000, 80), 200),
    (build_v1("::ffff:192.0.2.9", "::1", 4000, 80), 403),      # mapped client, IPv4 rule
    (build_v2("::ffff:198.51.100.9", "::1", 4000, 80), 200),
    (build_v1("192.0.2.9", "127.0.0.1", 4000, 80), 403),
])
def test_ipv6_and_mapped_clients_through_the_proxy_protocol(setup, prefix, status):
    edge, _, _ = setup
    assert rawhttp.request(edge.port, "127.0.0.4", prefix=prefix).status == status


def test_per_route_allow_list_merged_over_the_global_settings(setup):
    edge, _, _ = setup
    assert rawhttp.request(edge.port, "127.0.0.1", "/admin").status == 200
    assert rawhttp.request(edge.port, "127.0.0.5", "/admin").status == 403
    assert rawhttp.request(edge.port, "127.0.0.5", "/").status == 200
    # the global deny list still applies on the route (settings merged key by key)
    assert rawhttp.request(edge.port, "127.0.0.2", "/admin").status == 403


def test_admitted_client_reaches_the_backend_with_its_address(setup):
    edge, _, _ = setup
    reply = rawhttp.request(edge.port, "127.0.0.5", "/echo")
    assert reply.status == 200
    headers = dict((k.lower(), v) for k, v in json.loads(reply.body)["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.5"


def test_deny_file_reloaded_on_hup(setup):
    edge, _, deny_file = setup
    assert rawhttp.request(edge.port, "127.0.0.6").status == 403
    assert rawhttp.request(edge.port, "127.0.0.7").status == 200
    deny_file.write_text("127.0.0.7  # moved\n")
    edge.reload(wait=True)              # a real HUP to the real master; returns once only new workers serve
    assert rawhttp.request(edge.port, "127.0.0.6").status == 200
    assert rawhttp.request(edge.port, "127.0.0.7").status == 403


def test_bad_deny_file_refuses_the_reload_and_keeps_serving(setup):
    from edge.launch import ReloadRefused
    edge, _, deny_file = setup
    before = deny_file.read_text()
    deny_file.write_text("127.0.0.8\nnot-a-network\n")
    try:
        with pytest.raises(ReloadRefused):
            edge.reload(wait=True)
    finally:
        deny_file.write_text(before)
    assert "deny.txt:2: not an IP network" in edge.log()
    assert rawhttp.request(edge.port, "127.0.0.8").status == 200   # the running lists stand
