"""waf: SQL injection and XSS detection with anomaly scoring (libinjection + our own rules).

Theory of operation
-------------------
**What is inspected** (each a *location*, named in logs and exclusions):

==============================  ===============================================
``path``                        the request path, percent-decoded once
``args:<name>``                 each query argument's value (decoded once, ``+`` is a space)
``args_names:<name>``           each query argument's name
``cookie:<name>``               each cookie's value (percent-decoded once); every pair of every
                                ``Cookie`` field, a name sent twice inspected twice
``header:<name>``               the configured headers (default ``User-Agent``, ``Referer``)
``body:form:<name>``            each field of an ``application/x-www-form-urlencoded`` body
``body:form_names:<name>``      each field name of such a body
``body:json:$.a.b[0]``          every string leaf of a JSON body (``application/json``,
                                ``*+json``), down to ``json_max_depth``; object keys as
                                ``body:json_keys:$.a``
==============================  ===============================================

Bodies are read whole (up to ``body_max_bytes``) through the plugin contract's opt-in
(``request_body_buffer``) before any byte reaches the backend; a longer body is refused
with 413 (``body_oversize: reject``, the default) or inspected up to the cap
(``truncate``, which lets the rest through uninspected). Other content types
(multipart, XML, binary) are not parsed.

**Evasions.** Each value is checked as decoded once, and, when it still holds a
``%``, decoded again, with IIS ``%uXXXX`` escapes and overlong two-byte UTF-8
(``%c0%bc`` for ``<``) turned into the characters they stand for: a backend that
decodes twice must not see what the WAF did not. When it holds ``&`` it is also
checked with HTML character references resolved (``&#x3c;``, ``&colon;``), the form a
browser sees in an attribute.

**Rules.** Every rule has an id, a class (``sqli``, ``xss`` or a custom one), a
severity (``critical`` 5, ``error`` 4, ``warning`` 3, ``notice`` 2 points) and a
paranoia level (1-4), as in the OWASP Core Rule Set; only rules at or below the
configured ``paranoia`` run. Level 1 is libinjection's SQLi and XSS tokenizers
(``libinjection-sqli``, ``libinjection-xss``) plus a few regular expressions for what
they miss (time-based blind SQL, ``javascript:`` URLs, script and event-handler
markup, template expressions); higher levels add broader expressions with more false
positives. The expressions in ``RULES`` are this project's own, written from attack
classes. Operators add ``rules`` of their own (RE2 through ``edge.pattern``: linear
time whatever the input). A request's *anomaly score* is the sum of the scores of
every (location, rule) hit; at or above ``threshold`` (default 5: one critical hit)
the request is an attack.

**Exclusions** (per route through per-route settings, per parameter through
``exclude``): a location pattern (exact, or a prefix ending in ``*``) and the rule
ids or classes it excuses (all when none are given).

**Modes.** ``block`` answers ``status`` (403) with a short body naming a reference
id (the request id when ``request_id`` set one, else a random one) that is also in
the log line; ``detect`` only logs and counts. Every decision above the threshold is
logged with the score and each match (``args:q libinjection-sqli``) and counted as
``plugin.waf.<mode>.<class>`` once per class matched. ``ctx.facts["waf"]`` holds the
``WafVerdict`` for later plugins and the log.

**Long values.** A value is inspected whole: past ``MAX_VALUE_CHARS`` in windows of that
size overlapping by ``WINDOW_OVERLAP`` (libinjection reads a string from its start; a
payload up to the overlap long lies whole in some window). What one request has
inspected, head and body together, is bounded by ``inspect_max_chars``; past it the
request scores rule ``waf-inspect-limit`` (critical) and nothing more is inspected: a
request that cannot be inspected whole is not passed as if it had been.

**Cost.** The hot path is a GET with a short query. A value made only of letters,
digits and ``_.-/`` cannot carry an injection any shipped rule looks for and is skipped
at once (not when the operator adds rules: those may look for plain text); the verdict of every other value up to ``MEMO_VALUE_CHARS`` (512) long is kept in a memo
bounded in entries and so in bytes (user agents and common query values repeat; long values
seldom do, and keeping them would let a client fill the memo with whole bodies), so libinjection (about 2 µs for SQLi) and the one
combined RE2 search over all enabled expressions run once per distinct value.
"""

from __future__ import annotations

import html
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal
from urllib.parse import unquote

import libinjection
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.config import Size
from edge.context import RequestContext, Response
from edge.fields import is_token
from edge.pattern import compile_client_pattern
from edge.plugins import BodyBuffer, Plugin, PluginConfig, Services

__all__ = ["Waf", "Rule", "RULES", "Match", "WafVerdict", "decoded_forms", "json_strings", "query_pairs", "windows",
           "cookie_pairs"]

