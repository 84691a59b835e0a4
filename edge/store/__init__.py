"""Shared state: ``build_store(cfg)`` opens the configured backend (once per worker, after fork).

See ``edge.store.base`` for the contract every backend implements, and the
backend modules for how each one keeps it.
"""

from __future__ import annotations

from edge.config import StoreConfig
from edge.store.base import Store


def build_store(cfg: StoreConfig) -> Store:
    """Open the store ``cfg`` describes. Imports are lazy so a node using ``local``
    never imports redis or pymemcache."""
    if cfg.backend == "memory":
        from edge.store.memory import MemoryStore

        return MemoryStore(max_entries=cfg.max_entries, max_bytes=cfg.max_bytes, key_prefix=cfg.key_prefix)
    if cfg.backend == "local":
        from edge.store.local import LocalStore

        return LocalStore(path=cfg.path, max_bytes=cfg.max_bytes, key_prefix=cfg.key_prefix)
    if cfg.backend == "redis":
        from edge.store.redis import RedisStore

        if not cfg.url:  # StoreConfig refuses this already; kept for hand-built configs
            raise ValueError("store backend redis needs url")
        return RedisStore(cfg.url, timeout_s=cfg.timeout, key_prefix=cfg.key_prefix)
    if cfg.backend == "memcached":
        from edge.store.memcached import MemcachedStore

        return MemcachedStore(cfg.servers, timeout_s=cfg.timeout, key_prefix=cfg.key_prefix)
    raise ValueError(f"unknown store backend {cfg.backend!r}")


#: size bound of the node-local fallback store (it holds only rate-limit states)
FALLBACK_MAX_BYTES = 16 * 1024 * 1024


def build_local_fallback(cfg: StoreConfig, main: Store | None = None) -> Store:
    """The node-local store the ``ratelimit`` plugin falls back to (``on_store_error: local``).

    When the main store is already ``local``, it is that same store (``main``).
    Otherwise an LMDB store shared by the workers of this node, opened on first use
    (``LazyStore``), in a directory of its own so it never meets the keys or the
    size accounting of another store: ``<store.path>-fallback`` when ``store.path``
    is set, else the default ``local`` directory for this ``key_prefix`` plus
    ``-fallback``. Keys are the same strings as on the main store.
    """
    if cfg.backend == "local" and main is not None:
        return main
    from edge.store.lazy import LazyStore
    from edge.store.local import LocalStore, default_path

    path = (cfg.path or default_path(cfg.key_prefix, max_bytes=cfg.max_bytes)) + "-fallback"
    max_bytes = min(cfg.max_bytes, FALLBACK_MAX_BYTES)
    return LazyStore(lambda: LocalStore(path=path, max_bytes=max_bytes, key_prefix=cfg.key_prefix))


__all__ = ["Store", "build_store", "build_local_fallback"]
