"""The default store: shared by every worker process of one node, no server (LMDB).

Theory of operation
-------------------
All workers of a node open the same LMDB environment (a memory-mapped B-tree
file, python ``lmdb``) after fork. Reads are lock-free MVCC snapshots; writes
are serialized by LMDB's single writer mutex, which is a *robust* process-shared
mutex on Linux: if a worker is killed while holding it, the next writer gets
``EOWNERDEAD``, LMDB recovers the mutex and the half-done transaction is simply
never committed (copy-on-write pages, the meta page flips only on commit). So a
killed worker leaves no stuck lock and no corruption. Every read-modify-write
(``incr``, ``cas``, ``ratelimit_step``, locks) is one write transaction, hence
atomic across processes. We open with ``sync=False``: a power loss may lose the
last writes, which is fine for a cache and rate-limit counters, and commits stay
in the microseconds.

Why LMDB and not SQLite (diskcache) or raw shared memory: see
``docs/benchmarks.md`` "Shared store backends" (measured with
``python -m edge.store.bench``); LMDB was several times faster for reads and
writes from two processes, and shared memory would need our own allocator, hash
table and a robust cross-process lock, i.e. re-implementing LMDB.

Layout, three named databases in one environment:

- ``data``: key -> ``<d expires_at`` (0.0 = never) + value;
- ``expiry``: ``>Q expires_at_us`` + key -> ``<Q`` the entry's footprint (keys
  without TTL sort last), an index used to drop expired entries and to choose victims;
- ``meta``: ``bytes`` -> ``<q`` the accounted size of all entries, ``acct`` -> the
  name of the accounting that size uses (``ACCOUNTING``).

Rate-limit states (``ratelimit_step``, the ``ratelimit`` plugin's hot path) are
written so that a busy key costs one get and one put in its transaction: the state
is space-padded to a fixed width (its accounted size never changes), and its expiry
is rounded up to a 1/16 s grid (keeping a state past its TTL changes no decision),
so its expiry index row moves at most 16 times a second instead of at every step.

In a gevent worker, the steps that concurrent greenlets issue at the same moment
run in one write transaction (``_StepBatcher``): each is still one atomic
read-decide-write under the writer lock, and the pages are copied once per batch
instead of once per step.

Bounding: each entry is accounted by its real page footprint in the map,
``edge.store.footprint.entry_footprint`` (its share of ``data`` and ``expiry``
leaf and branch pages, and its overflow pages; issue 10: counting key + value
bytes let a cache of 1.5 KB objects, 64 MiB accounted, use 122 MiB of leaf pages and fill the map).
So ``max_bytes`` is the memory and disk the store uses, within a small factor.
Every write transaction first removes up to ``SWEEP_PER_WRITE`` expired entries
(so expired data does not linger), then, while the total exceeds ``max_bytes``,
evicts the entries that expire soonest (entries without TTL last). Reads never
write, so the policy is "soonest to expire", not LRU (an LRU would turn every
read into a cross-process write). An expiry index row holds its entry's
footprint (``<Q``), so choosing victims costs no lookup in ``data``; rows of
older versions hold b"" and fall back to that lookup. ``meta`` ``acct`` names the
accounting; a store written with another one is re-accounted once when opened.

The LMDB map is ``footprint.map_size(max_bytes)`` (4 x ``max_bytes`` + 64 MiB):
twice the worst leaf fill, plus copy-on-write pages, the free list and the pages
LMDB cannot reuse yet (see ``edge.store.footprint``); it is address space over a
sparse file, not memory. Should it still fill (``MapFullError``), ``_recover``
evicts a quarter of the accounted size in small transactions (at most 16 victims,
fewer when even that finds no room: one big eviction transaction needs fresh pages
for its own copies and fails like the write did), lowers this process's bound to
what is left, and retries the write. If not one entry can be evicted it empties the
store (``_clear``: dropping a tree copies none of its pages). A write that still
finds no room raises ``StoreUnavailable``, which callers degrade on (the cache
passes through, rate limiting applies its store-error policy), never a raw
``lmdb`` error. ``tests/unit/test_store_local_fit.py`` forces a 512 KiB map.

Location: ``StoreConfig.path``, or by default ``<dir>/edge-store-<uid>-<hash of cwd and
key_prefix>``, so two edge instances started from different directories (or with
different prefixes), e.g. parallel test runs, do not share state, while the workers of
one instance do. ``<dir>`` is ``/dev/shm`` (memory) when it exists, is writable and its
size is at least ``SHM_MAP_MULTIPLE`` maps (a container's 64 MiB ``/dev/shm`` is not),
else ``tempfile.gettempdir()``. Why memory: the map is written in place (``writemap``),
and on a disk file system every page the kernel has written back is write-protected
again, so the next transaction that reuses it takes a page fault into the file system
(ext4 ``page_mkwrite``): measured on a full store after a writeback, a one-put write
transaction costs 7.3 µs on ext4 and 2.5 µs on tmpfs (docs/benchmarks.md). Nothing in the
store needs to survive a reboot (cache, counters, leases; ACME keeps its certificates on
disk too). The choice depends only on the mount's size, never on its free space, so the
master, its workers and ``python -m edge`` tools always open the same directory.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import lmdb
from gevent import monkey
from gevent.hub import Waiter

from edge.errors import StoreUnavailable
from edge.ratelimit import EPS_S, Algorithm, Decision, Limit, gcra_step, step_encoded
from edge.store.base import Store
from edge.store.batching import Answer, GreenletBatcher, deliver
from edge.store.footprint import entry_footprint, map_size

log = logging.getLogger(__name__)

SWEEP_PER_WRITE = 16  # expired entries removed by each write (amortized cleaning)
FULL_PUT_EVERY = 64  # ratelimit_step: every n-th step of a process takes the full _put (see there)
RL_EXPIRY_GRID = 16  # ratelimit_step: state expiries are rounded up to 1/16 s (see there)
_WINDOW_WIDTH = 64  # ratelimit_step: window states are space-padded to this (longest: 63 bytes)
# ratelimit_step: GCRA states as two little-endian doubles (the <d header, then tat), under
# the key plus a byte no UTF-8 string contains, so they never meet the text states of
# older versions (whose float() would choke on them) nor any other key
_GCRA_KEY_SUFFIX = b"\xff"
_GCRA_STATE = struct.Struct("<dd")
_GCRA_SIZE = _GCRA_STATE.size
_TAT = struct.Struct("<d")
_Step = Callable[[lmdb.Transaction, bytes, Limit, float, float], Decision]
_HDR = struct.Struct("<d")
_HDR_SIZE = _HDR.size
_EXP = struct.Struct(">Q")
_NEVER_US = 2**64 - 1
_BYTES_KEY = b"bytes"
_ACCT_KEY = b"acct"
#: the accounting ``meta`` ``bytes`` uses; older stores (key + value + 64, no ``acct``) are
#: re-accounted when opened
ACCOUNTING = b"footprint-1"
_Q = struct.Struct("<q")
_SIZE = struct.Struct("<Q")  # an expiry index row's value: its entry's footprint
# _recover: most victims per eviction transaction; rounds of eviction (each to 3/4) and retry
RECOVER_BATCH = 16
RECOVER_ROUNDS = 3
MAP_FULL_LOG_EVERY_S = 60.0


#: memory file systems the default directory is chosen from, in order (see "Location")
SHM_DIRS = ("/dev/shm",)
#: a memory file system is used when it can hold this many maps of the store
SHM_MAP_MULTIPLE = 2
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def default_dir(max_bytes: int = DEFAULT_MAX_BYTES, candidates: tuple[str, ...] = SHM_DIRS) -> str:
    """Where default store directories go: a big enough memory file system, else the
    temporary directory (see "Location" in the module docstring)."""
    need = SHM_MAP_MULTIPLE * map_size(max_bytes)
    for d in candidates:
        try:
            st = os.statvfs(d)
        except OSError:
            continue
        if st.f_blocks * st.f_frsize >= need and os.access(d, os.W_OK | os.X_OK):
            return d
    return tempfile.gettempdir()


def default_path(key_prefix: str, cwd: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The per-instance default directory (see the module docstring)."""
    seed = f"{cwd or os.getcwd()}\0{key_prefix}".encode()
    digest = hashlib.sha1(seed).hexdigest()[:12]
    return os.path.join(default_dir(max_bytes), f"edge-store-{os.getuid()}-{digest}")