SEVERITY = {"critical": 5, "error": 4, "warning": 3, "notice": 2}

#: a longer value is inspected whole, in windows of this many characters (libinjection reads a
#: string from its start; a window is what one call sees)
MAX_VALUE_CHARS = 8192
#: consecutive windows overlap by this much: a payload up to this long is seen whole in one
#: window wherever it sits, also across a window edge
WINDOW_OVERLAP = 512
#: what a request may have inspected beyond ``body_max_bytes`` by default (the head: path,
#: query, cookies, headers; ``server.max_head_size`` is 64 KB, a URL-valued header counts twice)
INSPECT_HEAD_CHARS = 256 * 1024
#: verdicts memoised per worker (distinct values); cleared when full
MEMO_SIZE = 4096
#: only values up to this long are memoised (the ones that repeat: user agents, common query
#: values), so the memo holds at most MEMO_SIZE * (MEMO_VALUE_CHARS + 5) characters of keys
#: (about 2 MB), not MEMO_SIZE whole bodies' worth
MEMO_VALUE_CHARS = 512
#: a JSON body holding more strings than this is an anomaly in itself (rule waf-body-limits)
MAX_JSON_STRINGS = 10000

M_PREFIX = "plugin.waf."  # + <mode>.<class>


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection rule: a regular expression (or a libinjection check, ``pattern`` None)."""

    id: str
    cls: str
    severity: str
    paranoia: int
    pattern: str | None = None

    @property
    def score(self) -> int:
        return SEVERITY[self.severity]


# Our own expressions, by attack class (RE2 syntax: no lookaround, no backreferences).
RULES: tuple[Rule, ...] = (
    Rule("libinjection-sqli", "sqli", "critical", 1),
    Rule("libinjection-xss", "xss", "critical", 1),
    # -- paranoia 1: specific shapes libinjection misses, rare in honest input
    Rule("sqli-time-blind", "sqli", "critical", 1,
         r"(?i)\b(?:sleep|pg_sleep)\s*\(\s*\d+(?:\.\d+)?\s*\)|\bbenchmark\s*\(\s*\d+\s*,|waitfor\s+delay\s+'"
         r"|dbms_pipe\s*\.\s*receive_message\s*\("),
    Rule("sqli-union-select", "sqli", "critical", 1,
         r"(?i)\bunion(?:\s|/\*.*?\*/|\+|\()+(?:all|distinct)?(?:\s|/\*.*?\*/|\+|\()*select\b"),
    Rule("sqli-stacked", "sqli", "critical", 1,
         r"(?i);\s*(?:drop\s+(?:table|database)|shutdown\b|exec(?:ute)?\s*(?:\(|xp_|sp_|@)|declare\s+@"
         r"|truncate\s+table|insert\s+into|delete\s+from|update\s+\w+\s+set\b|alter\s+table|create\s+(?:table|user)"
         r"|select\s+(?:pg_sleep|\d|@@|\*|[a-z_]+\s*\())"),
    Rule("sqli-meta-functions", "sqli", "critical", 1,
         r"(?i)information_schema|xp_cmdshell|load_file\s*\(|into\s+(?:out|dump)file|@@version|extractvalue\s*\("
         r"|updatexml\s*\(|group_concat\s*\(|pg_catalog|sysobjects|utl_http|dbms_\w+\.|procedure\s+analyse\s*\("
         r"|gtid_subset\s*\(|name_const\s*\(|exp\s*\(\s*~|floor\s*\(\s*rand\s*\("),
    Rule("sqli-subselect", "sqli", "critical", 1,
         r"(?i)\(\s*select\s+(?:\d|@@|\*|[a-z_]+\s*\(|[a-z_.]+\s+from\b)"),
    Rule("sqli-blind-compare", "sqli", "critical", 1,
         r"(?i)\b(?:and|or|rlike|xor)\b\s*\(?\s*(?:select|ascii|substr(?:ing)?|mid|ord|length)\s*\("),
    Rule("xss-script-tag", "xss", "critical", 1, r"(?i)<\s*/?\s*script\b"),
    Rule("xss-tag-handler", "xss", "critical", 1, r"(?i)<[a-z][a-z0-9:-]*[\s/][^>]*?\bon[a-z]{3,}\s*="),
    Rule("xss-handler-attribute", "xss", "critical", 1,
         r"(?i)(?:^|[\s\"'/;`])on(?:load|error|click|dblclick|mouse[a-z]+|focus(?:in|out)?|blur|key[a-z]+|submit|change"
         r"|input|toggle|begin|start|end|pointer[a-z]+|animation[a-z]+|transition[a-z]+|wheel|scroll|drag[a-z]*|drop"
         r"|copy|paste|cut|show|play|ended|resize|unload|beforeunload|hashchange|message|pageshow)\s*="),
    Rule("xss-script-url", "xss", "critical", 1,
         r"(?i)(?:j\s*a\s*v\s*a|v\s*b|l\s*i\s*v\s*e)\s*s\s*c\s*r\s*i\s*p\s*t\s*(?::|&colon;)\S"),
    Rule("xss-data-url", "xss", "critical", 1,
         r"(?i)data\s*:\s*(?:text/html|text/javascript|application/(?:x-)?javascript)\s*[;,]"),
    Rule("xss-dangerous-tag", "xss", "critical", 1,
         r"(?i)<\s*(?:iframe|frame|frameset|object|embed|applet|meta|base|svg|math|isindex|xss|link|style|form)\b"),
    Rule("xss-template-expression", "xss", "critical", 1,
         r"(?i)\{\{[^}]*(?:constructor|\$on|\$eval|_c\.|alert|prompt|confirm)|\$\{\s*(?:alert|prompt|confirm|eval)\s*\("),
    Rule("xss-js-breakout", "xss", "critical", 1,
         r"(?i)^\s*['\"]?\s*[-+;]\s*(?:alert|prompt|confirm|eval)\s*[(`]"),
    Rule("sqli-quote-comment", "sqli", "critical", 1, r"['\"]\s*\)*\s*(?:--(?:[\s\-]|$)|#|/\*)"),
    # -- paranoia 2: broader, some false positives in technical text
    Rule("sqli-quote-boolean", "sqli", "critical", 2, r"(?i)['\"]\s*(?:or|and|\|\||&&|xor)\s+['\"\d(]"),
    Rule("sqli-functions", "sqli", "error", 2,
         r"(?i)\b(?:char|concat|concat_ws|ascii|substring|hex|unhex|version|user|database|cast|convert)\s*\("),
    Rule("sqli-hex-literal", "sqli", "warning", 2, r"(?i)\b0x[0-9a-f]{8,}\b"),
    Rule("sqli-order-having", "sqli", "error", 2, r"(?i)['\d)]\s*(?:order|group)\s+by\s+\d|'\s*having\s"),
    Rule("xss-html-tag", "xss", "error", 2,
         r"(?i)<\s*(?:img|video|audio|source|body|input|details|marquee|a|div|select|textarea|button|template)\b[^>]*="),
    Rule("xss-js-sink", "xss", "critical", 2,
         r"(?i)\b(?:alert|prompt|confirm|eval)\s*[(`]|document\s*\.\s*(?:cookie|domain|write)|\.innerhtml\b"
         r"|window\s*\.\s*location"),
    Rule("xss-svg-data-url", "xss", "error", 2, r"(?i)data\s*:\s*image/svg\+xml"),
    Rule("xss-css-expression", "xss", "critical", 2, r"(?i)expression\s*\(|-moz-binding|behavior\s*:"),
    # -- paranoia 3: SQL words and markup in general
    Rule("sqli-keyword-after-quote", "sqli", "warning", 3,
         r"(?i)['\"`)]\s*(?:select|union|insert|update|delete|drop|having|where|from)\b"),
    Rule("sqli-sql-statement", "sqli", "warning", 3,
         r"(?i)\bselect\b.+\bfrom\b|\binsert\s+into\b|\bdelete\s+from\b|\bdrop\s+table\b"),
    Rule("xss-any-tag", "xss", "warning", 3, r"(?i)<\s*/?\s*[a-z][a-z0-9]*[\s/>]"),
    # -- paranoia 4: meta-characters themselves
    Rule("meta-sql-chars", "sqli", "notice", 4, r"(?:'.*){2,}|--|;|/\*"),
    Rule("meta-html-chars", "xss", "notice", 4, r"[<>\"`]"),
)

LIBINJECTION_SQLI = RULES[0]
LIBINJECTION_XSS = RULES[1]
#: libinjection SQLi hits whose fingerprint looks like SQL-ish *text* rather than a break-out of
#: a value: scored ``error`` (4, under the default threshold alone) at paranoia 1, critical above
LIBINJECTION_SQLI_TEXT = Rule("libinjection-sqli", "sqli", "error", 1)
# A value injected into an SQL literal must first close it: its fingerprint starts with a
# number or string (the literal it ends), a variable, a closing parenthesis, an opening one
# (a sub-select in a numeric context) or libinjection's "evil" token. One that starts with a
# word, a function or a keyword ("If (a < b) && ...", "char(10)", "Use getElementById('x')",
# a whole SELECT statement in a code snippet) is text about SQL; so is two strings joined by
# and/or ("the 'or' operator"), which no SQL dialect reads as a tautology.
_BREAKOUT_START = frozenset("1sv)(X")
_TEXT_FINGERPRINTS = frozenset({"s&s"})

_RULE_IDS = frozenset(r.id for r in RULES)
_CLASSES = frozenset(r.cls for r in RULES)

# A value made only of these characters cannot carry anything a rule above looks for.
_PLAIN = re.compile(r"[A-Za-z0-9_.\-/]*").fullmatch
# IIS %uXXXX and overlong two-byte UTF-8 forms of ASCII (%c0%bc is '<' to a lax decoder)
_PCT_U = re.compile(r"%u([0-9a-fA-F]{4})")
_OVERLONG = re.compile(r"%[cC]([01])%([89abAB][0-9a-fA-F])")
_SQL_COMMENT = re.compile(r"/\*.*?\*/", re.S)   # non-greedy with a fixed end: linear
# backslash escapes in a quoted cookie value, as Python's http.cookies (and so Django) reads them
_COOKIE_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))", re.S)


# --------------------------------------------------------------------------- pure helpers


def _never(value: str) -> bool:
    return False


def _overlong(m: re.Match[str]) -> str:
    return chr(((int(m.group(1)) & 0x1) << 6) | (int(m.group(2), 16) & 0x3F))


def windows(value: str) -> Iterator[str]:
    """``value`` in pieces of ``MAX_VALUE_CHARS`` overlapping by ``WINDOW_OVERLAP``, covering it
    whole: a payload no longer than the overlap lies entirely inside at least one window."""
    n = len(value)
    if n <= MAX_VALUE_CHARS:
        yield value
        return
    step = MAX_VALUE_CHARS - WINDOW_OVERLAP
    start = 0
    while True:
        yield value[start:start + MAX_VALUE_CHARS]
        if start + MAX_VALUE_CHARS >= n:
            return
        start += step


def decoded_forms(value: str) -> tuple[str, ...]:
    """``value`` (already decoded once) and the further forms an evasion may rely on:
    decoded again (with ``%uXXXX`` and overlong UTF-8), and with HTML references resolved."""
    forms = [value]
    if "\x00" in value:
        forms.append(value.replace("\x00", ""))   # NULs inside keywords: <scr\0ipt>
    if "%" in value:
        again = _OVERLONG.sub(_overlong, _PCT_U.sub(lambda m: chr(int(m.group(1), 16)), value))
        again = unquote(again, errors="replace")
        if again != value:
            forms.append(again)
            if "\x00" in again:
                forms.append(again.replace("\x00", ""))
    for v in tuple(forms):
        if "/*" in v:
            bare = _SQL_COMMENT.sub(" ", v)   # comments as separators: UNION/**/SELECT
            if bare not in forms:
                forms.append(bare)
    for v in tuple(forms):
        if "&" in v:
            un = html.unescape(v)
            if un != v and un not in forms:
                forms.append(un)
    return tuple(forms)


def query_pairs(query: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each ``&``-separated field, ``+`` as a space and percent-decoded
    once (``urllib.parse.parse_qsl(keep_blank_values=True)``, at a third of its cost: this
    runs on every request with a query)."""
    out = []
    for field in query.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name, errors="replace")
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value, errors="replace")
        out.append((name, value))
    return out


