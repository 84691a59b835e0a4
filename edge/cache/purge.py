"""Purges: by URL (direct), by prefix and by surrogate key (a ban list), hard or soft.

Theory of operation
-------------------
No store backend can list its keys (memcached cannot at all), so only a URL purge can go
straight to the object: it deletes the URL record (hard; every variant goes with it,
see ``edge.cache.keys``) or marks it (soft: the object, or every variant under a variant
index, must be revalidated before its next use). Both are one store step and every
worker on every node sharing the store sees them on its next lookup.

Prefix and tag purges are **ban rules** (Varnish's idea): a rule ``(at, kind, value,
soft, until)`` says "an object stored before ``at`` whose URL starts with ``value``
(kind ``prefix``) or that carries surrogate key ``value`` (kind ``tag``) is gone (hard)
or stale (soft)". All rules live under one key (``c:bans``), appended with a
compare-and-swap loop so concurrent purges never lose one another. Workers read the
list at most every ``cache.ban_refresh`` (1 s by default) on their next lookup and test
each object they find against it: the cost is one store read per worker per refresh
and a loop over the live rules per hit, nothing per stored object. A rule is dropped
once ``until`` (its time plus ``cache.max_ttl``) passed, since no object stored before
it can still be in the store. Comparing the object's store time with the rule's time
assumes the nodes' clocks agree (NTP), as rate limits do.

Why not tag index keys (one key per tag listing its objects): every store would then
cost a read-modify-write per tag on a hot key, and an index update lost to a crash
leaves an object that no purge reaches; a ban rule costs nothing until someone purges.
"""

from __future__ import annotations

import dataclasses

import marshal
from dataclasses import dataclass
from typing import Iterable

from edge.cache import keys
from edge.cache.records import FORMAT, StoredObject, VaryIndex, decode

#: at most this many live rules: a purge beyond it is refused (rules are never dropped
#: early, that would bring purged objects back)
MAX_BANS = 10000

HARD = "hard"
SOFT = "soft"


@dataclass(frozen=True, slots=True)
class Ban:
    at: float       # wall clock of the purge
    kind: str       # "prefix" (value: host/path... without scheme) or "tag"
    value: str
    soft: bool
    until: float    # drop the rule after this (at + max_ttl)

    def __post_init__(self) -> None:
        if self.kind not in ("prefix", "tag"):
            raise ValueError(f"kind: must be prefix or tag (got {self.kind!r})")
        if not self.value:
            raise ValueError("value: must not be empty")

    def matches(self, url: str, tags: tuple[str, ...]) -> bool:
        if self.kind == "tag":
            return self.value in tags
        return keys.url_without_scheme(url).startswith(self.value)


def verdict(bans: tuple[Ban, ...], obj: StoredObject) -> str | None:
    """``HARD`` (treat as absent), ``SOFT`` (must revalidate) or None for ``obj``."""
    found = None
    stored_at = obj.stored_at
    for ban in bans:
        if ban.at > stored_at and ban.matches(obj.url, obj.tags):
            if not ban.soft:
                return HARD
            found = SOFT
    return found


def encode_bans(bans: Iterable[Ban]) -> bytes:
    return marshal.dumps((FORMAT, "b", tuple((b.at, b.kind, b.value, b.soft, b.until) for b in bans)))


def decode_bans(raw: bytes | None) -> tuple[Ban, ...]:
    if raw is None:
        return ()
    try:
        t = marshal.loads(raw)
        if type(t) is tuple and len(t) == 3 and t[0] == FORMAT and t[1] == "b":
            return tuple(Ban(*r) for r in t[2])
    except (ValueError, EOFError, TypeError):
        pass
    return ()


def live(bans: Iterable[Ban], now: float) -> tuple[Ban, ...]:
    return tuple(b for b in bans if b.until > now)


