"""Cache keys: which stored object a request may be answered from, and the store keys behind it.

Theory of operation
-------------------
The primary cache key (RFC 9111 §2: "the request method and target URI") is the
effective request URI ``scheme://host/path?query``:

- the host is lower-cased and a default port (``:80`` for http, ``:443`` for https) is
  dropped, since RFC 9110 §4.2.3 makes those URIs equivalent;
- the path is the one edge routed on (normalised by ``edge.urlpath``);
- the query is kept as received unless the route says otherwise: ``ignore_params``
  drops parameters that do not change the answer (tracking tags such as ``utm_*``),
  ``sort_query`` orders the rest by name so ``?a=1&b=2`` and ``?b=2&a=1`` share one entry;
- the method is not part of the key: only GET responses are stored (a POST's answer only
  as its target's GET response, RFC 9110 §9.3.3), and HEAD is answered from the stored
  GET (RFC 9111 §4.3.5 lets a HEAD response update it).

The store has no key scan and some backends limit key length (memcached: 250 bytes, no
spaces), so the URI is hashed (BLAKE2b, 128 bits) into fixed-width store keys:

=========================  ==================================================================
``c:u:<h>``                the URL record: the object itself (no ``Vary``), a variant index
                           (``Vary`` names, a generation, a soft-purge time) or a hit-for-pass mark
``c:v:<h>:<gen>:<vh>``     one variant, ``vh`` the hash of its secondary key (RFC 9111 §4.1), or of its
                           language key (a copy for choosing by Content-Language, ``policy.variant_language_key``)
``c:b:<h>:<ver>:<n>``      body chunk ``n`` of stored version ``ver`` of an object
``c:e:<h>:<ver>:<enc>``    an encoded variant (gzip, br, zstd) of body ``ver`` (``edge.cache.variants``; ``:<n>``: its chunks)
``c:t:<h>:<gen>``          the entity tags of the stored variants of generation ``gen`` and their record keys
                           (``edge.cache.validators``: the If-None-Match of a Vary miss)
``c:l:<h>``                the fill lock: the one request fetching a missing object (coalescing)
``c:r:<h>:<vh>``           the background revalidation lock (stale-while-revalidate)
``c:bans``                 the ban list (prefix and tag purges, see ``edge.cache.purge``)
=========================  ==================================================================

A new variant index takes a fresh generation, so deleting ``c:u:<h>`` (a URL purge)
makes every variant under it unreachable at once, without listing them; they expire
with their TTL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BANS_KEY = "c:bans"

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


@dataclass(frozen=True, slots=True)
class KeyRules:
    """Per-route query normalisation (config ``cache.sort_query``, ``cache.ignore_params``)."""

    sort_query: bool = False
    ignore_params: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for p in self.ignore_params:
            if not p or "&" in p or "=" in p:
                raise ValueError(f"ignore_params: not a parameter name: {p!r}")

    @property
    def identity(self) -> bool:
        """True when the query is used as received (the common, cheapest case)."""
        return not self.sort_query and not self.ignore_params

    def query(self, query: str) -> str:
        """The query as it takes part in the key."""
        if not query or self.identity:
            return query
        params = [p for p in query.split("&") if p]
        if self.ignore_params:
            ignored = self.ignore_params
            params = [p for p in params if p.partition("=")[0] not in ignored]
        if self.sort_query:
            # stable: repeated names keep their relative order (?a=2&a=1 differs from ?a=1&a=2)
            params.sort(key=lambda p: p.partition("=")[0])
        return "&".join(params)


IDENTITY = KeyRules()


def normalize_host(scheme: str, host: str) -> str:
    """Lower-cased authority without the scheme's default port (RFC 9110 §4.2.3)."""
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    return host


def cache_url(scheme: str, host: str, path: str, query: str, rules: KeyRules = IDENTITY) -> str:
    """The primary cache key of a request: its normalised effective URI."""
    q = rules.query(query)
    base = f"{scheme}://{normalize_host(scheme, host)}{path}"
    return f"{base}?{q}" if q else base


def url_without_scheme(url: str) -> str:
    """``host/path?query`` of a cache URL: what prefix purges compare (both schemes at once)."""
    return url.partition("://")[2]


def digest(text: str) -> str:
    """128-bit BLAKE2b of ``text`` in hex: fixed width, valid on every store backend."""
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def url_key(h: str) -> str:
    return "c:u:" + h


def variant_key(h: str, generation: str, secondary: str) -> str:
    return f"c:v:{h}:{generation}:{digest(secondary)}"


def validators_key(h: str, generation: str) -> str:
    return f"c:t:{h}:{generation}"


def chunk_key(h: str, version: str, n: int) -> str:
    return f"c:b:{h}:{version}:{n}"


def fill_lock_key(h: str) -> str:
    return "c:l:" + h


def revalidate_lock_key(h: str, secondary: str | None) -> str:
    return f"c:r:{h}:{digest(secondary) if secondary else '-'}"