def cookie_pairs(fields: list[str]) -> list[tuple[str, str]]:
    """``(name, value)`` of every pair of every ``Cookie`` field, duplicates included and in order.

    ``edge.cookies`` lets the first of a name win (RFC 6265 §5.4), but backends differ: Python's
    ``http.cookies`` and Django keep the *last*, others the first, and a piece without ``=`` is
    a value with an empty name to Django. The WAF cannot know which one the backend reads, so
    it inspects them all. A quoted value with backslash escapes comes twice: as sent, and as
    ``http.cookies`` unquotes it (``"1\\047 or \\0471\\047=\\0471"`` is ``1' or '1'='1`` to Django)."""
    out = []
    for field in fields:
        for piece in field.split(";"):
            name, sep, value = piece.partition("=")
            if not sep:
                name, value = "", name
            value = value.strip()
            quoted = len(value) >= 2 and value[0] == '"' and value[-1] == '"'
            if quoted:
                value = value[1:-1]   # RFC 6265 §4.1.1: a value may be quoted
            if value:
                name = name.strip()
                out.append((name, value))
                if quoted and "\\" in value:
                    out.append((name, _COOKIE_ESCAPE.sub(_cookie_unescape, value)))
    return out


def _cookie_unescape(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 8)) if m.group(1) else m.group(2)


