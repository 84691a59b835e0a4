"""Content-coding negotiation and eligibility for response compression (pure: no I/O, no clock).

Theory of operation. For each response edge relays, ``decide(...)`` looks at the
request (method, ``Accept-Encoding``, ``Range``, ``Cache-Control``) and the
response head (status, ``Content-Type``, ``Content-Encoding``, ``Content-Range``,
``Cache-Control``, length) and returns a ``Decision``: the coding to apply (or
None), whether ``Vary: Accept-Encoding`` must be added, and, for a 304, whether
the ``ETag`` must be weakened the way the 200 was. ``encoded_headers`` and
``identity_headers`` then turn the response head into what the client gets.
The streaming encoders live in ``edge.compress.codecs``; the glue that calls
both on the request path in ``edge.compress.compressor``.

The checks come in two groups, and the split decides ``Vary``:

- response-side (the representation could be encoded at all): a status with
  content other than 206, a type on the allow-list, no ``Content-Encoding``
  already, no ``Content-Range``, no ``no-transform``, not shorter than
  ``min_size`` when the length is known. When one fails, the answer does not
  depend on ``Accept-Encoding`` and nothing is added.
- request-side (this request must get identity): HEAD, a ``Range`` request,
  the client's own ``no-transform``, no acceptable coding. The response was
  eligible, so another request for the same URL may get an encoded body:
  ``Vary: Accept-Encoding`` is added even to the identity answer, or a cache
  downstream would serve the identity copy to everyone, or worse the gzip copy
  to a client that cannot decode it (RFC 9110 §12.5.5).

ETags (RFC 9110 §8.8.3): an encoded body is a different sequence of bytes, so a
strong validator of the identity body must not be sent with it (§8.8.1: a strong
validator changes whenever the representation data changes). Edge weakens it
(``"abc"`` -> ``W/"abc"``) rather than suffixing it (``"abc-gzip"``): a client's
``If-None-Match: W/"abc"`` uses the weak comparison (§13.1.2), so the origin (or
edge's cache, holding ``"abc"``) still recognises it and answers 304, whereas a
suffixed tag is unknown to the origin and every revalidation would cost a full
200 (Apache's mod_deflate suffix had exactly that bug, Apache bz 45023). A 304
carries no body, but §15.4.5 says it carries the ETag and Vary the 200 would
have had, so a 304 answering an ``If-None-Match`` that named the weak form gets
the weak form back (and ``Vary``), and the client's stored copy is updated.
Strong comparisons (``If-Match``, ``If-Range``) then fail for the weak tag, which
is right: the client's bytes are not the origin's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

GZIP = "gzip"
BR = "br"
ZSTD = "zstd"
CODINGS = (ZSTD, BR, GZIP)  # the codings edge can produce
# The default order of preference, by cost measured per response (scripts/bench_compress.py,
# docs/cache.md "Compression"): zstd 3 is the cheapest and smallest; gzip 1 costs ~1/3 of
# brotli 4 for ~7% more bytes, so a client that accepts both gets gzip unless it weights br higher.
DEFAULT_PREFERENCE = (ZSTD, GZIP, BR)
IDENTITY = "identity"

# RFC 9110 §8.4.1.3: 'A recipient SHOULD consider "x-gzip" to be equivalent to "gzip".'
_ALIASES = {"x-gzip": GZIP}

# Nothing to encode (RFC 9110 §6.4.1: 1xx, 204 and 304 have no content), or a part of
# the representation (206: the Content-Range positions refer to the identity bytes).
_NO_CONTENT = frozenset({204, 304})

# Fields that describe the identity bytes and would be false for the encoded ones:
# Content-Digest (RFC 9530 §2) is over the content, Repr-Digest (§3) over the
# representation data, which a content coding changes (RFC 9110 §8.1); Digest
# (RFC 3230) and Content-MD5 (RFC 1864, obsolete) likewise. Accept-Ranges is dropped
# because edge does not serve ranges of an encoded body (RFC 9110 §14.3).
_DROP_WHEN_ENCODED = frozenset({"content-length", "accept-ranges", "content-digest", "repr-digest", "digest",
                                "content-md5"})

# The allow-list edge starts from: text, the structured-text application types and
# the binary formats that are not compressed already (wasm, ttf/otf, ico, bmp),
# close to Caddy's `encode` defaults and wider than nginx's `gzip_types text/html`.
DEFAULT_TYPES = (
    "text/*",
    "application/json", "application/*+json",
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/xml", "application/*+xml",
    "image/svg+xml",
    "application/wasm",
    "font/ttf", "font/otf", "application/vnd.ms-fontobject",
    "image/x-icon", "image/vnd.microsoft.icon", "image/bmp",
)
# text/event-stream is text, but an encoder holds bytes back until its block fills:
# events would reach the client late or never (Caddy and nginx leave it alone too).
DEFAULT_EXCLUDE_TYPES = ("text/event-stream",)


# --------------------------------------------------------------------------- Accept-Encoding


@dataclass(frozen=True, slots=True)
class AcceptEncoding:
    """A parsed ``Accept-Encoding`` (RFC 9110 §12.5.3).

    ``present`` is False when the request had no such field. ``weights`` maps each
    content-coding named (lower-cased, aliases resolved) to its weight; ``star`` is
    the weight of ``*`` and ``identity`` that of ``identity``, None when not listed.
    """

    present: bool
    weights: Mapping[str, float]
    star: float | None = None
    identity: float | None = None

    def weight(self, coding: str) -> float:
        """The weight of ``coding``: its own entry, else ``*``'s, else 0 (not acceptable).

        RFC 9110 §12.5.3: 'An "identity" token is used as a synonym for "no encoding"'
        and '"*" ... matches any available content coding not explicitly listed'.
        """
        w = self.weights.get(coding)
        if w is not None:
            return w
        return self.star if self.star is not None else 0.0


NO_ACCEPT_ENCODING = AcceptEncoding(False, {})


def parse_qvalue(text: str) -> float | None:
    """RFC 9110 §12.4.2 ``qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )``; None if invalid."""
    if text in ("0", "1"):
        return float(text)
    if not 2 <= len(text) <= 5 or text[0] not in "01" or text[1] != ".":
        return None
    frac = text[2:]
    if not all(c in "0123456789" for c in frac) or (text[0] == "1" and frac.strip("0")):
        return None
    return float(text[0] + "." + (frac or "0"))


def _elements(values: Iterable[str]) -> Iterable[str]:
    # RFC 9110 §5.3: several field lines combine with commas; §5.6.1: empty list elements are ignored.
    for value in values:
        for element in value.split(","):
            element = element.strip(" \t")
            if element:
                yield element


def parse_accept_encoding(values: Sequence[str] | None) -> AcceptEncoding:
    """Parse every ``Accept-Encoding`` field line of a request (RFC 9110 §12.5.3).

    Names compare case-insensitively (content-codings are case-insensitive, §8.4.1),
    whitespace around ``;`` and ``=`` is tolerated (OWS, §12.4.2). An element whose
    weight is not a valid qvalue (``q=2``, ``q=0.1234``, ``q=x``) is ignored as a whole:
    edge cannot know what the client meant, and reading it as q=1 could send a coding
    the client refused. When a coding is listed twice, the lower weight counts, so an
    exclusion (``q=0``) is never overridden by a repetition.
    """
    if values is None:
        return NO_ACCEPT_ENCODING
    weights: dict[str, float] = {}
    star: float | None = None
    identity: float | None = None
    for element in _elements(values):
        name, _, params = element.partition(";")
        name = name.strip(" \t").lower()
        if not name:
            continue
        q: float | None = 1.0
        for param in params.split(";") if params else ():
            key, eq, val = param.partition("=")
            if key.strip(" \t").lower() == "q":
                q = parse_qvalue(val.strip(" \t")) if eq else None
                break
            # RFC 9110 §12.5.3's grammar has no other parameter on a coding; an unknown one
            # does not change what the coding name means, so it is ignored.
        if q is None:
            continue
        name = _ALIASES.get(name, name)
        if name == "*":
            star = q if star is None else min(star, q)
        elif name == IDENTITY:
            identity = q if identity is None else min(identity, q)
        else:
            weights[name] = min(weights.get(name, q), q)
    return AcceptEncoding(True, weights, star, identity)


def choose_coding(accept: AcceptEncoding, preference: Sequence[str]) -> str | None:
    """The coding to send: the highest client weight among ``preference`` (> 0), ties to
    the server's order; None means identity.

    No ``Accept-Encoding`` at all: RFC 9110 §12.5.3 says 'any content coding is considered
    acceptable', but every client that can decode a coding says so, and one that sent
    nothing (a script, a health check) is far likelier to break on gzip than to want it:
    edge sends identity, as nginx, Caddy and Apache do. An empty field value 'implies
    that the user agent does not want any content coding' (same section): identity.
    Identity is also the answer when the client refused it (``identity;q=0``) and accepts
    nothing edge has: a proxy cannot refuse to relay (the 415 of §15.5.16 is the origin's).
    """
    if not accept.present:
        return None
    best: str | None = None
    best_q = 0.0
    for coding in preference:
        q = accept.weight(coding)
        if q > best_q:
            best, best_q = coding, q
    return best


# --------------------------------------------------------------------------- media types

_MEMO_MAX = 1024  # bound of each per-value memo (Content-Type verdicts, Accept-Encoding choices)


@dataclass(frozen=True, slots=True)
class TypePattern:
    """One allow-list entry: ``type/subtype``, ``type/*`` or ``type/*+suffix`` (lower-cased)."""

    type: str
    subtype: str  # "*" for any, "*+json" for a suffix, else exact

    def matches(self, mtype: str, subtype: str) -> bool:
        if mtype != self.type:
            return False
        s = self.subtype
        if s == "*":
            return True
        if s.startswith("*+"):
            return subtype.endswith(s[1:])
        return subtype == s


def parse_type_pattern(text: str) -> TypePattern:
    """``text/*`` -> TypePattern; ValueError naming the problem (used by the config)."""
    t, slash, s = text.strip().lower().partition("/")
    if not slash or not t or not s or t == "*" or "/" in s or ";" in s:
        raise ValueError(f"not a media type pattern (type/subtype, type/* or type/*+suffix): {text!r}")
    if "*" in s and s != "*" and not (s.startswith("*+") and len(s) > 2 and "*" not in s[1:]):
        raise ValueError(f"a wildcard is only allowed as type/* or type/*+suffix: {text!r}")
    return TypePattern(t, s)


def media_type(content_type: str | None) -> tuple[str, str] | None:
    """RFC 9110 §8.3.1 ``type "/" subtype *( OWS ";" OWS parameter )`` -> (type, subtype) lower-cased."""
    if not content_type:
        return None
    t, slash, s = content_type.partition(";")[0].strip(" \t").lower().partition("/")
    if not slash or not t or not s:
        return None
    return t, s


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """The allow-list minus the exclusions, matched on the media type of ``Content-Type``."""

    allow: tuple[TypePattern, ...]
    exclude: tuple[TypePattern, ...] = ()
    # Content-Type values recur (a site has a handful): verdicts are remembered, a bounded number
    _seen: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, allow: Iterable[str], exclude: Iterable[str] = ()) -> "TypeFilter":
        return cls(tuple(map(parse_type_pattern, allow)), tuple(map(parse_type_pattern, exclude)))

    def accepts(self, content_type: str | None) -> bool:
        seen = self._seen.get(content_type)
        if seen is not None:
            return seen
        ok = self._accepts(content_type)
        if len(self._seen) < _MEMO_MAX:
            self._seen[content_type] = ok
        return ok

    def _accepts(self, content_type: str | None) -> bool:
        mt = media_type(content_type)
        if mt is None:
            return False  # no (or a malformed) Content-Type: edge cannot know the body is text
        t, s = mt
        return any(p.matches(t, s) for p in self.allow) and not any(p.matches(t, s) for p in self.exclude)


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Rules:
    """What the configuration says (one per route with compression on)."""

    preference: tuple[str, ...] = DEFAULT_PREFERENCE
    min_size: int = 512
    types: TypeFilter = TypeFilter.parse(DEFAULT_TYPES, DEFAULT_EXCLUDE_TYPES)

    def __post_init__(self) -> None:
        unknown = [c for c in self.preference if c not in CODINGS]
        if unknown or not self.preference or len(set(self.preference)) != len(self.preference):
            raise ValueError(f"preference: a non-empty list of distinct codings among {CODINGS} (got {self.preference})")
        if self.min_size < 0:
            raise ValueError(f"min_size: must be >= 0 (got {self.min_size})")


@dataclass(frozen=True, slots=True)
class Decision:
    """``coding``: encode with it (None: identity). ``vary``: add ``Vary: Accept-Encoding``.
    ``weaken_etag``: a 304 whose ETag must be weakened like the 200's (see the module text).
    ``reason``: why there is no coding (for tests and debugging)."""

    coding: str | None
    vary: bool
    reason: str
    weaken_etag: bool = False


_RESPONSE_FIELDS = frozenset({"content-type", "content-encoding", "content-range", "cache-control", "etag"})
_REQUEST_FIELDS = frozenset({"accept-encoding", "range", "cache-control", "if-none-match"})


def _fields(headers: Sequence[tuple[str, str]], wanted: frozenset[str]) -> dict[str, list[str]]:
    """The values of the ``wanted`` fields, in one pass over the head."""
    out: dict[str, list[str]] = {}
    for k, v in headers:
        lk = k.lower()
        if lk in wanted:
            if lk in out:
                out[lk].append(v)
            else:
                out[lk] = [v]
    return out


def _no_transform(values: list[str] | None) -> bool:
    # most Cache-Control values do not mention it at all: only those that do are parsed
    return bool(values) and any("no-transform" in v.lower() for v in values) and \
        "no-transform" in cache_directive_names(values)


_choices: dict[tuple[str, tuple[str, ...]], str | None] = {}


def negotiated(accept_encoding: list[str] | None, preference: tuple[str, ...]) -> str | None:
    """``choose_coding(parse_accept_encoding(values), preference)``, remembered per distinct value:
    browsers send a handful of Accept-Encoding strings, and the choice is a pure function of them."""
    key = (", ".join(accept_encoding) if accept_encoding is not None else None, preference)
    try:
        return _choices[key]
    except KeyError:
        pass
    coding = choose_coding(parse_accept_encoding(accept_encoding), preference)
    if len(_choices) < _MEMO_MAX:
        _choices[key] = coding
    return coding


def cache_directive_names(values: Iterable[str]) -> frozenset[str]:
    """The lower-cased directive names of ``Cache-Control`` field lines (RFC 9111 §5.2).

    Values may be quoted strings holding commas (``private="a, b"``), so the list is
    split outside quotes only; names are case-insensitive (§5.2).
    """
    names: set[str] = set()
    for value in values:
        start, quoted, escaped = 0, False, False
        for i, c in enumerate(value + ","):
            if escaped:
                escaped = False
            elif quoted:
                if c == "\\":
                    escaped = True
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == ",":
                name = value[start:i].partition("=")[0].strip(" \t").lower()
                if name:
                    names.add(name)
                start = i + 1
    return frozenset(names)


# the frequent decisions, built once
NOT_ACCEPTED = Decision(None, True, "not accepted")
NO_CONTENT = Decision(None, False, "no content")
_ENCODE = {c: Decision(c, True, "") for c in CODINGS}


def _has_coding(content_encoding: list[str]) -> bool:
    # 'identity' is not a content coding (RFC 9110 §8.4.1 reserves it for Accept-Encoding); a stray
    # "Content-Encoding: identity" says the body is unencoded, so it does not block compression.
    return any(c.strip(" \t").lower() not in ("", IDENTITY) for v in content_encoding for c in v.split(","))


def response_block(status: int, headers: Sequence[tuple[str, str]], length: int | None, rules: Rules,
                   f: dict[str, list[str]] | None = None) -> str | None:
    """Why this response cannot be encoded whatever the request, or None if it can."""
    if status < 200 or status in _NO_CONTENT:
        return "no content"                       # RFC 9110 §6.4.1 (1xx, 204, 304)
    if status == 206:
        return "partial content"                  # RFC 9110 §15.3.7: the ranges are of the identity bytes
    if f is None:
        f = _fields(headers, _RESPONSE_FIELDS)
    if "content-range" in f:
        return "content-range"                    # RFC 9110 §14.4 (e.g. on a 416)
    ce = f.get("content-encoding")
    if ce and _has_coding(ce):
        return "already encoded"                  # RFC 9110 §8.4: never a second coding on top
    if _no_transform(f.get("cache-control")):
        # RFC 9111 §5.2.2.6: 'an intermediary (regardless of whether it implements a cache) MUST
        # NOT transform the content (as defined in Section 7.7 of [HTTP])'
        return "no-transform"
    if length is not None and length < rules.min_size:
        return "too small"
    ct = f.get("content-type")
    if not rules.types.accepts(ct[0] if ct else None):
        return "content type"
    return None


def request_block(method: str, request_headers: Sequence[tuple[str, str]],
                  f: dict[str, list[str]] | None = None) -> str | None:
    """Why this request gets identity even for an eligible response, or None."""
    if method == "HEAD":
        # The headers must be those a GET would get (RFC 9110 §9.3.2), and a GET is encoded
        # after its length is known; like nginx, HEAD goes through as the origin sent it
        # (with Vary, since the GET's representation varies).
        return "head"
    if f is None:
        f = _fields(request_headers, _REQUEST_FIELDS)
    if "range" in f:
        # A client asking for a range is resuming or seeking in identity bytes; an encoded
        # 200 would not be what it can splice (RFC 9110 §14.2).
        return "range request"
    if _no_transform(f.get("cache-control")):
        # RFC 9111 §5.2.1.6: the client 'is asking for intermediaries to avoid transforming the content'
        return "no-transform request"
    return None


def decide(method: str, request_headers: Sequence[tuple[str, str]], status: int,
           response_headers: Sequence[tuple[str, str]], length: int | None, rules: Rules) -> Decision:
    """What to do with one response (see the module text for the two groups of checks)."""
    if status == 304:
        return _decide_304(request_headers, response_headers, rules)
    block = response_block(status, response_headers, length, rules)
    if block is not None:
        return Decision(None, False, block)
    req = _fields(request_headers, _REQUEST_FIELDS)
    block = request_block(method, request_headers, req)
    if block is not None:
        return Decision(None, True, block)
    coding = negotiated(req.get("accept-encoding"), rules.preference)
    if coding is None:
        return NOT_ACCEPTED
    return _ENCODE[coding]


def _decide_304(request_headers: Sequence[tuple[str, str]], response_headers: Sequence[tuple[str, str]],
                rules: Rules) -> Decision:
    # RFC 9110 §15.4.5: a 304 carries the ETag and Vary 'that would have been sent in a 200'.
    # Its Content-Type (if any) is not reliable evidence, so the client's own If-None-Match
    # is: naming the weak form of the strong tag means its copy came encoded through edge.
    etags = _fields(response_headers, _RESPONSE_FIELDS).get("etag")
    if not etags or etags[0].startswith("W/"):
        return NO_CONTENT
    weak = "W/" + etags[0].strip(" \t")
    req = _fields(request_headers, _REQUEST_FIELDS)
    if not any(t.strip(" \t") == weak for v in req.get("if-none-match", ()) for t in v.split(",")):
        return NO_CONTENT
    if negotiated(req.get("accept-encoding"), rules.preference) is None:
        return NO_CONTENT
    return Decision(None, True, "no content", weaken_etag=True)


# --------------------------------------------------------------------------- header changes


def weak_etag(value: str) -> str:
    """``"abc"`` -> ``W/"abc"`` (RFC 9110 §8.8.3); a weak or malformed value is returned as is."""
    v = value.strip(" \t")
    if v.startswith('"') and v.endswith('"') and len(v) >= 2:
        return "W/" + v
    return value


def with_vary(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with ``Accept-Encoding`` in ``Vary`` (RFC 9110 §12.5.5), merged, never duplicated.

    ``Vary: *`` already says everything varies and is left alone; an existing list gets
    the name appended to its last field line rather than a second line.
    """
    last = -1
    for i, (k, v) in enumerate(headers):
        if k.lower() == "vary":
            names = [n.strip(" \t").lower() for n in v.split(",")]
            if "*" in names or "accept-encoding" in names:
                return headers
            last = i
    out = list(headers)
    if last < 0:
        out.append(("Vary", "Accept-Encoding"))
    else:
        k, v = out[last]
        v = v.strip(" \t")
        out[last] = (k, f"{v}, Accept-Encoding" if v else "Accept-Encoding")
    return out


def encoded_headers(headers: list[tuple[str, str]], coding: str) -> list[tuple[str, str]]:
    """The head of a response whose body edge encodes with ``coding``."""
    out: list[tuple[str, str]] = []
    for k, v in headers:
        lk = k.lower()
        if lk in _DROP_WHEN_ENCODED or lk == "content-encoding":
            continue  # Content-Encoding here can only be "identity" (response_block refused the rest)
        if lk == "etag":
            v = weak_etag(v)
        out.append((k, v))
    out.append(("Content-Encoding", coding))
    return with_vary(out)


def identity_headers(headers: list[tuple[str, str]], decision: Decision) -> list[tuple[str, str]]:
    """The head of a response that stays identity: ``Vary`` and, for a 304, the ETag as the 200 had it."""
    if decision.weaken_etag:
        headers = [(k, weak_etag(v) if k.lower() == "etag" else v) for k, v in headers]
    return with_vary(headers) if decision.vary else headers