class LocalStore(Store):
    name = "local"

    def __init__(self, path: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 key_prefix: str = "", clock: Callable[[], float] = time.time) -> None:
        self.path = path or default_path(key_prefix, max_bytes=max_bytes)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        self._max_bytes = max_bytes
        self._bound = max_bytes  # lowered by _recover if the map fills all the same
        self._map_full_logged_at = -MAP_FULL_LOG_EVERY_S
        self._prefix = key_prefix.encode()
        self._clock = clock
        self._steps = 0
        # under gevent (a worker), concurrent steps share write transactions (_StepBatcher);
        # without it (scripts, tests, threads) each step is its own transaction
        self._batch = _StepBatcher(self) if monkey.is_module_patched("socket") else None
        self._env = lmdb.open(
            self.path, map_size=map_size(max_bytes), max_dbs=3,
            sync=False, metasync=False, readahead=False, meminit=False, max_readers=1024,
            # writemap: a commit writes into the shared map instead of a pwrite() per dirty page,
            # 5.0 -> 1.5 µs for a one-put transaction (issue 4 benchmark). Still copy-on-write:
            # a killed writer's pages are never reachable from a committed meta page.
            writemap=True,
        )
        # reader slots left by killed workers pin old pages; clear them at every open
        self._env.reader_check()
        self._data = self._env.open_db(b"data")
        self._expiry = self._env.open_db(b"expiry")
        self._meta = self._env.open_db(b"meta")
        # the page model is per page size; memoized because it is on every write's path
        # (a few distinct key and value lengths repeat: cache records, chunks, rate states)
        self._footprint = functools.lru_cache(maxsize=4096)(
            functools.partial(entry_footprint, psize=self._env.stat()["psize"]))
        with self._env.begin(db=self._meta) as txn:
            current = txn.get(_ACCT_KEY) == ACCOUNTING
        if not current:
            self._reaccount()

    # -- internals ---------------------------------------------------------------------

    def _k(self, key: str) -> bytes:
        return self._prefix + key.encode()

    @staticmethod
    def _unpack(raw: bytes | None, now: float) -> bytes | None:
        if raw is None:
            return None
        (expires_at,) = _HDR.unpack_from(raw)
        if expires_at and expires_at <= now:
            return None
        return raw[_HDR.size:]

    @staticmethod
    def _exp_key(expires_at: float, k: bytes) -> bytes:
        return _EXP.pack(int(expires_at * 1e6) if expires_at else _NEVER_US) + k

    def _size(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_BYTES_KEY, db=self._meta)
        return _Q.unpack(raw)[0] if raw else 0

    def _reaccount(self) -> None:
        """Recompute ``bytes`` with this version's accounting (a store from an older version).

        Once per store: the first process to open it does it under the writer lock, the
        others find ``acct`` current. Index rows keep their old b"" values (``_sweep``
        falls back to a lookup for those).
        """
        def op(txn: lmdb.Transaction, now: float) -> None:
            if txn.get(_ACCT_KEY, db=self._meta) == ACCOUNTING:
                return
            size = 0
            for k, raw in txn.cursor(db=self._data):
                size += self._footprint(len(k), len(raw) - _HDR_SIZE)
            txn.put(_BYTES_KEY, _Q.pack(size), db=self._meta)
            txn.put(_ACCT_KEY, ACCOUNTING, db=self._meta)

        self._write(op)

    def _remove(self, txn: lmdb.Transaction, k: bytes, raw: bytes) -> int:
        """Delete an entry and its index row; returns the bytes freed."""
        (expires_at,) = _HDR.unpack_from(raw)
        txn.delete(k, db=self._data)
        txn.delete(self._exp_key(expires_at, k), db=self._expiry)
        return self._footprint(len(k), len(raw) - _HDR_SIZE)

    def _put(self, txn: lmdb.Transaction, k: bytes, value: bytes, ttl_s: float | None, now: float,
             expires_at: float | None = None) -> None:
        size = self._size(txn)
        old = txn.get(k, db=self._data)
        if old is not None:
            size -= self._remove(txn, k, old)
        if expires_at is None:
            expires_at = now + ttl_s if ttl_s is not None else 0.0
        footprint = self._footprint(len(k), len(value))
        txn.put(k, _HDR.pack(expires_at) + value, db=self._data)
        txn.put(self._exp_key(expires_at, k), _SIZE.pack(footprint), db=self._expiry)
        size = self._sweep(txn, size + footprint, now, self._bound, keep=k)
        txn.put(_BYTES_KEY, _Q.pack(size), db=self._meta)

    def _sweep(self, txn: lmdb.Transaction, size: int, now: float, bound: int,
               keep: bytes | None = None, max_victims: int | None = None) -> int:
        """Drop expired entries (bounded), then evict soonest-expiring ones while over ``bound``.

        ``keep`` (the key just written) is never evicted: a write must not vanish at once.
        At most ``max_victims`` entries go (``_recover``'s small transactions).
        """
        now_us = int(now * 1e6)
        swept = 0
        victims = 0
        cur = txn.cursor(db=self._expiry)
        ikey = cur.key() if cur.first() else b""
        while ikey:  # b"": past the last row (no index key is empty)
            expired = _EXP.unpack_from(ikey)[0] <= now_us and swept < SWEEP_PER_WRITE
            if not expired and size <= bound or victims == max_victims:
                break
            k = ikey[_EXP.size:]
            if not expired and k == keep:
                ikey = cur.key() if cur.next() else b""
                continue
            swept += expired
            victims += 1
            raw_size = cur.value()
            if raw_size:
                size -= _SIZE.unpack(raw_size)[0]
            else:  # a row written by an older version: look the size up
                raw = txn.get(k, db=self._data)
                if raw is not None:
                    size -= self._footprint(len(k), len(raw) - _HDR_SIZE)
            cur.delete()  # and on to the next row
            txn.delete(k, db=self._data)
            ikey = cur.key()
        cur.close()
        return max(size, 0)

    def _move_index_row(self, txn: lmdb.Transaction, k: bytes, old_expires_at: float, expires_at: float) -> None:
        """Re-file ``k`` under its new expiry; the row keeps its value (the footprint)."""
        footprint = txn.pop(self._exp_key(old_expires_at, k), db=self._expiry)
        txn.put(self._exp_key(expires_at, k), footprint or b"", db=self._expiry)

    def _write(self, fn: Callable[[lmdb.Transaction, float], object]) -> object:
        """Run ``fn(txn, now)`` in one write transaction (atomic across processes)."""
        try:
            with self._env.begin(write=True, db=self._data) as txn:
                return fn(txn, self._clock())
        except lmdb.MapFullError:
            return self._recover(fn)

    def _recover(self, fn: Callable[[lmdb.Transaction, float], object]) -> object:
        """The map is full: make room, then retry ``fn``; StoreUnavailable if there is none.

        One transaction that evicts many entries copies every page it touches (copy-on-write)
        and needs fresh pages for that, which a full map does not have. So ``_evict_stepwise``
        evicts in small transactions, each reusing pages that earlier ones freed. Each round
        evicts a quarter of the accounted size and lowers this process's bound to what is
        left, so its next writes do not refill the map at once. If not even one entry can be
        evicted, ``_clear`` empties the store (a cache and rate-limit states may be lost; a
        store refusing every write for good may not).
        """
        self._env.reader_check()  # a killed worker's snapshot pins pages: release them
        now = time.monotonic()
        if now - self._map_full_logged_at >= MAP_FULL_LOG_EVERY_S:
            self._map_full_logged_at = now
            log.warning("local store %s: LMDB map full; evicting in small transactions (bound %d -> 3/4)",
                        self.path, self._bound)
        for _ in range(RECOVER_ROUNDS):
            if not self._evict_stepwise():
                self._clear()
            try:
                with self._env.begin(write=True, db=self._data) as txn:
                    return fn(txn, self._clock())
            except lmdb.MapFullError:
                continue
        raise StoreUnavailable(f"local store {self.path}: LMDB map full, and evicting made no room")

    def _evict_stepwise(self) -> bool:
        """Evict down to 3/4 of the accounted size in small transactions; False if none could run."""
        with self._env.begin(db=self._meta) as txn:
            target = self._size(txn) * 3 // 4
        self._bound = min(self._bound, target)
        # Halved when a transaction finds no room: evicting entries that each fill a leaf
        # page frees pages the same transaction reuses (a big batch may succeed where a
        # small one fails), while victims sharing pages need a copy of each page touched.
        batch = RECOVER_BATCH
        evicted = False
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    size = self._size(txn)
                    left = self._sweep(txn, size, self._clock(), target, max_victims=batch)
                    txn.put(_BYTES_KEY, _Q.pack(left), db=self._meta)
            except lmdb.MapFullError:
                if batch > 1:
                    batch //= 2
                    continue
                return evicted  # pages freed so far serve the retry; none freed: stuck
            evicted = True
            if left <= target or left >= size:
                return True

    def _clear(self) -> None:
        """Empty the store (``_recover``'s last resort): a drop frees whole trees copying no leaf."""
        log.error("local store %s: LMDB map full and no entry could be evicted; emptying the store", self.path)
        try:
            with self._env.begin(write=True) as txn:
                txn.drop(self._data, delete=False)
                txn.drop(self._expiry, delete=False)
                txn.put(_BYTES_KEY, _Q.pack(0), db=self._meta)
        except lmdb.MapFullError as e:
            raise StoreUnavailable(f"local store {self.path}: LMDB map full, and emptying it failed") from e

    # -- Store -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._env.begin(db=self._data) as txn:
            return self._unpack(txn.get(self._k(key)), self._clock())

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        now = self._clock()
        out = {}
        with self._env.begin(db=self._data) as txn:
            for key in keys:
                v = self._unpack(txn.get(self._k(key)), now)
                if v is not None:
                    out[key] = v
        return out

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        k, value = self._k(key), bytes(value)
        self._write(lambda txn, now: self._put(txn, k, value, ttl_s, now))

    def delete(self, key: str) -> bool:
        k = self._k(key)

        def op(txn: lmdb.Transaction, now: float) -> bool:
            raw = txn.get(k, db=self._data)
            if raw is None:
                return False
            live = self._unpack(raw, now) is not None
            size = self._size(txn) - self._remove(txn, k, raw)
            txn.put(_BYTES_KEY, _Q.pack(max(size, 0)), db=self._meta)
            return live

        return bool(self._write(op))

    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return self.cas(key, None, value, ttl_s)

    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        k, new = self._k(key), bytes(new)

        def op(txn: lmdb.Transaction, now: float) -> bool:
            if self._unpack(txn.get(k, db=self._data), now) != expected:
                return False
            self._put(txn, k, new, ttl_s, now)
            return True

        return bool(self._write(op))

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        k = self._k(key)

        def op(txn: lmdb.Transaction, now: float) -> int:
            raw = txn.get(k, db=self._data)
            current = self._unpack(raw, now)
            if current is None:
                self._put(txn, k, b"%d" % amount, ttl_s, now)
                return amount
            value = int(current) + amount
            # keep the key's expiry: incr never extends a window
            self._put(txn, k, b"%d" % value, None, now, expires_at=_HDR.unpack_from(raw)[0])
            return value

        return int(self._write(op))  # type: ignore[call-overload]

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        gcra = limit.algorithm is Algorithm.GCRA
        step = self._gcra if gcra else self._window
        k = self._prefix + key.encode() + _GCRA_KEY_SUFFIX if gcra else self._prefix + key.encode()
        if self._batch is not None:
            return self._batch.run(step, k, limit, cost, now)
        try:
            # inlined _write: the hot path of the ratelimit plugin (no closure, one transaction)
            with self._env.begin(write=True, db=self._data) as txn:
                return step(txn, k, limit, cost, self._clock() if now is None else now)
        except lmdb.MapFullError:
            # rare: _recover evicts and retries, or raises StoreUnavailable
            return self._recover(  # type: ignore[return-value]
                lambda txn, clock_now: step(txn, k, limit, cost, clock_now if now is None else now))

    def _gcra(self, txn: lmdb.Transaction, k: bytes, limit: Limit, cost: float, t: float) -> Decision:
        """One GCRA step on ``k`` (``expires_at``, ``tat`` as two packed doubles)."""
        stored = txn.get(k)  # the transaction's default database is data
        tat = None
        old_expires_at = 0.0
        if stored is not None and len(stored) == _GCRA_SIZE:
            old_expires_at, tat = _GCRA_STATE.unpack(stored)
            if old_expires_at and old_expires_at <= t:
                tat = None  # expired: as good as no state
        new_tat, decision = gcra_step(tat, t, limit.period_s, limit.count, limit.burst, cost)
        if not decision.allowed:
            return decision  # refused: nothing to write (the empty transaction commits for free)
        # Limit.ttl_s, rounded up to the grid: a state kept past its TTL is equivalent to no
        # state, and a busy key's expiry index row then moves only RL_EXPIRY_GRID times a
        # second instead of at every step.
        horizon_s = new_tat - t
        expires_at = math.ceil((t + (horizon_s if horizon_s > 0.0 else 0.0) + EPS_S) * RL_EXPIRY_GRID) / RL_EXPIRY_GRID
        self._steps += 1
        if old_expires_at and self._steps % FULL_PUT_EVERY:
            # The hot path of a busy key (live or just expired: a limit far above the traffic
            # expires between requests): same length, so nothing to account and nothing to
            # evict; overwrite the value, and move its index row if the expiry changed.
            # Every FULL_PUT_EVERY-th step takes the full _put, which sweeps expired entries.
            if expires_at != old_expires_at:
                self._move_index_row(txn, k, old_expires_at, expires_at)
            txn.put(k, _GCRA_STATE.pack(expires_at, new_tat))
            return decision
        self._put(txn, k, _TAT.pack(new_tat), None, t, expires_at=expires_at)
        return decision

    def _window(self, txn: lmdb.Transaction, k: bytes, limit: Limit, cost: float, t: float) -> Decision:
        """One sliding-window step on ``k`` (the text encoding of edge.ratelimit, space-padded)."""
        stored = txn.get(k)
        live = None
        if stored is not None:
            (old_expires_at,) = _HDR.unpack_from(stored)
            if not old_expires_at or old_expires_at > t:
                live = stored[_HDR_SIZE:]
        raw, ttl_s, decision = step_encoded(live, t, limit, cost)
        if raw is None:
            return decision
        # fixed width, so that the accounted size stays put (float() and int() ignore the spaces)
        raw = raw.ljust(_WINDOW_WIDTH)
        expires_at = math.ceil((t + ttl_s) * RL_EXPIRY_GRID) / RL_EXPIRY_GRID
        self._steps += 1
        if stored is not None and len(stored) == _HDR_SIZE + len(raw) and self._steps % FULL_PUT_EVERY:
            if expires_at != old_expires_at:
                self._move_index_row(txn, k, old_expires_at, expires_at)
            txn.put(k, _HDR.pack(expires_at) + raw)
            return decision
        self._put(txn, k, raw, None, t, expires_at=expires_at)
        return decision

    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(16)
        return token if self.add(key, token.encode(), ttl_s) else None

    def release_lock(self, key: str, token: str) -> bool:
        k = self._k(key)

        def op(txn: lmdb.Transaction, now: float) -> bool:
            raw = txn.get(k, db=self._data)
            if self._unpack(raw, now) != token.encode():
                return False
            size = self._size(txn) - self._remove(txn, k, raw)
            txn.put(_BYTES_KEY, _Q.pack(max(size, 0)), db=self._meta)
            return True

        return bool(self._write(op))

    def stats(self) -> dict[str, int]:
        """Accounted bytes and entry count (for tests and the status page)."""
        with self._env.begin() as txn:
            return {"bytes": self._size(txn), "entries": txn.stat(self._data)["entries"]}

    def close(self) -> None:
        self._env.close()



