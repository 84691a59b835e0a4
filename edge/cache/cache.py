"""The shared cache on the request path: lookup, fill (tee + commit), revalidation, coalescing, stale serving.

Theory of operation
-------------------
``Proxy._forward`` hands a request on a caching route to ``Cache.handle``. RFC 9111's
decisions all come from ``edge.cache.policy`` (pure, clock passed in); this module does
the I/O around them on the Store (``edge.store``: memory, local, redis, memcached):

1. **Lookup** (GET and HEAD share the GET entry): one store read of the URL record
   (``edge.cache.keys``); if the response varies, a second read of the variant chosen by
   the policy's secondary key (RFC 9111 §4.1). A small body is inline in the record, so a
   hit without ``Vary`` is one store round trip. When the request's own variant is missing
   and the response varies on Accept-Language, one more read looks for a variant in the
   request's single preferred language (``_by_language``; each such variant is also
   written under that language when committed, ``_put_variant``). The object is tested against the purge
   ban list (``edge.cache.purge``, kept in memory, refreshed every ``ban_refresh``).
2. **Decide** with ``policy.lookup``: ``Fresh`` is answered from the cache (``Age``,
   ``Cache-Status``; the client's own conditionals and ranges through the policy);
   ``ServeStale`` too, starting a background revalidation that one request does for the
   whole fleet (a store lock); ``Revalidate`` sends a conditional request (a 304 merges
   into the stored head via ``policy.merge_304`` and refreshes the record when its
   validator is the stored one, ``policy.validates``, else edge asks again without
   conditionals; a 200 replaces it; a 200 to a HEAD updates or stales the stored GET,
   ``policy.head_updates``); ``Fetch`` forwards. When the backend is down or answers 5xx, a stale
   object is served if ``policy.stale_on_error`` allows (RFC 5861 ``stale-if-error`` and
   the route's ``serve_stale_on_error``).
3. **Miss**: one request per URL takes the fill lock (``acquire_lock``, across workers,
   and nodes on a shared store) and fetches; the others poll the store for the committed
   object (bounded by ``coalesce_wait``), then serve it, or go to the backend themselves
   when the wait ends or the leader's response could not be stored. That last case
   leaves a short hit-for-pass mark so later misses do not queue for nothing (Varnish's
   lesson: serialising on an uncacheable URL is worse than no coalescing). A miss of a
   varying response (no stored variant matches) asks with an If-None-Match of the stored
   variants' entity tags (``edge.cache.validators``, noted at each variant's commit): a 304
   naming one serves and stores that variant for this request too (``_vary_miss``).
4. **Fill**: the backend's body streams to the client through a tee that keeps a copy up
   to the size cap (``max_object_size``; a larger body stops being copied as soon as it
   passes the cap, or is not copied at all when Content-Length says so). Only when the
   body ended intact (no exception, length as announced) is the copy committed, after the
   request's greenlet next yields, so the client never waits for the store (a hub callback
   on the in-process stores, whose calls never switch greenlets: ~1 µs against ~12 µs for
   a greenlet; a greenlet of its own on the remote ones): body chunks first
   (<= 512 KiB each, under memcached's 1 MB item limit; bodies up to one chunk go inline),
   the record that points to them last. A truncated or abandoned body leaves nothing.
   With compression on, the encoded stream the client gets is stored too, as an encoded
   variant of the body (``edge.cache.variants``), which later hits serve without codec work.
5. **Partial content** (RFC 9111 §3.3, §3.4): a single-range 206 is stored like any
   response, with its status, so ``_decide`` hands every stored 206 to ``_partial``
   (``edge.cache.partial`` decides): a range it holds is served, a range past the complete
   length is a 416 (a stale partial is revalidated first, ``_revalidate_partial``), and
   other requests complete it (``_complete``: the missing bytes with If-Range, the stored
   and new bytes streamed as one response through the fill's tee) or go to the origin as
   sent. A stored partial never answers as a complete response.
6. **Invalidation** (RFC 9111 §4.4): a non-error answer to an unsafe method deletes the
   URL records of the targets ``policy.invalidation_targets`` names. A POST's answer is
   then stored as its target's GET response when RFC 9110 §9.3.3 allows (``_post_tap``;
   a route's ``reuse_post_responses: false`` turns that off).

The store being down is never an error: each failed store step makes that request a
plain pass-through, counted (``cache.store_unavailable``) and logged once per change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

import gevent

from edge.cache import keys, partial, policy, purge, records, validators, variants
from edge.cache.keys import KeyRules
from edge.cache.records import FILLING, PASS, StoredObject, VaryIndex
from edge.cache.tee import tee

records.register(policy.StoredFacts, flat=True)  # plain values only (policy.StoredFacts docstring)
from edge.context import Response
from edge.errors import EdgeError, StoreUnavailable, UpstreamError

log = logging.getLogger("edge.cache")

#: largest piece of a body in one store value (memcached refuses items over 1 MB)
CHUNK_BYTES = 512 * 1024
#: bodies up to this are stored inline in the object record: one round trip per hit
INLINE_MAX_BYTES = CHUNK_BYTES
#: chunks fetched per store call when a chunked body is served
CHUNKS_PER_READ = 4
#: followers poll the store this often while they wait for a fill (growing to the max)
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.1
#: a background revalidation holds its lock at most this long
REVALIDATE_LOCK_S = 30.0
#: decoded records a worker keeps (``Cache._decode``), and the largest record it keeps: a
#: small object's record (a 1 KiB body and its head) fits; at most ~8 MiB per worker (the raw
#: bytes and the decoded copy of each), whatever URLs clients ask for
MEMO_ENTRIES = 1024
MEMO_MAX_RECORD_BYTES = 4 * 1024
#: stores whose calls never switch greenlets (LMDB, a dict): a commit may run as a hub callback
_IN_PROCESS_STORES = frozenset({"local", "memory"})

_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# the client's validators and ranges: a request carrying them is answered, not coalesced
_CONDITIONAL = ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range")
_SURROGATE = frozenset({"surrogate-key", "cache-tag"})
_RANGE_FIELDS = frozenset({"range", "if-range"})
# never stored with an object: recomputed per answer (Age, Cache-Status of this cache)
_NOT_STORED = frozenset({"age"})
# RFC 9110 §15.4.5: a 304 carries what a 200 would, except the content's own fields
_NOT_IN_304 = frozenset({"content-length", "content-range", "content-encoding", "content-type", "content-language",
                         "transfer-encoding"})


class StoreDown:
    """Counts store failures and logs once per state change (up -> down -> up)."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.down = False

    def failed(self, e: BaseException) -> None:
        self.metrics.incr("cache.store_unavailable")
        if not self.down:
            self.down = True
            log.warning("cache store unavailable, passing requests through: %s", e)

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.warning("cache store available again")


@dataclass(frozen=True, slots=True)
class RouteCache:
    """One route's compiled cache settings."""

    keys: KeyRules
    settings: Any                 # policy.PolicySettings
    max_object_size: int
    strip_fields: frozenset[str]  # targeted fields that mean nothing past edge (RFC 9213), lower case
    reuse_post: bool = True       # a POST's answer may become its target's GET response (RFC 9110 §9.3.3)


@dataclass(slots=True)
class Entry:
    """A stored object found by a lookup, and where it lives."""

    obj: StoredObject
    record_key: str          # url_key (no Vary) or variant_key
    soft: bool               # purged softly (record mark, variant index or a ban rule): revalidate first


@dataclass(slots=True)
class Fill:
    """What a miss needs to store the response it forwards."""

    h: str
    url: str
    request_time: float
    lock: str | None = None       # the fill lock token, when this request leads
    replaces: Entry | None = None
    lock_key: str | None = None   # where the lock is: the URL key (a fill marker) or the fill-lock key
    vary_miss: Any = None         # a _VaryMiss seen while waiting (the URL's index, this request's key)

    def saw(self, found):
        """``found`` (what a lookup while waiting returned), remembering a Vary miss: the index
        may appear while this request waits (a concurrent first variant), and the miss that
        follows then asks about the stored variants (``Cache._vary_miss``)."""
        if isinstance(found, _VaryMiss):
            self.vary_miss = found
        return found


class _NoMatch:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_MATCH"


# _load: the URL has a record (a Vary index, a hard-banned object) but nothing this request can
# use: a fill for it locks the URL's fill-lock key, as the record stays in place
NO_MATCH = _NoMatch()


class _VaryMiss(_NoMatch):
    """``_load``: the URL's response varies and no stored variant matches this request
    (RFC 9111 §4.1): a ``NO_MATCH`` that knows the index and the request's secondary key,
    so the miss may ask the origin about the variants that are stored (``Cache._vary_miss``)."""

    __slots__ = ("index", "secondary")

    def __init__(self, index: VaryIndex, secondary: str) -> None:
        self.index = index
        self.secondary = secondary