def add_ban(store, ban: Ban, now: float, attempts: int = 50) -> int:
    """Append ``ban`` to the store's list (dropping expired rules); returns the live count.

    A compare-and-swap loop: a concurrent purge makes ``cas`` fail and we read again."""
    for _ in range(attempts):
        raw = store.get(keys.BANS_KEY)
        rules = live(decode_bans(raw), now) + (ban,)
        if len(rules) > MAX_BANS:
            raise ValueError(f"more than {MAX_BANS} live purge rules: purge fewer prefixes/tags or wait for old rules to expire")
        ttl_s = max(b.until for b in rules) - now
        if store.cas(keys.BANS_KEY, raw, encode_bans(rules), ttl_s=max(ttl_s, 1.0)):
            return len(rules)
    raise RuntimeError("the ban list kept changing under this purge; try again")


def purge_url(store, url: str, soft: bool, now: float, index_ttl_s: float, attempts: int = 20) -> bool:
    """Purge one cache URL (``keys.cache_url`` form); True if something was there.

    ``index_ttl_s`` is the TTL a soft-purged variant index is written back with
    (``cache.max_ttl``: no variant under it lives longer)."""
    key = keys.url_key(keys.digest(url))
    if not soft:
        return store.delete(key)
    for _ in range(attempts):
        raw = store.get(key)
        rec = decode(raw)
        if isinstance(rec, StoredObject):
            rec.soft_purged = True
            new = rec.encode()
            ttl_s = rec.expires_at - now
        elif isinstance(rec, VaryIndex):
            new = dataclasses.replace(rec, purged_at=now).encode()  # its variants and their tags stay
            ttl_s = index_ttl_s
        else:
            return False
        if ttl_s <= 0:
            return False
        if store.cas(key, raw, new, ttl_s=ttl_s):
            return True
    raise RuntimeError(f"{url}: the entry kept changing under this purge; try again")


# ---------------------------------------------------------------------------------------- purge requests


def _split_url(url: str) -> tuple[str | None, str, str, str]:
    """(scheme or None, host, path, query) of ``http://host/path?q`` or ``host/path?q``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = None, url
    else:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
    host, slash, tail = rest.partition("/")
    if not host:
        raise ValueError(f"no host in {url!r}")
    path, _, query = ("/" + tail if slash else "/").partition("?")
    return scheme, host, path, query


def prefix_value(prefix: str) -> str:
    """What a prefix rule compares with ``keys.url_without_scheme``: ``host/path...``."""
    scheme, host, path, query = _split_url(prefix)
    host = keys.normalize_host(scheme, host) if scheme else host.lower()
    return f"{host}{path}" + (f"?{query}" if query else "")


def url_keys(url: str, key_rules=None) -> list[str]:
    """The cache URLs a purge of ``url`` removes: both schemes unless it names one."""
    scheme, host, path, query = _split_url(url)
    schemes = (scheme,) if scheme else ("http", "https")
    rules = key_rules or keys.IDENTITY
    return [keys.cache_url(s, host, path, query, rules) for s in schemes]


def purge(store, *, urls=(), prefixes=(), tags=(), soft: bool = False, now: float, max_ttl_s: float,
          rules_for=None) -> list[str]:
    """Run the purges on ``store``; one report line per item.

    ``rules_for(host, path) -> KeyRules`` gives the route's query normalisation for a URL."""
    lines = []
    mode = "soft" if soft else "hard"
    for url in urls:
        scheme, host, path, _q = _split_url(url)
        rules = rules_for(host, path) if rules_for is not None else None
        found = [u for u in url_keys(url, rules) if purge_url(store, u, soft, now, max_ttl_s)]
        lines.append(f"{mode} purge {url}: {'purged ' + ', '.join(found) if found else 'not in cache'}")
    for prefix in prefixes:
        value = prefix_value(prefix)
        n = add_ban(store, Ban(now, "prefix", value, soft, now + max_ttl_s), now)
        lines.append(f"{mode} purge of prefix {value}: rule added ({n} live rules)")
    for tag in tags:
        n = add_ban(store, Ban(now, "tag", tag, soft, now + max_ttl_s), now)
        lines.append(f"{mode} purge of tag {tag}: rule added ({n} live rules)")
    return lines
