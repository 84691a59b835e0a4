"""The geo plugin through a real edge (2 workers) with real origins standing for regional pools."""

from __future__ import annotations

import http.client
import threading
import time

import pytest
import requests

from tests.fixtures.geodb import ADDRESS_OF, record, write_db

ROUTES = [
    {"name": "shop", "match": {"path": "/"}, "upstream": "us", "plugins": {"geo": {
        "countries": {"GB": "eu"}, "continents": {"EU": "eu", "NA": "us", "AS": "ap"}, "default_pool": "us",
        "headers": {"asn": "X-Geo-ASN"}}}},
]


def geo_settings(db_path) -> dict:
    return {"database": str(db_path), "check_interval": "0.2s", "country_header": "CF-IPCountry"}


@pytest.fixture
def geo_edge(edge_server, tmp_path):
    db = write_db(tmp_path / "geo.mmdb")
    routes = [
        {"name": "licensed", "match": {"path": "/licensed"}, "upstream": "us",
         "plugins": {"geo": {"allow_countries": ["US", "GB"]}}},
        {"name": "embargo", "match": {"path": "/embargo"}, "upstream": "us",
         "plugins": {"geo": {"deny_countries": ["JP"], "status": 403, "message": "blocked here"}}},
        *ROUTES,
    ]
    edge = edge_server(plugins={"geo": geo_settings(db)}, routes=routes, workers=2, origins={"eu": 1, "us": 1, "ap": 1},
                       extra={"server": {"trusted_proxies": ["127.0.0.1/32"]}})
    return edge, db


def get(edge, path="/", ip=None, **headers):
    if ip is not None:
        headers["X-Forwarded-For"] = ip
    return requests.get(edge.url + path, headers=headers, timeout=10)


@pytest.mark.parametrize("key,origin", [("GB", "eu0"), ("DE", "eu0"), ("FR", "eu0"), ("US", "us0"), ("US6", "us0"),
                                        ("JP", "ap0"), ("JP6", "ap0"), ("BR", "us0"), ("AU", "us0")])
def test_routing_by_country_and_continent(geo_edge, key, origin):
    edge, _ = geo_edge
    for _ in range(2):  # both workers
        r = get(edge, ip=ADDRESS_OF[key])
        assert r.status_code == 200 and r.headers["X-Origin"] == origin


def test_private_and_unknown_addresses_get_the_default(geo_edge):
    edge, _ = geo_edge
    assert get(edge).headers["X-Origin"] == "us0"                   # the test client itself: 127.0.0.1
    assert get(edge, ip="9.9.9.9").headers["X-Origin"] == "us0"     # not in the database


def test_headers_to_the_backend(geo_edge):
    edge, _ = geo_edge
    seen = get(edge, "/echo", ip=ADDRESS_OF["DE"], **{"X-Geo-Country": "US"}).json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-geo-country"] == "DE" and headers["x-geo-continent"] == "EU"
    assert [v for k, v in seen["headers"] if k.lower() == "x-geo-country"] == ["DE"]


@pytest.mark.parametrize("path,key,status", [
    ("/licensed", "US", 200), ("/licensed", "GB", 200), ("/licensed", "DE", 451),
    ("/embargo", "JP", 403), ("/embargo", "DE", 200),
])
def test_allow_and_deny(geo_edge, path, key, status):
    edge, _ = geo_edge
    r = get(edge, path, ip=ADDRESS_OF[key])
    assert r.status_code == status
    if status == 451:
        assert "not available in your region" in r.text
    if status == 403:
        assert "blocked here" in r.text


def test_unknown_country_refused_by_an_allow_list(geo_edge):
    edge, _ = geo_edge
    assert get(edge, "/licensed", ip="10.1.1.1").status_code == 451