class Cache:
    """The cache of one worker over a Store; built once per worker (``build_cache``)."""

    def __init__(self, cfg, routes: list[RouteCache | None], store, metrics, owns_store: bool = False) -> None:
        self.cfg = cfg
        self.routes = routes
        self.store = store
        self.metrics = metrics
        self.owns_store = owns_store
        self.name = cfg.status_name
        self.coalesce_wait_s = cfg.coalesce_wait
        self.hit_for_pass_s = cfg.hit_for_pass
        self.max_ttl_s = cfg.max_ttl
        self.keep_stale_s = cfg.keep_stale
        self.ban_refresh_s = cfg.ban_refresh
        self.strip_surrogate = cfg.strip_surrogate_headers
        self.serve_stale_s = max([cfg.serve_stale_on_error] + [r.settings.serve_stale_on_error_s for r in routes if r is not None])
        self.health = StoreDown(metrics)
        self.tokens = records.Tokens()  # built in the worker, after the fork: its own random prefix
        self._decoded: dict[str, tuple[bytes, Any]] = {}  # store key -> (raw record, decoded): see _decode
        self._hit_status = policy.hit_status_prefix(self.name)  # + the ttl: a hit's Cache-Status
        # how a commit runs once the request's greenlet yields (see "Fill" above)
        self._later = _in_hub if getattr(store, "name", "") in _IN_PROCESS_STORES else gevent.spawn
        self._bans: tuple[purge.Ban, ...] = ()
        self._bans_next = 0.0

    def close(self) -> None:
        if self.owns_store:
            self.store.close()

    # ------------------------------------------------------------------ entry

    def handle(self, proxy, ctx, route, chain, body) -> Any:
        rc = self.routes[route.index]
        method = ctx.method
        if method == "GET" or method == "HEAD":
            return self._read(proxy, ctx, route, rc, chain, body)
        if method in _SAFE:
            return proxy.forward(ctx, route, chain, body)
        if method == "POST" and rc.reuse_post:
            return proxy.forward(ctx, route, chain, body, tap=self._post_tap(ctx, rc))
        # any other unsafe method, or a POST on a route that never stores POST answers
        # (``reuse_post_responses`` off): it only invalidates (RFC 9111 §4.4)
        return proxy.forward(ctx, route, chain, body, tap=self._invalidation_tap(ctx, rc))

    # ------------------------------------------------------------------ lookup

    def _read(self, proxy, ctx, route, rc: RouteCache, chain, body):
        url = keys.cache_url(ctx.scheme, ctx.host, ctx.path, ctx.query, rc.keys)
        h = keys.digest(url)
        req_headers = ctx.headers.items()
        try:
            found = self._load(h, req_headers)
        except StoreUnavailable as e:
            self.health.failed(e)
            return proxy.forward(ctx, route, chain, body)
        self.health.ok()
        now = time.time()
        if isinstance(found, Entry):
            return self._decide(proxy, ctx, route, rc, chain, body, url, h, found, now)
        if _only_if_cached(req_headers):
            if found is FILLING:  # a response on its way into the store: this client may have just seen it
                found = self._fill_landed(h, req_headers)
                if isinstance(found, Entry):
                    return self._decide(proxy, ctx, route, rc, chain, body, url, h, found, time.time())
            # RFC 9111 §5.2.1.7: "respond using a stored response or ... a 504 (Gateway Timeout)"
            self.metrics.incr("cache.miss")
            return proxy.answer(ctx, Response.error(504, "not in cache (only-if-cached)"), chain)
        self.metrics.incr("cache.miss")
        fill = Fill(h, url, now)
        if found is PASS:
            return self._fetch(proxy, ctx, route, rc, chain, body, fill, "uri-miss")
        if self.coalesce_wait_s <= 0:
            return self._miss(proxy, ctx, route, rc, chain, body, fill, found)
        return self._coalesce(proxy, ctx, route, rc, chain, body, fill, found)

    def _decode(self, key: str, raw: bytes | None):
        """``records.decode(raw)``, memoised per worker: a record read again with the same bytes
        (every hit of a popular object) is not decoded again. The bytes are compared, so a
        record replaced on the store by any worker or node is decoded anew; decoded records
        are never changed in place (``dataclasses.replace`` makes new ones)."""
        if raw is None:
            return None
        memo = self._decoded.get(key)
        if memo is not None and memo[0] == raw:
            return memo[1]
        rec = records.decode(raw)
        if rec is not None and len(raw) <= MEMO_MAX_RECORD_BYTES:
            decoded = self._decoded
            if len(decoded) >= MEMO_ENTRIES:
                del decoded[next(iter(decoded))]  # the oldest entry (dicts keep insertion order)
            decoded[key] = (raw, rec)
        return rec

    def _load(self, h: str, req_headers) -> Entry | object | None:
        """The usable stored object for this request (an ``Entry``), ``PASS``, ``FILLING``
        (a fill marker), ``NO_MATCH`` (a record, nothing usable) or None (no record)."""
        key = keys.url_key(h)
        rec = self._decode(key, self.store.get(key))
        if rec is None or rec is PASS or rec is FILLING:
            return rec
        soft = False
        if isinstance(rec, VaryIndex):
            secondary = policy.secondary_key(rec.names, req_headers)
            if secondary is None:  # RFC 9111 §4.1: "Vary: *" always fails to match
                return NO_MATCH
            key = keys.variant_key(h, rec.generation, secondary)
            obj = self._decode(key, self.store.get(key))
            if not isinstance(obj, StoredObject):
                if "accept-language" not in rec.names:
                    return _VaryMiss(rec, secondary)
                key, obj = self._by_language(h, rec, req_headers, secondary)
                if obj is None:
                    return _VaryMiss(rec, secondary)
            soft = obj.stored_at < rec.purged_at
        else:
            obj = rec
        soft = soft or obj.soft_purged
        bans = self._ban_rules()
        if bans:
            v = purge.verdict(bans, obj)
            if v is purge.HARD:
                return NO_MATCH
            soft = soft or v is purge.SOFT
        return Entry(obj, key, soft)

    def _by_language(self, h: str, rec: VaryIndex, req_headers, secondary: str) -> tuple[str, StoredObject | None]:
        """A variant in the one language this request prefers most, when its own secondary key
        found none (``policy.language_selection``; ``edge.cache.language`` says when): one more
        store read, only for responses that vary on Accept-Language. The variant was also
        stored under its language when it was committed (``_put_variant``)."""
        chosen = policy.language_selection(rec.names, req_headers, secondary)
        if chosen is None:
            return "", None
        tag, language_key = chosen
        key = keys.variant_key(h, rec.generation, language_key)
        obj = self._decode(key, self.store.get(key))
        if not isinstance(obj, StoredObject) or policy.stored_language(obj.headers) != tag:
            return "", None
        self.metrics.incr("cache.language_selected")
        return key, obj

    def _fill_landed(self, h: str, req_headers) -> Entry | object | None:
        """What replaces a fill marker within ``coalesce_wait`` (the marker itself if nothing
        does), for a request that must not go to the backend (only-if-cached). A fill commits
        just after its last byte went out, so a client that got that answer and asks again at
        once would otherwise find the marker, not the object."""
        try:
            return self._poll_marker(h, req_headers, time.monotonic() + self.coalesce_wait_s, POLL_FIRST_S)[0]
        except StoreUnavailable as e:
            self.health.failed(e)
            return FILLING

    def _poll_marker(self, h: str, req_headers, deadline: float, sleep_s: float) -> tuple[Entry | object | None, float]:
        """Look the URL up again, backing off from ``sleep_s``, until something replaces its fill
        marker or ``deadline`` passes: (what ``_load`` found last, the next sleep)."""
        found: Entry | object | None = FILLING
        while found is FILLING and time.monotonic() < deadline:
            gevent.sleep(sleep_s)
            sleep_s = min(sleep_s * 2, POLL_MAX_S)
            found = self._load(h, req_headers)
        return found, sleep_s

    def _ban_rules(self) -> tuple[purge.Ban, ...]:
        mono = time.monotonic()
        if mono >= self._bans_next:
            self._bans_next = mono + self.ban_refresh_s
            # a failure keeps the rules we had: StoreUnavailable reaches _read's pass-through
            self._bans = purge.live(purge.decode_bans(self.store.get(keys.BANS_KEY)), time.time())
        return self._bans

    def _decide(self, proxy, ctx, route, rc, chain, body, url, h, entry: Entry, now: float):
        obj = entry.obj
        if obj.status == 206:  # a stored partial never answers as a complete response (§3.3)
            return self._partial(proxy, ctx, route, rc, chain, body, url, h, entry, now)
        req_headers = ctx.headers.items()
        if entry.soft:
            # a soft purge: "stale", so the next use revalidates (RFC 9111 §4.3.1 validators)
            cond = list(policy.conditional_headers((obj.facts,)))
            if _only_if_cached(req_headers):
                return proxy.answer(ctx, Response.error(504, "stored response is purged (only-if-cached)"), chain)
            return self._revalidate(proxy, ctx, route, rc, chain, body, url, h, entry, cond, now)
        facts = obj.facts
        if not (facts.public or facts.must_revalidate) and _has_authorization(req_headers):
            # RFC 9111 §3.5: "A shared cache MUST NOT use a cached response to a request with an
            # Authorization header field ... unless" public, must-revalidate or s-maxage allows it
            self.metrics.incr("cache.miss")
            return self._fetch(proxy, ctx, route, rc, chain, body, Fill(h, url, now), "request")
        d = policy.lookup(ctx.method, req_headers, facts, now, rc.settings)
        kind = type(d)
        if kind is policy.Fresh:
            self.metrics.incr("cache.hit")
            return self._serve(proxy, ctx, chain, rc, obj, now, f"{self._hit_status}{math.floor(d.ttl)}", d.age)
        if kind is policy.ServeStale:
            self.metrics.incr("cache.stale")
            if d.revalidate_in_background:
                self._revalidate_in_background(proxy, ctx, route, rc, chain, url, h, entry)
            return self._serve(proxy, ctx, chain, rc, obj, now,
                               policy.cache_status(name=self.name, hit=True, ttl=d.ttl, detail=d.reason), d.age)
        if kind is policy.Revalidate:
            return self._revalidate(proxy, ctx, route, rc, chain, body, url, h, entry, list(d.headers), now)
        if kind is policy.OnlyIfCachedMiss:
            return proxy.answer(ctx, Response.error(504, "no fresh stored response (only-if-cached)"), chain)
        # Fetch: the request's own directives (or Vary: *) ask for a new answer
        self.metrics.incr("cache.miss")
        return self._fetch(proxy, ctx, route, rc, chain, body, Fill(h, url, now, replaces=entry), d.reason)

    # ------------------------------------------------------------------ answering from the store

    def _serve(self, proxy, ctx, chain, rc: RouteCache, obj: StoredObject, now: float, status_value: str,
               age: float | None = None):
        if age is None:
            age = policy.current_age(obj.facts, now)
        strip = rc.strip_fields
        headers = [(n, v) for n, v in obj.headers if n.lower() not in strip] if strip else list(obj.headers)
        age_value = policy.age_header(age)
        headers.append(("Age", age_value))
        headers.append(("Cache-Status", status_value))
        req = ctx.headers.items()
        method = ctx.method
        if _has_conditional(req):
            answered = self._precondition(proxy, ctx, chain, rc, obj, obj.status, age_value, status_value)
            if answered is not None:
                return answered
        if method == "GET" and obj.status == 200 and ctx.headers.get("range") is not None:
            part = self._range(proxy, ctx, chain, obj, headers)
            if part is not None:
                return part
        if method == "HEAD":
            return proxy.reply_stored(ctx, chain, obj.status, headers, None, obj.length)
        body = obj.body if obj.body is not None else self._body(obj, 0, obj.length)
        return proxy.reply_stored(ctx, chain, obj.status, headers, body, obj.length, self._variants(proxy, ctx, rc, obj))

    def _precondition(self, proxy, ctx, chain, rc: RouteCache, obj: StoredObject, status: int,
                      age_value: str, status_value: str):
        """A 304 or 412 for the client's own preconditions (RFC 9110 §13.2.2), or None.
        Without Last-Modified, If-Modified-Since is evaluated against the stored Date, or the
        time the response was received (RFC 9111 §4.3.2)."""
        code = policy.client_conditional(ctx.method, ctx.headers.items(), obj.headers, obj.facts.response_time, status)
        if code == 304:
            # RFC 9110 §15.4.5: the fields a 304 must carry, plus this cache's Age and Cache-Status
            out = policy.not_modified_headers(_strip(list(obj.headers), rc.strip_fields))
            out.append(("Age", age_value))
            out.append(("Cache-Status", status_value))
            return proxy.reply_stored(ctx, chain, 304, out, None, None)
        if code == 412:
            return proxy.answer(ctx, Response(412, [("Cache-Status", status_value)], b""), chain)
        return None

    def _variants(self, proxy, ctx, rc: RouteCache, obj: StoredObject):
        """The encoded variants of ``obj`` for a route that compresses (None: it does not, or the
        object predates body version tokens): see ``edge.cache.variants``."""
        compressor = proxy.compressor
        if compressor is None or not compressor.enabled_for(ctx.route) or not obj.version:
            return None
        return variants.VariantSource(self, keys.digest(obj.url), obj.version, obj.length, rc.max_object_size,
                                      obj.expires_at)

    def _range(self, proxy, ctx, chain, obj: StoredObject, headers):
        """A 206 or 416 for the client's Range (RFC 9110 §14), or None for the whole body."""
        rd = policy.ranges(ctx.headers.get("range"), ctx.headers.get("if-range"), obj.length, obj.headers)
        status = rd.status
        if status == 416:
            return proxy.reply_stored(ctx, chain, 416, [(n, v) for n, v in headers if n.lower() not in _NOT_IN_304]
                                      + [("Content-Range", rd.content_range)], b"", 0)
        if status != 206:
            return None
        first, last = rd.start, rd.end
        length = last - first + 1
        out = headers + [("Content-Range", rd.content_range)]
        if obj.body is not None:
            body = obj.body[first:last + 1]
        else:
            body = self._body(obj, first, length)
        return proxy.reply_stored(ctx, chain, 206, out, body, length)

    def _body(self, obj: StoredObject, offset: int, length: int) -> Iterator[bytes]:
        """The stored body from ``offset``, ``length`` bytes, read chunk by chunk."""
        end = offset + length
        first, last = offset // CHUNK_BYTES, (end - 1) // CHUNK_BYTES if length else -1
        h = keys.digest(obj.url)
        n = first
        while n <= last:
            batch = [keys.chunk_key(h, obj.version, i) for i in range(n, min(last + 1, n + CHUNKS_PER_READ))]
            got = self.store.get_many(batch)
            for i, k in enumerate(batch, start=n):
                piece = got.get(k)
                if piece is None:
                    # evicted under us (a store over its size bound): this client gets a 502, or a cut
                    # body if the head is out; the URL record goes so the next request fetches again
                    self.metrics.incr("cache.chunk_missing")
                    try:
                        self.store.delete(keys.url_key(h))
                    except StoreUnavailable as e:
                        self.health.failed(e)
                    raise CacheBodyLost(f"cached body chunk {i} of {obj.url} is gone")
                lo = max(offset - i * CHUNK_BYTES, 0)
                hi = min(end - i * CHUNK_BYTES, len(piece))
                yield piece[lo:hi] if (lo or hi != len(piece)) else piece
            n += len(batch)

    # ------------------------------------------------------------------ going to the backend

    def _fetch(self, proxy, ctx, route, rc, chain, body, fill: Fill, fwd: str):
        """Forward, storing the answer if it may be stored (the miss path). When no answer
        comes (the backend down, a timeout), the fill lock goes at once: requests waiting
        for this fill try the backend now (one of them leading again) instead of waiting out
        ``coalesce_wait`` behind a request that has already ended."""
        try:
            up = self._exchange(proxy, ctx, route, chain, body, fill)
        except UpstreamError as e:
            return proxy.upstream_failed(ctx, chain, e)
        return proxy.relay(ctx, chain, up, self._store_tap(ctx, rc, fill, fwd))

    def _exchange(self, proxy, ctx, route, chain, body, fill: Fill, conditional=None):
        """``proxy.exchange`` for a fill: when it ends without an answer, the fill lock goes back
        first (see ``_fetch``)."""
        try:
            return proxy.exchange(ctx, route, chain, body, conditional=conditional)
        except Exception:
            self._release_fill(fill)
            raise

    def _miss(self, proxy, ctx, route, rc, chain, body, fill: Fill, found):
        """Nothing stored answers this request (``found``: what the lookup saw): to the origin."""
        if isinstance(found, _VaryMiss):
            return self._vary_miss(proxy, ctx, route, rc, chain, body, fill, found)
        return self._fetch(proxy, ctx, route, rc, chain, body, fill, "uri-miss")

    def _coalesce(self, proxy, ctx, route, rc, chain, body, fill: Fill, found):
        """Concurrent misses of one URL: one leader fetches, the others wait for its object."""
        seen = found
        try:
            found = self._await_fill(ctx, fill, found)
        except StoreUnavailable as e:
            # decided before anything went to the backend: a plain pass-through
            self.health.failed(e)
            return proxy.forward(ctx, route, chain, body)
        if not isinstance(found, Entry):
            # leading, or done waiting: the index may have appeared meanwhile (a concurrent first variant)
            return self._miss(proxy, ctx, route, rc, chain, body, fill, fill.vary_miss or seen)
        now = time.time()
        req_headers = ctx.headers.items()
        if not found.soft and found.obj.status != 206 and not _has_authorization(req_headers):
            d = policy.lookup(ctx.method, req_headers, found.obj.facts, now, rc.settings)
            if type(d) is policy.Fresh:
                self.metrics.incr("cache.coalesced")
                fwd = "vary-miss" if isinstance(seen, _VaryMiss) or fill.vary_miss is not None else "uri-miss"
                status = policy.cache_status(name=self.name, fwd=fwd, collapsed=True, ttl=d.ttl)
                return self._serve(proxy, ctx, chain, rc, found.obj, now, status, d.age)
        # stored, but not fresh for this request (max-age=0, no-cache, credentials...): the usual way
        return self._decide(proxy, ctx, route, rc, chain, body, fill.url, fill.h, found, now)

    def _vary_miss(self, proxy, ctx, route, rc, chain, body, fill: Fill, miss: _VaryMiss):
        """No stored variant matches (RFC 9111 §4.1): ask the origin with an If-None-Match of
        the stored variants' entity tags (``edge.cache.validators``). A 304 names the one it
        would send: refreshed, served and stored for this request too (``_selected_variant``),
        without the body crossing again; anything else is handled as any miss. Only for a
        plain GET (no validators, range or credentials of the client's own, no body to send
        twice); a 304 naming nothing edge still holds makes it ask again without conditionals."""
        req_headers = ctx.headers.items()
        if ctx.method != "GET" or body is not None or not _coalescable(req_headers):
            return self._fetch(proxy, ctx, route, rc, chain, body, fill, "vary-miss")
        try:
            listed = validators.decode(self.store.get(keys.validators_key(fill.h, miss.index.generation)))
        except StoreUnavailable as e:
            self.health.failed(e)
            listed = ()
        known = validators.combined(miss.index.tags, listed)
        inm = validators.if_none_match(known)
        if inm is None:
            return self._fetch(proxy, ctx, route, rc, chain, body, fill, "vary-miss")
        try:
            up = self._exchange(proxy, ctx, route, chain, body, fill, conditional=[("If-None-Match", inm)])
            if up.status == 304:
                _drain(up)
                served = self._selected_variant(proxy, ctx, chain, rc, fill, miss, known, up)
                if served is not None:
                    return served
                # RFC 9111 §4.3.4: a 304 for nothing stored "MUST NOT" update anything: the full answer
                up = self._exchange(proxy, ctx, route, chain, body, fill, conditional=[])
        except UpstreamError as e:
            return proxy.upstream_failed(ctx, chain, e)
        return proxy.relay(ctx, chain, up, self._store_tap(ctx, rc, fill, "vary-miss"))

    def _selected_variant(self, proxy, ctx, chain, rc, fill: Fill, miss: _VaryMiss, known, up):
        """The stored variant the origin's 304 selects (RFC 9111 §4.3.4), refreshed with the
        304's fields and served; None when none of those listed still holds its validator.
        Every variant the 304 identifies is refreshed; the first (the most recent) also goes
        under this request's secondary key, since the origin chose it for this request."""
        request_time = fill.request_time
        response_time = time.time()
        fresh = proxy.response_headers(up)
        served = None
        try:
            bans = self._ban_rules()
            for k in validators.selected(up.headers, known):
                obj = self._decode(k.record_key, self.store.get(k.record_key))
                if (not isinstance(obj, StoredObject) or obj.status != 200 or not policy.validates(up.headers, obj.facts)
                        or bans and purge.verdict(bans, obj) is purge.HARD):
                    continue  # expired, replaced or purged since it was listed
                copy_key = keys.variant_key(fill.h, miss.index.generation, miss.secondary) if served is None else None
                refreshed = self._refresh(rc, Entry(obj, k.record_key, False), fresh, request_time, response_time,
                                          copy_key=copy_key, vary=miss.index.names)
                if served is None:
                    served = refreshed  # the copy needs no note: its tag is listed already
        except StoreUnavailable as e:
            self.health.failed(e)
        if served is None:
            return None  # the fill goes on (the full answer): its commit releases the lock
        self._release_fill(fill)  # the copy is readable now: waiters find it
        self.metrics.incr("cache.revalidated")
        self.metrics.incr("cache.variant_selected")
        t = time.time()
        ttl = served.facts.freshness_lifetime - policy.current_age(served.facts, t)
        return self._serve(proxy, ctx, chain, rc, served, t,
                           policy.cache_status(name=self.name, fwd="vary-miss", fwd_status=304, stored=True, ttl=ttl))

    def _await_fill(self, ctx, fill: Fill, found) -> Entry | None:
        """Take the fill lock (None: this request leads, ``fill.lock`` set), or wait for the
        leader's object (an ``Entry``), its pass mark or the end of ``coalesce_wait`` (None).

        ``found`` is what the lookup saw. With no record at the URL key, the lock is a fill
        marker ``add``ed there (``records.Tokens.fill``): the add itself proves nothing was
        committed since the lookup, and the leader's record write (object, Vary index or pass
        mark) replaces the marker, so a miss costs one lock write and no release. With a record
        that stays (a Vary index without this variant, a banned object) the lock is the URL's
        fill-lock key, re-checked after it is taken and released after the commit."""
        store = self.store
        url_key = keys.url_key(fill.h)
        deadline = time.monotonic() + self.coalesce_wait_s
        lock_ttl = self.coalesce_wait_s + 1.0
        sleep_s = POLL_FIRST_S
        req_headers = ctx.headers.items()
        # a plain GET may lead; others (HEAD, ranges, validators, credentials) have nothing to
        # store for everyone, but wait for a fill in progress and are answered from it
        lead = ctx.method == "GET" and _coalescable(req_headers)
        marker = found is None or found is FILLING
        while True:
            if marker:
                if lead and found is None:
                    token = self.tokens.fill()
                    if store.add(url_key, token.encode(), lock_ttl):
                        fill.lock, fill.lock_key = token, url_key
                        return None
                    found = fill.saw(self._load(fill.h, req_headers))  # someone wrote first: what?
                    if isinstance(found, Entry):
                        return found
                    if found is PASS:
                        return None
                    if isinstance(found, _NoMatch):
                        marker = False
                        continue
                elif found is not FILLING:
                    return None  # no fill in progress (not leading) or a pass mark
                # a fill marker: wait for what replaces it
                found, sleep_s = self._poll_marker(fill.h, req_headers, deadline, sleep_s)
                fill.saw(found)
                if isinstance(found, Entry):
                    return found
                if found is PASS:
                    return None
                if isinstance(found, _NoMatch):
                    marker = False  # a variant this request does not match: its own fill
                # None: the leader gave up: try to lead (FILLING: the wait is over, below)
            else:
                lock_key = keys.fill_lock_key(fill.h)
                if lead:
                    token = store.acquire_lock(lock_key, lock_ttl)
                    if token is not None:
                        # a fill may have been committed between our lookup and the lock
                        found = fill.saw(self._load(fill.h, req_headers))
                        if isinstance(found, Entry):
                            store.release_lock(lock_key, token)
                            return found
                        fill.lock, fill.lock_key = token, lock_key
                        return None
                elif store.get(lock_key) is None:
                    return None
                # someone fetches it: wait for the committed object, the pass mark, or the lock to go
                while time.monotonic() < deadline:
                    gevent.sleep(sleep_s)
                    sleep_s = min(sleep_s * 2, POLL_MAX_S)
                    got = store.get_many([url_key, lock_key])
                    rec = records.decode(got.get(url_key))
                    if rec is PASS:
                        return None
                    if rec is not None and rec is not FILLING:
                        found = self._load(fill.h, req_headers)
                        if isinstance(found, Entry):
                            return found
                    if lock_key not in got:
                        break  # the leader gave up or its object does not fit this request: try to lead
            if time.monotonic() >= deadline:
                self.metrics.incr("cache.coalesce_timeout")
                return None

    def _revalidate(self, proxy, ctx, route, rc, chain, body, url, h, entry: Entry, cond, now: float):
        """RFC 9111 §4.3: ask the backend whether the stored response is still good."""
        obj = entry.obj
        fill = Fill(h, url, now, replaces=entry)
        try:
            up = proxy.exchange(ctx, route, chain, body, conditional=cond)
        except UpstreamError as e:
            t = time.time()
            if policy.stale_on_error(obj.facts, t, rc.settings, None, ctx.headers.items()):
                self.metrics.incr("cache.stale_on_error")
                return self._serve(proxy, ctx, chain, rc, obj, t, self._stale_status(obj, t, None))
            if obj.facts.must_revalidate and e.status != 504:
                e = RevalidationFailed(f"stored response must be revalidated: {e}")
            return proxy.upstream_failed(ctx, chain, e)
        if up.status == 304 and not policy.validates(up.headers, obj.facts):
            # RFC 9111 §4.3.4: a 304 for none of the stored validators updates nothing ("MUST
            # NOT use the new response to update"), and the stored response stays unvalidated
            _drain(up)
            try:
                up = proxy.exchange(ctx, route, chain, body, conditional=[])
            except UpstreamError as e:
                return proxy.upstream_failed(ctx, chain, e)
        if up.status == 304:
            refreshed, t, status_value = self._revalidated(proxy, rc, entry, up, now)
            return self._serve(proxy, ctx, chain, rc, refreshed, t, status_value)
        t = time.time()
        if up.status >= 500 and policy.stale_on_error(obj.facts, t, rc.settings, up.status, ctx.headers.items()):
            up.close()
            self.metrics.incr("cache.stale_on_error")
            return self._serve(proxy, ctx, chain, rc, obj, t, self._stale_status(obj, t, up.status))
        if up.status == 200 and ctx.method == "HEAD":
            self._head_answered(rc, entry, proxy.response_headers(up), now, t)
        self.metrics.incr("cache.miss")
        return proxy.relay(ctx, chain, up, self._store_tap(ctx, rc, fill, "stale"))

    def _revalidated(self, proxy, rc, entry: Entry, up, request_time: float) -> tuple[StoredObject, float, str]:
        """A 304 that validates the stored response (RFC 9111 §4.3.4): the refreshed object,
        the time and the Cache-Status of serving it."""
        _drain(up)
        refreshed = self._refresh(rc, entry, proxy.response_headers(up), request_time, time.time())
        self.metrics.incr("cache.revalidated")
        t = time.time()
        ttl = refreshed.facts.freshness_lifetime - policy.current_age(refreshed.facts, t)
        return refreshed, t, policy.cache_status(name=self.name, fwd="stale", fwd_status=304, ttl=ttl)

    def _head_answered(self, rc, entry: Entry, head_headers, request_time: float, response_time: float) -> None:
        """RFC 9111 §4.3.5: a 200 answer to a HEAD updates the stored GET response when their
        validators and length agree (``policy.head_updates``), else makes it stale (a soft
        mark: the next use revalidates)."""
        obj = entry.obj
        if policy.head_updates(obj.headers, obj.length, head_headers):
            self._refresh(rc, entry, head_headers, request_time, response_time)
            return
        ttl_s = obj.expires_at - time.time()
        if ttl_s > 0:
            try:
                self.store.set(entry.record_key, dataclasses.replace(obj, soft_purged=True).encode(), ttl_s)
            except StoreUnavailable as e:
                self.health.failed(e)

    def _stale_status(self, obj: StoredObject, now: float, status: int | None) -> str:
        ttl = obj.facts.freshness_lifetime - policy.current_age(obj.facts, now)
        return policy.cache_status(name=self.name, hit=True, ttl=ttl, detail="stale-if-error" if status else "origin-down")

    def _refresh(self, rc, entry: Entry, fresh_headers, request_time: float, response_time: float,
                 copy_key: str | None = None, vary: tuple[str, ...] | None = None) -> StoredObject:
        """A 304 updates the stored head and freshness (RFC 9111 §3.2, §4.3.4) and keeps the body.
        ``copy_key``: the refreshed record is also written there (a variant the 304 selected for
        another request's Vary values, ``_selected_variant``) when its ``Vary`` names are still
        ``vary``, the index's."""
        obj = entry.obj
        fresh = [(n, v) for n, v in fresh_headers if n.lower() not in _SURROGATE]
        merged = policy.merge_304(list(obj.headers), fresh, response_time)
        facts = policy.response_facts(request_time, response_time, obj.status, merged, rc.settings)
        stored = [(n, v) for n, v in policy.headers_to_store(merged, response_time, rc.settings) if n.lower() not in _NOT_STORED]
        now = time.time()
        ttl_s = self._store_ttl(facts, now)
        if obj.body is None:
            ttl_s = min(ttl_s, obj.expires_at - now)  # the chunks were written with the old TTL
        new = dataclasses.replace(obj, headers=tuple(stored), facts=facts, stored_at=now, soft_purged=False,
                                  expires_at=now + ttl_s)
        if ttl_s > 0:
            try:
                record = new.encode()
                self.store.set(entry.record_key, record, ttl_s)
                if copy_key is not None and facts.vary == vary:
                    self.store.set(copy_key, record, ttl_s)
            except StoreUnavailable as e:
                self.health.failed(e)
        # this client gets the merged fields (RFC 9111 §4.3.4), the store keeps what §3.1 allows
        return dataclasses.replace(new, headers=tuple(n_v for n_v in merged if n_v[0].lower() not in _NOT_STORED))

    def _revalidate_in_background(self, proxy, ctx, route, rc, chain, url, h, entry: Entry) -> None:
        """stale-while-revalidate (RFC 5861 §3): one request of the fleet refreshes the object."""
        secondary = entry.record_key if entry.record_key != keys.url_key(h) else None
        lock_key = keys.revalidate_lock_key(h, secondary)
        try:
            token = self.store.acquire_lock(lock_key, REVALIDATE_LOCK_S)
            if token is None:
                return
            # the refresh may have landed (and let the lock go) between our read and the lock:
            # then there is nothing left to refresh
            current = records.decode(self.store.get(entry.record_key))
            if not isinstance(current, StoredObject) or current.stored_at != entry.obj.stored_at:
                self.store.release_lock(lock_key, token)
                return
        except StoreUnavailable as e:
            self.health.failed(e)
            return
        self.metrics.incr("cache.background_revalidation")
        gevent.spawn(self._background, proxy, ctx, route, rc, chain, url, h, entry, lock_key, token)

    def _background(self, proxy, ctx, route, rc, chain, url, h, entry: Entry, lock_key: str, token: str) -> None:
        try:
            request_time = time.time()
            try:
                # interim=False: the client already has its (stale) answer; a 1xx now would follow its final head
                up = proxy.exchange(ctx, route, chain, None, conditional=list(policy.conditional_headers((entry.obj.facts,))),
                                    interim=False)
            except UpstreamError:
                return  # logged and counted by exchange; the stale object stays
            if up.status == 304:
                _drain(up)
                if policy.validates(up.headers, entry.obj.facts):  # RFC 9111 §4.3.4
                    self._refresh(rc, entry, proxy.response_headers(up), request_time, time.time())
                return
            out_headers = proxy.response_headers(up)
            if up.status == 200 and ctx.method == "HEAD":
                self._head_answered(rc, entry, out_headers, request_time, time.time())
            fill = Fill(h, url, request_time, replaces=entry)
            tap = self._store_tap(ctx, rc, fill, "stale")
            _headers, body = tap(up, out_headers)
            if body is not None:
                if getattr(tap, "variants", None) is not None:
                    # it is being stored: the commit releases the lock once the new object is
                    # readable (or the fill gives it back), so no second revalidation starts
                    # in between while the stale object is still served (RFC 5861 §3, once)
                    fill.lock, fill.lock_key, token = token, lock_key, None
                for _ in body:  # the tee keeps the copy and commits at the end
                    pass
        except EdgeError as e:
            log.warning("background revalidation of %s failed: %s", url, e)
        finally:
            if token is not None:
                try:
                    self.store.release_lock(lock_key, token)
                except StoreUnavailable as e:
                    self.health.failed(e)

    # ------------------------------------------------------------------ partial content

    def _partial(self, proxy, ctx, route, rc, chain, body, url, h, entry: Entry, now: float):
        """A stored 206 (``edge.cache.partial``): serve a range it holds, prove a range
        unsatisfiable, complete it (RFC 9111 §3.4), or forward the request (its answer replaces
        the partial). It never answers a request as a complete response (§3.3)."""
        obj = entry.obj
        req_headers = ctx.headers.items()
        span = partial.span_of(obj.headers)
        kind = None
        if span is not None and not entry.soft and (obj.facts.public or obj.facts.must_revalidate
                                                    or not _has_authorization(req_headers)):
            d = policy.lookup(ctx.method, req_headers, obj.facts, now, rc.settings)
            kind = type(d)
        usable = kind is policy.Fresh or kind is policy.ServeStale
        only_if_cached = _only_if_cached(req_headers)
        p = None
        if usable or kind is policy.Revalidate:
            p = partial.plan(ctx.method, ctx.headers.get("range"), ctx.headers.get("if-range"), span, obj.headers)
        if usable:
            if kind is policy.Fresh:
                status_value = f"{self._hit_status}{math.floor(d.ttl)}"
            else:
                status_value = policy.cache_status(name=self.name, hit=True, ttl=d.ttl, detail=d.reason)
            if _has_conditional(req_headers):
                # RFC 9111 §4.3.2: "a stored 200 (OK) or 206 (Partial Content) response": its
                # validators are the representation's
                answered = self._precondition(proxy, ctx, chain, rc, obj, 200, policy.age_header(d.age), status_value)
                if answered is not None:
                    self.metrics.incr("cache.hit")
                    return answered
            if type(p) is partial.Serve or type(p) is partial.Unsatisfiable or type(p) is partial.Whole:
                self.metrics.incr("cache.hit" if kind is policy.Fresh else "cache.stale")
                if kind is policy.ServeStale and d.revalidate_in_background:
                    self._revalidate_in_background(proxy, ctx, route, rc, chain, url, h, entry)
                return self._serve_part(proxy, ctx, chain, rc, obj, span, p, d.age, status_value)
        if kind is policy.OnlyIfCachedMiss or only_if_cached:
            # RFC 9111 §5.2.1.7: a partial that does not hold the answer is no stored response for it
            return proxy.answer(ctx, Response.error(504, "stored response is partial (only-if-cached)"), chain)
        if (kind is policy.Revalidate and (type(p) is partial.Serve or type(p) is partial.Unsatisfiable
                                           or type(p) is partial.Whole) and not _has_conditional(req_headers)):
            return self._revalidate_partial(proxy, ctx, route, rc, chain, body, url, h, entry, span, p, d, now)
        self.metrics.incr("cache.miss")
        fill = Fill(h, url, now, replaces=entry)
        if type(p) is partial.Complete:
            # If-Range validates the stored bytes, so a stale partial may be completed too (§4.3)
            return self._complete(proxy, ctx, route, rc, chain, body, fill, span, p)
        # RFC 9211 §2.2 "partial: The cache stored a partial response, but it was not sufficient"
        return self._fetch(proxy, ctx, route, rc, chain, body, fill, "partial")

    def _revalidate_partial(self, proxy, ctx, route, rc, chain, body, url, h, entry: Entry, span: partial.Span, p,
                            d: policy.Revalidate, now: float):
        """A stale partial that holds the range asked for (RFC 9111 §4.3): the request goes with
        the stored validators added to the client's Range (and If-Range). RFC 9110 §13.2.2
        evaluates If-None-Match first, so an unchanged representation comes back as a 304,
        which refreshes the stored head (§4.3.4) and the range is served from the stored
        bytes; a changed one comes back as the range (or the whole) and replaces the partial.
        Only for clients without validators of their own (theirs could be what a 304 answers)."""
        obj = entry.obj
        range_fields = [(n, v) for n, v in ctx.headers.items() if n.lower() in _RANGE_FIELDS]
        fill = Fill(h, url, now, replaces=entry)
        try:
            up = proxy.exchange(ctx, route, chain, body, conditional=[*d.headers, *range_fields])
            if up.status == 304 and not policy.validates(up.headers, obj.facts):
                _drain(up)  # §4.3.4: a 304 for another validator updates nothing: ask as the client did
                up = proxy.exchange(ctx, route, chain, body, conditional=range_fields)
        except UpstreamError as e:
            t = time.time()
            if policy.stale_on_error(obj.facts, t, rc.settings, None, ctx.headers.items()):
                self.metrics.incr("cache.stale_on_error")
                return self._serve_part(proxy, ctx, chain, rc, obj, span, p, policy.current_age(obj.facts, t),
                                        self._stale_status(obj, t, None))
            return proxy.upstream_failed(ctx, chain, e)
        if up.status == 304:
            refreshed, t, status_value = self._revalidated(proxy, rc, entry, up, now)
            return self._serve_part(proxy, ctx, chain, rc, refreshed, span, p, policy.current_age(refreshed.facts, t),
                                    status_value)
        t = time.time()
        if up.status >= 500 and policy.stale_on_error(obj.facts, t, rc.settings, up.status, ctx.headers.items()):
            up.close()
            self.metrics.incr("cache.stale_on_error")
            return self._serve_part(proxy, ctx, chain, rc, obj, span, p, policy.current_age(obj.facts, t),
                                    self._stale_status(obj, t, up.status))
        self.metrics.incr("cache.miss")
        return proxy.relay(ctx, chain, up, self._store_tap(ctx, rc, fill, "stale"))

    def _serve_part(self, proxy, ctx, chain, rc: RouteCache, obj: StoredObject, span: partial.Span, p, age: float,
                    status_value: str):
        """A 206 of stored bytes (``partial.Serve``), a 416 (``partial.Unsatisfiable``) or the
        whole representation as a 200 (``partial.Whole``)."""
        strip = rc.strip_fields
        headers = [(n, v) for n, v in partial.without_range_fields(obj.headers) if n.lower() not in strip]
        headers.append(("Age", policy.age_header(age)))
        headers.append(("Cache-Status", status_value))
        if type(p) is partial.Whole:
            if ctx.method == "HEAD":
                return proxy.reply_stored(ctx, chain, 200, headers, None, obj.length)
            body = obj.body if obj.body is not None else self._body(obj, 0, obj.length)
            return proxy.reply_stored(ctx, chain, 200, headers, body, obj.length)
        if type(p) is partial.Unsatisfiable:
            # RFC 9110 §15.5.17: "the server SHOULD send a Content-Range header field for an
            # unsatisfied range request"; no content, so none of its fields
            return proxy.reply_stored(ctx, chain, 416, [(n, v) for n, v in headers if n.lower() not in _NOT_IN_304]
                                      + [("Content-Range", p.content_range)], b"", 0)
        headers.append(("Content-Range", p.content_range))
        offset = p.first - span.first
        length = p.last - p.first + 1
        body = obj.body[offset:offset + length] if obj.body is not None else self._body(obj, offset, length)
        return proxy.reply_stored(ctx, chain, 206, headers, body, length)

    def _complete(self, proxy, ctx, route, rc, chain, body, fill: Fill, span: partial.Span, c: "partial.Complete"):
        """RFC 9111 §3.3/§3.4: ask the origin for the missing bytes (Range + If-Range), stream the
        stored bytes and the new ones as one complete response (or the client's range of it),
        and store it through the usual tee. Any other answer is relayed (a 200: the
        representation changed, or the origin ignores ranges; it replaces the partial), or the
        client's own request is sent again when the part cannot be combined."""
        obj = fill.replaces.obj
        try:
            up = proxy.exchange(ctx, route, chain, body, conditional=list(c.fields))
        except UpstreamError as e:
            return proxy.upstream_failed(ctx, chain, e)
        response_time = time.time()
        new_headers = proxy.response_headers(up)
        if not partial.combinable(c, span, obj.headers, up.status, new_headers, up.length):
            if up.status == 206 or up.status == 416:
                # another representation or another range than asked: ask as the client did
                self.metrics.incr("cache.partial_mismatch")
                up.close()
                return self._fetch(proxy, ctx, route, rc, chain, body, fill, "partial")
            return proxy.relay(ctx, chain, up, self._store_tap(ctx, rc, fill, "partial"))
        self.metrics.incr("cache.partial_completed")
        headers = partial.combined_headers(obj.headers, new_headers, response_time)
        stored = obj.body if obj.body is not None else self._body(obj, 0, obj.length)
        parts = (stored, up.body) if c.first > span.first else (up.body, stored)
        combined = _Combined(up, span.complete, _concat(parts, up))
        store_tap = self._store_tap(ctx, rc, fill, "partial", fwd_status=up.status)
        want = c.want

        def tap(_up, _headers):
            out, stream = store_tap(combined, headers)
            if want is None:
                tap.variants = getattr(store_tap, "variants", None)
                return out, stream
            # the client asked for a range: it gets that part, the store the complete response
            first, last = want
            combined.status, combined.reason, combined.length = 206, "Partial Content", last - first + 1
            out = out + [("Content-Range", f"bytes {first}-{last}/{span.complete}")]
            return out, partial.window(stream, first, last)

        return proxy.relay(ctx, chain, combined, tap)

    def _partial_refusal(self, up, headers, rc: RouteCache, fill: Fill) -> str | None:
        """Why a 206 is not stored (``partial.refusal``, RFC 9111 §3.3), or None. Never in
        place of a stored complete response: it would only hold less."""
        if fill.replaces is not None and fill.replaces.obj.status != 206:
            return "partial"
        reason = partial.refusal(headers, up.length, rc.max_object_size)
        return None if reason is None else f"partial-{reason}"

    # ------------------------------------------------------------------ storing

    def _store_tap(self, ctx, rc: RouteCache, fill: Fill, fwd: str, fwd_status: int | None = None):
        """The ``relay`` tap of a miss: decide storability from the head, tee the body. When it
        stores, ``tap.variants`` is set: the relay tees the encoded stream into that variant.
        ``fwd_status``: what the origin answered, when ``up`` is not that answer (a completed
        partial, ``_complete``)."""
        method = ctx.method
        req_headers = list(ctx.headers.items())
        # a POST's answer is stored as its target's GET response when RFC 9110 §9.3.3 allows
        post_target = keys.cache_url(ctx.scheme, ctx.host, ctx.path, ctx.query) if method == "POST" else None

        def tap(up, out_headers):
            response_time = time.time()
            seen = up.status if fwd_status is None else fwd_status
            tags = _surrogate_keys(out_headers)
            if tags or (self.strip_surrogate and _has_surrogate_field(out_headers)):
                received = out_headers
                without = [(n, v) for n, v in out_headers if n.lower() not in _SURROGATE]
                if self.strip_surrogate:
                    out_headers = without
            else:
                received = without = out_headers
            reason = self._unstorable(method, up, rc)
            if reason is None and up.status == 206:
                reason = self._partial_refusal(up, out_headers, rc, fill)
            plan = None
            if reason is None:
                # one parse of the head: verdict, facts and the fields to keep (RFC 9111 §3, §3.1, §4.2)
                plan = policy.store_plan(method, up.status, req_headers, received, fill.request_time, response_time,
                                         rc.settings, without, _NOT_STORED, post_target)
                if not plan.verdict.ok:
                    reason = plan.verdict.reason
            body = up.body
            if reason is not None:
                self._pass(fill, reason)
                out_headers = out_headers + [("Cache-Status", policy.cache_status(name=self.name, fwd=fwd, fwd_status=seen,
                                                                                   detail=reason))]
                return _strip(out_headers, rc.strip_fields), body
            stored = plan.headers
            facts = plan.facts
            if not policy.worth_storing(facts, rc.settings):
                # never fresh, no validator, no stale window: storing it would only take room
                self._pass(fill, "not-worth-storing")
                out_headers = out_headers + [("Cache-Status", policy.cache_status(name=self.name, fwd=fwd, fwd_status=seen,
                                                                                   detail="not-worth-storing"))]
                return _strip(out_headers, rc.strip_fields), body
            names = facts.vary
            secondary = policy.secondary_key(names, req_headers) if names else None
            # also kept under its language, for requests that prefer it but spell Accept-Language otherwise
            language = (policy.variant_language_key(names, req_headers, stored, secondary)
                        if secondary is not None and "accept-language" in names else None)
            ttl = facts.freshness_lifetime - policy.current_age(facts, response_time)
            out_headers = out_headers + [("Cache-Status", policy.cache_status(name=self.name, fwd=fwd, fwd_status=seen,
                                                                               stored=True, ttl=ttl))]
            # the body's token, chosen now so the encoded stream the client gets can be stored under it too
            pending = _Pending(fill, up.status, up.reason, tuple(stored), facts, tags, names, secondary, self.tokens.next(),
                               language)
            tap.variants = variants.VariantSource(self, fill.h, pending.version, up.length, rc.max_object_size,
                                                  response_time + self._store_ttl(facts, response_time), filling=True)
            out_headers = _strip(out_headers, rc.strip_fields)
            if body is None:
                self._commit(pending, [], 0)
                return out_headers, None
            return out_headers, self._tee(body, up.length, rc.max_object_size, pending)

        return tap

    def _unstorable(self, method, up, rc: RouteCache) -> str | None:
        """What refuses the response before the policy looks at its head (None: ask the policy;
        a POST's answer reaches here only from ``_post_tap``, the policy decides it too)."""
        if method != "GET" and method != "POST":
            return "method"
        if up.status == 101:
            return "upgrade"
        if up.length is not None and up.length > rc.max_object_size:
            return "too-large"
        return None

    def _pass(self, fill: Fill, reason: str) -> None:
        """The response will not be stored: release the fill lock, leaving a hit-for-pass mark
        when the reason is the response's own (not this request's)."""
        self.metrics.incr("cache.pass")
        if fill.lock is None:
            return
        try:
            url_key = keys.url_key(fill.h)
            if self.hit_for_pass_s > 0 and reason not in _REQUEST_REASONS:
                self.store.set(url_key, records.PASS_RECORD, self.hit_for_pass_s)
                if fill.lock_key != url_key:  # else the mark replaced the fill marker
                    self.store.release_lock(fill.lock_key, fill.lock)
            else:
                self.store.release_lock(fill.lock_key, fill.lock)
        except StoreUnavailable as e:
            self.health.failed(e)
        fill.lock = None

    def _tee(self, body, announced: int | None, cap: int, pending: "_Pending") -> Iterator[bytes]:
        """Stream ``body`` to the client, keeping a copy up to ``cap``; commit when intact."""
        def on_end(copy: list[bytes] | None, size: int, intact: bool) -> None:
            if copy is not None and intact and (announced is None or announced == size):
                self._later(self._commit, pending, copy, size)
            elif copy is not None:
                self._pass(pending.fill, "aborted")

        return tee(body, cap, on_end, lambda: self._pass(pending.fill, "too-large"))

    def _commit(self, p: "_Pending", copy: list[bytes], size: int) -> None:
        """Write the chunks, then the record that points to them (then release the fill lock)."""
        fill = p.fill
        h = fill.h
        now = time.time()
        try:
            ttl_s = self._store_ttl(p.facts, now)
            if ttl_s <= 0:
                self._pass(fill, "expired")
                return
            body = b"".join(copy)
            version = p.version
            if size <= INLINE_MAX_BYTES:
                obj = StoredObject(p.status, p.reason, p.headers, p.facts, now, fill.url, p.tags, False, body, version, 0,
                                   size, now + ttl_s)
            else:
                n = (size + CHUNK_BYTES - 1) // CHUNK_BYTES
                for i in range(n):
                    self.store.set(keys.chunk_key(h, version, i), body[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES], ttl_s + 1.0)
                obj = StoredObject(p.status, p.reason, p.headers, p.facts, now, fill.url, p.tags, False, None, version, n,
                                   size, now + ttl_s)
            url_key = keys.url_key(h)
            record = obj.encode()
            marker = fill.lock is not None and fill.lock_key == url_key
            if p.secondary is None:
                self.store.set(url_key, record, ttl_s)  # replaces our fill marker, if any: the release
            else:
                etag = p.facts.etag if p.status == 200 and validators.listable(p.facts.etag) else None
                noted = False
                if marker:
                    # the URL key holds our fill marker, so no index: the variant first, then the index
                    # in place of the marker (waiters that see the index find the variant); the index
                    # carries the variant's entity tag (edge.cache.validators)
                    generation = self.tokens.next()
                    tags = ((etag, keys.variant_key(h, generation, p.secondary), now),) if etag is not None else ()
                    new = VaryIndex(p.names, generation, 0.0, tags)
                    self._put_variant(h, generation, p, record, ttl_s)
                    noted = self.store.cas(url_key, fill.lock.encode(), new.encode(), self.max_ttl_s)
                    if not noted:
                        # the marker expired and something else is there now: join (or replace) it
                        generation = self._generation(url_key, p.names)
                        if generation != new.generation:
                            self._put_variant(h, generation, p, record, ttl_s)
                else:
                    generation = self._generation(url_key, p.names)
                    self._put_variant(h, generation, p, record, ttl_s)
                if etag is not None and not noted:
                    self._note_validator(h, generation, etag, keys.variant_key(h, generation, p.secondary), now)
            self.metrics.incr("cache.stored")
            if fill.lock is not None:
                if not marker:
                    self.store.release_lock(fill.lock_key, fill.lock)
                fill.lock = None
        except StoreUnavailable as e:
            self.health.failed(e)
            self._release_fill(fill)
        except Exception:  # a bug must not kill the worker's hub; the client already has its answer
            log.exception("storing %s failed", fill.url)
            self.metrics.incr("cache.store_error")
            self._release_fill(fill)

    def _put_variant(self, h: str, generation: str, p: "_Pending", record: bytes, ttl_s: float) -> None:
        """One variant under its secondary key, and a copy under its language key when it has
        one (``Cache._by_language``). Each key holds a whole record on its own, written by
        plain sets: a concurrent writer replaces one with another whole record (the language
        key with a variant in that same language, the key says so), the Vary index is not
        touched (no cas contention, no format change), and a new generation or a URL purge
        makes both unreachable at once. A body in chunks is shared (its version's keys)."""
        self.store.set(keys.variant_key(h, generation, p.secondary), record, ttl_s)
        if p.language is not None:
            self.store.set(keys.variant_key(h, generation, p.language), record, ttl_s)

    def _note_validator(self, h: str, generation: str, etag: str, record_key: str, stored_at: float) -> None:
        """List a stored variant's entity tag for the Vary misses of its URL (``edge.cache.validators``):
        a compare-and-set, tried a few times; a note lost to concurrent writers costs a later
        full response, never a wrong one (each use checks the record itself)."""
        if not validators.listable(etag):
            return
        key = keys.validators_key(h, generation)
        try:
            for _ in range(3):
                raw = self.store.get(key)
                new = validators.noted(validators.decode(raw), etag, record_key, stored_at)
                if new is None or self.store.cas(key, raw, validators.encode(new), self.max_ttl_s):
                    return
        except StoreUnavailable as e:
            self.health.failed(e)  # the object itself is stored: only the hint is missing

    def _release_fill(self, fill: Fill) -> None:
        """Give the fill lock back: waiters find what was stored, or go to the backend now
        rather than at the end of their wait."""
        if fill.lock is None:
            return
        try:
            self.store.release_lock(fill.lock_key, fill.lock)
        except StoreUnavailable:
            pass  # the store is down: the lock expires with its TTL (coalesce_wait + 1 s)
        fill.lock = None

    def _generation(self, url_key: str, names: tuple[str, ...]) -> str:
        """The generation variants of these ``Vary`` names are stored under (a new index if needed)."""
        for _ in range(5):
            raw = self.store.get(url_key)
            rec = records.decode(raw)
            if isinstance(rec, VaryIndex) and rec.names == names:
                return rec.generation
            # no index, another kind of record, or other Vary names: a new generation replaces it
            new = VaryIndex(names, self.tokens.next())
            if self.store.cas(url_key, raw, new.encode(), self.max_ttl_s):
                return new.generation
        return new.generation

    def _store_ttl(self, facts, now: float) -> float:
        """How long the store keeps an object: its remaining freshness plus the stale window, within max_ttl."""
        remaining = facts.freshness_lifetime - policy.current_age(facts, now)
        keep = max(self.keep_stale_s, facts.stale_while_revalidate_s or 0, facts.stale_if_error_s or 0,
                   self.serve_stale_s)
        return min(self.max_ttl_s, max(remaining, 0.0) + keep)

    # ------------------------------------------------------------------ invalidation

    def _post_tap(self, ctx, rc: RouteCache):
        """A POST invalidates its target (RFC 9111 §4.4), then its answer may be stored as the
        target's GET response (RFC 9110 §9.3.3: "A cached POST response can be reused to
        satisfy a later GET or HEAD request", ``policy.storable``'s ``post_target``). The
        invalidation comes first, so a stored response is never older than the POST that
        changed the resource. The key is the target URI's (the route's query rules applied,
        as for a GET); the request body is never part of it. Only an answer with a
        Content-Location field goes to the store tap, so other POSTs cost what they did."""
        invalidate = self._invalidation_tap(ctx, rc)
        request_time = time.time()

        def tap(up, out_headers):
            out_headers, body = invalidate(up, out_headers)
            if not _has_content_location(out_headers):
                return out_headers, body
            url = keys.cache_url(ctx.scheme, ctx.host, ctx.path, ctx.query, rc.keys)
            store = self._store_tap(ctx, rc, Fill(keys.digest(url), url, request_time), "method")
            out = store(up, out_headers)
            tap.variants = getattr(store, "variants", None)  # the relay tees the encoded stream into it
            return out

        tap.variants = None
        return tap

    def _invalidation_tap(self, ctx, rc: RouteCache):
        """RFC 9111 §4.4: unsafe methods invalidate the target URI (and Location/Content-Location)."""
        uri = keys.cache_url(ctx.scheme, ctx.host, ctx.path, ctx.query)

        def tap(up, out_headers):
            targets = policy.invalidation_targets(ctx.method, up.status, uri, out_headers)
            for target in targets:
                parts = urlsplit(target)
                url = keys.cache_url(parts.scheme, parts.netloc, parts.path or "/", parts.query, rc.keys)
                try:
                    self.store.delete(keys.url_key(keys.digest(url)))
                    self.metrics.incr("cache.invalidated")
                except StoreUnavailable as e:
                    self.health.failed(e)
                    break
            return out_headers, up.body

        return tap


