"""The Store interface: the one contract every shared-state backend implements.

Theory of operation
-------------------
Keys are ``str`` (each backend prepends ``StoreConfig.key_prefix``), values are
``bytes``, TTLs are seconds as ``float`` (``None`` = no expiry; memcached rounds
up to whole seconds and adds one). Every method is one atomic step on the backend, so callers
never read, decide, then write (DESIGN.md §6):

- ``incr`` creates the key at ``amount`` with ``ttl_s`` when absent, and leaves
  the TTL of an existing key alone (a fixed-window counter);
- ``add`` sets only if absent; ``cas`` replaces only if the current value is
  ``expected`` (``expected=None`` means "absent", i.e. ``add``);
- ``ratelimit_step`` runs one step of ``edge.ratelimit`` (GCRA or sliding
  window) on the key's state and writes it back atomically; ``now=None`` uses
  the backend's clock (Redis: the server's ``TIME``, so all nodes agree;
  others: this host's ``time.time()``, so nodes need NTP);
- ``acquire_lock`` returns an owner token (or ``None`` if held); only that
  token releases it, and the TTL frees it if its owner dies.

Remote backends raise ``edge.errors.StoreUnavailable`` for every failure of the
server or the network (never a raw redis/pymemcache/socket exception), count it
in ``failures``, keep ``available`` current, and log once per state change on the
``edge.store`` logger. The next call tries the server again, so a store that
comes back is used again without a restart. Programming errors (``incr`` on a
non-integer value) raise ``ValueError``.

A store is opened once per worker, after fork (STYLE.md §5), and is safe to use
from many greenlets of that worker.

How long a call may take. With ``store.timeout`` T, a remote call lasts at most
``CALL_TIMEOUTS`` (4) × T of waiting: connecting (T), the answer (T; granted once
more on redis when the worker's own timer fired late, see edge.store.redis), and
waiting behind the worker's own traffic (a free memcached connection slot, up to
2T; the pipeline or hot-key round already in flight, which fails its queue with
it). A plugin's default time budget (``PluginConfig.timeout``) is derived from it,
``plugin_budget_s``: 4 × the default T (50 ms) + a 50 ms margin for the plugin's
own work and its fallback = 250 ms, so a store call cannot outlast the budget of a
plugin that makes it, and the plugin's own ``StoreUnavailable`` handling runs
instead of an overrun (issue 8). A plugin making several store calls per hook,
or running with a larger ``store.timeout``, sets its own budget (docs/plugins.md,
"Time budget").
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable

from edge.config import StoreConfig
from edge.ratelimit import Decision, Limit

log = logging.getLogger("edge.store")

#: the longest one store call may wait, in store timeouts (see the module docstring)
CALL_TIMEOUTS = 4
#: what a plugin's budget adds to that for its own work (and a local fallback step)
BUDGET_MARGIN_S = 0.05


def plugin_budget_s(store_timeout_s: float, calls: int = 1) -> float:
    """A hook budget that ``calls`` store calls at ``store_timeout_s`` cannot outlast."""
    return round(calls * CALL_TIMEOUTS * store_timeout_s + BUDGET_MARGIN_S, 6)


#: ``PluginConfig.timeout``'s default: one store call at the default ``store.timeout``
DEFAULT_PLUGIN_TIMEOUT_S = plugin_budget_s(StoreConfig.model_fields["timeout"].default)


class Store(abc.ABC):
    """Abstract shared-state store; see the module docstring for the semantics."""

    name: str = "store"
    #: failures seen since start (remote backends); local ones stay at 0
    failures: int = 0
    #: False while the remote server is failing; becomes True on the first success
    available: bool = True

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Values of the keys that exist (missing and expired keys are left out)."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """True if the key existed."""

    @abc.abstractmethod
    def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        """Set only if absent; True if it was set."""

    @abc.abstractmethod
    def cas(self, key: str, expected: bytes | None, new: bytes, ttl_s: float | None = None) -> bool:
        """Replace the value with ``new`` only if it is ``expected`` (None: absent); True if replaced."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add ``amount``, creating the key with ``ttl_s`` if absent; returns the new value."""

    @abc.abstractmethod
    def ratelimit_step(self, key: str, limit: Limit, cost: float = 1, now: float | None = None) -> Decision:
        """One atomic rate-limit step (see edge.ratelimit); ``now=None`` uses the backend's clock."""

    @abc.abstractmethod
    def acquire_lock(self, key: str, ttl_s: float) -> str | None:
        """Take the lock for ``ttl_s``; the owner token, or None if someone else holds it."""

    @abc.abstractmethod
    def release_lock(self, key: str, token: str) -> bool:
        """Release the lock if ``token`` still owns it; True if released."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Health:
    """Failure counting and once-per-change logging for remote stores.

    ``down(exc)`` is called on each failure, ``up()`` after each success; only the
    transitions log (a dead Redis must not write one line per request).
    """

    def __init__(self, store: Store, target: str) -> None:
        self._store = store
        self._target = target

    def down(self, exc: BaseException) -> None:
        self._store.failures += 1
        if self._store.available:
            self._store.available = False
            log.warning("store %s at %s unavailable: %s", self._store.name, self._target, exc)

    def up(self) -> None:
        if not self._store.available:
            self._store.available = True
            log.warning("store %s at %s available again", self._store.name, self._target)
