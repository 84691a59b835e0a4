"""The entity tags of a URL's stored variants: what a Vary miss asks the origin about, and
which stored variant the origin's 304 selects (pure: no I/O, no clock).

Theory of operation
-------------------
RFC 9111 §4.1: "If no stored response matches, the cache cannot satisfy the presented
request. Typically, the request is forwarded to the origin server, potentially with
preconditions added to describe what responses the cache has already stored (Section
4.3)." §4.3.1 has those preconditions name the stored responses' entity tags, and §4.3.4
says which stored responses a 304 then refreshes: the ones with its strong validator, or
the most recent one with its weak validator.

So for every URL whose response varies, the cache keeps a short list (``Known``) of the
entity tags of its stored variants and the record key each lives under: the variant a Vary
index is created with is noted in the index itself (``records.VaryIndex.tags``, written
anyway, so the first miss of a URL costs no extra write), later ones in a store key of
their own beside the variants (``edge.cache.keys.validators_key``, under the index's
generation, so a URL purge or a new generation drops it with the variants); ``combined``
joins the two. A request whose
own variant is missing then goes to the origin with ``If-None-Match`` listing them
(``if_none_match``). When the origin answers 304 with one of them (``selected``), the
representation it chose for this request is one edge already holds: that variant is
refreshed and served, and also stored for this request's Vary values. The origin sends the
head only, never the body a second time.

The list is a hint, checked at every use: a listed record may have expired, been
replaced or purged since, and the 304's validator is compared again with the record
itself (``edge.cache.policy.validates``); when nothing stored fits, edge asks again
without the precondition. Two writers noting a tag at once may lose one note (the store
write is a compare-and-set, retried a few times): that costs a later full response,
never a wrong one. Only syntactically valid entity-tags of complete (200) responses are
listed, at most ``MAX_KNOWN`` (the most recent), each at most ``MAX_ETAG_CHARS`` long, so
the request field stays short.
"""

from __future__ import annotations

import marshal
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from edge.cache.policy import header_first, strong_match, weak_match

FORMAT = 1
#: variants listed per URL (the most recently stored)
MAX_KNOWN = 8
#: longer entity-tags are not listed (an If-None-Match of MAX_KNOWN of them stays a few KiB at most)
MAX_ETAG_CHARS = 256

# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; opaque-tag = DQUOTE *etagc DQUOTE;
# etagc = %x21 / %x23-7E / obs-text
_ENTITY_TAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')


@dataclass(frozen=True, slots=True)
class Known:
    """One stored variant's entity tag and the record key it is stored under."""

    etag: str
    record_key: str
    stored_at: float


def listable(etag: str | None) -> bool:
    """May this stored ETag value be sent in an If-None-Match (a valid entity-tag, not too long)?"""
    return etag is not None and len(etag) <= MAX_ETAG_CHARS and _ENTITY_TAG.fullmatch(etag) is not None


def encode(known: Iterable[Known]) -> bytes:
    return marshal.dumps((FORMAT, tuple((k.etag, k.record_key, k.stored_at) for k in known)))


def decode(raw: bytes | None) -> tuple[Known, ...]:
    """The list in ``raw``; empty when absent or unreadable (a hint: never an error)."""
    if raw is None:
        return ()
    try:
        t = marshal.loads(raw)
        if type(t) is not tuple or len(t) != 2 or t[0] != FORMAT:
            return ()
        return tuple(Known(str(e), str(k), float(s)) for e, k, s in t[1])
    except (ValueError, EOFError, TypeError):
        return ()


def noted(known: Sequence[Known], etag: str, record_key: str, stored_at: float) -> tuple[Known, ...] | None:
    """``known`` with the variant at ``record_key`` now holding ``etag`` (newest last, at most
    ``MAX_KNOWN``), or None when there is nothing to write (it is listed so already, or the
    tag cannot be listed)."""
    if not listable(etag):
        return None
    for k in known:
        if k.record_key == record_key and k.etag == etag:
            return None
    kept = [k for k in known if k.record_key != record_key]
    kept.append(Known(etag, record_key, stored_at))
    return tuple(kept[-MAX_KNOWN:])


def combined(index_tags: Iterable[tuple[str, str, float]], listed: Sequence[Known]) -> tuple[Known, ...]:
    """The tags written with the Vary index (its first variant) and those listed since, one per
    record key (the most recently stored wins: a record replaced since holds the newer tag),
    oldest first."""
    latest: dict[str, Known] = {}
    for k in (*(Known(e, key, at) for e, key, at in index_tags), *listed):
        seen = latest.get(k.record_key)
        if seen is None or k.stored_at >= seen.stored_at:
            latest[k.record_key] = k
    return tuple(sorted(latest.values(), key=lambda k: k.stored_at))


def if_none_match(known: Sequence[Known]) -> str | None:
    """The If-None-Match value naming every listed tag once, newest first (None: none)."""
    tags: list[str] = []
    for k in reversed(known):
        if k.etag not in tags:
            tags.append(k.etag)
    return ", ".join(tags) if tags else None


def selected(fresh_headers, known: Sequence[Known]) -> list[Known]:
    """The listed variants a 304 with ``fresh_headers`` identifies for update (RFC 9111 §4.3.4),
    the most recent first.

    §4.3.4: "If the new response contains one or more strong validators ..., then each of
    those strong validators identifies a selected representation for update. All the stored
    responses with one of those same strong validators are identified for update. ... If the
    new response contains no strong validators but does contain one or more weak validators,
    and those validators correspond to one of the cache's stored responses, then the most
    recent of those matching stored responses is identified for update." A 304 without an
    entity tag names none of them: edge's request listed several (the rule for a response
    without validators needs a single stored response).
    """
    etag = header_first(fresh_headers, "etag")
    if etag is None:
        return []
    etag = etag.strip()
    newest_first = sorted(known, key=lambda k: k.stored_at, reverse=True)
    if not etag.startswith("W/"):
        return [k for k in newest_first if strong_match(k.etag, etag)]
    for k in newest_first:
        if weak_match(k.etag, etag):
            return [k]
    return []