class RevalidationFailed(UpstreamError):
    """A stale must-revalidate (proxy-revalidate, s-maxage) response could not be validated:
    RFC 9111 §5.2.2.2 "if a cache is disconnected, the cache MUST generate an error message
    rather than reuse the stale response. The generated status code SHOULD be 504 (Gateway
    Timeout) unless another error status code is more applicable"."""

    status = 504
    metric = "revalidation_failed"
    public = "gateway timeout (the stored response must be revalidated)"


class CacheBodyLost(EdgeError):
    """A stored body chunk vanished while it was being served (the reply is cut short)."""

    status = 502
    metric = "cache_body_lost"
    public = "stored response lost"


# responses refused because of this request, not the URL: no hit-for-pass mark
_REQUEST_REASONS = frozenset({"method", "request-no-store", "authorization", "aborted"})


@dataclass(slots=True)
class _Pending:
    fill: Fill
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    facts: Any
    tags: tuple[str, ...]
    names: tuple[str, ...]
    secondary: str | None
    version: str              # the body's token: its chunks and encoded variants (edge.cache.variants) go under it
    language: str | None = None   # its language key (policy.variant_language_key): a copy is stored there too


class _Combined:
    """A stored partial and the origin's missing bytes as one complete 200 (RFC 9111 §3.4),
    shaped like the backend's answer for ``relay`` and the store tap; the rest (server,
    trailers) is the origin's answer's."""

    __slots__ = ("up", "status", "reason", "headers", "body", "length")

    def __init__(self, up, length: int, body: Iterator[bytes]) -> None:
        self.up = up
        self.status = 200
        self.reason = "OK"
        self.headers = up.headers
        self.body = body
        self.length = length

    def __getattr__(self, name: str):
        return getattr(self.up, name)

    def close(self) -> None:
        self.body.close()