def untrusted_get(edge, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A request from 127.0.0.2, which is not in trusted_proxies."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k: v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_spoofed_forwarding_and_country_headers_from_untrusted_clients_are_ignored(geo_edge):
    edge, _ = geo_edge
    # trusted (127.0.0.1): both the forwarded address and the CDN's country header are believed
    assert get(edge, ip=ADDRESS_OF["US"], **{"CF-IPCountry": "JP"}).headers["X-Origin"] == "ap0"
    assert get(edge, ip=ADDRESS_OF["JP"]).headers["X-Origin"] == "ap0"
    # untrusted (127.0.0.2): neither; the client is private, so the default pool
    status, headers = untrusted_get(edge, "/", {"X-Forwarded-For": ADDRESS_OF["JP"]})
    assert status == 200 and headers["X-Origin"] == "us0"
    status, headers = untrusted_get(edge, "/", {"CF-IPCountry": "JP"})
    assert status == 200 and headers["X-Origin"] == "us0"
    status, _ = untrusted_get(edge, "/licensed", {"X-Forwarded-For": ADDRESS_OF["US"], "CF-IPCountry": "US"})
    assert status == 451


def test_database_reload_on_file_change_without_failed_requests(geo_edge):
    edge, db = geo_edge
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 3000:
            try:
                r = session.get(edge.url + "/", headers={"X-Forwarded-For": ADDRESS_OF["GB"]}, timeout=10)
                results.append((r.status_code, r.headers.get("X-Origin", "")))
            except requests.RequestException as e:
                errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        while len(results) < 50:
            time.sleep(0.05)
        # the GB range moves to Japan: written atomically, as geoipupdate does
        write_db(db, {net: rec for net, rec in [("81.2.69.0/24", record("JP", "AS")), ("8.8.8.0/24", record("US", "NA"))]})
        switched_at = len(results)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            recent = results[-20:]
            if len(results) > switched_at + 40 and all(origin == "ap0" for _, origin in recent):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert all(status == 200 for status, _ in results)
    assert results[0][1] == "eu0"
    # each worker switches at its own next check; after both, every answer comes from the new mapping
    assert all(origin == "ap0" for _, origin in results[-20:])
    assert "geo database" in edge.log() and "reopened" in edge.log()


def test_shipped_default_database_through_edge(edge_server):
    edge = edge_server(plugins={"geo": {}}, workers=1, extra={"server": {"trusted_proxies": ["127.0.0.1/32"]}})
    seen = requests.get(edge.url + "/echo", headers={"X-Forwarded-For": "193.0.6.139"}, timeout=10).json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-geo-country"] == "NL" and headers["x-geo-continent"] == "EU"


def test_fallback_when_a_regions_origin_is_killed_and_back_when_it_returns(edge_server, tmp_path):
    from edge.launch import start_origin

    db = write_db(tmp_path / "geo.mmdb")
    active = {"path": "/", "interval": "0.2s", "timeout": "0.5s", "rise": 2, "fall": 2}
    routes = [{"name": "site", "match": {"path": "/"}, "upstream": "us", "plugins": {"geo": {
        "continents": {"EU": "eu", "NA": "us"}, "fallbacks": {"eu": ["us"]}}}}]
    edge = edge_server(plugins={"geo": geo_settings(db)}, routes=routes, workers=2, origins={"eu": 1, "us": 1},
                       extra={"server": {"trusted_proxies": ["127.0.0.1/32"]}})
    config = edge.config()
    for pool in ("eu", "us"):
        config["upstreams"][pool]["health"] = {"active": active}
    edge.reconfigure(config)

    def origin_for(ip: str) -> str:
        r = get(edge, ip=ip)
        return r.headers.get("X-Origin", str(r.status_code))

    def wait_until(predicate, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError("condition not met in time")

    assert origin_for(ADDRESS_OF["DE"]) == "eu0"
    eu = edge.pools["eu"][0]
    port = eu.port
    eu.stop()
    # once the probes mark eu's only server down, European clients go to the fallback; the US is unaffected
    wait_until(lambda: all(origin_for(ADDRESS_OF["DE"]) == "us0" for _ in range(4)))
    assert origin_for(ADDRESS_OF["US"]) == "us0"
    back = start_origin("eu0", port=port, log_dir=str(tmp_path))
    try:
        wait_until(lambda: all(origin_for(ADDRESS_OF["DE"]) == "eu0" for _ in range(4)))
    finally:
        back.stop()
