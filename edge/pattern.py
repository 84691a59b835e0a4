"""Regular expressions from the configuration that run against client input (pure).

Theory of operation. A route's path ``regex``, a header condition ``~regex``, a
``rewrite.regex`` and a CORS ``~regex`` origin are matched against bytes a client
chose. Python's ``re`` backtracks: ``^/api/(\\w+)+/x$`` took 2.3 s on a 30-character
path (issue 7), and one such request stalls a whole gevent worker. Every such
pattern is therefore compiled here, once, with RE2 (the ``google-re2`` binding),
whose automaton matches in time linear in the input whatever the pattern. RE2 has
no backreferences (``\\1`` inside a pattern) and no lookaround (``(?=``, ``(?<=``):
those patterns are refused at load with RE2's reason. Other differences from
``re``: ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII-only, and ``$`` matches only at
the very end (there is no newline in a path or a field value anyway).

Cost. The binding's ``match`` builds a match object through a generator; the boolean
tests here call RE2 directly (``RE2.Match`` on UTF-8 bytes), and an anchored test
first compares the literal prefix every match must start with (the common prefix of
RE2's ``PossibleMatchRange`` bounds), so a route regex that does not apply to a path
is usually refused by one ``str.startswith``. Measured (``timeit``, best of 5 x 100k,
CPython 3.11, 2-core VM shared with other jobs): ``re`` 0.1-0.4 µs per match on
typical route patterns, RE2 through the binding 1.6-5 µs, direct ``RE2.Match``
1.5-1.7 µs; with the prefix test a non-applying route costs about 0.1 µs. On a whole
``RouteTable.match`` (conf/edge.yaml plus two regex routes, best of 3x3 x 100k,
interleaved old/new in one process): a plain path is unchanged (1.3 µs), a path taken
by a regex route costs 2.2 µs instead of 0.9-1.1 µs with ``re``, about 1% of a proxied
request's CPU; that is the price of never stalling a worker on a hostile path.
"""

from __future__ import annotations

import re as _re_stdlib
from re import _parser as _sre_parse  # the template parser ``re.sub`` itself uses
from types import SimpleNamespace

import re2

__all__ = ["ClientPattern", "compile_client_pattern", "check_template"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported as a config error, not on stderr

_ANCHOR_START = re2._re2.RE2.Anchor.ANCHOR_START
_ANCHOR_BOTH = re2._re2.RE2.Anchor.ANCHOR_BOTH
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
_NO_MATCH = -1
_PREFIX_PROBE_LEN = 64


class ClientPattern:
    """One compiled client-facing pattern: ``match`` (anchored at the start), ``search``,
    ``fullmatch`` (booleans) and ``sub`` (for rewrites). Shared and read only."""

    __slots__ = ("pattern", "_compiled", "_raw", "_prefix", "groups", "groupindex")

    def __init__(self, pattern: str) -> None:
        try:
            compiled = re2.compile(pattern, _OPTIONS)
        except re2.error as e:
            raise ValueError(f"bad regular expression {pattern!r}: {_reason(e)}") from None
        self.pattern = pattern
        self._compiled = compiled
        self._raw = compiled._regexp
        self._prefix = _literal_prefix(self._raw)
        self.groups = compiled.groups
        self.groupindex = dict(compiled.groupindex)

    def match(self, text: str) -> bool:
        """True when the pattern matches at the start of ``text`` (``re.match``)."""
        if not text.startswith(self._prefix):
            return False
        b = text.encode("utf-8", "surrogateescape")
        return self._raw.Match(_ANCHOR_START, b, 0, len(b))[0][0] != _NO_MATCH

    def fullmatch(self, text: str) -> bool:
        """True when the pattern matches the whole of ``text`` (``re.fullmatch``)."""
        if not text.startswith(self._prefix):
            return False
        b = text.encode("utf-8", "surrogateescape")
        return self._raw.Match(_ANCHOR_BOTH, b, 0, len(b))[0][0] != _NO_MATCH

    def search(self, text: str) -> bool:
        """True when the pattern matches anywhere in ``text`` (``re.search``)."""
        b = text.encode("utf-8", "surrogateescape")
        return self._raw.Match(_UNANCHORED, b, 0, len(b))[0][0] != _NO_MATCH

    def sub(self, template: str, text: str) -> str:
        """``re.sub`` with a ``\\1``/``\\g<name>`` template (checked at load by check_template)."""
        return self._compiled.sub(template, text)

    def __repr__(self) -> str:
        return f"ClientPattern({self.pattern!r})"


def compile_client_pattern(pattern: str) -> ClientPattern:
    """Compile a pattern from the configuration that runs on client input; ValueError with
    the reason (fit for a config error) when RE2 refuses it."""
    return ClientPattern(pattern)


def check_template(pattern: ClientPattern, template: str) -> None:
    """Refuse a replacement template that names a group the pattern does not have
    (``\\3`` with two groups, ``\\g<bad>``) or is malformed; ValueError with the reason."""
    state = SimpleNamespace(groups=pattern.groups, groupindex=pattern.groupindex)
    try:
        _sre_parse.parse_template(template, state)
    except (_re_stdlib.error, IndexError) as e:
        raise ValueError(f"bad replacement {template!r}: {e}") from None


def _reason(e: Exception) -> str:
    msg = e.args[0] if e.args else e
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return f"{msg} (RE2 syntax: no backreferences, no lookaround)"


def _literal_prefix(raw) -> str:
    """The text every match (at the start) begins with: the common prefix of RE2's bounds."""
    ok, lo, hi = raw.PossibleMatchRange(_PREFIX_PROBE_LEN)
    if not ok:
        return ""
    n = 0
    for a, b in zip(lo, hi):
        if a != b:
            break
        n += 1
    prefix = lo[:n]
    while prefix:
        try:
            return prefix.decode("utf-8")
        except UnicodeDecodeError:
            prefix = prefix[:-1]  # cut inside a multi-byte character: keep the whole ones
    return ""