def _concat(parts, up) -> Iterator[bytes]:
    """The pieces of a combined body in order (bytes or iterators); the origin's answer is
    released however the stream ends."""
    try:
        for part in parts:
            if isinstance(part, bytes):
                if part:
                    yield part
            else:
                yield from part
    finally:
        for part in parts:
            close = getattr(part, "close", None)
            if close is not None:
                close()
        up.close()


def _in_hub(fn, *args) -> None:
    """Run ``fn(*args)`` in the worker's hub once the running greenlet yields (it must not block)."""
    gevent.get_hub().loop.run_callback(fn, *args)


def _strip(headers, names: frozenset[str]):
    return [(n, v) for n, v in headers if n.lower() not in names] if names else headers


def _drain(up) -> None:
    if up.body is not None:
        for _ in up.body:
            pass


def _has_conditional(headers) -> bool:
    for n, _ in headers:
        if n[:1] in "iI":   # a hit scans every request field: skip the lower() of the others
            ln = n.lower()
            if ln.startswith("if-") and ln != "if-range":
                return True
    return False


def _has_content_location(headers) -> bool:
    for n, _ in headers:
        if n[:1] in "cC" and n.lower() == "content-location":
            return True
    return False


def _has_authorization(headers) -> bool:
    for n, _ in headers:
        if n[:1] in "aA" and n.lower() == "authorization":
            return True
    return False


