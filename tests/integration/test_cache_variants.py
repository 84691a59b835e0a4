"""Encoded variants in the cache (issue 10, item 5; edge.cache.variants) end to end: a real edge
(2 workers) per store backend in front of a real origin, with compression on.

The origin's per-path counters (``/cache-count``) prove what reached it; edge's statsd counters
(``cache.variant_hit`` / ``cache.variant_encoded`` / ``cache.variant_stored``) prove where codec
work happened; bodies are decoded with the reference libraries and compared with the origin's
own bytes (sha256).
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter

import brotli
import pytest
import requests
import zstandard

from edge.launch import REPO, start_edge, start_origin
from tests.integration.conftest import store_config, until

BACKENDS = ["local", "redis", "memcached"]
SIZE = 100 * 1024  # a body worth storing encoded (above variants.MIN_VARIANT_BYTES)
BIG = 1536 * 1024  # identity chunked in the store; encoded variants of it too when they pass 512 KiB


class Sink:
    """A blocking UDP statsd server: ``counts()`` drains what arrived and sums the counters."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.total: Counter[str] = Counter()

    def counts(self) -> Counter:
        self.sock.settimeout(0.3)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return self.total
            for line in data.decode(errors="replace").splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.startswith("c"):
                    self.total[name.removeprefix("edgetest.")] += int(float(value))


class Env:
    def __init__(self, edge, origin, sink: Sink) -> None:
        self.edge = edge
        self.origin = origin
        self.sink = sink
        self.tag = uuid.uuid4().hex[:8]

    def path(self, name: str, query: str) -> str:
        return f"/cache/{name}-{self.tag}?{query}"

    def get(self, path: str, coding: str | None = None, **headers: str) -> requests.Response:
        h = {"Connection": "close", "Accept-Encoding": coding or "identity", **headers}
        return requests.get(self.edge.url + path, headers=h, timeout=30, stream=True)

    def count(self, path: str) -> dict:
        return requests.get(f"{self.origin.url}/cache-count", params={"path": path.split("?")[0]}, timeout=10).json()

    def reference(self, size: int) -> str:
        """The sha256 of the origin's own body of that size (another path: the counters stay)."""
        r = requests.get(f"{self.origin.url}/cache/reference-{self.tag}?size={size}", timeout=30)
        return sha(r.content)

    def purge(self, *args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "edge", "purge", "--config", str(self.edge.config_path), *args],
                             cwd=str(REPO), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_of(r: requests.Response) -> bytes:
    """The bytes on the wire (never content-decoded), decoded here with the reference library."""
    raw = r.raw.read(decode_content=False)
    coding = r.headers.get("Content-Encoding")
    if coding is None:
        return raw
    if coding == "gzip":
        return gzip.decompress(raw)
    if coding == "br":
        return brotli.decompress(raw)
    assert coding == "zstd"
    return zstandard.ZstdDecompressor().decompressobj().decompress(raw)


def hit(r: requests.Response) -> bool:
    status = r.headers.get("Cache-Status", "")
    return status.startswith("edge; hit") or "collapsed" in status


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory):
    backend = request.param
    store = store_config(request, backend, "variants")
    origin = start_origin("v1", log_dir=str(tmp_path_factory.mktemp("origin")))
    sink = Sink()
    config = {
        "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"name": "plain", "match": {"host": ["plain.test"]}, "upstream": "app", "compression": False},
            {"name": "main", "match": {"path": "/"}, "upstream": "app"},
        ],
        "store": store,
        "cache": {"enabled": True, "ban_refresh": "200ms", "coalesce_wait": "10s"},
        "compression": {"enabled": True, "codecs": ["zstd", "br", "gzip"], "min_size": 512},
        "metrics": {"statsd": f"127.0.0.1:{sink.port}", "prefix": "edgetest"},
    }
    edge = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp(f"edge-{backend}")))
    yield Env(edge, origin, sink)
    log = edge.log()
    edge.stop()
    origin.stop()
    sink.sock.close()
    assert "Traceback" not in log, log[-3000:]


