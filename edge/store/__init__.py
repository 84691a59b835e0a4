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


__all__ = ["Store", "build_store"]
