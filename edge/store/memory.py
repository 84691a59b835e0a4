"""In-process store for one worker: an LRU dict bounded by entries and bytes.

Theory of operation
-------------------
An ``OrderedDict`` maps key -> ``(value, expires_at)``; reads move the key to the
end, and inserting past ``max_entries`` or ``max_bytes`` (key + value lengths)
drops from the front (least recently used). Expiry is lazy: an expired entry is
removed when it is read or when eviction reaches it. Every method runs without
yielding to another greenlet (no I/O), so each one is atomic within the worker.
Shared by nothing: use ``local`` to share state between the workers of a node.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from edge.ratelimit import Decision, Limit, step_encoded
from edge.store.base import Store


class MemoryStore(Store):
    name = "memory"

    def __init__(self, max_entries: int = 100000, max_bytes: int = 64 * 1024 * 1024,
                 key_prefix: str = "", clock: Callable[[], float] = time.time) -> None:
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._prefix = key_prefix
        self._clock = clock
        self.bytes = 0

    # -- internals ---------------------------------------------------------------------

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= now:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return value

    def _drop(self, key: str) -> None:
        value, _ = self._data.pop(key)
        self.bytes -= len(key) + len(value)

    def _put(self, key: str, value: bytes, ttl_s: float | None, now: float) -> None:
        if key in self._data:
            self._drop(key)
        self._data[key] = (bytes(value), None if ttl_s is None else now + ttl_s)
        self.bytes += len(key) + len(value)
        while self._data and (len(self._data) > self._max_entries or self.bytes > self._max_bytes):
            self._drop(next(iter(self._data)))

    # -- Store -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return self._live(self._prefix + key, self._clock())

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        now = self._clock()
        out = {}
        for k in keys:
            v = self._live(self._prefix + k, now)
            if v is not None:
                out[k] = v
        return out

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._put(self._prefix + key, value, ttl_s, self._clock())

    def delete(self, key: str) -> bool:
        k = self._prefix + key
        existed = self._live(k, self._clock()) is not None
        if existed:
            self._drop(k)
        return existed

    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return self.cas(key, None, value, ttl_s)

    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        k, now = self._prefix + key, self._clock()
        if self._live(k, now) != expected:
            return False
        self._put(k, new, ttl_s, now)
        return True

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        k, now = self._prefix + key, self._clock()
        current = self._live(k, now)
        if current is None:
            self._put(k, b"%d" % amount, ttl_s, now)
            return amount
        value = int(current) + amount  # ValueError on a non-integer value, like the other backends
        # keep the original expiry: incr never extends a window
        expires_at = self._data[k][1]
        self._put(k, b"%d" % value, None, now)
        self._data[k] = (self._data[k][0], expires_at)
        return value

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        k = self._prefix + key
        now = self._clock() if now is None else now
        raw, ttl_s, decision = step_encoded(self._live(k, now), now, limit, cost)
        if raw is not None:
            self._put(k, raw, ttl_s, now)
        return decision

    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(16)
        return token if self.add(key, token.encode(), ttl_s) else None

    def release_lock(self, key: str, token: str) -> bool:
        k = self._prefix + key
        if self._live(k, self._clock()) != token.encode():
            return False
        self._drop(k)
        return True

    def close(self) -> None:
        self._data.clear()
        self.bytes = 0