def settle(env: Env, name: str, at_least: int) -> Counter:
    """The counters once ``name`` reached ``at_least`` (a variant is written just after the last byte)."""
    until(lambda: env.sink.counts()[name] >= at_least, timeout_s=10)
    return Counter(env.sink.counts())


@pytest.mark.parametrize("size", [SIZE, BIG])
def test_three_clients_one_origin_request_and_no_encoding_on_the_second_hit(env, size):
    p = env.path(f"three{size}", f"cc=max-age%3D60&etag=%22v1%22&size={size}")
    want = env.reference(size)
    first = env.get(p, "identity")
    assert first.status_code == 200 and "Content-Encoding" not in first.headers
    assert first.headers["ETag"] == '"v1"' and "accept-encoding" in first.headers["Vary"].lower()
    assert sha(body_of(first)) == want
    until(lambda: hit(env.get(p, "identity")), timeout_s=10)  # the fill is committed just after the last byte
    before = Counter(env.sink.counts())
    for coding in ("gzip", "zstd"):
        r = env.get(p, coding)
        assert r.status_code == 200 and hit(r)
        assert r.headers["Content-Encoding"] == coding
        assert r.headers["ETag"] == 'W/"v1"'                      # RFC 9110 §8.8.3: the bytes are not the origin's
        assert "accept-encoding" in r.headers["Vary"].lower()
        assert sha(body_of(r)) == want
    after = settle(env, "cache.variant_stored", before["cache.variant_stored"] + 2)
    assert after["cache.variant_encoded"] - before["cache.variant_encoded"] == 2
    # the second gzip and zstd hits are served from the stored variants: no codec work
    for coding in ("gzip", "zstd", "gzip"):
        r = env.get(p, coding)
        assert r.headers["Content-Encoding"] == coding and hit(r)
        announced = int(r.headers["Content-Length"])  # a stored variant's length is known
        assert announced < size
        assert sha(body_of(r)) == want
    last = settle(env, "cache.variant_hit", after["cache.variant_hit"] + 3)
    assert last["cache.variant_encoded"] == after["cache.variant_encoded"]
    assert last["cache.variant_stored"] == after["cache.variant_stored"]
    identity = env.get(p, "identity")
    assert "Content-Encoding" not in identity.headers and sha(body_of(identity)) == want
    assert env.count(p)["count"] == 1  # one origin request for the three clients


def test_head_and_range_and_no_transform_get_identity(env):
    p = env.path("identity", f"cc=max-age%3D60&size={SIZE}")
    env.get(p, "gzip").content
    until(lambda: hit(env.get(p, "gzip")), timeout_s=10)
    head = requests.head(env.edge.url + p, headers={"Accept-Encoding": "gzip", "Connection": "close"}, timeout=10)
    assert "Content-Encoding" not in head.headers and head.headers["Content-Length"] == str(SIZE)
    part = env.get(p, "gzip", Range="bytes=0-99")
    assert part.status_code == 206 and "Content-Encoding" not in part.headers and len(body_of(part)) == 100
    nt = env.get(p, "gzip", **{"Cache-Control": "no-transform"})
    assert nt.status_code == 200 and "Content-Encoding" not in nt.headers and len(body_of(nt)) == SIZE
    assert env.count(p)["count"] == 1


def test_client_conditional_compares_weakly_with_the_stored_etag(env):
    p = env.path("cond", f"cc=max-age%3D60&etag=%22v1%22&size={SIZE}")
    env.get(p, "gzip").content
    until(lambda: hit(env.get(p, "gzip")), timeout_s=10)
    r = env.get(p, "gzip", **{"If-None-Match": 'W/"v1"'})
    assert r.status_code == 304 and r.headers["ETag"] == 'W/"v1"'
    r = env.get(p, "identity", **{"If-None-Match": '"v1"'})
    assert r.status_code == 304 and r.headers["ETag"] == '"v1"'
    assert env.count(p)["count"] == 1


