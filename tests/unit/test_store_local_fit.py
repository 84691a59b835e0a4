"""The local store's bound is on LMDB pages, and a full map never breaks writes (issue 10).

Real LMDB environments in a temporary directory (no sockets, no other process):
usage is read from LMDB itself (the pages of each tree, and ``last_pgno``, the
highest page the file ever used), never from the store's own accounting.
"""

from __future__ import annotations

import hashlib
import logging

import gevent
import lmdb
import pytest

import edge.store.local as local_mod
from edge.errors import StoreUnavailable
from edge.ratelimit import Algorithm, Decision, Limit
from edge.store.footprint import entry_footprint, map_size
from edge.store.local import ACCOUNTING, LocalStore, _StepBatcher

MiB = 1024 * 1024


class Tick:
    """An injected clock: every write happens 10 ms after the previous one."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def cache_key(i: int) -> str:
    return "c:v:" + hashlib.blake2b(b"%d" % i, digest_size=16).hexdigest()


def usage(s: LocalStore) -> tuple[int, int]:
    """(bytes of the pages of the store's trees, bytes up to the highest page ever used)."""
    psize = s._env.stat()["psize"]
    with s._env.begin() as txn:
        stats = [txn.stat(db) for db in (s._data, s._expiry, s._meta)]
    tree = sum(st["leaf_pages"] + st["branch_pages"] + st["overflow_pages"] for st in stats) * psize
    return tree, (s._env.info()["last_pgno"] + 1) * psize


def value_size(kind: str, i: int) -> int:
    return {"100": 100, "1500": 1500, "5000": 5000, "mixed": (100, 1500, 700, 5000, 300, 2100)[i % 6]}[kind]


@pytest.mark.parametrize("kind", ["100", "1500", "5000", "mixed"])
@pytest.mark.parametrize("ttls", ["random", "same"])
def test_store_filled_far_past_its_bound_keeps_real_usage_near_it(tmp_path, kind, ttls):
    max_bytes = 1 * MiB
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=max_bytes, clock=Tick())
    try:
        written = 0
        i = 0
        while written < 6 * max_bytes:  # six times the bound, in keys and values alone
            n = value_size(kind, i)
            # "mixed" also overwrites keys with other sizes, as a cache revalidating does
            key = cache_key(i % 3000 if kind == "mixed" else i)
            s.set(key, b"x" * n, 60 + (i * 7919) % 3600 if ttls == "random" else 3600)
            written += n + len(key)
            i += 1
        accounted = s.stats()["bytes"]
        tree, used = usage(s)
        assert accounted <= max_bytes
        # within a small factor of the bound, both ways (the bound is used, not wasted) ...
        assert max_bytes // 2 <= tree <= 3 * max_bytes // 2
        assert used <= 2 * max_bytes
        # ... and far inside the map
        assert used <= map_size(max_bytes) // 4
    finally:
        s.close()


def test_the_repro_of_issue_10_a_full_cache_of_1500_byte_values_keeps_writing(tmp_path):
    # 8 MiB with the old accounting filled its map after ~13,000 such writes (MapFullError)
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=8 * MiB)
    try:
        for i in range(20_000):
            s.set(cache_key(i), b"v" * 1500, 3600)
        assert s.get(cache_key(19_999)) == b"v" * 1500
        tree, used = usage(s)
        assert s.stats()["bytes"] <= 8 * MiB and used <= 2 * 8 * MiB
    finally:
        s.close()


@pytest.fixture
def tiny_map(monkeypatch):
    """Stores opened now get a 512 KiB map whatever their bound: the map fills before the bound."""
    monkeypatch.setattr(local_mod, "map_size", lambda max_bytes: 512 * 1024)


@pytest.mark.parametrize("value_len", [100, 1500, 5000])
def test_a_full_map_is_recovered_by_eviction_never_a_raw_lmdb_error(tmp_path, tiny_map, value_len, caplog):
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=64 * MiB, clock=Tick())
    recoveries = []
    real_recover = s._recover
    s._recover = lambda fn: recoveries.append(1) or real_recover(fn)  # type: ignore[method-assign]
    try:
        unavailable = 0
        with caplog.at_level(logging.WARNING, logger="edge.store.local"):
            for i in range(3000):
                try:
                    (s.add if i % 3 == 0 else s.set)(cache_key(i), b"x" * value_len, 60 + (i * 7919) % 3600)
                except StoreUnavailable:
                    unavailable += 1
        assert recoveries, "the map never filled: the test does not test anything"
        assert "LMDB map full" in caplog.text
        assert unavailable <= len(recoveries)  # a write fails only where a recovery did
        assert s._bound < 64 * MiB  # this process now keeps the store below what filled the map
        for i in range(3000, 3050):  # and after it, writes go through again
            s.set(cache_key(i), b"y" * value_len, 3600)
            assert s.get(cache_key(i)) == b"y" * value_len
    finally:
        s.close()


def test_a_write_that_cannot_fit_the_map_raises_store_unavailable_and_the_store_still_works(tmp_path, tiny_map):
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=64 * MiB)
    try:
        s.set("small", b"s")
        with pytest.raises(StoreUnavailable, match="map full"):
            s.set("huge", b"h" * (600 * 1024))  # 151 overflow pages in a 128-page map
        assert s.get("huge") is None
        s.set("after", b"ok")
        assert s.get("after") == b"ok"
        assert s.incr("n") == 1
    finally:
        s.close()


