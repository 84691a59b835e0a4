"""bot end to end (issue 11): a real edge (2 workers) in front of the demo origin blocks
scanners (sqlmap) before the origin sees them, rate-limits through the shared store
across workers, and tags for the ratelimit plugin to key on."""

from __future__ import annotations

import socket

import pytest
import requests

from edge.launch import start_edge, start_origin
from tests.integration.conftest import read_until_close

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
           "Accept": "text/html", "Accept-Language": "en"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    origin = start_origin("o1", log_dir=str(tmp_path_factory.mktemp("origin")))
    config = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "plugins": {"bot": {}},
        "routes": [
            {"name": "slow", "match": {"path": "/slow"}, "upstream": "app",
             "plugins": {"bot": {"action": "ratelimit", "rate": "3/m"}}},
            {"name": "tagged", "match": {"path": "/tagged"}, "upstream": "app",
             "plugins": {"bot": {"action": "tag"},
                         "ratelimit": {"limits": [{"rate": "2/m"}], "key": ["fact:bot", "client_ip"],
                                       "missing_key": "skip"}}},
            {"name": "default", "match": {"path": "/"}, "upstream": "app"},
        ],
    }
    edge = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield edge, origin
    edge.stop()
    origin.stop()


def origin_requests(origin) -> int:
    r = requests.get(f"http://127.0.0.1:{origin.port}/stats/reset", timeout=10).json()
    return r["requests"] - 1


def test_sqlmap_is_blocked_before_the_origin(env):
    edge, origin = env
    origin_requests(origin)
    r = requests.get(f"{edge.url}/index.php?id=1", headers={"User-Agent": "sqlmap/1.7.2#stable (https://sqlmap.org)"},
                     timeout=10)
    assert r.status_code == 403
    assert origin_requests(origin) == 0
    assert requests.get(f"{edge.url}/", headers=BROWSER, timeout=10).status_code == 200


def test_missing_user_agent_and_forged_browser_are_blocked(env):
    edge, _ = env
    # a raw request: HTTP libraries add a User-Agent of their own
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_close(sock).startswith(b"HTTP/1.1 403")
    forged = {"User-Agent": BROWSER["User-Agent"], "Accept": "*/*"}   # no Accept-Language
    assert requests.get(f"{edge.url}/", headers=forged, timeout=10).status_code == 403


def test_ratelimit_action_is_shared_by_the_workers(env):
    edge, _ = env
    statuses = []
    for _ in range(6):   # new connections: both workers take turns
        with requests.Session() as s:
            statuses.append(s.get(f"{edge.url}/slow", headers={"User-Agent": "Nuclei"}, timeout=10).status_code)
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429, 429]
    assert requests.get(f"{edge.url}/slow", headers=BROWSER, timeout=10).status_code == 200


def test_tag_lets_the_ratelimit_plugin_key_on_the_fact(env):
    edge, _ = env
    tagged = [requests.get(f"{edge.url}/tagged", headers={"User-Agent": "masscan/1.3"}, timeout=10).status_code
              for _ in range(4)]
    assert tagged == [200, 200, 429, 429]
    # untagged clients have no bot fact: skipped by the limit
    assert all(requests.get(f"{edge.url}/tagged", headers=BROWSER, timeout=10).status_code == 200 for _ in range(4))