class _StepBatcher(GreenletBatcher):
    """The rate-limit steps of one worker's concurrent greenlets, run in one write transaction.

    Each step in its own transaction cost far more than its instructions: a write
    transaction copies (copy-on-write) a leaf page of ``data``, a page of the main
    database (the ``data`` root moved) and one of the free list, 12 KiB or more of
    fresh memory that then evicts what the rest of the request needs; the bench lost
    20% of its throughput to it (issue 4). Batched (``edge.store.batching``), the pages
    are copied once per batch and the later steps write into pages already dirty.

    Exactness does not change: the steps of a batch run one after the other inside a
    transaction that holds LMDB's writer lock, so each is still one atomic
    read-decide-write, and the whole batch is atomic for the other workers. If the
    batch's transaction fails (``MapFullError``: the map is full), each step is retried
    alone through ``LocalStore._write``, which evicts and retries; a step that still
    fails raises in its own caller (``StoreUnavailable`` when the map has no room).
    """

    def __init__(self, store: LocalStore) -> None:
        super().__init__()
        self._store = store

    def run(self, step: _Step, k: bytes, limit: Limit, cost: float, now: float | None) -> Decision:
        return self.submit((step, k, limit, cost, now))  # type: ignore[no-any-return]

    def stopped_error(self) -> BaseException:
        return RuntimeError("local store: step batcher stopped")

    def process(self, batch: list[tuple[Any, Waiter]]) -> None:
        store = self._store
        try:
            with store._env.begin(write=True, db=store._data) as txn:
                clock_now = store._clock()
                answers = [(w, True, step(txn, k, limit, cost, clock_now if now is None else now))
                           for (step, k, limit, cost, now), w in batch]
        except Exception:  # noqa: BLE001 - nothing was committed; each step alone raises its own
            answers = self._one_by_one(batch)  # (and _write recovers from MapFullError)
        deliver(answers)

    def _one_by_one(self, batch: list[tuple[Any, Waiter]]) -> list[Answer]:
        store = self._store
        answers: list[Answer] = []
        for (step, k, limit, cost, now), w in batch:
            try:
                answers.append((w, True, store._write(
                    lambda txn, c, step=step, k=k, limit=limit, cost=cost, now=now:
                    step(txn, k, limit, cost, c if now is None else now))))
            except Exception as e:  # raised in its own caller, as without batching
                answers.append((w, False, e))
        return answers