class JsonLimit(ValueError):
    """A JSON document deeper or larger than the walk inspects."""


def json_strings(doc: Any, max_depth: int) -> Iterator[tuple[str, str]]:
    """``(location suffix, string)`` for every string leaf and object key of ``doc``,
    depth-first; raises ``JsonLimit`` past ``max_depth`` nested containers or
    ``MAX_JSON_STRINGS`` strings (a body built to hide past the walk is an anomaly)."""
    count = 0
    stack: list[tuple[str, Any, int]] = [("$", doc, 0)]
    while stack:
        path, node, depth = stack.pop()
        if isinstance(node, str):
            count += 1
            if count > MAX_JSON_STRINGS:
                raise JsonLimit(f"more than {MAX_JSON_STRINGS} strings")
            yield "json:" + path, node
        elif isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise JsonLimit(f"nested deeper than {max_depth}")
            if isinstance(node, dict):
                items = list(node.items())
                for k, v in reversed(items):
                    count += 1
                    if count > MAX_JSON_STRINGS:
                        raise JsonLimit(f"more than {MAX_JSON_STRINGS} strings")
                    yield "json_keys:" + path + "." + k, k
                    stack.append((f"{path}.{k}", v, depth + 1))
            else:
                for i in range(len(node) - 1, -1, -1):
                    stack.append((f"{path}[{i}]", node[i], depth + 1))


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that matched at one location."""

    location: str
    rule: str
    cls: str
    score: int

    def __str__(self) -> str:
        return f"{self.location} {self.rule}"


@dataclass(frozen=True, slots=True)
class WafVerdict:
    """What the WAF decided for a request (``ctx.facts["waf"]``)."""

    score: int
    matches: tuple[Match, ...]
    attack: bool            # score at or above the threshold
    blocked: bool           # attack and mode block
    reference: str | None   # the id in the 403 body and the log line


class _Budget:
    """What one request may still have inspected (``inspect_max_chars``), shared by its hooks
    through ``ctx.facts[BUDGET_FACT]``."""

    __slots__ = ("left", "over")

    def __init__(self, left: int) -> None:
        self.left = left
        self.over = False   # a value did not fit: the request is an anomaly, nothing more is inspected


#: ``ctx.facts`` key of the request's ``_Budget`` (the body hook goes on where on_request stopped)
BUDGET_FACT = "waf.budget"


# --------------------------------------------------------------------------- settings


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleSettings(_Model):
    id: str = Field(description="rule id, named in logs and exclusions")
    pattern: str = Field(description="regular expression (RE2 syntax), searched in every inspected value")
    cls: str = Field("custom", alias="class", description="attack class: the metric `plugin.waf.<mode>.<class>`")
    severity: Literal["critical", "error", "warning", "notice"] = Field("critical", description="5, 4, 3 or 2 points")
    paranoia: int = Field(1, ge=1, le=4, description="lowest paranoia level at which the rule runs")
    locations: tuple[str, ...] = Field((), description="only these location patterns (`args:*`, `header:user-agent`); "
                                                       "default all")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        compile_client_pattern(v)  # ValueError with RE2's reason
        return v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", v):
            raise ValueError(f"a rule id is letters, digits, '_', '.', '-' (got {v!r})")
        if v in _RULE_IDS:
            raise ValueError(f"{v!r} is a shipped rule id")
        return v


class ExcludeSettings(_Model):
    location: str = Field(description="location, exact (`args:q`) or a prefix ending in `*` (`body:json:$.doc*`)")
    rules: tuple[str, ...] = Field((), description="rule ids or classes (`sqli`, `xss`) excused there; default all")


# --------------------------------------------------------------------------- the plugin


class _LocationSet:
    """Location patterns compiled for a membership test: exact names and ``*`` prefixes."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact = frozenset(p.lower() for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1].lower() for p in patterns if p.endswith("*"))

    def __contains__(self, location: str) -> bool:
        low = location.lower()
        return low in self.exact or low.startswith(self.prefixes) if self.prefixes else low in self.exact

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)


