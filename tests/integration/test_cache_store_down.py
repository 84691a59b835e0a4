"""A cache store that is down makes the cache a pass-through, never an error (issue 10).

Own module: it stops its Redis, so it gets a server and an edge of its own.
"""

from __future__ import annotations

import requests

from edge.launch import start_origin
from tests.integration.conftest import until


def test_store_down_passes_through_and_recovers(make_redis_server, edge_factory, tmp_path):
    redis = make_redis_server()
    origin = start_origin("sd", log_dir=str(tmp_path))
    try:
        edge = edge_factory({
            "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
            "routes": [{"match": {"path": "/"}, "upstream": "app"}],
            "store": {"backend": "redis", "url": redis.url},
            "cache": {"enabled": True},
        })
        url = f"{edge.url}/cache/sd?cc=max-age%3D60"

        def count() -> int:
            return requests.get(f"{origin.url}/cache-count", params={"path": "/cache/sd"}, timeout=10).json()["count"]

        requests.get(url, timeout=10)
        until(lambda: "hit" in requests.get(url, timeout=10).headers["Cache-Status"], timeout_s=10)
        assert count() == 1
        redis.stop()
        for n in range(2, 6):  # every request reaches the origin, none fails
            r = requests.get(url, headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200 and f"n={n}" in r.text
            assert "Cache-Status" not in r.headers
        until(lambda: "cache store unavailable" in edge.log(), timeout_s=10)
        assert edge.log().count("cache store unavailable") <= 2  # once per worker, not per request
        redis.start()
        until(lambda: "hit" in requests.get(url, timeout=10).headers.get("Cache-Status", ""), timeout_s=20)
    finally:
        origin.stop()
