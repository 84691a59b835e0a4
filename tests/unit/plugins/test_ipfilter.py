"""plugins/ipfilter.py: the longest-prefix table, address normalisation, files, both hooks."""

from __future__ import annotations

import ipaddress
import random
import sys

import pytest

from edge.errors import ConfigError
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, make_plugin, run_plugin
from edge.worker import ConnectionInfo

IpFilter = load_plugin_file(SHIPPED_DIR / "ipfilter.py")
ipf = sys.modules[IpFilter.__module__]


def decide(settings, ip):
    return run_plugin(IpFilter, settings, ctx=make_ctx(client_ip=ip)).status


TABLE = [
    # (settings, client, status)
    ({"deny": ["192.0.2.0/24"]}, "192.0.2.77", 403),
    ({"deny": ["192.0.2.0/24"]}, "192.0.3.1", 200),
    ({"allow": ["10.0.0.0/8"]}, "10.1.2.3", 200),
    ({"allow": ["10.0.0.0/8"]}, "11.0.0.1", 403),                         # an allow list means "only these"
    ({"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}, "10.66.1.1", 403),  # most specific wins
    ({"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}, "10.67.1.1", 200),
    ({"deny": ["0.0.0.0/0"], "allow": ["192.0.2.7"]}, "192.0.2.7", 200),
    ({"deny": ["0.0.0.0/0"], "allow": ["192.0.2.7"]}, "192.0.2.8", 403),
    ({"deny": ["10.0.0.0/8"], "allow": ["10.0.0.0/8"]}, "10.0.0.1", 403),   # same network in both: deny
    ({"deny": ["2001:db8::/32"]}, "2001:db8:1::5", 403),
    ({"deny": ["2001:db8::/32"]}, "2001:db9::5", 200),
    ({"allow": ["2001:db8::/32"]}, "192.0.2.1", 403),                     # v6 allow list refuses v4 too
    ({"deny": ["192.0.2.0/24"]}, "::ffff:192.0.2.9", 403),                # mapped client, v4 rule
    ({"deny": ["::ffff:192.0.2.0/120"]}, "192.0.2.9", 403),               # mapped rule, v4 client
    ({"deny": ["::ffff:192.0.2.0/120"]}, "::ffff:192.0.2.9", 403),
    ({"allow": ["127.0.0.1"]}, "::ffff:127.0.0.1", 200),
    ({"deny": ["192.0.2.1"]}, "192.0.2.1", 403),                          # a bare address is a /32
    ({"deny": ["192.0.2.1/24"]}, "192.0.2.200", 403),                     # host bits masked off
    ({"deny": ["::/0"]}, "192.0.2.1", 200),                               # ::/0 is IPv6 only
    ({"allow": ["10.0.0.0/8"]}, "unknown", 403),                          # not an address: no entry matches
    ({"deny": ["10.0.0.0/8"]}, "unknown", 200),
    ({"deny": ["fe80::/10"]}, "fe80::1%eth0", 403),                       # zone id ignored
    ({}, "192.0.2.1", 200),
]


@pytest.mark.parametrize("settings,ip,status", TABLE)
def test_decisions(settings, ip, status):
    assert decide(settings, ip) == status


def test_status_and_message_configurable():
    ctx = make_ctx(client_ip="192.0.2.1")
    ctx.request_id = "abc"
    run = run_plugin(IpFilter, {"deny": ["192.0.2.0/24"], "status": 404, "message": "nothing here"}, ctx=ctx)
    assert run.status == 404
    assert run.body == b"404 nothing here (request id abc)\n"


def test_matches_the_resolved_client_not_the_peer():
    ctx = make_ctx(client_ip="198.51.100.9", peer_ip="10.0.0.1")
    assert run_plugin(IpFilter, {"deny": ["198.51.100.0/24"]}, ctx=ctx).status == 403
    ctx = make_ctx(client_ip="198.51.100.9", peer_ip="10.0.0.1")
    assert run_plugin(IpFilter, {"deny": ["10.0.0.0/8"]}, ctx=ctx).status == 200


def conn(ip, trusted=False):
    return ConnectionInfo(ip, 1234, 80, False, trusted)


def test_on_connect_drops_denied_peers_unless_trusted_or_off():
    p = make_plugin(IpFilter, {"deny": ["192.0.2.0/24"]})
    assert p.on_connect(conn("192.0.2.1")).status == 403
    assert p.on_connect(conn("192.0.3.1")) is None
    assert p.on_connect(conn("192.0.2.1", trusted=True)) is None    # the client is in its headers
    off = make_plugin(IpFilter, {"deny": ["192.0.2.0/24"], "connect": False})
    assert off.on_connect(conn("192.0.2.1")) is None


def test_files_with_comments_and_blank_lines(tmp_path):
    f = tmp_path / "deny.txt"
    f.write_text("# scanners\n192.0.2.0/24   # one\n\n  2001:db8::/32\n::ffff:198.51.100.0/120\n")
    a = tmp_path / "allow.txt"
    a.write_text("192.0.2.128/25\n")
    s = {"deny_files": [str(f)], "allow_files": [str(a)], "deny": ["203.0.113.5"]}
    assert decide(s, "192.0.2.1") == 403
    assert decide(s, "192.0.2.200") == 200
    assert decide(s, "2001:db8::1") == 403
    assert decide(s, "198.51.100.3") == 403
    assert decide(s, "203.0.113.5") == 403
    assert decide(s, "203.0.113.6") == 403          # an allow list exists: unlisted refused
    assert make_plugin(IpFilter, s).table.size == 5


def test_bad_file_line_is_a_config_error_naming_file_and_line(tmp_path):
    f = tmp_path / "deny.txt"
    f.write_text("192.0.2.0/24\n10.0.0.0/33\n")
    with pytest.raises(ConfigError, match=r"deny_files.*deny.txt:2: not an IP network"):
        make_plugin(IpFilter, {"deny_files": [str(f)]})
    with pytest.raises(ConfigError, match="cannot read"):
        make_plugin(IpFilter, {"deny_files": [str(tmp_path / "missing.txt")]})


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "", "1.2.3"])
def test_bad_inline_entries_refused(bad):
    with pytest.raises(ConfigError, match="not an IP network"):
        make_plugin(IpFilter, {"allow": [bad]})


def test_status_bounds():
    with pytest.raises(ConfigError, match="status"):
        make_plugin(IpFilter, {"status": 200})


def test_lookup_agrees_with_a_scan_on_10000_random_networks():
    rng = random.Random(7)
    entries = []
    for _ in range(10_000):
        if rng.random() < 0.7:
            plen = rng.randint(8, 32)
            net = ipaddress.IPv4Network((rng.getrandbits(32), plen), strict=False)
        else:
            plen = rng.randint(16, 128)
            net = ipaddress.IPv6Network((rng.getrandbits(128), plen), strict=False)
        entries.append((net, rng.random() < 0.5))
    table = ipf.NetworkTable(entries)

    def scan(ip):
        addr = ipaddress.ip_address(ip)
        best = None
        for net, allow in entries:
            if net.version == addr.version and addr in net:
                if best is None or net.prefixlen > best[0]:
                    best = (net.prefixlen, allow)
                elif net.prefixlen == best[0]:
                    best = (net.prefixlen, best[1] and allow)
        return None if best is None else best[1]

    probes = [str(net.network_address + rng.randrange(min(net.num_addresses, 1 << 20))) for net, _ in entries[:300]]
    probes += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(100)]
    for ip in probes:
        assert table.lookup(ip) == scan(ip), ip
    # O(prefix length): the probes per lookup are the distinct lengths, never the entries
    assert len(table._v4) <= 33 and len(table._v6) <= 129


def test_address_int_normalises_mapped_addresses():
    assert ipf.address_int("::ffff:10.0.0.1") == (4, 0x0A000001)
    assert ipf.address_int("10.0.0.1") == (4, 0x0A000001)
    assert ipf.address_int("::1") == (6, 1)
    assert ipf.address_int("unknown") is None
    assert ipf.address_int("10.0.0.256") is None
