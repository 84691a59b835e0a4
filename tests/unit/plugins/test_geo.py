"""plugins/geo.py through edge.testing: pools by country and continent, fallbacks, allow/deny, headers, facts."""

from __future__ import annotations

import pytest

from edge.errors import ConfigError
from edge.http import TrustedProxies
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, make_services, run_plugin
from tests.fixtures.geodb import ADDRESS_OF, record, write_db

Geo = load_plugin_file(SHIPPED_DIR / "geo.py")

ROUTING = {"countries": {"GB": "uk"}, "continents": {"EU": "eu", "NA": "us", "AS": "ap"}, "default_pool": "us",
           "fallbacks": {"eu": ["us", "ap"], "uk": ["eu"]}}


@pytest.fixture
def db(tmp_path):
    return str(write_db(tmp_path / "geo.mmdb", {
        "81.2.69.0/24": record("GB", "EU", city="London", asn=64501),
        "5.6.7.0/24": record("DE", "EU"),
        "8.8.8.0/24": record("US", "NA"),
        "103.1.0.0/16": record("JP", "AS"),
        "200.1.2.0/24": record("BR", "SA"),
        "1.0.0.0/24": record("AU", None),
    }))


def services(down=(), trusted=("10.0.0.1",)):
    return make_services(trusted_proxies=TrustedProxies(list(trusted)),
                         upstream_available=lambda pool: pool not in down)


def run(db, settings, ip, down=(), headers=None, peer=None, upstream="default"):
    ctx = make_ctx(client_ip=ip, peer_ip=peer or ip, headers=headers, upstream=upstream)
    return run_plugin(Geo, {"database": db, **settings}, ctx=ctx, services=services(down))


@pytest.mark.parametrize("ip,pool", [
    (ADDRESS_OF["GB"], "uk"),        # the country map wins over the continent
    (ADDRESS_OF["DE"], "eu"),        # continent
    (ADDRESS_OF["US"], "us"),
    (ADDRESS_OF["JP"], "ap"),
    (ADDRESS_OF["BR"], "us"),        # no map: default_pool
    (ADDRESS_OF["AU"], "us"),        # continent derived from the country (OC), unmapped
    ("127.0.0.1", "us"),             # not locatable: default
    ("9.9.9.9", "us"),               # not in the database
])
def test_pool_by_country_then_continent_then_default(db, ip, pool):
    r = run(db, ROUTING, ip)
    assert r.answered is None
    assert r.ctx.upstream == pool and r.ctx.facts["geo_pool"] == pool


def test_facts_and_headers(db):
    r = run(db, {**ROUTING, "headers": {"city": "X-Geo-City", "asn": "X-Geo-ASN"}}, ADDRESS_OF["GB"],
            headers={"X-Geo-Country": "US", "X-Geo-City": "Spoofed"})
    assert r.ctx.facts["country"] == "GB" and r.ctx.facts["continent"] == "EU"
    assert r.ctx.facts["city"] == "London" and r.ctx.facts["asn"] == 64501
    h = r.request_headers
    assert h.get_all("X-Geo-Country") == ["GB"] and h.get("X-Geo-Continent") == "EU"
    assert h.get_all("X-Geo-City") == ["London"] and h.get("X-Geo-ASN") == "64501"


def test_unknown_country_sends_no_headers_and_removes_the_clients(db):
    r = run(db, {}, "10.9.9.9", headers={"X-Geo-Country": "US"})
    assert r.ctx.facts["country"] is None and "X-Geo-Country" not in r.request_headers
    assert r.ctx.upstream == "default"  # no routing configured: the route's pool stays


def test_default_country_for_private_addresses(db):
    r = run(db, {**ROUTING, "default_country": "de"}, "192.168.1.2")
    assert r.ctx.facts["country"] == "DE" and r.ctx.upstream == "eu"


@pytest.mark.parametrize("down,pool", [
    ((), "eu"), (("eu",), "us"), (("eu", "us"), "ap"),
    (("eu", "us", "ap"), "eu"),      # nothing available: the chosen pool answers (503)
])
def test_fallbacks_in_order(db, down, pool):
    assert run(db, ROUTING, ADDRESS_OF["DE"], down=down).ctx.upstream == pool


def test_fallback_is_not_transitive(db):
    # uk falls back to eu; eu's own fallbacks are eu's, not uk's
    assert run(db, ROUTING, ADDRESS_OF["GB"], down=("uk", "eu")).ctx.upstream == "uk"