@pytest.mark.parametrize("algorithm", [Algorithm.GCRA, Algorithm.WINDOW])
def test_rate_limit_steps_on_a_full_map_decide_or_raise_store_unavailable(tmp_path, tiny_map, algorithm):
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=64 * MiB)
    limit = Limit(count=100, period_s=60.0, algorithm=algorithm)
    recoveries = []
    real_recover = s._recover
    s._recover = lambda fn: recoveries.append(1) or real_recover(fn)  # type: ignore[method-assign]
    try:
        for i in range(200):
            s.set(cache_key(i), b"x" * 1500, 3600)
        assert recoveries  # the map is full now, and stays near full
        outcomes = []
        for i in range(4000):  # new keys: each step is a full _put
            try:
                outcomes.append(s.ratelimit_step(f"rl{i}", limit))
            except StoreUnavailable as e:
                outcomes.append(e)
        assert all(isinstance(o, (Decision, StoreUnavailable)) for o in outcomes)
        assert sum(isinstance(o, Decision) and o.allowed for o in outcomes) >= 3900
    finally:
        s.close()


def test_batched_steps_of_greenlets_on_a_full_map_decide_or_raise_store_unavailable(tmp_path, tiny_map):
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=64 * MiB)
    s._batch = _StepBatcher(s)  # as in a gevent worker: concurrent steps share transactions
    limit = Limit(count=2, period_s=3600.0)  # states that live for an hour: the map fills
    recoveries = []
    real_recover = s._recover
    s._recover = lambda fn: recoveries.append(1) or real_recover(fn)  # type: ignore[method-assign]
    outcomes: list[object] = []

    def work(g: int) -> None:
        for j in range(40):
            try:
                outcomes.append(s.ratelimit_step(f"rl{g}:{j}", limit))
            except StoreUnavailable as e:
                outcomes.append(e)
            except lmdb.Error as e:  # what this test is about: never one of these
                outcomes.append(e)

    try:
        for i in range(100):
            s.set(cache_key(i), b"x" * 1500, 3600)
        recoveries.clear()
        gevent.joinall([gevent.spawn(work, g) for g in range(100)], timeout=60, raise_error=True)
        assert len(outcomes) == 4000
        assert recoveries, "the map never filled: the test does not test anything"
        assert s._batch.batches < 4000  # steps did share transactions
        assert all(isinstance(o, (Decision, StoreUnavailable)) for o in outcomes), \
            {type(o).__name__ for o in outcomes}
    finally:
        s.close()


def _write_old_format_store(path: str, entries: dict[bytes, bytes]) -> None:
    """A store as the versions before issue 10 left it: b"" index rows, key + value + 64 accounted."""
    env = lmdb.open(path, map_size=64 * MiB, max_dbs=3)
    data, expiry, meta = (env.open_db(name) for name in (b"data", b"expiry", b"meta"))
    with env.begin(write=True) as txn:
        size = 0
        for n, (k, v) in enumerate(entries.items()):
            expires_at = 2_000_000.0 + n
            txn.put(k, local_mod._HDR.pack(expires_at) + v, db=data)
            txn.put(local_mod._EXP.pack(int(expires_at * 1e6)) + k, b"", db=expiry)
            size += len(k) + len(v) + 64
        txn.put(b"bytes", local_mod._Q.pack(size), db=meta)
    env.close()


def test_a_store_from_an_older_version_is_reaccounted_and_its_index_rows_still_evict(tmp_path):
    path = str(tmp_path / "old")
    old = {cache_key(i).encode(): b"o" * 1500 for i in range(300)}
    _write_old_format_store(path, old)
    s = LocalStore(path=path, max_bytes=1 * MiB, clock=Tick())
    try:
        psize = s._env.stat()["psize"]
        assert s.stats()["bytes"] == sum(entry_footprint(len(k), len(v), psize) for k, v in old.items())
        with s._env.begin(db=s._meta) as txn:
            assert txn.get(b"acct") == ACCOUNTING
        for i in range(1000, 1400):  # new entries expire before the old ones: evicted first ...
            s.set(cache_key(i), b"n" * 1500, 10.0)
        for i in range(1400, 1800):  # ... and these outlive them all: the old rows go (b"" rows)
            s.set(cache_key(i), b"m" * 1500, 10**7)
        live = s.get_many([cache_key(i) for i in range(1400, 1800)])
        assert live and s.get(cache_key(0)) is None
        # the accounting still matches the entries present, so it neither drifts nor goes negative
        assert s.stats()["entries"] == len(live)
        assert s.stats()["bytes"] == sum(entry_footprint(len(k), 1500, psize) for k in live) <= 1 * MiB
    finally:
        s.close()


def test_rate_limit_hot_path_keeps_the_index_rows_footprint(tmp_path):
    s = LocalStore(path=str(tmp_path / "s"), max_bytes=1 * MiB)
    t = 1_000_000.0
    try:
        for i in range(300):  # the hot path moves the key's index row as its expiry moves
            s.ratelimit_step("hot", Limit(count=1000, period_s=1.0), now=t + i * 0.1)
        with s._env.begin() as txn:
            rows = list(txn.cursor(db=s._expiry))
        assert len(rows) == 1
        [(_, footprint)] = rows
        assert local_mod._SIZE.unpack(footprint)[0] == s.stats()["bytes"] > 0
    finally:
        s.close()
