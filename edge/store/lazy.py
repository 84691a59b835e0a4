"""A store opened on first use: the node-local fallback store of the ``ratelimit`` plugin.

``build_local_fallback(cfg)`` (``edge.store``) returns one of these when the main
store is remote: most workers never need it (only a plugin with
``on_store_error: local`` calls it, and only while the main store is down), so
the LMDB environment is opened by the first call, in the worker, after fork.
Building it does not yield to other greenlets (``lmdb.open`` and ``os.makedirs``
are plain blocking calls), so two greenlets cannot both build it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from edge.ratelimit import Decision, Limit
from edge.store.base import Store


class LazyStore(Store):
    """Delegates every call to ``factory()``, called once, on the first call."""

    def __init__(self, factory: Callable[[], Store], name: str = "local") -> None:
        self._factory = factory
        self._store: Store | None = None
        self.name = name

    @property
    def opened(self) -> bool:
        return self._store is not None

    def _s(self) -> Store:
        store = self._store
        if store is None:
            store = self._store = self._factory()
        return store

    def get(self, key: str) -> bytes | None:
        return self._s().get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        return self._s().get_many(keys)

    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._s().set(key, value, ttl_s)

    def delete(self, key: str) -> bool:
        return self._s().delete(key)

    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        return self._s().add(key, value, ttl_s)

    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        return self._s().cas(key, expected, new, ttl_s)

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        return self._s().incr(key, amount, ttl_s)

    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        return self._s().ratelimit_step(key, limit, cost, now)

    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        return self._s().acquire_lock(key, ttl_s)

    def release_lock(self, key: str, token: str) -> bool:
        return self._s().release_lock(key, token)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
