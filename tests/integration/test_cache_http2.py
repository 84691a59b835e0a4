"""The cache answers HTTP/2 clients as it answers HTTP/1 ones (both front ends call Proxy.handle; issue 10)."""

from __future__ import annotations

import httpx

from edge.tls import generate_self_signed
from tests.integration.conftest import simple_config


def test_http2_hit_head_and_range_from_the_cache(origin, edge_factory, tmp_path):
    cert, key = generate_self_signed(tmp_path / "tls")
    cfg = simple_config(origin)
    cfg["tls"] = {"certfile": str(cert), "keyfile": str(key)}
    cfg["cache"] = {"enabled": True}
    e = edge_factory(cfg, workers=1)
    base = f"https://127.0.0.1:{e.port}"
    path = "/cache/h2?cc=max-age%3D60&size=300000"
    with httpx.Client(http2=True, verify=False, timeout=10) as c:
        first = c.get(base + path)
        assert first.http_version == "HTTP/2" and len(first.content) == 300000
        hit = c.get(base + path)
        status = hit.headers["cache-status"]  # a hit, or waited for the fill still being committed
        assert (status.startswith("edge; hit") or "collapsed" in status) and hit.content == first.content
        assert int(hit.headers["age"]) >= 0
        head = c.head(base + path)
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "300000"
        part = c.get(base + path, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == first.content[100:200]
    count = httpx.get(f"{origin.url}/cache-count", params={"path": "/cache/h2"}).json()["count"]
    assert count == 1


def test_http2_encoded_variants_from_the_cache(origin, edge_factory, tmp_path):
    import gzip
    import time

    import zstandard

    from tests.integration.h2client import h2_exchange

    cert, key = generate_self_signed(tmp_path / "tls")
    cfg = simple_config(origin)
    cfg["tls"] = {"certfile": str(cert), "keyfile": str(key)}
    cfg["cache"] = {"enabled": True}
    cfg["compression"] = {"enabled": True}
    e = edge_factory(cfg, workers=1)
    path = "/cache/h2v?cc=max-age%3D60&size=300000"
    want = httpx.get(f"{origin.url}/cache/h2v-reference?size=300000").content
    decoders = {"gzip": gzip.decompress, "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d)}
    for coding in ("gzip", "zstd", "gzip", "zstd"):  # a miss, then hits that encode once, then stored variants
        r = h2_exchange(e.port, path, headers=[("accept-encoding", coding)], timeout_s=30)
        assert r.status == 200 and r.reset is None and r.headers["content-encoding"] == coding
        if "content-length" in r.headers:  # a stored variant: its length is known
            assert int(r.headers["content-length"]) == len(r.data)
        assert decoders[coding](r.data) == want
        time.sleep(0.2)  # the variant is written just after the last byte
    count = httpx.get(f"{origin.url}/cache-count", params={"path": "/cache/h2v"}).json()["count"]
    assert count == 1
