"""Pure HTTP caching policy: what a shared cache may store, serve, revalidate and invalidate (issue 10).

Theory of operation. Nothing here does I/O or reads the clock: every time is a
parameter (seconds since the epoch, float). The cache (``edge.cache.cache``) calls
these functions at four moments:

1. A response arrives from the origin: ``storable()`` says whether it may be stored
   (RFC 9111 §3; a POST's answer as its target's GET response, RFC 9110 §9.3.3,
   ``content_location_is_target()``); ``headers_to_store()`` gives the header fields to keep (§3.1);
   ``response_facts()`` computes once the numbers and flags needed later
   (``StoredFacts``: freshness lifetime, corrected initial age, validators, the
   directives that matter) so that a hit never parses a header again;
   ``worth_storing()`` skips a storable response that could never be served.
2. A request arrives and a stored response was found for its key (and secondary key,
   ``secondary_key()``, §4.1; or, when that found nothing, a variant in the request's
   preferred language: ``language_selection()`` and ``variant_language_key()``, with the
   Accept-Language rules in ``edge.cache.language``): ``lookup()`` returns a ``Decision``: ``Fresh``
   (serve it), ``ServeStale`` (serve it stale, possibly revalidating in the
   background: RFC 5861), ``Revalidate`` (send a conditional request: §4.3.1),
   ``Fetch`` (forward unconditionally) or ``OnlyIfCachedMiss`` (504, §5.2.1.7).
   Before serving, ``client_conditional()`` answers the client's own conditional
   request (RFC 9110 §13.2.2; a 304 carries ``not_modified_headers()``) and
   ``ranges()`` its Range (RFC 9110 §14).
3. The origin answers a revalidation: ``select_by_validator()`` picks the stored
   responses a 304 updates (§4.3.4; ``validates()`` for the one response edge validated),
   ``merge_304()`` updates their header fields (§3.2), ``head_updates()`` says whether a
   200 to a HEAD updates the stored GET or makes it stale (§4.3.5); an error or no answer
   goes to ``stale_on_error()`` (RFC 5861 §4, §4.2.4).
4. An unsafe request got a non-error answer: ``invalidation_targets()`` (§4.4).

``cache_status()`` and ``age_header()`` build the Cache-Status (RFC 9211) and Age
(§5.1) field values of a response served by edge.

Header fields are sequences of ``(name, value)`` str pairs as received (any case,
repeated lines kept). Cache-Control is parsed by ``parse_cache_control`` (below),
tolerant as §4.2.1 and §5.2 ask; a targeted field (RFC 9213, e.g.
``CDN-Cache-Control``) replaces Cache-Control and Expires for edge when it holds
a valid non-empty Dictionary.

Choices left open by the RFCs (also in docs/cache.md, "How edge decides"):
- a directive repeated with different values (``max-age=5, max-age=10``): the
  response is treated as stale (§4.2.1 "either the first occurrence should be used
  or the response should be considered stale"): the most careful of the two, and
  a directive repeated with the same value is not a conflict;
- an invalid freshness value (``max-age=abc``, ``max-age=-1``): stale (§4.2.1
  "Caches are encouraged to consider responses that have invalid freshness
  information ... to be stale"); the response is still storable, so it can be
  revalidated;
- a Range with several ranges is answered with one part when only one is
  satisfiable and with the full 200 otherwise (RFC 9110 §14.2 "A server MAY ignore
  the Range header field"): no multipart/byteranges bodies are built;
- If-Match and If-Unmodified-Since in a request are "not applicable to a cache"
  (RFC 9111 §4.3.2): such a request is forwarded (``Fetch("request")``);
- Accept-Language ranges of equal weight may be reordered (§4.1; RFC 9110 §12.4.2 states
  preference by weight only), and a variant is chosen by language only for the request's
  single top range equal to its Content-Language (``edge.cache.language`` says why);
- a POST answer is reused for GET only with status 200 or 203 (RFC 9110 §8.7: a 2xx whose
  content is the target's representation).
"""

from __future__ import annotations

import calendar
import email.utils
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence, Union
from urllib.parse import urljoin, urlsplit

from edge.cache import language
from edge.fields import is_token
from edge.http import HOP_BY_HOP, connection_options

Headers = Sequence[tuple[str, str]]

# RFC 9111 §1.2.2: "If a cache receives a delta-seconds value greater than the greatest
# integer it can represent, or if any of its subsequent calculations overflows, the cache
# MUST consider the value to be 2147483648 (2^31) or the greatest positive integer it can
# conveniently represent."
DELTA_MAX = 2147483648

# RFC 9110 §15.1: "Responses with status codes that are defined as heuristically cacheable
# (e.g., 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, and 501 in this
# specification) can be reused by a cache with heuristic expiration".
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# Status codes whose caching requirements edge implements (RFC 9111 §5.2.2.3
# must-understand): the final codes of RFC 9110 §15 other than 304 (never stored as a
# response of its own); 206 as edge.cache.partial stores and combines it (§3.3, §3.4).
UNDERSTOOD_STATUSES = frozenset({
    200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416,
    417, 421, 422, 426, 500, 501, 502, 503, 504, 505,
})

# RFC 9111 §2: "most commonly, caches store the successful result of a retrieval request:
# i.e., a 200 (OK) response to a GET request". GET responses are stored; HEAD is answered
# from a stored GET (RFC 9110 §9.3.2); a POST response only as the GET response of its
# target URI, when RFC 9110 §9.3.3 allows (``storable(..., post_target=)``).
STORABLE_METHODS = frozenset({"GET"})

# RFC 9110 §8.7: "If Content-Location is included in a 2xx (Successful) response message and
# its value refers ... to a URI that is the same as the target URI, then the recipient MAY
# consider the content to be a current representation of that resource". Of the 2xx codes
# only these answer a GET with the representation itself: 201/202 describe the action's
# outcome, 204/205 carry no content, 206 is a part.
POST_REUSABLE_STATUSES = frozenset({200, 203})

# RFC 9110 §9.2.1: safe methods; RFC 9111 §4.4: "A cache MUST invalidate the target URI
# ... when it receives a non-error status code in response to an unsafe request method
# (including methods whose safety is unknown)."
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# RFC 5861 §4: "An error is any situation that would result in a 500, 502, 503, or 504
# HTTP response status code being returned."
ERROR_STATUSES = frozenset({500, 502, 503, 504})

# RFC 9111 §3.1: "Header fields that are specific to the proxy that a cache uses when
# forwarding a request MUST NOT be stored ... Effectively, this is limited to
# Proxy-Authenticate ..., Proxy-Authentication-Info ..., and Proxy-Authorization".
_NOT_STORED = HOP_BY_HOP | {"proxy-authenticate", "proxy-authentication-info", "proxy-authorization"}

# RFC 9111 §3.2: when updating stored header fields the cache excepts "The Content-Length
# header field" and "fields that are automatically processed and removed by the recipient"
# (Content-Range, the example the RFC gives), besides the fields excepted from storage
# (§3.1). Content-Encoding is kept as stored too: the stored bytes may be an encoding edge
# made (compression), and §3.2 names it: "Updating that stored metadata with a different
# Content-Encoding header field would be problematic" ("SHOULD limit such omission to
# those fields necessary to assure integrity of the stored response": Content-Type is
# updated, edge keeps the bytes as received, not a parse of them).
_NOT_UPDATED = _NOT_STORED | {"content-length", "content-range", "content-encoding", "transfer-encoding"}


# ---------------------------------------------------------------------------------------
# HTTP-date (RFC 9110 §5.6.7)
# ---------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
# RFC 9111 §4.2: "Although all date formats are specified to be case-sensitive, a cache
# recipient SHOULD match the field value case-insensitively" (names of days and months, GMT).
_IMF_RE = re.compile(r"[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT", re.IGNORECASE)
_RFC850_RE = re.compile(r"[A-Za-z]{6,9}, (\d{2})-([A-Za-z]{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT", re.IGNORECASE)
_ASCTIME_RE = re.compile(r"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})")


def parse_http_date(value: str) -> float | None:
    """Seconds since the epoch for an HTTP-date, or None when ``value`` is not one.

    RFC 9110 §5.6.7: "A recipient that parses a timestamp value in an HTTP header field
    MUST accept all three HTTP-date formats" (IMF-fixdate, rfc850-date, asctime-date).
    A two-digit rfc850 year is read in 1970-2069 (the RFC asks for "the most recent year
    in the past that had the same last two digits" when it looks 50 years ahead; this
    module has no clock, and the window gives that answer until 2019+50).
    """
    if len(value) > 64:
        return None   # no HTTP-date is that long; keeps attacker-sized values out of the memo
    return _parse_http_date(value)


