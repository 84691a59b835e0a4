"""Bodies stream in both directions: 1 GiB each way, byte-exact, with edge's memory flat."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import simple_config

GIB = 1024 ** 3
PATTERN = bytes(range(256)) * 256  # 64 KiB, the origin's /bytes pattern


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Samples the RSS of edge's worker processes every 100 ms while a transfer runs."""

    def __init__(self, pids):
        self.pids = pids
        self.base = {p: rss_kib(p) for p in pids}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for p in self.pids:
                try:
                    self.peak[p] = max(self.peak[p], rss_kib(p))
                except (OSError, RuntimeError):
                    pass
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def growth_mib(self) -> float:
        return max(self.peak[p] - self.base[p] for p in self.pids) / 1024


@pytest.fixture
def edge1(origin, edge_factory):
    e = edge_factory(simple_config(origin), workers=2)
    # warm both workers so the baseline RSS includes the imports and pools
    with requests.Session() as s:
        for _ in range(20):
            s.get(f"{e.url}/bytes/100000")
    return e


def test_1gib_download_byte_exact_memory_flat(edge1):
    with RssSampler(edge1.worker_pids()) as rss:
        digest = hashlib.sha256()
        total = 0
        with requests.get(f"{edge1.url}/bytes/{GIB}", stream=True, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["Content-Length"] == str(GIB)
            for chunk in r.iter_content(1 << 20):
                digest.update(chunk)
                total += len(chunk)
    assert total == GIB
    expected = hashlib.sha256()
    for _ in range(GIB // len(PATTERN)):
        expected.update(PATTERN)
    assert digest.hexdigest() == expected.hexdigest()
    assert rss.growth_mib() < 20, f"RSS grew {rss.growth_mib():.1f} MiB"


@pytest.mark.parametrize("chunked", [False, True])
def test_1gib_upload_byte_exact_memory_flat(edge1, chunked):
    piece = PATTERN * 16  # 1 MiB

    def body():
        for _ in range(GIB // len(piece)):
            yield piece

    class SizedBody:
        """A file-like body with a length: requests then sends Content-Length, not chunked."""

        def __init__(self):
            self.left = GIB

        def __len__(self):
            return self.left

        def read(self, n=-1):
            if self.left <= 0:
                return b""
            self.left -= len(piece)
            return piece

    expected = hashlib.sha256()
    for _ in range(GIB // len(piece)):
        expected.update(piece)
    with RssSampler(edge1.worker_pids()) as rss:
        r = requests.post(f"{edge1.url}/echo", data=body() if chunked else SizedBody(), timeout=120)
    data = json.loads(r.content)
    assert data["body_length"] == GIB
    assert data["chunked"] is chunked
    assert data["body_sha256"] == expected.hexdigest()
    assert rss.growth_mib() < 20, f"RSS grew {rss.growth_mib():.1f} MiB"