@pytest.mark.parametrize("settings,ip,refused", [
    ({"allow_countries": ["DE", "GB"]}, ADDRESS_OF["DE"], False),
    ({"allow_countries": ["DE", "GB"]}, ADDRESS_OF["US"], True),
    ({"allow_countries": ["DE"]}, "10.0.0.7", True),                      # unknown refused by an allow list
    ({"allow_countries": ["DE"], "allow_unknown": True}, "10.0.0.7", False),
    ({"deny_countries": ["US"]}, ADDRESS_OF["US"], True),
    ({"deny_countries": ["US"]}, ADDRESS_OF["JP"], False),
    ({"deny_countries": ["US"]}, "10.0.0.7", False),                      # unknown passes a deny list
])
def test_allow_and_deny(db, settings, ip, refused):
    r = run(db, settings, ip)
    assert (r.status == 451) is refused
    if refused:
        assert b"not available in your region" in r.body


def test_status_and_message_configurable(db):
    r = run(db, {"deny_countries": ["US"], "status": 403, "message": "no"}, ADDRESS_OF["US"])
    assert r.status == 403 and b"no" in r.body


def test_country_header_believed_only_from_trusted_proxies(db):
    settings = {**ROUTING, "country_header": "CF-IPCountry"}
    r = run(db, settings, ADDRESS_OF["US"], peer="10.0.0.1", headers={"CF-IPCountry": "jp"})
    assert r.ctx.facts["country"] == "JP" and r.ctx.upstream == "ap"
    assert "CF-IPCountry" not in r.request_headers
    spoofed = run(db, settings, ADDRESS_OF["US"], peer=ADDRESS_OF["US"], headers={"CF-IPCountry": "JP"})
    assert spoofed.ctx.facts["country"] == "US" and spoofed.ctx.upstream == "us"
    assert "CF-IPCountry" not in spoofed.request_headers


def test_bad_country_header_value_from_a_trusted_proxy_is_unknown(db):
    r = run(db, {"country_header": "CF-IPCountry"}, ADDRESS_OF["US"], peer="10.0.0.1", headers={"CF-IPCountry": "XX1"})
    assert r.ctx.facts["country"] is None


def test_ipv6_client(db, tmp_path):
    path = write_db(tmp_path / "v6.mmdb", {"2a02:1::/32": record("FR", "EU")})
    r = run(str(path), ROUTING, "2a02:1::7")
    assert r.ctx.facts["country"] == "FR" and r.ctx.upstream == "eu"


def test_request_on_a_route_without_upstream_is_not_routed(db):
    r = run(db, ROUTING, ADDRESS_OF["DE"], upstream=None)
    assert r.ctx.upstream is None and "geo_pool" not in r.ctx.facts


@pytest.mark.parametrize("settings,message", [
    ({"countries": {"GER": "eu"}}, "not an ISO 3166-1 alpha-2 country code"),
    ({"continents": {"XX": "eu"}}, "unknown continent code"),
    ({"allow_countries": ["DE"], "deny_countries": ["US"]}, "not both"),
    ({"status": 404}, "status"),
    ({"headers": {"country": "X Geo"}}, "must be a token"),
])
def test_bad_settings_are_refused(db, settings, message):
    with pytest.raises(ConfigError) as e:
        run(db, settings, ADDRESS_OF["DE"])
    assert message in str(e.value)


def test_missing_or_broken_database_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a readable MaxMind DB"):
        run(str(tmp_path / "missing.mmdb"), {}, ADDRESS_OF["DE"])
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"nope" * 100)
    with pytest.raises(ConfigError, match="not a readable MaxMind DB"):
        run(str(bad), {}, ADDRESS_OF["DE"])


# Well-known addresses and the countries the shipped Geoacumen database (2024-06-23) gives them.
DEFAULT_DB_EXPECTED = {
    "8.8.8.8": "US",               # Google Public DNS
    "2001:4860:4860::8888": "US",  # Google Public DNS over IPv6
    "193.0.6.139": "NL",           # RIPE NCC, Amsterdam
    "200.160.2.3": "BR",           # NIC.br
    "202.12.27.33": "JP",          # m.root-servers.net (WIDE, Tokyo)
    "81.2.69.142": "GB",           # the address MaxMind's own test data uses for the UK
}


@pytest.mark.parametrize("ip,country", sorted(DEFAULT_DB_EXPECTED.items()))
def test_shipped_default_database(ip, country):
    r = run_plugin(Geo, {"database": "default"}, ctx=make_ctx(client_ip=ip), services=services())
    assert r.ctx.facts["country"] == country