@lru_cache(maxsize=1024)
def _parse_http_date(value: str) -> float | None:
    v = value.strip()
    m = _IMF_RE.fullmatch(v)
    if m:
        day, mon, year, hh, mm, ss = m.groups()
    else:
        m = _RFC850_RE.fullmatch(v)
        if m:
            day, mon, yy, hh, mm, ss = m.groups()
            year = str(1900 + int(yy) if int(yy) >= 70 else 2000 + int(yy))
        else:
            m = _ASCTIME_RE.fullmatch(v)
            if not m:
                return None
            mon, day, hh, mm, ss, year = m.groups()
    month = _MONTHS.get(mon.lower())
    d, h, mi, s = int(day), int(hh), int(mm), int(ss)
    if month is None or not (1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        return None
    try:
        return float(calendar.timegm((int(year), month, d, h, mi, min(s, 59), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def format_http_date(ts: float) -> str:
    """IMF-fixdate (RFC 9110 §5.6.7: "a sender MUST generate ... IMF-fixdate")."""
    return email.utils.formatdate(ts, usegmt=True)


# ---------------------------------------------------------------------------------------
# Cache-Control (RFC 9111 §5.2)
# ---------------------------------------------------------------------------------------

def parse_delta_seconds(value: str | None) -> int | None:
    """RFC 9111 §1.2.2 ``delta-seconds = 1*DIGIT``; None when invalid; capped at 2^31."""
    if value is None or not value or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return DELTA_MAX if n > DELTA_MAX else n


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control (or targeted) field: directive name (lower case) -> argument.

    ``directives`` keeps the first occurrence of each directive (§4.2.1), the argument
    unquoted (None when absent). ``conflicts`` names the directives that occurred more
    than once with different arguments. The properties read them the way §5.2 says; a
    delta-seconds property is None when absent and -1 when present but invalid or
    conflicting (the callers treat -1 as "stale").
    """

    directives: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))
    conflicts: frozenset[str] = frozenset()

    def __contains__(self, name: str) -> bool:
        return name in self.directives

    def __bool__(self) -> bool:
        return bool(self.directives)

    def delta(self, name: str) -> int | None:
        """A delta-seconds directive: None when absent, -1 when invalid or conflicting."""
        if name not in self.directives:
            return None
        if name in self.conflicts:
            # §4.2.1: "either the first occurrence should be used or the response should
            # be considered stale": edge considers it stale.
            return -1
        n = parse_delta_seconds(self.directives[name])
        return -1 if n is None else n

    def field_names(self, name: str) -> bool | tuple[str, ...]:
        """no-cache / private: False when absent, True when unqualified, else the field names."""
        if name not in self.directives:
            return False
        arg = self.directives[name]
        # §4.2.1: "If directives conflict ..., the most restrictive directive should be
        # honored": a repeated no-cache/private with different arguments is unqualified.
        if arg is None or name in self.conflicts:
            return True
        names = tuple(n.strip().lower() for n in arg.split(",") if n.strip())
        # §5.2.2.4 / §5.2.2.7: the qualified form lists field names; an empty list
        # ("no-cache=\"\"") restricts nothing beyond itself, read as unqualified (stricter).
        return names or True

    @property
    def max_age(self) -> int | None:
        return self.delta("max-age")

    @property
    def s_maxage(self) -> int | None:
        return self.delta("s-maxage")

    @property
    def no_store(self) -> bool:
        return "no-store" in self.directives

    @property
    def no_cache(self) -> bool | tuple[str, ...]:
        return self.field_names("no-cache")

    @property
    def private(self) -> bool | tuple[str, ...]:
        return self.field_names("private")

    @property
    def public(self) -> bool:
        return "public" in self.directives

    @property
    def must_revalidate(self) -> bool:
        return "must-revalidate" in self.directives

    @property
    def proxy_revalidate(self) -> bool:
        return "proxy-revalidate" in self.directives

    @property
    def no_transform(self) -> bool:
        return "no-transform" in self.directives

    @property
    def must_understand(self) -> bool:
        return "must-understand" in self.directives

    @property
    def only_if_cached(self) -> bool:
        return "only-if-cached" in self.directives

    @property
    def immutable(self) -> bool:
        return "immutable" in self.directives

    @property
    def min_fresh(self) -> int | None:
        return self.delta("min-fresh")

    @property
    def max_stale(self) -> int | None:
        """§5.2.1.2: None when absent; DELTA_MAX when present without a value ("willing to
        accept a stale response of any age"); -1 when its value is invalid."""
        if "max-stale" not in self.directives:
            return None
        if self.directives["max-stale"] is None:
            return DELTA_MAX
        return self.delta("max-stale")

    @property
    def stale_while_revalidate(self) -> int | None:
        return self.delta("stale-while-revalidate")

    @property
    def stale_if_error(self) -> int | None:
        return self.delta("stale-if-error")


EMPTY_CC = CacheControl()


def _split_directives(value: str) -> Iterable[tuple[str, str | None]]:
    """Yield (name, argument) from one Cache-Control field value: commas inside a
    quoted-string do not split, ``\\x`` in a quoted-string is ``x`` (RFC 9110 §5.6.4).

    §5.2: ``cache-directive = token [ "=" ( token / quoted-string ) ]`` has no whitespace
    around "=": ``max-age =60`` or ``max-age= 60`` keeps its name but its argument is
    marked invalid (a leading space), so a delta-seconds value there reads as invalid,
    hence stale (§4.2.1), while field-name lists are unaffected.
    """
    i, n = 0, len(value)
    while i < n:
        # skip OWS and empty list elements (RFC 9110 §5.6.1: "a recipient MUST accept
        # empty list elements")
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            return
        j = i
        while j < n and value[j] not in "=,":
            j += 1
        raw_name = value[i:j]
        name = raw_name.strip(" \t").lower()
        arg: str | None = None
        if j < n and value[j] == "=":
            j += 1
            spaced = raw_name[-1:] in (" ", "\t") or value[j:j + 1] in (" ", "\t")
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == '"':
                j += 1
                buf = []
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(value[j])
                    j += 1
                arg = "".join(buf)
                j += 1   # closing quote (or end of an unterminated string)
                while j < n and value[j] != ",":
                    j += 1   # junk after the quoted-string is ignored
            else:
                k = j
                while j < n and value[j] != ",":
                    j += 1
                arg = value[k:j].strip(" \t")
            if spaced:
                arg = " " + arg
        i = j + 1
        if name:
            yield name, arg


_MEMO_MAX_CHARS = 512


@lru_cache(maxsize=4096)
def _parse_cc_joined(joined: str) -> CacheControl:
    directives: dict[str, str | None] = {}
    conflicts: set[str] = set()
    for name, arg in _split_directives(joined):
        if name in directives:
            if directives[name] != arg:
                conflicts.add(name)
        else:
            directives[name] = arg
    if not directives:
        return EMPTY_CC
    return CacheControl(MappingProxyType(directives), frozenset(conflicts))


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Parse every Cache-Control field line of a message (RFC 9111 §5.2) into one value.

    §5.2: "Cache directives are identified by a token, to be compared case-insensitively,
    and have an optional argument that can use both token and quoted-string syntax. For
    the directives defined below that define arguments, recipients ought to accept both
    forms". Several field lines are one list (RFC 9110 §5.3). Never raises on any str;
    results are cached (values repeat from response to response).
    """
    if isinstance(values, str):
        values = (values,)
    joined = ",".join(values)
    if not joined:
        return EMPTY_CC
    # memoised only when short: values repeat, but an attacker's 8 KiB field must not
    # pin memory in the memo
    return _parse_cc_joined(joined) if len(joined) <= _MEMO_MAX_CHARS else _parse_cc_joined.__wrapped__(joined)


# ---------------------------------------------------------------------------------------
# Targeted cache control (RFC 9213): Structured Field Dictionaries (RFC 8941 §4.2.2)
# ---------------------------------------------------------------------------------------

_SF_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUM_RE = re.compile(r"-?\d{1,15}(\.\d{1,3})?")


class _SFError(ValueError):
    pass


def _sf_bare_item(s: str, i: int) -> tuple[object, int]:
    if i >= len(s):
        raise _SFError("empty item")
    c = s[i]
    if c == '"':
        buf, i = [], i + 1
        while i < len(s):
            ch = s[i]
            if ch == "\\":
                if i + 1 >= len(s) or s[i + 1] not in '"\\':
                    raise _SFError("bad escape")
                buf.append(s[i + 1])
                i += 2
            elif ch == '"':
                return "".join(buf), i + 1
            elif not (" " <= ch <= "~"):
                raise _SFError("bad string char")
            else:
                buf.append(ch)
                i += 1
        raise _SFError("unterminated string")
    if c == "?":
        if s[i + 1:i + 2] in ("0", "1"):
            return s[i + 1] == "1", i + 2
        raise _SFError("bad boolean")
    if c == ":":
        j = s.find(":", i + 1)
        if j < 0:
            raise _SFError("bad byte sequence")
        return s[i + 1:j], j + 1
    if c == "-" or c.isdigit():
        m = _SF_NUM_RE.match(s, i)
        if not m:
            raise _SFError("bad number")
        text = m.group(0)
        return (float(text) if "." in text else int(text)), m.end()
    m = _SF_TOKEN_RE.match(s, i)
    if m:
        return m.group(0), m.end()   # an sf-token reads as its text
    raise _SFError("bad item")


def _sf_params(s: str, i: int) -> int:
    # parameters are parsed (for validity) and ignored: RFC 9213 §2.2 "Parameters received
    # on cache directives are to be ignored, unless other handling is explicitly specified."
    while i < len(s) and s[i] == ";":
        i += 1
        while i < len(s) and s[i] == " ":
            i += 1
        m = _SF_KEY_RE.match(s, i)
        if not m:
            raise _SFError("bad parameter key")
        i = m.end()
        if i < len(s) and s[i] == "=":
            _, i = _sf_bare_item(s, i + 1)
    return i


def _sf_member(s: str, i: int) -> tuple[object, int]:
    if i < len(s) and s[i] == "(":
        items, i = [], i + 1
        while True:
            while i < len(s) and s[i] == " ":
                i += 1
            if i >= len(s):
                raise _SFError("unterminated inner list")
            if s[i] == ")":
                return tuple(items), _sf_params(s, i + 1)
            item, i = _sf_bare_item(s, i)
            i = _sf_params(s, i)
            items.append(item)
            if i < len(s) and s[i] not in " )":
                raise _SFError("bad inner list")
    item, i = _sf_bare_item(s, i)
    return item, _sf_params(s, i)


def parse_sf_dictionary(value: str) -> dict[str, object] | None:
    """RFC 8941 §4.2.2 Dictionary -> {key: value} (parameters dropped), None when invalid.

    A key without a value is True (§4.2.2: "a Boolean true value"); the last of a
    repeated key wins (§4.2.2: "the last instance of a key wins" ... as overwriting does).
    """
    s = value.strip(" \t")
    out: dict[str, object] = {}
    i = 0
    try:
        while i < len(s):
            m = _SF_KEY_RE.match(s, i)
            if not m:
                raise _SFError("bad key")
            key, i = m.group(0), m.end()
            if i < len(s) and s[i] == "=":
                member, i = _sf_member(s, i + 1)
            else:
                member, i = True, _sf_params(s, i)
            out[key] = member
            while i < len(s) and s[i] in " \t":
                i += 1
            if i >= len(s):
                break
            if s[i] != ",":
                raise _SFError("expected comma")
            i += 1
            while i < len(s) and s[i] in " \t":
                i += 1
            if i >= len(s):
                raise _SFError("trailing comma")
    except (_SFError, IndexError):
        return None
    return out


@lru_cache(maxsize=1024)
def _targeted_cc_memo(value: str) -> CacheControl | None:
    return _targeted_cc(value)


_DELTA_DIRECTIVES = frozenset({"max-age", "s-maxage", "min-fresh", "max-stale", "stale-while-revalidate",
                               "stale-if-error"})


def _targeted_cc(value: str) -> CacheControl | None:
    """A targeted field's value as a CacheControl, or None when empty or invalid.

    RFC 9213 §2.2: "If a targeted field in a given response is empty, or a parsing error is
    encountered, that field MUST be ignored by the cache". Dictionary values map onto the
    Cache-Control argument forms: true -> no argument; an integer -> delta-seconds (a
    negative or non-integer one is an invalid argument, hence stale, as in Cache-Control);
    a string or token -> the string; an inner list of strings -> comma-joined field names.
    §2.2: "Implementations SHOULD NOT consume values that violate these inferred
    constraints" (a decimal max-age): such a freshness directive makes the response stale,
    as an invalid Cache-Control one does, rather than being coerced.
    """
    d = parse_sf_dictionary(value)
    if not d:
        return None
    directives: dict[str, str | None] = {}
    for k, v in d.items():
        if v is True:
            directives[k] = None
        elif isinstance(v, bool):
            continue   # "?0": the directive is false, i.e. absent
        elif k in _DELTA_DIRECTIVES and not isinstance(v, int):
            # §2.2: "the max-age directive ... has an integer value": a String, Token or
            # Decimal there is not consumed; the directive stays, with an invalid value
            # (stale), rather than being coerced.
            directives[k] = "invalid"
        elif isinstance(v, int):
            directives[k] = str(v)
        elif isinstance(v, tuple):
            directives[k] = ", ".join(str(x) for x in v)
        else:
            directives[k] = str(v)
    return CacheControl(MappingProxyType(directives), frozenset())


# ---------------------------------------------------------------------------------------
# Settings and facts
# ---------------------------------------------------------------------------------------

SET_COOKIE_MODES = ("refuse", "strip", "store")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The per-route knobs of the policy (built by the cache from the ``cache`` config).

    - ``shared``: edge is a shared cache (RFC 9111 §1: s-maxage, private, Authorization).
    - ``heuristic_fraction`` / ``heuristic_max_s``: §4.2.2 "no more than some fraction of
      the interval since [Last-Modified]. A typical setting of this fraction might be 10%",
      capped.
    - ``targeted_fields``: RFC 9213 target list in precedence order, lower case (an
      edge-specific field first, then ``cdn-cache-control``); ``()`` turns it off.
    - ``strip_targeted``: targeted fields removed before the client (the edge-specific
      one; see ``downstream_strip()``).
    - ``default_ttl_s``: freshness lifetime used instead of the heuristic for responses
      without explicit expiration (None: the §4.2.2 heuristic).
    - ``forced_ttl_s``: freshness lifetime for every stored response of the route,
      replacing explicit and heuristic ones (an out-of-band contract with the origin,
      §4.2.4). no-store, private and no-cache are still honoured.
    - ``set_cookie``: responses with Set-Cookie are ``refuse``d (not stored, the
      default), stored with the field ``strip``ped, or ``store``d as they are.
    - ``serve_stale_on_error_s``: how long past its freshness a stored response may
      still be served when the origin is down or answers 500/502/503/504 (an
      out-of-band permission, §4.2.4), unless must-revalidate/no-cache forbids it.
    """

    shared: bool = True
    heuristic_fraction: float = 0.1
    heuristic_max_s: float = 86400.0
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)
    strip_targeted: tuple[str, ...] = ()
    default_ttl_s: float | None = None
    forced_ttl_s: float | None = None
    set_cookie: str = "refuse"
    serve_stale_on_error_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.heuristic_fraction <= 1.0:
            raise ValueError(f"heuristic_fraction: must be within 0-1 (got {self.heuristic_fraction})")
        for name in ("heuristic_max_s", "serve_stale_on_error_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)})")
        for name in ("default_ttl_s", "forced_ttl_s"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name}: must be >= 0 or None (got {v})")
        if self.set_cookie not in SET_COOKIE_MODES:
            raise ValueError(f"set_cookie: must be one of {', '.join(SET_COOKIE_MODES)} (got {self.set_cookie!r})")
        for name in ("targeted_fields", "strip_targeted"):
            for f in getattr(self, name):
                if not is_token(f):
                    raise ValueError(f"{name}: {f!r} is not a field name (RFC 9110 §5.1 token)")
        object.__setattr__(self, "targeted_fields", tuple(f.lower() for f in self.targeted_fields))
        object.__setattr__(self, "strip_targeted", tuple(f.lower() for f in self.strip_targeted))


DEFAULT_SETTINGS = PolicySettings()


@dataclass(frozen=True, slots=True)
class StoreVerdict:
    """``storable()``'s answer; ``reason`` is a short token for logs and Cache-Status detail."""

    ok: bool
    reason: str


_NO_METHOD = StoreVerdict(False, "method")
_EXPLICIT = StoreVerdict(True, "explicit")
_HEURISTIC = StoreVerdict(True, "heuristic")


@dataclass(frozen=True, slots=True)
class StoredFacts:
    """What the cache keeps beside a stored response to decide later without parsing.

    Plain values only (floats, ints, strs, bools, tuples, None): the cache serialises it.
    Times are seconds since the epoch. ``fresh_until`` is the instant the response stops
    being fresh (§4.2: fresh while ``freshness_lifetime > current_age``), i.e.
    ``response_time + freshness_lifetime - corrected_initial_age``.
    """

    status: int
    request_time: float
    response_time: float
    date_value: float              # Date, or response_time when absent/invalid (RFC 9110 §6.6.1)
    age_value: int                 # Age (§5.1), 0 when absent or invalid
    corrected_initial_age: float   # §4.2.3
    freshness_lifetime: float      # §4.2.1 (or heuristic §4.2.2, or settings)
    fresh_until: float
    heuristic: bool = False        # lifetime from §4.2.2 (or default_ttl_s)
    etag: str | None = None
    last_modified: str | None = None
    last_modified_ts: float | None = None
    no_cache: bool = False         # unqualified no-cache (§5.2.2.4): always revalidate
    must_revalidate: bool = False  # must-revalidate, or (shared) proxy-revalidate / s-maxage
    no_transform: bool = False     # §5.2.2.6: for compression
    public: bool = False
    immutable: bool = False
    stale_while_revalidate_s: int | None = None   # RFC 5861 §3
    stale_if_error_s: int | None = None           # RFC 5861 §4
    vary: tuple[str, ...] = ()     # lower-cased field names of Vary (§4.1); ("*",) never matches
    has_validator: bool = False

    @property
    def vary_star(self) -> bool:
        return "*" in self.vary


# Decisions ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fresh:
    """Serve the stored response: it is fresh (§4.2) and the request allows it."""

    age: float
    ttl: float   # remaining freshness (Cache-Status ttl)


@dataclass(frozen=True, slots=True)
class ServeStale:
    """Serve the stored response although stale: allowed by the client (max-stale), by
    the origin (stale-while-revalidate / stale-if-error, RFC 5861) or by the route's
    ``serve_stale_on_error_s``. ``revalidate_in_background``: start one revalidation."""

    age: float
    ttl: float   # negative: how long ago it went stale
    revalidate_in_background: bool
    reason: str  # "max-stale" | "stale-while-revalidate" | "stale-if-error"


@dataclass(frozen=True, slots=True)
class Revalidate:
    """Send the request with these conditional header fields (§4.3.1) and wait.

    The request's own If-None-Match / If-Modified-Since / If-Range are replaced by
    ``headers`` (they concern the client's copy, not edge's); the client's conditions are
    then answered from the updated stored response (``client_conditional``).
    ``reason`` is the Cache-Status ``fwd`` value: "stale" or "request"."""

    headers: tuple[tuple[str, str], ...]
    reason: str = "stale"
    age: float = 0.0
    ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Fetch:
    """Forward without using the stored response. ``reason`` is the Cache-Status ``fwd``
    value: "uri-miss", "vary-miss", "miss", "request", "method" or "bypass"."""

    reason: str


@dataclass(frozen=True, slots=True)
class OnlyIfCachedMiss:
    """§5.2.1.7: only-if-cached and nothing usable: "respond with ... a 504 (Gateway Timeout)"."""

    status: int = 504


Decision = Union[Fresh, ServeStale, Revalidate, Fetch, OnlyIfCachedMiss]


# ---------------------------------------------------------------------------------------
# Header helpers
# ---------------------------------------------------------------------------------------

def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of field ``name`` (lower case), in order."""
    return [v for k, v in headers if k.lower() == name]


def header_first(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _index(headers: Headers) -> dict[str, list[str]]:
    """Field name (lower case) -> its values in order: one pass over a response head, so
    the store path (``store_plan``) looks each field up without scanning again."""
    fields: dict[str, list[str]] = {}
    for k, v in headers:
        lk = k.lower()
        got = fields.get(lk)
        if got is None:
            fields[lk] = [v]
        else:
            got.append(v)
    return fields


def effective_cache_control(response_headers: Headers, settings: PolicySettings) -> tuple[CacheControl, bool]:
    """The directives that govern edge for this response and whether a targeted field gave them.

    RFC 9213 §2.1: "the cache MUST select the first (in target list order) field with a
    valid, non-empty value and use its value to determine the caching policy for the
    response, and it MUST ignore the Cache-Control and Expires header fields in that
    response, unless no valid, non-empty value is available from the listed header fields."
    """
    return _effective_cc(_index(response_headers), settings)


def _effective_cc(fields: dict[str, list[str]], settings: PolicySettings) -> tuple[CacheControl, bool]:
    for name in settings.targeted_fields:
        values = fields.get(name)
        if values:
            joined = ", ".join(values)
            cc = _targeted_cc_memo(joined) if len(joined) <= _MEMO_MAX_CHARS else _targeted_cc(joined)
            if cc is not None:
                return cc, True
    return parse_cache_control(fields.get("cache-control", ())), False


def request_cache_control(request_headers: Headers) -> CacheControl:
    """The request's directives; ``Pragma: no-cache`` counts as ``no-cache`` when the request
    has no Cache-Control (RFC 7234 §5.4: "When the Cache-Control header field is not present
    in a request, caches MUST consider the no-cache request pragma-directive as having the
    same effect as if "Cache-Control: no-cache" were present"; RFC 9111 §5.4 deprecates
    Pragma without removing this HTTP/1.0 compatibility)."""
    cc_values = header_values(request_headers, "cache-control")
    if cc_values:
        return parse_cache_control(cc_values)
    for v in header_values(request_headers, "pragma"):
        if any(p.strip().lower() == "no-cache" for p in v.split(",")):
            return _PRAGMA_NO_CACHE
    return EMPTY_CC


_PRAGMA_NO_CACHE = CacheControl(MappingProxyType({"no-cache": None}), frozenset())


# ---------------------------------------------------------------------------------------
# §3 storing
# ---------------------------------------------------------------------------------------

def storable(method: str, status: int, request_headers: Headers, response_headers: Headers,
             settings: PolicySettings = DEFAULT_SETTINGS, post_target: str | None = None) -> StoreVerdict:
    """May this response be stored (RFC 9111 §3, §3.5; RFC 9213)? See each rule below.

    ``post_target``: the absolute target URI of a POST, whose response may be stored as the
    GET response of that URI (``post_reusable``); without it a POST response is never stored."""
    fields = _index(response_headers)
    cc, targeted = _effective_cc(fields, settings)
    return _storable(method, status, request_headers, fields, cc, targeted, settings, post_target)


def content_location_is_target(target_uri: str, content_location: str) -> bool:
    """Does this Content-Location name the target URI itself (RFC 9110 §8.7, §9.3.3)?

    §8.7: "Content-Location = absolute-URI / partial-URI", resolved against the target URI
    ("its value refers (after conversion to absolute form) to a URI that is the same as the
    target URI"). Same means: the same origin (scheme and host case-insensitive, a default
    port the same as none: RFC 9110 §4.2.3), the same path (empty the same as "/") and the
    same query, compared as strings (no percent-decoding: a spelling edge does not know to
    be equivalent counts as another resource, so at worst a response is not stored). A
    value that is no URI (a fragment, whitespace, userinfo) names nothing.
    """
    v = content_location.strip(" \t")
    if not v or "#" in v or any(c <= " " or c >= "\x7f" for c in v):
        return False
    try:
        resolved = urljoin(target_uri, v)
        a, b = urlsplit(resolved), urlsplit(target_uri)
    except ValueError:   # e.g. an unclosed "[" of an IPv6 literal
        return False
    origin = _origin(resolved)
    if origin is None or origin != _origin(target_uri):
        return False
    # RFC 9110 §4.2.4: "A sender MUST NOT generate the userinfo subcomponent"
    if a.username is not None or a.password is not None:
        return False
    return (a.path or "/") == (b.path or "/") and a.query == b.query


def _post_reusable(target_uri: str, status: int, fields: dict[str, list[str]], cc: CacheControl, targeted: bool,
                   settings: PolicySettings) -> bool:
    # RFC 9110 §9.3.3: "Responses to POST requests are only cacheable when they include
    # explicit freshness information (see Section 4.2.1 of [CACHING]) and a
    # Content-Location header field that has the same value as the POST's target URI
    # (Section 8.7). A cached POST response can be reused to satisfy a later GET or HEAD
    # request." Explicit freshness is the origin's own (s-maxage for a shared cache,
    # max-age, Expires, or the targeted field replacing them, RFC 9213), not a route's
    # forced TTL; one Content-Location line only (two cannot both be the target).
    if status not in POST_REUSABLE_STATUSES:
        return False
    explicit = "max-age" in cc or (settings.shared and "s-maxage" in cc) or (not targeted and "expires" in fields)
    if not explicit:
        return False
    locations = fields.get("content-location")
    return locations is not None and len(locations) == 1 and content_location_is_target(target_uri, locations[0])


def _storable(method: str, status: int, request_headers: Headers, fields: dict[str, list[str]], cc: CacheControl,
              _targeted: bool, settings: PolicySettings, post_target: str | None = None) -> StoreVerdict:
    # §3: "the request method is understood by the cache"; a POST response only as the GET
    # response of its target (RFC 9110 §9.3.3, ``_post_reusable``); the rules below apply to
    # it as to a GET's (no-store, private, Authorization, §3.5)
    if method not in STORABLE_METHODS and not (
            method == "POST" and post_target is not None
            and _post_reusable(post_target, status, fields, cc, _targeted, settings)):
        return _NO_METHOD
    # §3: "the response status code is final"
    if status < 200:
        return StoreVerdict(False, "status")
    # RFC 9110 §15: "Values outside the range 100..599 are invalid ... A client that
    # receives a response with an invalid status code SHOULD process the response as if it
    # had a 5xx (Server Error) status code": an error answer is no representation to reuse,
    # so it is never stored, whatever its freshness (stale_on_error treats it as a 5xx).
    if status >= 600:
        return StoreVerdict(False, "status")
    # §3: "if the response status code is 206 or 304, or the must-understand cache directive
    # (see Section 5.2.2.3) is present: the cache understands the response status code".
    # §3.3: "a 206 (Partial Content) response MAY be stored as if it were an incomplete 200
    # (OK) response": edge stores single-part byte ranges (edge.cache.partial decides which);
    # a 304 updates a stored response (§4.3.4), it is never stored itself.
    if status == 304:
        return StoreVerdict(False, "status")
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return StoreVerdict(False, "must-understand")
        # §5.2.2.3: "the cache SHOULD ignore the no-store directive if it understands and
        # conforms to the status code's caching requirements."
    elif cc.no_store:
        # §3: "the no-store cache directive is not present in the response"
        return StoreVerdict(False, "no-store")
    # §5.2.1.5: "The no-store request directive indicates that a cache MUST NOT store any
    # part of either this request or any response to it."
    req_cc = request_cache_control(request_headers) if header_first(request_headers, "cache-control") else EMPTY_CC
    if req_cc.no_store:
        return StoreVerdict(False, "request-no-store")
    private = cc.private
    # §3: "if the cache is shared: the private response directive is either not present or
    # allows a shared cache to store a modified response"; §5.2.2.7: the qualified form
    # lets it store the response without the listed fields (headers_to_store drops them).
    if settings.shared and private is True:
        return StoreVerdict(False, "private")
    # §3.5: "A shared cache MUST NOT use a cached response to a request with an
    # Authorization header field ... unless the response contains a Cache-Control field
    # with a response directive ... that allows it to be stored by a shared cache ...
    # must-revalidate ..., public ..., and s-maxage".
    if settings.shared and header_first(request_headers, "authorization") is not None:
        if not (cc.must_revalidate or cc.public or "s-maxage" in cc):
            return StoreVerdict(False, "authorization")
    # Set-Cookie: not an RFC 9111 rule (it "does not inhibit caching"), but a shared cache
    # handing one user's cookie to another is the classic leak: per route, refused by default.
    if settings.set_cookie == "refuse" and "set-cookie" in fields:
        return StoreVerdict(False, "set-cookie")
    # §4.1: "A stored response with a Vary header field value containing a member "*" always
    # fails to match": storing it would only take room.
    if "*" in _vary_from(fields):
        return StoreVerdict(False, "vary-star")
    # §3: "the response contains at least one of the following: a public response
    # directive; a private response directive, if the cache is not shared; an Expires
    # header field; a max-age response directive; if the cache is shared: an s-maxage
    # response directive; ... a status code that is defined as heuristically cacheable".
    if cc.public or (private and not settings.shared) or "max-age" in cc:
        return _EXPLICIT
    if settings.shared and "s-maxage" in cc:
        return _EXPLICIT
    if not _targeted and "expires" in fields:
        return _EXPLICIT
    if status in HEURISTIC_STATUSES:
        return _HEURISTIC
    # The route's forced TTL is the cache extension of an out-of-band contract (§5.2.3).
    if settings.forced_ttl_s is not None:
        return StoreVerdict(True, "forced-ttl")
    return StoreVerdict(False, "status")


def headers_to_store(response_headers: Headers, response_time: float,
                     settings: PolicySettings = DEFAULT_SETTINGS) -> list[tuple[str, str]]:
    """The header fields stored with a response (RFC 9111 §3.1), Date added when missing.

    §3.1: "Caches MUST include all received response header fields — including
    unrecognized ones — when storing a response", except: Connection and the fields it
    names, and hop-by-hop ones ("MAY be implemented by doing so before storage"); the
    proxy-specific Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Authorization
    ("MUST NOT be stored"); and the fields named by ``no-cache="..."`` (they "MUST NOT be
    sent in the response to a subsequent request without successful revalidation",
    §5.2.2.4: edge never sends them from the cache) and, in a shared cache, by
    ``private="..."`` (§5.2.2.7: "a shared cache MUST NOT store the specified field
    name(s)"). Set-Cookie is dropped unless the route's ``set_cookie`` is ``store`` (with
    ``refuse`` a response carrying one is never stored, but a 304 merged into a stored
    response can bring one: the client that asked gets it, the stored copy does not).
    RFC 9110 §6.6.1: "A recipient with a clock that receives a response message without a
    Date header field MUST record the time it was received and append a corresponding
    Date header field to the message's header section if it is cached".
    """
    fields = _index(response_headers)
    cc, _ = _effective_cc(fields, settings)
    return _headers_to_store(response_headers, fields, cc, response_time, settings)


def _headers_to_store(response_headers: Headers, fields: dict[str, list[str]], cc: CacheControl, response_time: float,
                      settings: PolicySettings, also_drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    connection = fields.get("connection")
    nc = cc.no_cache
    pv = cc.private
    if connection or isinstance(nc, tuple) or (settings.shared and isinstance(pv, tuple)):
        drop = set(_NOT_STORED)
        if connection:
            drop |= connection_options(connection)
        if isinstance(nc, tuple):
            drop.update(nc)
        if settings.shared and isinstance(pv, tuple):
            drop.update(pv)
        if settings.set_cookie != "store":
            drop.add("set-cookie")
        drop |= also_drop
    else:  # the common head: the precomputed set
        drop = _DROP_DEFAULT if settings.set_cookie != "store" else _NOT_STORED
        if also_drop:
            drop = drop | also_drop
    out = [(k, v) for k, v in response_headers if k.lower() not in drop]
    if "date" not in fields or "date" in drop:
        out.append(("Date", format_http_date(response_time)))
    return out


_DROP_DEFAULT = _NOT_STORED | {"set-cookie"}


# ---------------------------------------------------------------------------------------
# §4.2 freshness and age
# ---------------------------------------------------------------------------------------

def parse_age(values: Iterable[str]) -> int | None:
    """The Age field (§5.1) -> seconds, or None when absent or invalid.

    §5.1: "a cache encountering a message with a list-based Age field value SHOULD use the
    first member of the field value, discarding subsequent ones. If the field value (after
    discarding additional members, as per above) is invalid (e.g., it contains something
    other than a non-negative integer), a cache SHOULD ignore the field." Values above
    2^31 are 2^31 (§1.2.2).
    """
    if isinstance(values, str):
        values = (values,)
    for v in values:
        first = v.split(",", 1)[0].strip(" \t")
        return parse_delta_seconds(first)
    return None


def _vary_names(headers: Headers) -> tuple[str, ...]:
    return _vary_from(_index(headers))


def _vary_from(fields: dict[str, list[str]]) -> tuple[str, ...]:
    values = fields.get("vary")
    if not values:
        return ()
    names: list[str] = []
    for v in values:
        for n in v.split(","):
            n = n.strip(" \t").lower()
            if n and n not in names:
                names.append(n)
    return tuple(names)


def _freshness(status: int, fields: dict[str, list[str]], cc: CacheControl, targeted: bool, date_value: float,
               settings: PolicySettings) -> tuple[float, bool]:
    """(freshness_lifetime, heuristic) per §4.2.1/§4.2.2 and the route settings."""
    if settings.forced_ttl_s is not None:
        return float(settings.forced_ttl_s), False
    # §4.2.1: "If the cache is shared and the s-maxage response directive ... is present,
    # use its value"
    if settings.shared:
        s = cc.s_maxage
        if s is not None:
            return float(max(s, 0)), False
    # "If the max-age response directive ... is present, use its value"
    m = cc.max_age
    if m is not None:
        return float(max(m, 0)), False
    # "If the Expires response header field ... is present, use its value minus the value
    # of the Date response header field (using the time the message was received if it is
    # not present, as per Section 6.6.1 of [HTTP])". RFC 9213: a targeted field replaces
    # Expires too.
    if not targeted:
        expires = fields.get("expires")
        if expires:
            # §5.3: "A cache recipient MUST interpret invalid date formats, especially the
            # value "0", as representing a time in the past (i.e., "already expired")."
            # §4.2.1: two Expires lines: "either the first occurrence should be used or the
            # response should be considered stale": stale unless both say the same.
            if len(expires) > 1 and len(set(e.strip() for e in expires)) > 1:
                return 0.0, False
            ts = parse_http_date(expires[0])
            if ts is None:
                return 0.0, False
            return max(0.0, ts - date_value), False
    # §4.2.2: "A cache MUST NOT use heuristics to determine freshness when an explicit
    # expiration time is present in the stored response. ... heuristics can only be used on
    # responses without explicit freshness whose status codes are defined as heuristically
    # cacheable ... and on responses without explicit freshness that have been marked as
    # explicitly cacheable (e.g., with a public response directive)."
    if status not in HEURISTIC_STATUSES and not cc.public:
        return 0.0, False
    if settings.default_ttl_s is not None:
        return float(settings.default_ttl_s), True
    # "If the response has a Last-Modified header field ..., caches are encouraged to use a
    # heuristic expiration value that is no more than some fraction of the interval since
    # that time. A typical setting of this fraction might be 10%." (RFC 9111 dropped
    # RFC 2616's rule against heuristics for URIs with a query: §4.2.2 Note.)
    lm = _first(fields, "last-modified")
    lm_ts = parse_http_date(lm) if lm is not None else None
    if lm_ts is None or lm_ts >= date_value:
        return 0.0, False
    return min((date_value - lm_ts) * settings.heuristic_fraction, settings.heuristic_max_s), True


def response_facts(request_time: float, response_time: float, status: int, response_headers: Headers,
                   settings: PolicySettings = DEFAULT_SETTINGS) -> StoredFacts:
    """Compute, once at store time, what ``lookup()`` needs (§4.2.1-§4.2.3, §5.2.2, RFC 5861).

    ``request_time``: when edge sent the request; ``response_time``: when the response
    head arrived (§4.2.3 names both so). Call it again with the merged headers and the new
    times after a 304 (§4.3.4).
    """
    fields = _index(response_headers)
    cc, targeted = _effective_cc(fields, settings)
    return _response_facts(request_time, response_time, status, fields, cc, targeted, settings)


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def _response_facts(request_time: float, response_time: float, status: int, fields: dict[str, list[str]],
                    cc: CacheControl, targeted: bool, settings: PolicySettings) -> StoredFacts:
    # RFC 9110 §6.6.1: a response without Date gets the receipt time; "A recipient with a
    # clock that receives a response with an invalid Date header field value MAY replace
    # that value with the time that response was received": edge does.
    date_raw = _first(fields, "date")
    date_value = parse_http_date(date_raw) if date_raw is not None else None
    if date_value is None:
        date_value = response_time
    age = parse_age(fields.get("age", ()))
    age_value = age if age is not None else 0
    # §4.2.3:
    #   apparent_age = max(0, response_time - date_value);
    #   response_delay = response_time - request_time;
    #   corrected_age_value = age_value + response_delay;
    #   corrected_initial_age = max(apparent_age, corrected_age_value);
    apparent_age = max(0.0, response_time - date_value)
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = min(max(apparent_age, corrected_age_value), float(DELTA_MAX))
    lifetime, heuristic = _freshness(status, fields, cc, targeted, date_value, settings)
    etag = _first(fields, "etag")
    lm = _first(fields, "last-modified")
    shared = settings.shared
    # §5.2.2.2 must-revalidate; §5.2.2.8 proxy-revalidate: "analogous to must-revalidate
    # except that proxy-revalidate does not apply to private caches"; §5.2.2.10 s-maxage:
    # "incorporates the semantics of the proxy-revalidate response directive ... for a
    # shared cache".
    must_revalidate = cc.must_revalidate or (shared and (cc.proxy_revalidate or "s-maxage" in cc))
    swr = cc.stale_while_revalidate
    sie = cc.stale_if_error
    return StoredFacts(
        status=status,
        request_time=request_time,
        response_time=response_time,
        date_value=date_value,
        age_value=age_value,
        corrected_initial_age=corrected_initial_age,
        freshness_lifetime=lifetime,
        fresh_until=response_time + lifetime - corrected_initial_age,
        heuristic=heuristic,
        etag=etag.strip() if etag is not None else None,
        last_modified=lm,
        last_modified_ts=parse_http_date(lm) if lm is not None else None,
        # §5.2.2.4 unqualified no-cache: "MUST NOT be used to satisfy any other request
        # without forwarding it for validation"
        no_cache=cc.no_cache is True,
        must_revalidate=must_revalidate,
        # §5.2.2.6 no-transform binds every intermediary, whichever field edge obeys for caching
        no_transform=cc.no_transform or (targeted and "no-transform" in parse_cache_control(
            fields.get("cache-control", ()))),
        public=cc.public,
        immutable=cc.immutable,
        stale_while_revalidate_s=swr if swr is not None and swr >= 0 else None,
        stale_if_error_s=sie if sie is not None and sie >= 0 else None,
        vary=_vary_from(fields),
        has_validator=etag is not None or lm is not None,
    )


@dataclass(frozen=True, slots=True)
class StorePlan:
    """``store_plan()``'s answer: the verdict, and when it is ok the facts and the fields to store."""

    verdict: StoreVerdict
    facts: StoredFacts | None = None
    headers: list[tuple[str, str]] | None = None


def store_plan(method: str, status: int, request_headers: Headers, response_headers: Headers, request_time: float,
               response_time: float, settings: PolicySettings = DEFAULT_SETTINGS,
               stored_headers: Headers | None = None, also_drop: frozenset[str] = frozenset(),
               post_target: str | None = None) -> StorePlan:
    """``storable()``, ``response_facts()`` and ``headers_to_store()`` of one response head
    from one pass over its fields and one Cache-Control parse: the cache's miss path.

    ``stored_headers``: the list the kept fields are taken from when it is not
    ``response_headers`` itself (the cache strips its purge tags first); ``also_drop``:
    more lower-case names the caller never stores (Age: recomputed per answer, §5.1);
    ``post_target``: as for ``storable()``.
    The answers are those of the three functions (tests/unit/test_cache_policy.py).
    """
    fields = _index(response_headers)
    cc, targeted = _effective_cc(fields, settings)
    verdict = _storable(method, status, request_headers, fields, cc, targeted, settings, post_target)
    if not verdict.ok:
        return StorePlan(verdict)
    facts = _response_facts(request_time, response_time, status, fields, cc, targeted, settings)
    kept = _headers_to_store(response_headers if stored_headers is None else stored_headers, fields, cc,
                             response_time, settings, also_drop)
    return StorePlan(verdict, facts, kept)


def worth_storing(facts: StoredFacts, settings: PolicySettings = DEFAULT_SETTINGS) -> bool:
    """False for a storable response that could never be served: never fresh, no
    validator to revalidate it with, and no stale window (RFC 5861 or the route's).
    ``max-age=0, stale-while-revalidate=N`` is served stale for N seconds while it is
    refreshed (RFC 5861 §3), with or without a validator."""
    return (facts.freshness_lifetime > 0 or facts.has_validator or facts.stale_while_revalidate_s is not None
            or facts.stale_if_error_s is not None or settings.serve_stale_on_error_s > 0)


def current_age(facts: StoredFacts, now: float) -> float:
    """§4.2.3: ``resident_time = now - response_time; current_age = corrected_initial_age +
    resident_time``."""
    return facts.corrected_initial_age + max(0.0, now - facts.response_time)


def is_fresh(facts: StoredFacts, now: float) -> bool:
    """§4.2: "response_is_fresh = (freshness_lifetime > current_age)"."""
    return now < facts.fresh_until


# ---------------------------------------------------------------------------------------
# §4 lookup
# ---------------------------------------------------------------------------------------

def conditional_headers(stored: Sequence[StoredFacts], request_headers: Headers = ()) -> tuple[tuple[str, str], ...]:
    """The validators a revalidation sends (§4.3.1) for one or several stored responses.

    §4.3.1: "MUST send the relevant entity tags (using If-Match, If-None-Match, or
    If-Range) if the entity tags were provided in the stored response(s) being validated;
    SHOULD send the Last-Modified value (using If-Modified-Since) if the request is not for
    a subrange, a single stored response is being validated, and that response contains a
    Last-Modified value". Without Last-Modified, the Date of the single stored response is
    used (RFC 9110 §13.1.3: caches "occasionally generate the field value based on other
    data, such as the Date header field of the cached message"). §4.3.2: a client's own
    If-None-Match list "MAY" be combined with the stored ones.
    """
    tags: list[str] = []
    for v in header_values(request_headers, "if-none-match"):
        for t in _split_etags(v):
            if t != "*" and t not in tags:
                tags.append(t)
    for f in stored:
        if f.etag and f.etag not in tags:
            tags.append(f.etag)
    out: list[tuple[str, str]] = []
    if tags:
        out.append(("If-None-Match", ", ".join(tags)))
    if len(stored) == 1:
        f = stored[0]
        if f.last_modified is not None and f.last_modified_ts is not None:
            out.append(("If-Modified-Since", f.last_modified))
        elif not tags:
            out.append(("If-Modified-Since", format_http_date(f.date_value)))
    return tuple(out)


_REQ_FIRST = frozenset("cCpPiI")


def _request_facts(request_headers: Headers) -> tuple[CacheControl, bool]:
    """(request directives, has If-Match/If-Unmodified-Since) in one pass over the fields."""
    cc_values: list[str] | None = None
    pragma = False
    origin_only = False
    for k, v in request_headers:
        if k[:1] not in _REQ_FIRST:
            continue   # the hot path of a hit: most request fields are none of these
        lk = k.lower()
        if lk == "cache-control":
            if cc_values is None:
                cc_values = [v]
            else:
                cc_values.append(v)
        elif lk == "pragma":
            pragma = True
        elif lk == "if-match" or lk == "if-unmodified-since":
            origin_only = True
    if cc_values is not None:
        return parse_cache_control(cc_values), origin_only
    if pragma:
        return request_cache_control(request_headers), origin_only
    return EMPTY_CC, origin_only


def lookup(request_method: str, request_headers: Headers, facts: StoredFacts | None, now: float,
           settings: PolicySettings = DEFAULT_SETTINGS, origin_down: bool = False) -> Decision:
    """What to do with a request for which ``facts`` describes the stored response (None: none).

    The hot path of a hit: with no Cache-Control/Pragma/If-Match in the request and a
    fresh response, this is one pass over the request fields and a comparison.
    """
    # §4: "When presented with a request, a cache MUST NOT reuse a stored response unless:
    # ... the presented request method and that used to obtain the stored response match"
    # (a stored GET also answers HEAD: RFC 9110 §9.3.2).
    if request_method != "GET" and request_method != "HEAD":
        return Fetch("method")
    req_cc, origin_only = _request_facts(request_headers) if request_headers else (EMPTY_CC, False)
    only_if_cached = bool(req_cc) and req_cc.only_if_cached
    if facts is None:
        # §5.2.1.7 only-if-cached: "respond with either a stored response ... or a 504".
        return OnlyIfCachedMiss() if only_if_cached else Fetch("uri-miss")
    if origin_only:
        # §4.3.2: "The If-Match and If-Unmodified-Since conditional header fields are not
        # applicable to a cache" ("such preconditions are likely intended for some other
        # (inbound) server"): forward.
        return OnlyIfCachedMiss() if only_if_cached else Fetch("request")
    # §4.1: "A stored response with a Vary header field value containing a member "*"
    # always fails to match."
    if facts.vary and "*" in facts.vary:
        return OnlyIfCachedMiss() if only_if_cached else Fetch("vary-miss")
    age = facts.corrected_initial_age + (now - facts.response_time if now > facts.response_time else 0.0)
    ttl = facts.freshness_lifetime - age
    if not req_cc and not facts.no_cache:
        if ttl > 0:
            return Fresh(age, ttl)
        return _stale(facts, req_cc, age, ttl, settings, origin_down, False)
    return _with_request_directives(facts, req_cc, age, ttl, settings, origin_down, only_if_cached)


def _with_request_directives(facts: StoredFacts, req_cc: CacheControl, age: float, ttl: float,
                             settings: PolicySettings, origin_down: bool, only_if_cached: bool) -> Decision:
    def validate(reason: str) -> Decision:
        if only_if_cached:
            return OnlyIfCachedMiss()
        return Revalidate(conditional_headers((facts,)), reason, age, ttl)

    # §5.2.2.4 (response no-cache): "the response MUST NOT be used to satisfy any other
    # request without forwarding it for validation and receiving a successful response".
    if facts.no_cache:
        return validate("stale")
    # §5.2.1.4 (request no-cache): "the client prefers a stored response not be used to
    # satisfy the request without successful validation on the origin server."
    if "no-cache" in req_cc:
        return validate("request")
    # §5.2.1.1 max-age: "the client prefers a response whose age is less than or equal to
    # the specified number of seconds". An invalid value (max-age=abc) is read as 0: the
    # careful reading, a revalidation is always allowed.
    if "max-age" in req_cc:
        max_age = req_cc.max_age
        if max_age is None or max_age < 0 or age > max_age:
            return validate("request")
    # §5.2.1.3 min-fresh: "the client prefers a response whose freshness lifetime is no less
    # than its current age plus the specified time in seconds".
    if "min-fresh" in req_cc:
        mf = req_cc.min_fresh
        if mf is None or mf < 0 or ttl < mf:
            return validate("request")
    if ttl > 0:
        return Fresh(age, ttl)
    # §5.2.1.2 max-stale: "the client will accept a response that has exceeded its
    # freshness lifetime ... If a value is present, then the client is willing to accept a
    # response that has exceeded its freshness lifetime by no more than the specified
    # number of seconds. If no value is assigned to max-stale, then the client will accept
    # a stale response of any age." §4.2.4: not when "prohibited by an explicit in-protocol
    # directive (e.g., by a no-cache response directive, a must-revalidate response
    # directive, or an applicable s-maxage or proxy-revalidate response directive".
    # (max-age in the request: "Unless the max-stale request directive is also present, the
    # client does not wish to receive a stale response.")
    ms = req_cc.max_stale
    if ms is not None and ms >= 0 and not facts.must_revalidate and -ttl <= ms:
        return ServeStale(age, ttl, False, "max-stale")
    if "max-age" in req_cc or "min-fresh" in req_cc:
        # §5.2.1.1: "Unless the max-stale request directive is also present, the client does
        # not wish to receive a stale response": the origin's RFC 5861 permissions do not
        # override the client's own bound (stale_on_error() still honours a request
        # stale-if-error when the revalidation fails).
        return validate("request")
    return _stale(facts, req_cc, age, ttl, settings, origin_down, only_if_cached)


def _stale(facts: StoredFacts, req_cc: CacheControl, age: float, ttl: float, settings: PolicySettings,
           origin_down: bool, only_if_cached: bool) -> Decision:
    stale_for = -ttl
    if not facts.must_revalidate and not facts.no_cache:
        # RFC 5861 §3: "the stale-while-revalidate Cache-Control extension indicates that
        # caches MAY serve the response in which it appears after it becomes stale, up to
        # the indicated number of seconds."
        swr = facts.stale_while_revalidate_s
        if swr is not None and stale_for <= swr and not origin_down:
            return ServeStale(age, ttl, True, "stale-while-revalidate")
        if origin_down and _stale_error_window(facts, req_cc, stale_for, settings):
            return ServeStale(age, ttl, False, "stale-if-error")
    if only_if_cached:
        # §5.2.1.7: nothing usable without contacting the origin.
        return OnlyIfCachedMiss()
    return Revalidate(conditional_headers((facts,)), "stale", age, ttl)


def _stale_error_window(facts: StoredFacts, req_cc: CacheControl, stale_for: float,
                        settings: PolicySettings, rfc5861: bool = True) -> bool:
    # RFC 5861 §4: stale-if-error in a response or in a request ("the client is willing to
    # accept a stale response if there is an error"), the larger window applies; the route
    # window is the out-of-band permission of RFC 9111 §4.2.4.
    window = settings.serve_stale_on_error_s
    if not rfc5861:
        return stale_for <= window
    if facts.stale_if_error_s is not None:
        window = max(window, facts.stale_if_error_s)
    if req_cc:
        r = req_cc.stale_if_error
        if r is not None and r >= 0:
            window = max(window, r)
    return stale_for <= window


def stale_on_error(facts: StoredFacts, now: float, settings: PolicySettings = DEFAULT_SETTINGS,
                   status_or_none: int | None = None, request_headers: Headers = ()) -> bool:
    """May the stale ``facts`` response be served because the origin failed?

    ``status_or_none``: the origin's status, or None when it could not be reached. RFC 5861
    §4: "An error is any situation that would result in a 500, 502, 503, or 504 HTTP
    response status code being returned." RFC 9111 §5.2.2.2: with must-revalidate (and
    proxy-revalidate / s-maxage in a shared cache, §5.2.2.8, §5.2.2.10) "if a cache is
    disconnected, the cache MUST generate an error message rather than reuse the stale
    response"; unqualified no-cache forbids reuse without validation (§5.2.2.4). The route
    window applies to any 5xx: RFC 9111 §4.3.3 "if a cache receives a 5xx (Server Error)
    response while attempting to validate a response, it can either forward this response
    to the requesting client or act as if the server failed to respond. In the latter case,
    the cache can send a previously stored response, subject to its constraints". An
    invalid status (600 and above) counts as a 5xx here (RFC 9110 §15: "SHOULD process the
    response as if it had a 5xx (Server Error) status code"), as the ``< 500`` test gives.
    """
    if status_or_none is not None and status_or_none < 500:
        return False
    rfc5861 = status_or_none is None or status_or_none in ERROR_STATUSES
    if facts.must_revalidate or facts.no_cache:
        return False
    age = current_age(facts, now)
    stale_for = age - facts.freshness_lifetime
    if stale_for <= 0:
        return True   # still fresh: serving it needs no permission
    req_cc = request_cache_control(request_headers) if request_headers else EMPTY_CC
    # a request no-cache / max-age bound refuses stale answers (§5.2.1.1, §5.2.1.4) unless
    # the request itself asked for stale-if-error
    if req_cc and ("no-cache" in req_cc or "max-age" in req_cc or "min-fresh" in req_cc) \
            and req_cc.stale_if_error is None:
        return False
    return _stale_error_window(facts, req_cc, stale_for, settings, rfc5861)


# ---------------------------------------------------------------------------------------
# §4.1 Vary
# ---------------------------------------------------------------------------------------

# Request fields whose list members are case-insensitive tokens with parameters: content
# codings (RFC 9110 §8.4.1 "All content codings are case-insensitive"), charsets
# (§8.3.2) and language tags (§8.5.1, "case-insensitive"); and among them the one whose
# member order carries no meaning (§12.5.3 Accept-Encoding: preference is by qvalue, and
# edge's compression picks by its own order among equals). Accept-Language has a
# canonical form of its own (weights read, equal weights ordered: ``edge.cache.language``,
# which says why that order carries no meaning either); a value it cannot read keeps its
# order here.
_CASELESS_LISTS = frozenset({"accept-encoding", "accept-charset", "accept-language"})
_UNORDERED_LISTS = frozenset({"accept-encoding"})
_PARAM_OWS_RE = re.compile(r"[ \t]*([;=])[ \t]*")


def _normalise_value(values: list[str], name: str = "") -> str:
    # §4.1: "The header fields from two requests are defined to match if and only if those
    # in the first request can be transformed to those in the second request by applying
    # any of the following: adding or removing whitespace, where allowed in the header
    # field's syntax; combining multiple header field lines with the same field name (see
    # Section 5.2 of [HTTP]); normalizing both header field values in a way that is known
    # to have identical semantics, according to the header field's specification (e.g.,
    # reordering field values when order is not significant; case-normalization, where
    # values are defined to be case-insensitive)".
    members = [m.strip(" \t") for v in values for m in v.split(",")]
    members = [m for m in members if m]   # RFC 9110 §5.6.1: empty list elements
    if name in _CASELESS_LISTS:
        if name == "accept-language":
            canon = language.canonical(values)
            if canon is not None:
                return canon
        members = [_PARAM_OWS_RE.sub(r"\1", m).lower() for m in members]
        if name in _UNORDERED_LISTS:
            members.sort()
    return ",".join(members)


_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\x00": "\\0"})


def secondary_key(vary_names: Sequence[str], request_headers: Headers) -> str | None:
    """The secondary cache key of a request for a response with Vary ``vary_names`` (§4.1).

    One string: for each name (lower case, sorted) ``name:value`` on its own line, the
    value normalised (lines combined with ",", whitespace around commas and at the ends
    and empty members removed; Accept-Encoding/-Charset/-Language members lower-cased
    without whitespace around ";" and "=", Accept-Encoding's sorted, Accept-Language in
    the canonical form of ``edge.cache.language``; a field absent is distinct from an
    empty one). None for ``Vary: *``: §4.1 "A stored response with a Vary header field
    value containing a member "*" always fails to match." Empty string when there is
    nothing to vary on.
    """
    if not vary_names:
        return ""
    names = sorted({n.strip(" \t").lower() for n in vary_names if n.strip(" \t")})
    if "*" in names:
        return None
    parts: list[str] = []
    for n in names:
        vals = header_values(request_headers, n)
        if not vals:
            parts.append(n)
        else:
            parts.append(n + ":" + _normalise_value(vals, n).translate(_ESCAPES))
    return "\n".join(parts)


# The line that stands for Accept-Language in a language key (below). Keys are compared
# under one Vary index, so with the same names, one line per name in the same order: a
# request's key has ``accept-language`` or ``accept-language:<value>`` on that line, a
# language key this NUL-led line, so the two kinds never collide.
_LANGUAGE_LINE = "\x00content-language:"


def _language_key(vary_names: Sequence[str], request_headers: Headers, tag: str | None,
                  key: str | None = None) -> str | None:
    if tag is None:
        return None
    if key is None:
        key = secondary_key(vary_names, request_headers)
    if not key:
        return None
    # one line per name, sorted, no raw newline inside a line (_ESCAPES): swap the one line of
    # Accept-Language (``accept-language:<value>``, or the bare name when the field is absent)
    lines = key.split("\n")
    for i, line in enumerate(lines):
        if line == "accept-language" or line.startswith("accept-language:"):
            lines[i] = _LANGUAGE_LINE + tag
            return "\n".join(lines)
    return None


def variant_language_key(vary_names: Sequence[str], request_headers: Headers,
                         response_headers: Headers, secondary: str | None = None) -> str | None:
    """Where a stored variant is also kept for choosing by language (None: it is not).

    A response that varies on Accept-Language and says which language it is in (RFC 9110
    §8.5: a single tag, ``edge.cache.language.content_language``) may serve a later request
    whose single most-preferred language is exactly that tag, although that request spells
    Accept-Language differently (``language_selection``): proactive negotiation
    (RFC 9110 §12.1) from what the origin already said. The key is the request's secondary
    key (§4.1) with its Accept-Language line replaced by the response's language, so every
    other ``Vary`` field must still match. ``secondary``: that key when the caller has it.
    """
    tag = language.content_language(header_values(response_headers, "content-language"))
    return _language_key(vary_names, request_headers, tag, secondary)


def language_selection(vary_names: Sequence[str], request_headers: Headers,
                       secondary: str | None = None) -> tuple[str, str] | None:
    """``(tag, key)``: the language this request prefers over every other
    (``edge.cache.language.preferred_range``) and the key a variant in that language is kept
    under (``variant_language_key``), for a request whose own secondary key found nothing;
    None when the response does not vary on Accept-Language or the request has no single
    preferred language. The caller checks the variant found still says it is in ``tag``
    (``stored_language``): a 304 may have changed its Content-Language since. ``secondary``:
    the request's own secondary key when the caller has it."""
    tag = language.preferred_range(header_values(request_headers, "accept-language"))
    key = _language_key(vary_names, request_headers, tag, secondary)
    return None if key is None or tag is None else (tag, key)


def stored_language(stored_headers: Headers) -> str | None:
    """The single language tag a stored response is in (RFC 9110 §8.5), lower case, or None."""
    return language.content_language(header_values(stored_headers, "content-language"))


# ---------------------------------------------------------------------------------------
# §4.3 validation
# ---------------------------------------------------------------------------------------

def merge_304(stored_headers: Headers, fresh_headers: Headers,
              response_time: float | None = None) -> list[tuple[str, str]]:
    """Update a stored response's header fields from a 304 (§4.3.4) or HEAD (§4.3.5) response.

    §3.2: "the cache MUST add each header field in the provided response to the stored
    response, replacing field values that are already present, with the following
    exceptions: Header fields excepted from storage in Section 3.1, Header fields that the
    cache's stored response depends upon, as described below, Header fields that are
    automatically processed and removed by the recipient, as described below, and The
    Content-Length header field." Every line of a replaced field is replaced (a field's
    value is the combination of its lines); the stored order is kept and new fields are
    appended.

    The stored Age and Date described the first response as it arrived; the updated
    response's age starts from the 304 (§4.2.3 with the new response_time), so a stored
    Age the 304 does not repeat is dropped, and a 304 without Date gets ``response_time``
    (RFC 9110 §6.6.1, as ``headers_to_store``) when given.
    """
    fresh_headers = list(fresh_headers)
    if response_time is not None and header_first(fresh_headers, "date") is None:
        fresh_headers.append(("Date", format_http_date(response_time)))
    if header_first(fresh_headers, "age") is None:
        stored_headers = [(k, v) for k, v in stored_headers if k.lower() != "age"]
    drop = set(_NOT_UPDATED) | connection_options(header_values(fresh_headers, "connection"))
    new: dict[str, list[tuple[str, str]]] = {}
    for k, v in fresh_headers:
        lk = k.lower()
        if lk in drop:
            continue
        new.setdefault(lk, []).append((k, v))
    out: list[tuple[str, str]] = []
    placed: set[str] = set()
    for k, v in stored_headers:
        lk = k.lower()
        if lk in new:
            if lk not in placed:
                out.extend(new[lk])
                placed.add(lk)
            continue
        out.append((k, v))
    for lk, pairs in new.items():
        if lk not in placed:
            out.extend(pairs)
    return out


def _split_etags(value: str) -> list[str]:
    """Entity-tags of an If-None-Match / If-Match / ETag list (RFC 9110 §8.8.3: commas may
    appear inside a quoted opaque-tag)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        if value[i] == "*":
            out.append("*")
            i += 1
            continue
        j = i
        if value.startswith("W/", j):
            j += 2
        if j < n and value[j] == '"':
            k = value.find('"', j + 1)
            if k < 0:
                break   # unterminated: invalid, stop
            out.append(value[i:k + 1])
            i = k + 1
        else:
            # not an entity-tag: skip to the next comma (a lenient reading of sloppy senders)
            k = value.find(",", i)
            tok = value[i:k if k >= 0 else n].strip(" \t")
            if tok:
                out.append(tok)
            i = n if k < 0 else k
    return out


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2: "two entity tags are equivalent if their opaque-tags match
    character-by-character, regardless of either or both being tagged as weak"."""
    return _opaque(a) == _opaque(b)


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2: "two entity tags are equivalent if both are not weak and their
    opaque-tags match character-by-character"."""
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def select_by_validator(fresh_headers: Headers, stored: Sequence[StoredFacts]) -> list[int]:
    """Indexes of the ``stored`` responses a 304 with ``fresh_headers`` updates (§4.3.4).

    §4.3.4: "If the new response contains one or more strong validators ..., then each of
    those strong validators identifies a selected representation for update. All the stored
    responses with one of those same strong validators are identified for update. If none
    of the stored responses contain at least one of the same strong validators, then the
    cache MUST NOT use the new response to update any stored responses. If the new response
    contains no strong validators but does contain one or more weak validators, and those
    validators correspond to one of the cache's stored responses, then the most recent of
    those matching stored responses is identified for update. If the new response does not
    include any form of validator ..., and there is only one stored response, and that
    stored response also lacks a validator, then that stored response is identified for
    update." Last-Modified counts as a weak validator here (RFC 9110 §8.8.2.2 makes it
    strong only under conditions the 304 alone cannot show).
    """
    etag = header_first(fresh_headers, "etag")
    etag = etag.strip() if etag is not None else None
    lm = header_first(fresh_headers, "last-modified")
    if etag is not None and not etag.startswith("W/"):
        return [i for i, f in enumerate(stored) if f.etag is not None and strong_match(f.etag, etag)]
    if etag is not None or lm is not None:
        matching = [i for i, f in enumerate(stored)
                    if (etag is not None and f.etag is not None and weak_match(f.etag, etag))
                    or (etag is None and lm is not None and f.last_modified == lm)]
        if not matching:
            return []
        return [max(matching, key=lambda i: stored[i].response_time)]
    if len(stored) == 1 and not stored[0].has_validator:
        return [0]
    return []


def validates(fresh_headers: Headers, stored: StoredFacts) -> bool:
    """Does a 304 answering edge's validation of the one ``stored`` response refresh it (§4.3.4)?

    ``select_by_validator`` with that one response: a 304 whose strong validator is not the
    stored one, or whose weak validator or Last-Modified matches nothing stored, refreshes
    nothing ("the cache MUST NOT use the new response to update any stored responses"), and
    the stored response is then not validated either. A 304 without any validator also
    refreshes it: edge's request was conditional on that response's validators alone
    (§4.3.1), so the 304 can answer nothing else (RFC 9110 §15.4.5 has the server send the
    ETag a 200 would carry; an origin that omits it should not cost a full response each time).
    """
    if header_first(fresh_headers, "etag") is None and header_first(fresh_headers, "last-modified") is None:
        return True
    return bool(select_by_validator(fresh_headers, (stored,)))


def head_updates(stored_headers: Headers, stored_length: int | None, head_headers: Headers) -> bool:
    """Does a 200 answer to a HEAD update the stored GET response (True) or make it stale (False)?

    §4.3.5: "For each of the stored responses that could have been chosen, if the stored
    response and HEAD response have matching values for any received validator fields (ETag
    and Last-Modified) and, if the HEAD response has a Content-Length header field, the value
    of Content-Length matches that of the stored response, the cache SHOULD update the stored
    response as described below; otherwise, the cache SHOULD consider the stored response to
    be stale." Each validator the HEAD response carries must equal the stored one (a
    validator the stored response lacks does not match); one it does not carry is not
    compared. The update itself is ``merge_304`` ("the cache MUST use the header fields
    provided in the HEAD response to update the stored response (see Section 3.2)").
    """
    for name in ("etag", "last-modified"):
        received = header_first(head_headers, name)
        if received is not None:
            stored = header_first(stored_headers, name)
            if stored is None or stored.strip() != received.strip():
                return False
    length = header_first(head_headers, "content-length")
    if length is not None:
        return stored_length is not None and length.strip() == str(stored_length)
    return True


# ---------------------------------------------------------------------------------------
# RFC 9110 §13: the client's own conditional request, answered from the cache
# ---------------------------------------------------------------------------------------

def _single_date(values: list[str]) -> float | None:
    # RFC 9110 §13.1.3: "A recipient MUST ignore the If-Modified-Since header field if the
    # received field value is not a valid HTTP-date, the field value has more than one
    # member"; §13.1.4 says the same of If-Unmodified-Since.
    if len(values) != 1:
        return None
    return parse_http_date(values[0])


def client_conditional(request_method: str, request_headers: Headers, stored_headers: Headers,
                       received: float | None = None, stored_status: int = 200) -> int | None:
    """304, 412 or None (serve normally) for the request's preconditions against a stored
    response, in the order of RFC 9110 §13.2.2.

    RFC 9110 §13.2.2: "1. When recipient is the origin server and If-Match is present,
    evaluate the If-Match precondition: if true, continue to step 3; if false, respond 412
    ... 2. When recipient is the origin server, If-Match is not present, and
    If-Unmodified-Since is present, evaluate ...: if false, respond 412 ... 3. When
    If-None-Match is present, evaluate the If-None-Match precondition: if true, continue to
    step 5; if false for GET/HEAD, respond 304 (Not Modified); if false for other methods,
    respond 412 ... 4. When the method is GET or HEAD, If-None-Match is not present, and
    If-Modified-Since is present, evaluate the If-Modified-Since precondition: if true,
    continue to step 5; if false, respond 304 (Not Modified)". ``lookup()`` forwards
    requests with If-Match/If-Unmodified-Since (RFC 9111 §4.3.2), so from the cache only
    steps 3 and 4 apply; steps 1 and 2 are kept for completeness.
    ``received`` (optional) is when the stored response was received: its modification date
    when it has neither a valid Last-Modified nor a valid Date. Only a stored 200 is evaluated: RFC 9111 §4.3.2 "If a cache receives a
    request that can be satisfied by reusing a stored 200 (OK) or 206 (Partial Content)
    response ... the cache SHOULD evaluate any applicable conditional header field
    preconditions"; RFC 9110 §13.2.1 "A server MUST ignore all received preconditions if its
    response to the same request without those conditions ... would have been a status code
    other than a 2xx (Successful) or 412": other stored statuses are served whole.
    """
    if stored_status != 200:
        return None
    if_match: list[str] = []
    ius: list[str] = []
    inm: list[str] = []
    ims: list[str] = []
    for k, v in request_headers:
        lk = k.lower()
        if lk == "if-match":
            if_match.append(v)
        elif lk == "if-unmodified-since":
            ius.append(v)
        elif lk == "if-none-match":
            inm.append(v)
        elif lk == "if-modified-since":
            ims.append(v)
    if not (if_match or ius or inm or ims):
        return None
    etag = header_first(stored_headers, "etag")
    etag = etag.strip() if etag is not None else None
    lm_raw = header_first(stored_headers, "last-modified")
    lm = parse_http_date(lm_raw) if lm_raw is not None else None
    if if_match:
        # §13.1.1: "If the field value is "*", the condition is true if the origin server has
        # a current representation for the target resource. If the field value is a list of
        # entity tags, the condition is true if any of the listed tags match the entity tag
        # of the selected representation." (strong comparison)
        tags = [t for v in if_match for t in _split_etags(v)]
        if "*" not in tags and not (etag is not None and any(strong_match(t, etag) for t in tags)):
            return 412
    elif ius:
        # §13.1.4: "If the selected representation's last modification date is earlier or
        # equal to the date provided in the field value, the condition is true."
        d = _single_date(ius)
        if d is not None and lm is not None and lm > d:
            return 412
    get_or_head = request_method in ("GET", "HEAD")
    if inm:
        # §13.1.2: "If the field value is "*", the condition is false if the origin server
        # has a current representation ... If the field value is a list of entity tags, the
        # condition is false if one of the listed tags matches the entity tag of the
        # selected representation." "A recipient MUST use the weak comparison function".
        tags = [t for v in inm for t in _split_etags(v)]
        if "*" in tags or (etag is not None and any(weak_match(t, etag) for t in tags)):
            return 304 if get_or_head else 412
        return None
    if ims and get_or_head:
        d = _single_date(ims)
        if d is None:
            return None
        # RFC 9111 §4.3.2: "If a request contains an If-Modified-Since header field and the
        # Last-Modified header field is not present in a stored response, a cache SHOULD use
        # the stored response's Date field value (or, if no Date field is present, the time
        # that the stored response was received) to evaluate the conditional." RFC 9110
        # §13.2.2 step 4: "if false, respond 304", and §13.1.3 "the condition is false" when
        # the "last modification date is earlier or equal to the date provided in the field
        # value". So a stored response whose Date is later than the client's date is
        # modified since: a full 200 (the public suite's ``conditional-lm-fresh-no-lm``
        # expects a 304 there; docs/cache.md, "The client's own conditional requests", says why edge does not).
        # An invalid Last-Modified or Date counts as absent: the next in that order is used
        # (RFC 9110 §6.6.1 lets a recipient replace an invalid Date by the receipt time, as
        # edge's freshness does). Both dates are the origin's clock (§13.1.3 "in terms of
        # the origin server's clock"), so a Date ahead of edge's own clock is compared as
        # it is.
        ref = lm
        if ref is None:
            date_raw = header_first(stored_headers, "date")
            ref = parse_http_date(date_raw) if date_raw is not None else None
            if ref is None:
                ref = received
        if ref is not None and ref <= d:
            return 304
    return None


_NOT_MODIFIED_FIELDS = frozenset({"content-location", "date", "etag", "vary", "cache-control", "expires"})


def not_modified_headers(stored_headers: Headers) -> list[tuple[str, str]]:
    """The stored fields a 304 answered from the cache carries (RFC 9110 §15.4.5).

    "The server generating a 304 response MUST generate any of the following header fields
    that would have been sent in a 200 (OK) response to the same request: Content-Location,
    Date, ETag, and Vary; Cache-Control and Expires". "a sender SHOULD NOT generate
    representation metadata other than the above listed fields unless said metadata exists
    for the purpose of guiding cache updates (e.g., Last-Modified might be useful if the
    response does not have an ETag field)". The caller adds Age and Cache-Status.
    """
    has_etag = header_first(stored_headers, "etag") is not None
    return [(k, v) for k, v in stored_headers
            if k.lower() in _NOT_MODIFIED_FIELDS or (not has_etag and k.lower() == "last-modified")]


# ---------------------------------------------------------------------------------------
# §4.4 invalidation
# ---------------------------------------------------------------------------------------

def _origin(uri: str) -> tuple[str, str, int | None] | None:
    try:
        p = urlsplit(uri)
        port = p.port
    except ValueError:
        return None
    if not p.scheme or not p.hostname:
        return None
    scheme = p.scheme.lower()
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, p.hostname.lower(), port


def invalidation_targets(method: str, status: int, request_uri: str, response_headers: Headers) -> list[str]:
    """URIs to invalidate after an unsafe request (§4.4); ``request_uri`` is absolute.

    §4.4: "A cache MUST invalidate the target URI ... when it receives a non-error status
    code in response to an unsafe request method (including methods whose safety is
    unknown). A cache MAY invalidate other URIs when it receives a non-error status code in
    response to an unsafe request method. In particular, the URI(s) in the Location and
    Content-Location response header fields (if present) are candidates for invalidation;
    other URIs might be discovered through mechanisms not specified in this document.
    However, a cache MUST NOT trigger an invalidation under these conditions if the origin
    (Section 4.3.1 of [HTTP]) of the URI to be invalidated differs from that of the target
    URI. This helps prevent denial-of-service attacks." "Non-error" is 2xx or 3xx (§4.4:
    RFC 7234 §4.4: "Here, a "non-error response" is one with a 2xx (Successful) or 3xx
    (Redirection) status code."
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [request_uri]
    origin = _origin(request_uri)
    for name in ("location", "content-location"):
        v = header_first(response_headers, name)
        if v is None or not v.strip():
            continue
        target = urljoin(request_uri, v.strip())
        if origin is not None and _origin(target) == origin and target not in out:
            out.append(target)
    return out


# ---------------------------------------------------------------------------------------
# RFC 9110 §14 ranges
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RangeDecision:
    """How to answer a GET from a stored full response of ``length`` bytes.

    status 200: send it all; 206: bytes ``start``..``end`` inclusive with
    ``content_range``; 416: ``content_range`` is ``bytes */length``.
    """

    status: int
    start: int = 0
    end: int = -1
    content_range: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start + 1 if self.status == 206 else 0


FULL = RangeDecision(200)
_RANGE_SPEC_RE = re.compile(r"(\d*)-(\d*)")


def _parse_ranges(value: str) -> list[tuple[int | None, int | None]] | None:
    unit, sep, rest = value.partition("=")
    # RFC 9110 §14.2: "An origin server MUST ignore a Range header field that contains a
    # range unit it does not understand." Range units are case-insensitive (§14.1).
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for part in rest.split(","):
        part = part.strip(" \t")
        if not part:
            continue
        m = _RANGE_SPEC_RE.fullmatch(part)
        if not m:
            return None
        first, last = m.group(1), m.group(2)
        if not first and not last:
            return None
        f = int(first) if first else None
        la = int(last) if last else None
        # §14.1.1: "A client can limit the number of bytes requested without knowing the size
        # of the selected representation" / "if the last-pos value is present, it is greater
        # than or equal to the first-pos" — otherwise the ranges-specifier is invalid.
        if f is not None and la is not None and la < f:
            return None
        specs.append((f, la))
    return specs or None


def ranges(range_header: str | None, if_range: str | None, length: int, stored_headers: Headers,
           method: str = "GET") -> RangeDecision:
    """Answer a Range request from a stored complete 200 response (RFC 9110 §14).

    §14.2: "A server MUST ignore a Range header field received with a request method that
    is unrecognized or for which range handling is not defined. For this specification,
    GET is the only method for which range handling is defined." "A server MAY ignore the
    Range header field": edge ignores an invalid one and answers several satisfiable ranges
    with the full 200 (no multipart/byteranges); a single satisfiable range among several
    is sent alone (§15.3.7: "a server MAY generate a single-part 206 response to a request
    for multiple ranges").
    """
    if range_header is None or method != "GET":
        return FULL
    # §13.1.5 If-Range: "A server MUST ignore an If-Range header field received in a request
    # that does not contain a Range header field" ... "the server SHOULD process the Range
    # header field as requested" when the validator matches, and otherwise "MUST ignore
    # the Range header field".
    if if_range is not None and not _if_range_matches(if_range.strip(), stored_headers):
        return FULL
    specs = _parse_ranges(range_header)
    if specs is None:
        return FULL
    satisfiable: list[tuple[int, int]] = []
    for f, la in specs:
        if f is None:
            # §14.1.1 suffix-range: "If the selected representation is shorter than the
            # specified suffix-length, the entire representation is used." A suffix-length of
            # 0 is not satisfiable (§14.1.1: "a suffix-range is satisfiable if ... non-zero").
            if la == 0 or length == 0:
                continue
            satisfiable.append((max(0, length - la), length - 1))
        else:
            # §14.1.1: "An int-range is satisfiable if the first-pos is less than the
            # current length". last-pos beyond the end is "the remainder".
            if f >= length:
                continue
            satisfiable.append((f, length - 1 if la is None or la >= length else la))
    if not satisfiable:
        if length == 0 and any(f is None for f, _ in specs):
            return FULL   # a suffix of an empty body: nothing to cut, the empty 200 is right
        # §15.5.17: "the server SHOULD send a Content-Range header field for an unsatisfied
        # range request": "bytes */length".
        return RangeDecision(416, content_range=f"bytes */{length}")
    if len(satisfiable) > 1:
        return FULL
    start, end = satisfiable[0]
    return RangeDecision(206, start, end, f"bytes {start}-{end}/{length}")


def _if_range_matches(if_range: str, stored_headers: Headers) -> bool:
    if if_range.startswith('"') or if_range.startswith("W/"):
        # §13.1.5: "the server ... if the entity-tag validator provided exactly matches the
        # ETag field value for the selected representation using the strong comparison
        # function"; a weak tag never matches.
        etag = header_first(stored_headers, "etag")
        return etag is not None and strong_match(if_range, etag.strip())
    # §13.1.5: "If the validator given in the If-Range header field is a date ... the
    # server ... if the HTTP-date validator provided is not a strong validator in the sense
    # defined by Section 8.8.2.2" must not use it, and otherwise it matches "if the
    # HTTP-date validator provided exactly matches the Last-Modified field value".
    # §8.8.2.2: a Last-Modified is strong when the Date is at least one second later.
    d = parse_http_date(if_range)
    lm_raw = header_first(stored_headers, "last-modified")
    lm = parse_http_date(lm_raw) if lm_raw is not None else None
    date_raw = header_first(stored_headers, "date")
    date = parse_http_date(date_raw) if date_raw is not None else None
    if d is None or lm is None or date is None:
        return False
    return d == lm and date - lm >= 1


# ---------------------------------------------------------------------------------------
# RFC 9211 Cache-Status and §5.1 Age
# ---------------------------------------------------------------------------------------

FWD_REASONS = frozenset({"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})


def _sf_string(s: str) -> str:
    if _SF_TOKEN_RE.fullmatch(s):
        return s
    clean = "".join(ch for ch in s if " " <= ch <= "~")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cache_status(*, name: str = "edge", hit: bool = False, fwd: str | None = None,
                 fwd_status: int | None = None, stored: bool = False, ttl: float | None = None,
                 collapsed: bool = False, key: str | None = None, detail: str | None = None) -> str:
    """One Cache-Status list member (RFC 9211 §2) for edge's handling of the response.

    §2.1 hit: "the request was satisfied by the cache"; §2.2 fwd: "the request went forward
    towards the origin", with a reason from §2.2; §2.3 fwd-status; §2.4 ttl: "The
    remaining freshness lifetime ... SHOULD ... a negative value if the response is stale";
    §2.5 stored; §2.6 collapsed; §2.7 key; §2.8 detail.
    """
    parts = [_sf_string(name)]
    if hit:
        parts.append("hit")
    elif fwd is not None:
        if fwd not in FWD_REASONS:
            raise ValueError(f"fwd: not an RFC 9211 §2.2 value: {fwd!r}")
        parts.append(f"fwd={fwd}")
        if fwd_status is not None:
            parts.append(f"fwd-status={int(fwd_status)}")
        if stored:
            parts.append("stored")
        if collapsed:
            parts.append("collapsed")
    if ttl is not None:
        parts.append(f"ttl={math.floor(ttl)}")
    if key is not None:
        parts.append(f"key={_sf_string(key)}")
    if detail is not None:
        parts.append(f"detail={_sf_string(detail)}")
    return "; ".join(parts)


def hit_status_prefix(name: str) -> str:
    """``cache_status(name=name, hit=True, ttl=T)`` up to the ttl's value, computed once per
    worker: a hit's Cache-Status is this plus ``math.floor(T)``."""
    return f"{_sf_string(name)}; hit; ttl="


def age_header(age: float) -> str:
    """The Age field value (§5.1: "Age = delta-seconds"): whole seconds, never negative,
    at most 2^31 (§1.2.2)."""
    if not age > 0:   # also NaN
        return "0"
    return str(DELTA_MAX) if age >= DELTA_MAX else str(int(age))


def downstream_strip(settings: PolicySettings = DEFAULT_SETTINGS) -> tuple[str, ...]:
    """Targeted fields removed before the client (lower case).

    RFC 9213 §3: "CDN caches that use CDN-Cache-Control will typically forward this header
    so that downstream CDN caches can use it as well. However, they MAY remove it when this
    is undesirable", so edge passes CDN-Cache-Control on; an edge-specific field means
    nothing past edge and is listed in ``strip_targeted`` by the config. (§2.1 "Targeted
    fields that are not on a cache's target list ... MUST be passed through" concerns the
    others, which edge never touches.)
    """
    return settings.strip_targeted