def _coalescable(headers) -> bool:
    """A plain GET: no credentials, validators or ranges of its own."""
    for n, _ in headers:
        ln = n.lower()
        if ln in _CONDITIONAL or ln == "authorization":
            return False
    return True


def _only_if_cached(headers) -> bool:
    for n, v in headers:
        if n[:1] in "cC" and n.lower() == "cache-control" and "only-if-cached" in v.lower():
            return True
    return False


def _has_surrogate_field(headers) -> bool:
    """A Surrogate-Key or Cache-Tag field, even an empty one (it is stripped all the same)."""
    for n, _ in headers:
        if n[:1] in "sScC" and n.lower() in _SURROGATE:
            return True
    return False


def _surrogate_keys(headers) -> tuple[str, ...]:
    """Purge tags: ``Surrogate-Key`` (space-separated) and ``Cache-Tag`` (comma-separated)."""
    tags: list[str] = []
    for n, v in headers:
        if n[:1] not in "sScC":  # every miss scans its response head: skip the lower() of the others
            continue
        ln = n.lower()
        if ln == "surrogate-key":
            tags.extend(v.split())
        elif ln == "cache-tag":
            tags.extend(t.strip() for t in v.split(",") if t.strip())
    return tuple(dict.fromkeys(tags))


# ---------------------------------------------------------------------------------------- building