def test_a_304_revalidation_refreshes_every_variant(env):
    # fresh for 2 s, then stale; the 304 makes every variant fresh for an hour (RFC 9111 §4.3.4:
    # its Cache-Control replaces the stored one), so the hits below do not race the clock
    p = env.path("reval", f"cc=max-age%3D2&cc304=max-age%3D3600&etag=%22v1%22&size={SIZE}")
    want = env.reference(SIZE)
    env.get(p, "identity").content
    until(lambda: hit(env.get(p, "identity")), timeout_s=10)
    before = Counter(env.sink.counts())
    for coding in ("gzip", "zstd"):
        env.get(p, coding).content
    stored = settle(env, "cache.variant_stored", before["cache.variant_stored"] + 2)
    time.sleep(2.2)  # stale now: the next request revalidates with the origin's strong ETag
    r = env.get(p, "gzip")
    assert r.status_code == 200 and "fwd=stale" in r.headers["Cache-Status"]
    assert r.headers["Content-Encoding"] == "gzip" and sha(body_of(r)) == want
    c = env.count(p)
    assert c["count"] == 2 and c["conditional"] == 1  # one 304
    # every variant is fresh again from that one 304: hits, no second origin request, no encoding
    for coding in ("zstd", "identity", "gzip"):
        r = env.get(p, coding)
        assert hit(r) and sha(body_of(r)) == want
    last = settle(env, "cache.variant_hit", stored["cache.variant_hit"] + 3)
    assert last["cache.variant_encoded"] == stored["cache.variant_encoded"]
    assert env.count(p)["count"] == 2


@pytest.mark.parametrize("how", ["url", "prefix", "tag", "soft"])
def test_purge_removes_every_variant(env, how):
    p = env.path(f"purge{how}", f"cc=max-age%3D60&size={SIZE}&tag=t-{how}-{env.tag}")
    env.get(p, "identity").content
    until(lambda: hit(env.get(p, "identity")), timeout_s=10)
    before = Counter(env.sink.counts())
    env.get(p, "gzip").content
    settle(env, "cache.variant_stored", before["cache.variant_stored"] + 1)
    assert hit(env.get(p, "gzip"))
    if how == "url":
        env.purge(env.edge.url + p)
    elif how == "prefix":
        env.purge("--prefix", f"{env.edge.url}/cache/purge{how}")
    elif how == "tag":
        env.purge("--tag", f"t-{how}-{env.tag}")
    else:
        env.purge("--soft", env.edge.url + p)
    # every worker sees it (ban rules refresh every 200 ms): gzip and identity go to the origin again
    until(lambda: not hit(env.get(p, "gzip")), timeout_s=10)
    assert env.count(p)["count"] >= 2


def test_route_without_compression_pays_nothing(env):
    p = env.path("plain", f"cc=max-age%3D60&size={SIZE}")
    env.get(p, "gzip", Host="plain.test").content
    until(lambda: hit(env.get(p, "gzip", Host="plain.test")), timeout_s=10)
    before = Counter(env.sink.counts())
    r = env.get(p, "gzip", Host="plain.test")
    assert hit(r) and "Content-Encoding" not in r.headers and len(body_of(r)) == SIZE
    after = env.sink.counts()
    for name in ("cache.variant_hit", "cache.variant_encoded", "cache.variant_stored"):
        assert after[name] == before[name]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_miss_stores_the_encoded_stream_it_sends(env, chunked):
    p = env.path(f"miss{int(chunked)}", f"cc=max-age%3D60&size={SIZE}" + ("&nolength=1" if chunked else ""))
    want = env.reference(SIZE)
    before = Counter(env.sink.counts())
    first = env.get(p, "br")
    assert first.headers["Content-Encoding"] == "br" and "stored" in first.headers["Cache-Status"]
    assert sha(body_of(first)) == want
    stored = settle(env, "cache.variant_stored", before["cache.variant_stored"] + 1)
    until(lambda: hit(env.get(p, "identity")), timeout_s=10)
    r = env.get(p, "br")
    assert hit(r) and r.headers["Content-Encoding"] == "br" and sha(body_of(r)) == want
    last = settle(env, "cache.variant_hit", stored["cache.variant_hit"] + 1)
    assert last["cache.variant_encoded"] == before["cache.variant_encoded"]  # neither the miss nor the hit re-encoded
    assert env.count(p)["count"] == 1
