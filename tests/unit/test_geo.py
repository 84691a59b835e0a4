"""edge/geo.py: record decoding, locatable addresses, the memo and reopening a changed file (injected clock)."""

from __future__ import annotations

import os

import pytest

from edge.geo import CONTINENT_OF, CONTINENTS, GeoDatabase, Location, locatable, location_of, open_reader
from tests.fixtures.geodb import ADDRESS_OF, record, write_db


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path):
    return write_db(tmp_path / "geo.mmdb")


@pytest.mark.parametrize("key,country,continent", [
    ("GB", "GB", "EU"), ("DE", "DE", "EU"), ("US", "US", "NA"), ("AU", "AU", "OC"), ("BR", "BR", "SA"),
    ("ZA", "ZA", "AF"), ("JP", "JP", "AS"), ("FR", "FR", "EU"), ("US6", "US", "NA"), ("JP6", "JP", "AS"),
])
def test_lookup_v4_and_v6(db_path, key, country, continent):
    db = GeoDatabase(str(db_path))
    loc = db.lookup(ADDRESS_OF[key])
    assert (loc.country, loc.continent) == (country, continent)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.1.1", "::1", "fe80::1",
                                "fc00::1", "0.0.0.0", "192.0.2.1", "2001:db8::1", "not-an-ip", "", "unknown"])
def test_non_global_and_invalid_addresses_are_not_located(db_path, ip):
    assert not locatable(ip)
    assert GeoDatabase(str(db_path)).lookup(ip) is None


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(db_path):
    assert GeoDatabase(str(db_path)).lookup("::ffff:81.2.69.142").country == "GB"


def test_address_outside_every_range_is_none(db_path):
    assert GeoDatabase(str(db_path)).lookup("9.9.9.9") is None


@pytest.mark.parametrize("rec,expected", [
    ({"country": {"iso_code": "de"}}, Location("DE", "EU")),
    ({"registered_country": {"iso_code": "NZ"}}, Location("NZ", "OC")),
    ({"country": {"iso_code": "US"}, "continent": {"code": "NA"}, "city": {"names": {"en": "Boston", "de": "Boston"}}},
     Location("US", "NA", "Boston")),
    ({"autonomous_system_number": 64500, "autonomous_system_organization": "Example"}, Location(None, None, asn=64500, as_org="Example")),
    ({"country": {"iso_code": "XYZ"}}, None),
    ({"country": "GB"}, None),
    ({}, None),
    (None, None),
    ("GB", None),
])
def test_location_of_records(rec, expected):
    assert location_of(rec) == expected


def test_continent_table_covers_the_seven_codes_and_common_countries():
    assert set(CONTINENT_OF.values()) == CONTINENTS
    for country, continent in {"US": "NA", "MX": "NA", "BR": "SA", "GB": "EU", "RU": "EU", "TR": "AS", "CN": "AS",
                               "IN": "AS", "EG": "AF", "NG": "AF", "AU": "OC", "NZ": "OC", "AQ": "AN"}.items():
        assert CONTINENT_OF[country] == continent
    assert len(CONTINENT_OF) > 240


def test_memo_is_bounded(db_path):
    db = GeoDatabase(str(db_path), memo_size=3)
    for ip in ["8.8.8.1", "8.8.8.2", "8.8.8.3", "8.8.8.4", "8.8.8.5"]:
        assert db.lookup(ip).country == "US"
    assert len(db._memo) == 3


def test_memo_size_zero_remembers_nothing(db_path):
    db = GeoDatabase(str(db_path), memo_size=0)
    assert db.lookup("8.8.8.8").country == "US" and db.lookup("8.8.8.8").country == "US"
    assert db._memo == {}


def test_changed_file_is_reopened_after_the_check_interval(db_path):
    clock = Clock()
    db = GeoDatabase(str(db_path), check_interval_s=1.0, clock=clock)
    assert db.lookup("81.2.69.142").country == "GB"
    write_db(db_path, {"81.2.69.0/24": record("IE", "EU")})
    clock.now += 0.5
    assert db.lookup("81.2.69.142").country == "GB"  # not checked yet, and the memo answers
    clock.now += 0.6
    assert db.lookup("81.2.69.142").country == "IE"
    assert db.reloads == 1


def test_broken_replacement_keeps_the_old_reader_and_is_retried(db_path, tmp_path):
    clock = Clock()
    db = GeoDatabase(str(db_path), check_interval_s=1.0, clock=clock)
    tmp = tmp_path / "half"
    tmp.write_bytes(b"not a maxmind database at all" * 10)
    os.replace(tmp, db_path)
    clock.now += 2
    assert db.lookup("5.6.7.8").country == "DE"
    assert db.reloads == 0
    write_db(db_path, {"5.6.7.0/24": record("AT", "EU")})
    clock.now += 2
    assert db.lookup("5.6.7.8").country == "AT"
    assert db.reloads == 1


def test_check_interval_zero_never_stats(db_path):
    clock = Clock()
    db = GeoDatabase(str(db_path), check_interval_s=0, clock=clock)
    write_db(db_path, {"81.2.69.0/24": record("IE", "EU")})
    clock.now += 100
    assert db.lookup("81.2.69.142").country == "GB"


def test_open_reader_refuses_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "x.mmdb"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a readable MaxMind DB"):
        open_reader(str(bad))
    with pytest.raises(ValueError, match="not a readable MaxMind DB"):
        open_reader(str(tmp_path / "missing.mmdb"))


def test_fast_ipv4_locatable_agrees_with_ipaddress():
    import ipaddress
    import random

    rng = random.Random(7)
    for _ in range(20000):
        ip = ".".join(str(rng.randrange(256)) for _ in range(4))
        addr = ipaddress.ip_address(ip)
        if not addr.is_multicast:
            assert locatable(ip) is addr.is_global, ip
    for ip in ["01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", " 8.8.8.8"]:
        assert locatable(ip) is False, ip
