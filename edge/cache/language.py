"""Accept-Language and Content-Language for the shared cache (pure: no I/O, no clock; issue 10).

Theory of operation
-------------------
A response with ``Vary: Accept-Language`` is stored under the request's normalised
``Accept-Language`` (RFC 9111 §4.1, ``edge.cache.policy.secondary_key``). Browsers spell
one preference in many ways, so this module gives the cache two things:

1. **One canonical form per meaning** (``canonical``). RFC 9111 §4.1 lets a cache match
   two requests whose selecting fields differ by "normalizing both header field values
   in a way that is known to have identical semantics, according to the header field's
   specification (e.g., reordering field values when order is not significant;
   case-normalization, where values are defined to be case-insensitive)". The field's
   specification is RFC 9110 §12.5.4 (``#( language-range [ weight ] )``, the range from
   RFC 4647 §2.1) with the weights of §12.4.2. The canonical form lower-cases the ranges
   (RFC 4647 §2.1: "matching ... is case-insensitive"), reads each weight with the one
   qvalue parser (``edge.compress.negotiate.parse_qvalue``) and writes it back in its
   shortest form (``q=1`` left out, ``0.50`` as ``0.5``), then orders the members by
   weight, highest first, and by range among equal weights. ``q=0`` members are kept:
   they exclude a language (§12.4.2 "a value of 0 means 'not acceptable'"), so
   ``*, fr;q=0`` and ``*`` stay different keys.

   Is the order of equally weighted ranges part of the meaning? RFC 4647 §2.3 reads a
   plain list (``en, fr``) as "in descending order of priority", and some origins break
   ties by position; HTTP does not: RFC 9110 §12.4.2 states preference only through the
   weight ("0.001 is the least preferred and 1 is the most preferred"; no weight means
   1), and §12.5.4 leaves the matching scheme to the server. Edge follows HTTP, the
   field's own specification: ``en, de`` and ``de, en`` say "English and German, equally
   preferred", and share one stored response. That is safe whichever way the origin
   breaks the tie: the response it chose for one of them is in a language the other
   request weights exactly as highly (every (range, weight) pair is the same), so no
   client is ever served a language it ranked lower or excluded. What cannot be read
   with certainty is left as received (only lower-cased, by the generic rule): a member
   outside the grammar, a parameter other than ``q``, an invalid weight, or a range
   listed twice (``en, en;q=0``: which one counts is not specified), so such values
   only match their own spelling.

2. **The single language a request prefers most** (``preferred_range``), for choosing a
   stored variant by its ``Content-Language`` when the request's exact spelling has none
   (proactive negotiation done by the cache, RFC 9110 §12.1, with what the origin already
   said: this variant is in that language, RFC 9110 §8.5). It is the one range whose
   weight is strictly the highest (and above 0): ``fr;q=0.5, de`` prefers ``de``;
   ``en, de`` prefers neither (the origin's tie-break is unknown). ``*`` is no language
   (any language is fine: the origin's default is what such a client gets, so edge asks
   the origin), nor is a request without Accept-Language (§12.5.4: it "implies that the
   user agent will accept any language").

   A stored variant is chosen only when its ``Content-Language`` is exactly that range
   (case-insensitive), not by RFC 4647 §3.3.1 basic filtering. Filtering lets ``de``
   select a ``de-CH`` representation, but an origin that holds ``de-CH`` may hold plain
   ``de`` as well and would serve that; and ``de-CH`` falling back to ``de`` is RFC
   4647 §3.4 lookup's truncation, which the origin may not do. Only equality is the
   answer any origin would give. The ``q=0`` ranges still count: if one of them would
   filter the preferred tag (``de-ch, de;q=0``: is Swiss German excluded or not?), no
   variant is chosen; ``*;q=0`` excludes only what no listed range matches (RFC 4647
   §3.3.1 on HTTP's ``*``), so ``de, *;q=0`` still prefers ``de``. A ``Content-Language`` listing several languages (content for
   several audiences, §8.5) is never chosen this way.
"""

from __future__ import annotations

import re
from typing import Iterable

from edge.compress.negotiate import parse_qvalue

