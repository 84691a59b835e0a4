"""HTTP field syntax: the one place that says what a valid name or value is (pure).

Theory of operation. Every header name and value that edge writes to a socket,
to a client or to a backend, whatever produced it (the client, a plugin, the
configuration), passes one of these checks first (h11 validates on the way out
too). Config loaders call the same functions so that an invalid value is refused
at start with file/key/reason instead of at request time.

RFC 9110 §5.1: ``field-name = token``; §5.6.2: ``token = 1*tchar``,
``tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA``.
RFC 9110 §5.5: "Field values containing CR, LF, or NUL characters are invalid
and dangerous"; other CTLs are tolerated in received values but edge never
writes them either (except HTAB, which is part of the value grammar). Values are
``str`` holding bytes as latin-1 (obs-text, 0x80-0xFF, is allowed): a character
above U+00FF (``€`` from a plugin or the config) has no byte to be written as and
is refused here, not by an encoder at request time.
"""

from __future__ import annotations

import re
from operator import itemgetter

TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# field-value = *field-content; obs-text (0x80-0xFF) allowed; CTLs except HTAB are not,
# nor anything latin-1 cannot encode.
_BAD_VALUE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]")


def is_token(s: str) -> bool:
    """True when ``s`` is an RFC 9110 token (method names, field names)."""
    return _TOKEN_RE.fullmatch(s) is not None


def is_field_value(s: str) -> bool:
    """True when ``s`` may be written as a field value: no CR, LF, NUL or other CTL but HTAB,
    nothing above U+00FF, no leading or trailing whitespace (RFC 9110 §5.5: field-value
    excludes them). The config loaders' check; the serialisers use ``fields_valid``."""
    if _BAD_VALUE_RE.search(s) is not None:
        return False
    return not s or (s[0] not in " \t" and s[-1] not in " \t")


def field_error(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot be written, or None when it can (for config errors and logs)."""
    if not is_token(name):
        return f"invalid header name {name!r}: must be a token (RFC 9110 §5.1)"
    if not is_field_value(value):
        return (f"invalid value for header {name}: {value[:60]!r} contains a control character, "
                "a character above U+00FF or surrounding whitespace")
    return None


def first_invalid_field(fields) -> tuple[str, str] | None:
    """The first pair of ``fields`` that may not be written, for the log line; None when all may."""
    for name, value in fields:
        if not isinstance(name, str) or not isinstance(value, str):
            return name, value
        if _TOKEN_RE.fullmatch(name) is None or _BAD_VALUE_RE.search(value) is not None:
            return name, value
    return None


# The serialisers' check of a whole field list (issue 7: the reply writer was ~10% of
# a small request). Names repeat from reply to reply, so the ones found valid are
# remembered and checked with one C-level set operation; the values are joined with
# SP and tested with ``isascii`` + ``isprintable`` (C: the common case), else searched
# once for a CTL other than HTAB or a character latin-1 cannot encode.
_NAMES_OK: set[str] = set()
_NAMES_OK_MAX = 4096


_first = itemgetter(0)   # C-level accessors: map() over them stays in C
_second = itemgetter(1)


def fields_valid(fields) -> bool:
    """True when every ``(name, value)`` pair of ``fields`` may be written; False for a
    non-str name or value (a plugin bug). Leading/trailing whitespace is not checked here:
    it cannot break framing, and received values never have it."""
    try:
        if not _NAMES_OK.issuperset(map(_first, fields)):
            for name, _ in fields:
                if name not in _NAMES_OK:
                    if not isinstance(name, str) or _TOKEN_RE.fullmatch(name) is None:
                        return False
                    if len(_NAMES_OK) >= _NAMES_OK_MAX:
                        _NAMES_OK.clear()
                    _NAMES_OK.add(name)
        joined = " ".join(map(_second, fields))
        return (joined.isascii() and joined.isprintable()) or _BAD_VALUE_RE.search(joined) is None
    except TypeError:  # a name or value that is not a str, or not a pair
        return False