def route_cache(cc, rcc) -> RouteCache:
    """Merge a route's ``cache`` settings over the ``cache`` section."""
    ignore = rcc.ignore_params if rcc.ignore_params is not None else cc.ignore_params
    sort = rcc.sort_query if rcc.sort_query is not None else cc.sort_query
    own = (cc.targeted_field.lower(),) if cc.targeted_field else ()
    settings = policy.PolicySettings(
        heuristic_fraction=cc.heuristic_fraction,
        heuristic_max_s=cc.heuristic_max,
        # RFC 9213 §2.2: the most specific target first: edge's own field, then CDN-Cache-Control
        targeted_fields=own + ("cdn-cache-control",),
        strip_targeted=own,
        forced_ttl_s=rcc.force_ttl,
        set_cookie=rcc.set_cookie or cc.set_cookie,
        serve_stale_on_error_s=rcc.serve_stale_on_error if rcc.serve_stale_on_error is not None else cc.serve_stale_on_error,
    )
    return RouteCache(
        keys=KeyRules(sort, frozenset(ignore)),
        settings=settings,
        max_object_size=rcc.max_object_size or cc.max_object_size,
        strip_fields=frozenset(policy.downstream_strip(settings)),
        reuse_post=rcc.reuse_post_responses if rcc.reuse_post_responses is not None else cc.reuse_post_responses,
    )


