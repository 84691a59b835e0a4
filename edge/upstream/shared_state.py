"""Upstream health and runtime state in the store: the key layout, and reading and writing it.

Theory of operation
-------------------
Everything a node knows about its backends lives in the configured store (``local``,
the default, is shared by the workers of one node; on ``redis`` or ``memcached`` it is
shared by every node using the same ``key_prefix``), under these keys:

``upstream:lease``
    the prober's lease (``Store.acquire_lock``): whoever holds it probes every pool.
``upstream:<pool>:active``
    the prober's verdicts, ``{server: {"state", "since", "error"}}``; one writer.
``upstream:<pool>:drain``
    servers drained at runtime, ``{server: since}`` (``python -m edge drain``).
``upstream:<pool>:eject:<server>``
    the last outlier change a worker shared, ``{"until", "count", "at", "reason", "by"}``
    (``until`` 0: back in). Written on a state change only.
``upstream:workers`` and ``upstream:worker:<id>``
    the live workers and, per worker, ``{pool: {server: {"inflight", "ewma_ms",
    "error", "error_at"}}}``, rewritten every refresh period with a TTL of a few
    periods, so a dead worker's row disappears by itself.

``<server>`` is the server's ``host:port`` as configured (stable when the list is
reordered). Times in the store are wall-clock seconds (``time.time()``), the only
clock several processes, or several hosts, share; the checker converts them to the
monotonic clock the request path uses. Values are JSON. Read-modify-write of a shared
value (the drain map, the worker list) is a ``cas`` loop, so two writers never lose
each other's update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from edge.errors import StoreUnavailable

LEASE_KEY = "upstream:lease"
WORKERS_KEY = "upstream:workers"
CAS_ATTEMPTS = 20


def active_key(pool: str) -> str:
    return f"upstream:{pool}:active"


def drain_key(pool: str) -> str:
    return f"upstream:{pool}:drain"


def eject_key(pool: str, server: str) -> str:
    return f"upstream:{pool}:eject:{server}"


def worker_key(worker: str) -> str:
    return f"upstream:worker:{worker}"


def decode(raw: bytes | None, default: Any) -> Any:
    """A JSON value from the store, or ``default`` when absent or not ours (never raises)."""
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(slots=True)
class PoolSnapshot:
    """One pool's shared state as read in one call."""

    active: dict[str, dict] = field(default_factory=dict)
    drained: dict[str, float] = field(default_factory=dict)
    ejections: dict[str, dict] = field(default_factory=dict)


def read_pools(store, pools: dict[str, tuple[str, ...]]) -> dict[str, PoolSnapshot]:
    """Every pool's shared state in one ``get_many`` (``pools``: name -> server labels)."""
    keys: list[str] = []
    for name, labels in pools.items():
        keys.append(active_key(name))
        keys.append(drain_key(name))
        keys.extend(eject_key(name, label) for label in labels)
    raw = store.get_many(keys)
    out = {}
    for name, labels in pools.items():
        snap = PoolSnapshot(decode(raw.get(active_key(name)), {}), decode(raw.get(drain_key(name)), {}))
        for label in labels:
            rec = decode(raw.get(eject_key(name, label)), {})
            if rec:
                snap.ejections[label] = rec
        out[name] = snap
    return out


def update(store, key: str, change, default: Any, ttl_s: float | None = None) -> Any:
    """Apply ``change(value) -> value`` atomically (a ``cas`` loop); returns the value written."""
    for _ in range(CAS_ATTEMPTS):
        raw = store.get(key)
        new = change(decode(raw, default))
        if store.cas(key, raw, encode(new), ttl_s):
            return new
    raise StoreUnavailable(f"store: {key} changed under {CAS_ATTEMPTS} attempts in a row")


def set_drain(store, pool: str, server: str, drained: bool, now: float) -> bool:
    """Drain (or undrain) ``server`` of ``pool``; True if that changed anything."""
    changed = []

    def change(value: dict) -> dict:
        value = dict(value)
        if drained and server not in value:
            value[server] = now
            changed.append(True)
        elif not drained and server in value:
            del value[server]
            changed.append(True)
        return value

    update(store, drain_key(pool), change, {})
    return bool(changed)


def register_worker(store, worker: str) -> None:
    """Add ``worker`` to the list the status command reads, dropping ids whose row expired."""
    raw = store.get(WORKERS_KEY)
    known = decode(raw, [])
    if worker in known:
        return
    rows = store.get_many([worker_key(w) for w in known])
    live = [w for w in known if worker_key(w) in rows]

    def change(value: list) -> list:
        keep = [w for w in value if w in live or w not in known]
        return keep + [worker] if worker not in keep else keep

    update(store, WORKERS_KEY, change, [])


def read_workers(store) -> dict[str, dict]:
    """Each live worker's row: ``{worker: {pool: {server: {...}}}}``."""
    known = decode(store.get(WORKERS_KEY), [])
    rows = store.get_many([worker_key(w) for w in known]) if known else {}
    return {w: decode(rows[worker_key(w)], {}) for w in known if worker_key(w) in rows}


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One line of ``python -m edge status``."""

    pool: str
    server: str
    state: str         # healthy, down, ejected, half-open... ("+drain" when drained)
    inflight: int
    latency_ms: float | None
    last_error: str
    last_change: float  # wall clock, 0 = never


def server_statuses(store, pools: dict[str, tuple[str, ...]], now: float) -> list[ServerStatus]:
    """What the store knows about every server of ``pools`` (raises StoreUnavailable)."""
    snaps = read_pools(store, pools)
    workers = read_workers(store)
    out = []
    for name, labels in pools.items():
        snap = snaps[name]
        for label in labels:
            out.append(_status(name, label, snap, [w.get(name, {}).get(label) for w in workers.values()], now))
    return out


def _status(pool: str, label: str, snap: PoolSnapshot, rows: Iterable[dict | None], now: float) -> ServerStatus:
    active = snap.active.get(label) or {}
    eject = snap.ejections.get(label) or {}
    state = "down" if active.get("state") == "unhealthy" else "healthy"
    changes = [float(active.get("since") or 0.0), float(eject.get("at") or 0.0), float(snap.drained.get(label) or 0.0)]
    until = float(eject.get("until") or 0.0)
    if state == "healthy" and until > now:
        state = f"ejected {until - now:.1f}s"
    if label in snap.drained:
        state += "+drain"
    inflight, weights, errors = 0, [], []
    for row in rows:
        if not row:
            continue
        inflight += int(row.get("inflight", 0))
        if row.get("ewma_ms"):
            weights.append(float(row["ewma_ms"]))
        if row.get("error"):
            errors.append((float(row.get("error_at", 0.0)), str(row["error"])))
    if active.get("error"):
        errors.append((float(active.get("since") or 0.0), f"probe: {active['error']}"))
    last_error = max(errors)[1] if errors else ""
    latency = sum(weights) / len(weights) if weights else None
    return ServerStatus(pool, label, state, inflight, latency, last_error, max(changes))