class Waf(Plugin):
    """SQL injection and XSS detection with anomaly scoring over path, query, cookies, headers and bodies."""

    name = "waf"
    priority = 850   # after ipfilter (1000) and auth (900), before ratelimit (800): an attack costs no token

    class Config(PluginConfig):
        mode: Literal["block", "detect"] = Field("block", description="`block` answers `status`; `detect` logs and counts")
        paranoia: int = Field(1, ge=1, le=4, description="1 (default, few false positives) to 4 (strict)")
        threshold: int = Field(5, ge=1, description="anomaly score at which a request is an attack (critical = 5)")
        status: int = Field(403, ge=400, le=599, description="status of a blocked request")
        path: bool = Field(True, description="inspect the path")
        query: bool = Field(True, description="inspect query argument names and values")
        cookies: bool = Field(True, description="inspect cookie values")
        headers: tuple[str, ...] = Field(("User-Agent", "Referer"), description="request headers to inspect")
        body: bool = Field(True, description="inspect form and JSON bodies (read whole up to `body_max_bytes` "
                                             "before the backend is contacted)")
        body_max_bytes: Size = Field(128 * 1024, description="largest body inspected")
        body_oversize: Literal["reject", "truncate"] = Field(
            "reject", description="a longer body: 413 (`reject`) or inspect its first `body_max_bytes` and pass the "
                                  "rest uninspected (`truncate`)")
        json_max_depth: int = Field(32, ge=1, le=512, description="deeper JSON is an anomaly (rule waf-body-limits)")
        inspect_max_chars: Size | None = Field(
            None, description="characters inspected per request at most, all locations together (every value is "
                              "inspected whole); a request with more is an anomaly (rule `waf-inspect-limit`, "
                              "critical) and the rest is not inspected. Default `body_max_bytes` + 256 KB")
        rules: tuple[RuleSettings, ...] = Field((), description="extra rules")
        exclude: tuple[ExcludeSettings, ...] = Field((), description="locations excused from some or all rules")
        disable_rules: tuple[str, ...] = Field((), description="rule ids or classes not run at all")

        @field_validator("headers")
        @classmethod
        def _headers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for name in v:
                if not is_token(name):
                    raise ValueError(f"not a header name: {name!r}")
            return v

        @field_validator("body_max_bytes", "inspect_max_chars")
        @classmethod
        def _positive(cls, v: int | None) -> int | None:
            if v is not None and v < 1:
                raise ValueError("must be positive")
            return v

        @model_validator(mode="after")
        def _ids(self) -> "Waf.Config":
            ids = [r.id for r in self.rules]
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise ValueError(f"duplicate rule id {sorted(dup)[0]!r}")
            known = _RULE_IDS | _CLASSES | set(ids) | {r.cls for r in self.rules} | _LIMIT_NAMES
            for name in (*self.disable_rules, *(r for e in self.exclude for r in e.rules)):
                if name not in known:
                    raise ValueError(f"unknown rule or class {name!r}")
            return self

    @classmethod
    def request_body_buffer(cls, config: Config) -> BodyBuffer | None:
        return BodyBuffer(config.body_max_bytes, config.body_oversize) if config.body else None

    def __init__(self, config: Config, services: Services) -> None:
        self._log = services.logger or logging.getLogger("edge.plugin.waf")
        metrics = services.metrics
        self._incr: Callable[[str], None] = metrics.incr if metrics is not None else (lambda name: None)
        off = set(config.disable_rules)
        enabled = [r for r in RULES if r.paranoia <= config.paranoia and r.id not in off and r.cls not in off]
        self._sqli = any(r.id == "libinjection-sqli" for r in enabled)
        self._xss = any(r.id == "libinjection-xss" for r in enabled)
        self._paranoia = config.paranoia
        # regex rules: one combined RE2 search answers "any?" for a benign value; each rule only on a hit
        regex: list[tuple[Rule, Any, _LocationSet | None]] = []
        for r in enabled:
            if r.pattern is not None:
                regex.append((r, compile_client_pattern(r.pattern), None))
        for s in config.rules:
            if s.paranoia <= config.paranoia and s.id not in off and s.cls not in off:
                r = Rule(s.id, s.cls, s.severity, s.paranoia, s.pattern)
                regex.append((r, compile_client_pattern(s.pattern), _LocationSet(s.locations) if s.locations else None))
        self._regex = tuple(regex)
        self._any = compile_client_pattern("|".join(f"(?:{r.pattern})" for r, _, _ in regex)) if regex else None
        # the plain-value shortcut holds for the shipped rules only: an operator's rule may
        # look for plain text (``/etc/passwd``), so with custom rules every value is checked
        self._plain: Callable[[str], Any] = _PLAIN if not config.rules else _never
        excl = [(_LocationSet((e.location,)), frozenset(e.rules)) for e in config.exclude]
        self._exclude = tuple(excl)
        self._mode = config.mode
        self._block = config.mode == "block"
        self._threshold = config.threshold
        self._status = config.status
        self._path = config.path
        self._query = config.query
        self._cookies = config.cookies
        self._wanted = {h.lower(): "header:" + h.lower() for h in config.headers}
        self._json_depth = config.json_max_depth
        self._budget_chars = (config.inspect_max_chars if config.inspect_max_chars is not None
                              else config.body_max_bytes + INSPECT_HEAD_CHARS)
        # over the budget: scored unless the operator switched the rule off (then the rest passes)
        self._limit_scored = _INSPECT_LIMIT_RULE.id not in off and _INSPECT_LIMIT_RULE.cls not in off
        self._memo: dict[str, tuple[tuple[Rule, ...], tuple[tuple[Rule, _LocationSet], ...]]] = {}
        # counters (per worker), for tests and the status page
        self.blocked = 0
        self.detected = 0

    # -- detection (pure apart from the memo) ------------------------------------------

    def _value_rules(self, value: str) -> tuple[tuple[Rule, ...], tuple[tuple[Rule, _LocationSet], ...]]:
        """The rules that match ``value`` in any of its decoded forms: ``(unscoped, scoped)``."""
        memo = self._memo
        keep = len(value) <= MEMO_VALUE_CHARS
        if keep:
            hit = memo.get(value)
            if hit is not None:
                return hit
        found: list[Rule] = []
        scoped: list[tuple[Rule, _LocationSet]] = []
        seen: set[str] = set()
        for form in (f for w in windows(value) for f in decoded_forms(w)):
            if self._sqli and "libinjection-sqli" not in seen:
                r = libinjection.is_sql_injection(form)
                if r["is_sqli"]:
                    seen.add("libinjection-sqli")
                    fp = r["fingerprint"]
                    text = not fp or fp[0] not in _BREAKOUT_START or fp in _TEXT_FINGERPRINTS
                    found.append(LIBINJECTION_SQLI_TEXT if text and self._paranoia == 1 else LIBINJECTION_SQLI)
            if self._xss and "libinjection-xss" not in seen and libinjection.is_xss(form)["is_xss"]:
                seen.add("libinjection-xss")
                found.append(LIBINJECTION_XSS)
            if self._any is not None and self._any.search(form):
                for rule, pattern, scope in self._regex:
                    if rule.id not in seen and pattern.search(form):
                        seen.add(rule.id)
                        if scope is None:
                            found.append(rule)
                        else:
                            scoped.append((rule, scope))
        result = (tuple(found), tuple(scoped))
        if keep:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[value] = result
        return result

    def _inspect(self, location: str, value: str, out: list[Match], budget: _Budget, url: bool = False) -> None:
        if not value or self._plain(value):
            return
        if not self._spend(location, len(value) * (2 if url else 1), out, budget):
            return
        self._add(location, self._url_rules(value) if url else self._value_rules(value), out)

    def _spend(self, location: str, chars: int, out: list[Match], budget: _Budget) -> bool:
        """Take ``chars`` from the request's budget; False (and, the first time, the anomaly) when
        they do not fit: a value is inspected whole or not at all, never cut."""
        if budget.over:
            return False
        if chars > budget.left:
            budget.over = True
            if self._limit_scored and not self._excluded(location, _INSPECT_LIMIT_RULE):
                r = _INSPECT_LIMIT_RULE
                out.append(Match(location, r.id, r.cls, r.score))
            return False
        budget.left -= chars
        return True

    def _budget(self, ctx: RequestContext | None) -> _Budget:
        if ctx is None:
            return _Budget(self._budget_chars)
        budget = ctx.facts.get(BUDGET_FACT)
        if budget is None:
            budget = ctx.facts[BUDGET_FACT] = _Budget(self._budget_chars)
        return budget

    def _url_rules(self, url: str) -> tuple[tuple[Rule, ...], tuple[tuple[Rule, _LocationSet], ...]]:
        """The rules matching a URL-valued header (Referer) or any of its query arguments, decoded
        as a backend reading it would; memoised as a whole (one dict lookup for a repeated URL)."""
        keep = len(url) <= MEMO_VALUE_CHARS
        key = "\0url:" + url
        if keep:
            hit = self._memo.get(key)
            if hit is not None:
                return hit
        found, scoped = self._value_rules(url)
        plain = self._plain
        for _, arg in query_pairs(url.partition("?")[2].partition("#")[0]):
            if arg and not plain(arg):
                f, sc = self._value_rules(arg)
                found += tuple(r for r in f if r not in found)
                scoped += tuple(x for x in sc if x not in scoped)
        result = (found, scoped)
        if keep:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = result
        return result

    def _add(self, location: str, rules_found: tuple[tuple[Rule, ...], tuple[tuple[Rule, _LocationSet], ...]],
             out: list[Match]) -> None:
        found, scoped = rules_found
        if not found and not scoped:
            return
        rules = list(found)
        rules += [r for r, scope in scoped if location in scope]
        for rule in rules:
            if self._excluded(location, rule):
                continue
            out.append(Match(location, rule.id, rule.cls, rule.score))

    def _excluded(self, location: str, rule: Rule) -> bool:
        for where, which in self._exclude:
            if location in where and (not which or rule.id in which or rule.cls in which):
                return True
        return False

    def inspect_request(self, ctx: RequestContext) -> list[Match]:
        """Matches in the path, query, cookies and configured headers of ``ctx``."""
        out: list[Match] = []
        budget = self._budget(ctx)
        if self._path:
            raw = ctx.raw_path
            plain = self._plain
            if not plain(raw):
                # segment by segment: an injection sits in one segment (an id, a slug), and
                # libinjection reads a value from its start
                for segment in raw.split("/"):
                    if segment and not plain(segment):
                        self._inspect("path", unquote(segment, errors="replace"), out, budget)
        plain = self._plain
        q = ctx.query
        if q and self._query:
            for name, value in query_pairs(q):
                if value and not plain(value):
                    self._inspect("args:" + name, value, out, budget)
                if name and not plain(name):
                    self._inspect("args_names:" + name, name, out, budget)
        # one pass over the fields: the configured headers, and every Cookie field
        wanted = self._wanted
        cookie_fields: list[str] = []
        for k, v in ctx.headers.items():
            low = k.lower()
            if low == "cookie":
                cookie_fields.append(v)
            location = wanted.get(low)
            if location is not None and v and not plain(v):
                self._inspect(location, v, out, budget, url="?" in v and v.startswith(("http://", "https://")))
        if cookie_fields and self._cookies:
            for name, value in cookie_pairs(cookie_fields):
                self._inspect("cookie:" + name, unquote(value, errors="replace") if "%" in value else value, out,
                              budget)
        return out

    def inspect_body(self, content_type: str, body: bytes, ctx: RequestContext | None = None) -> list[Match]:
        """Matches in a form or JSON body; other content types are not parsed. With ``ctx``, the
        body takes what is left of the request's inspection budget."""
        out: list[Match] = []
        budget = self._budget(ctx)
        ctype = content_type.split(";", 1)[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            text = body.decode("utf-8", "replace")
            for name, value in query_pairs(text):
                self._inspect("body:form:" + name, value, out, budget)
                self._inspect("body:form_names:" + name, name, out, budget)
        elif ctype == "application/json" or ctype.endswith("+json"):
            try:
                doc = json.loads(body)
                for suffix, value in json_strings(doc, self._json_depth):
                    self._inspect("body:" + suffix, value, out, budget)
            except (ValueError, RecursionError) as e:
                # not JSON after all, or built to outlast the walk: inspect it as text, and
                # count the structure itself when it was valid but too deep or too large
                if isinstance(e, (RecursionError, JsonLimit)):
                    if not self._excluded("body:json", _LIMITS_RULE):
                        out.append(Match("body:json", _LIMITS_RULE.id, _LIMITS_RULE.cls, _LIMITS_RULE.score))
                self._inspect("body:raw", body.decode("utf-8", "replace"), out, budget)
        return out

    # -- decision ---------------------------------------------------------------------

    def _decide(self, ctx: RequestContext, matches: list[Match]) -> Response | None:
        previous: WafVerdict | None = ctx.facts.get("waf")
        if previous is not None:
            matches = [*previous.matches, *matches]
        score = sum(m.score for m in matches)
        if score < self._threshold:
            ctx.facts["waf"] = WafVerdict(score, tuple(matches), False, False, None)
            return None
        reference = ctx.request_id or secrets.token_hex(8)
        ctx.facts["waf"] = WafVerdict(score, tuple(matches), True, self._block, reference)
        mode = self._mode
        for cls in sorted({m.cls for m in matches}):
            self._incr(f"{M_PREFIX}{mode}.{cls}")
        # locations hold decoded client text (an argument name may carry a newline): escaped,
        # so a request cannot write a line of its own into the log
        shown = "; ".join(str(m)[:160] for m in matches[:20]).encode("unicode_escape").decode("ascii")
        self._log.warning("waf %s: %s %s from %s score=%d ref=%s matches=%s", mode, ctx.method, ctx.path[:200],
                          ctx.client_ip, score, reference, shown)
        if not self._block:
            self.detected += 1
            return None
        self.blocked += 1
        text = f"{self._status} forbidden (reference {reference})\n"
        return Response(self._status, [("Content-Type", "text/plain; charset=utf-8")], text)

    # -- hooks ------------------------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> Response | None:
        matches = self.inspect_request(ctx)
        if not matches:
            return None
        return self._decide(ctx, matches)

    def on_request_body_complete(self, ctx: RequestContext, body: bytes, truncated: bool) -> Response | None:
        if not body:
            return None
        ctype = ctx.headers.get("Content-Type")
        if not ctype:
            return None
        matches = self.inspect_body(ctype, body, ctx)
        if not matches:
            return None
        return self._decide(ctx, matches)


_LIMITS_RULE = Rule("waf-body-limits", "body", "critical", 1)
#: a request with more to inspect than ``inspect_max_chars``: what was not inspected may hide anything
_INSPECT_LIMIT_RULE = Rule("waf-inspect-limit", "limits", "critical", 1)
_LIMIT_NAMES = frozenset({_LIMITS_RULE.id, _INSPECT_LIMIT_RULE.id, _INSPECT_LIMIT_RULE.cls})