def cache_store_config(cfg):
    """The store settings the cache uses (also ``python -m edge purge``'s).

    ``cache.store`` when given. Otherwise a remote main store is shared as it is, but a
    ``local`` one gets a sibling LMDB environment (``<path>-cache``, same size bound): the
    local store evicts the entries that expire soonest when it is full, so cached objects
    (long TTLs, large) in the same environment would push out the rate-limit states
    (short TTLs) first.
    """
    if cfg.cache.store is not None:
        return cfg.cache.store
    main = cfg.store
    if main.backend != "local":
        return main
    from edge.store.local import default_path

    return main.model_copy(update={"path": (main.path or default_path(main.key_prefix, max_bytes=main.max_bytes)) + "-cache"})


def build_cache(cfg, routes, store, metrics) -> Cache | None:
    """The worker's cache, or None when no forwarding route caches."""
    from edge.routing import Action

    cc = cfg.cache
    per_route: list[RouteCache | None] = []
    for route in routes.routes:
        rcc = route.config.cache
        enabled = rcc.enabled if rcc.enabled is not None else cc.enabled
        per_route.append(route_cache(cc, rcc) if enabled and route.action is Action.FORWARD else None)
    if not any(per_route):
        return None
    owns = False
    scfg = cache_store_config(cfg)
    if scfg != cfg.store:  # the same settings: the same store, opened once
        from edge.store import build_store

        store = build_store(scfg)
        owns = True
    return Cache(cc, per_route, store, metrics, owns_store=owns)