# RFC 4647 §2.1: language-range = (1*8ALPHA *("-" 1*8alphanum)) / "*" (matched lower-cased).
# RFC 5646 language tags (Content-Language, RFC 9110 §8.5.1) fit the same shape: a primary
# subtag of letters and subtags of letters and digits, 1 to 8 long.
_RANGE_RE = re.compile(r"\*|[a-z]{1,8}(?:-[a-z0-9]{1,8})*")
_TAG_RE = re.compile(r"[a-z]{1,8}(?:-[a-z0-9]{1,8})*")

Preferences = tuple[tuple[str, float], ...]   # (lower-cased range, weight), as listed


def parse(values: Iterable[str]) -> Preferences | None:
    """The ``(range, weight)`` members of every Accept-Language line (RFC 9110 §12.5.4),
    or None when one of them is not ``language-range [weight]``: its meaning is unknown.

    Lines combine as one list (RFC 9110 §5.3), empty members are ignored (§5.6.1); the
    weight is ``q`` (case-insensitive), optional whitespace around ``;`` and ``=``
    tolerated as for Accept-Encoding (``edge.compress.negotiate``)."""
    out: list[tuple[str, float]] = []
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            name, sep, param = member.partition(";")
            rng = name.rstrip(" \t").lower()
            if not _RANGE_RE.fullmatch(rng):
                return None
            q: float | None = 1.0
            if sep:
                key, eq, val = param.partition("=")
                if not eq or key.strip(" \t").lower() != "q":
                    return None   # §12.5.4 has no other parameter: unknown meaning
                q = parse_qvalue(val.strip(" \t"))
                if q is None:
                    return None
            out.append((rng, q))
    return tuple(out)


def _weight_text(q: float) -> str:
    # §12.4.2: at most three decimals; the shortest spelling of the same number
    return f"{q:.3f}".rstrip("0").rstrip(".")


def canonical(values: Iterable[str]) -> str | None:
    """The canonical Accept-Language of these lines (see the module docstring), or None
    when it cannot be read with certainty (the caller keeps the received order)."""
    prefs = parse(values)
    if prefs is None:
        return None
    ranges = [r for r, _ in prefs]
    if len(set(ranges)) != len(ranges):
        return None
    ordered = sorted(prefs, key=lambda p: (-p[1], p[0]))
    return ",".join(r if q == 1.0 else f"{r};q={_weight_text(q)}" for r, q in ordered)


def _filters(rng: str, tag: str) -> bool:
    """RFC 4647 §3.3.1 basic filtering of a range other than "*": "A language range matches a
    particular language tag if (in a case-insensitive comparison) it exactly equals the tag,
    or if it exactly equals a prefix of the tag such that the first character following the
    prefix is '-'"."""
    return tag == rng or tag.startswith(rng + "-")


def preferred_range(values: Iterable[str]) -> str | None:
    """The one language range (lower case) these Accept-Language lines prefer over every
    other, usable to choose a stored variant by its Content-Language; None when there is
    none (see the module docstring: ties, ``*``, exclusions that reach it, unreadable)."""
    prefs = parse(values)
    if not prefs:
        return None
    ranges = [r for r, _ in prefs]
    if len(set(ranges)) != len(ranges):
        return None
    best, best_q = prefs[0]
    tie = False
    for rng, q in prefs[1:]:
        if q > best_q:
            best, best_q, tie = rng, q, False
        elif q == best_q:
            tie = True
    if tie or best_q <= 0.0 or best == "*":
        return None
    for rng, q in prefs:
        # RFC 4647 §3.3.1: "HTTP/1.1 [RFC2616] specifies that the range "*" matches only
        # languages not matched by any other range within an "Accept-Language" header": a
        # "*;q=0" never excludes the preferred range, which is listed
        if q == 0.0 and rng != "*" and _filters(rng, best):
            return None
    return best


def content_language(values: list[str]) -> str | None:
    """The one language tag (lower case) of a response's Content-Language lines (RFC 9110
    §8.5), or None: absent, several languages, several lines, or not a language tag."""
    if len(values) != 1:
        return None
    tag = values[0].strip(" \t").lower()
    return tag if _TAG_RE.fullmatch(tag) else None
