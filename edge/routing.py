r"""The compiled route table: which route answers a request.

Theory of operation
-------------------
``compile_routes(cfg)`` runs once per worker and turns ``cfg.routes`` into a
``RouteTable`` of frozen ``Route`` values. ``RouteTable.match(host, path, method,
headers)`` then returns the first matching route, or ``None`` (the caller answers 404).
This module is pure: no sockets, no clock, nothing compiled per request.

Conditions (all must hold; an empty condition matches everything):

- host: exact names compare case-insensitively, without the port (``Example.com:8080``
  is ``example.com``; ``[::1]:8080`` is ``::1``) and without a trailing dot.
  ``*.example.com`` matches one or more labels in front of ``example.com``
  (``a.example.com``, ``a.b.example.com``), never the bare ``example.com``.
- path (the *normalised* path, see ``edge.urlpath``; paths are case-sensitive):
  ``exact`` equality; ``prefix`` ending in ``/`` is a plain string prefix, a prefix
  without trailing ``/`` matches at a segment boundary (``/api`` matches ``/api`` and
  ``/api/x``, not ``/apix``); ``regex`` is matched anchored at the start only
  (add ``$`` to anchor the end). Regular expressions (here, in header conditions and
  in ``rewrite``) use RE2 syntax and run in time linear in the input (``edge.pattern``):
  backreferences and lookaround are refused at load, ``\w``/``\d`` are ASCII.
- methods: the request method is one of them (case-sensitive, RFC 9110 §9.1; ``HEAD``
  is not implied by ``GET``).
- headers: for each name, some field of that name has exactly the value, or, for a
  value written ``~regex``, a field value in which the regex is found.

Precedence, when several routes match (the first rule that differs decides):

1. explicit ``priority``, higher first;
2. host specificity: exact host > wildcard (a longer wildcard first:
   ``*.a.example.com`` > ``*.example.com``) > no host condition;
3. path specificity: exact > regex > longer prefix > shorter prefix > no path condition;
4. routes with method or header conditions before routes without;
5. file order.

A route listing several hosts is ranked by the host that matched this request.

Encoded slashes. Edge keeps ``%2F`` (and ``%5C``, ``\``) as data: ``/files/a%2Fb`` is
one segment and reaches the backend unchanged. But a backend may read them as ``/``
(some decode ``%2F`` before resolving ``..``; IIS treats ``\`` as ``/``), and then
``/p/..%2Fadmin/secret`` is ``/admin/secret`` to it. So that a deny or restrict rule
holds under every interpretation, a request whose path holds one of these spellings
is matched again under each reading of them as ``/`` (each combination, normalised
again); if any reading picks a different route (or no route) than the path as sent,
the request is refused with 400 before any plugin runs. A ``%25`` (a backend that
decodes twice reads ``%2561`` as ``a``) and a ``;`` (servlet containers drop
``;parameters`` per segment: ``/admin;x`` is ``/admin`` to Tomcat) are more such spellings. ``/files/a%2Fb`` still
passes: both readings match the ``/files`` route. Paths without them cost nothing
more. Per route, ``encoded_slash: decode`` forwards the path with them read as
``/`` (the backend and edge then agree), and ``encoded_slash: reject`` answers 400
to any path that holds one.

How match() stays cheap: at compile time every route becomes one or more candidate
entries ``(route, path kind, arg, arg2, methods, headers)``; the path test is a plain
comparison done inline (``==``, ``startswith``) or a compiled regex's ``match``.
Candidate lists are merged and sorted by the precedence above once, per exact host
(its own routes + matching wildcard routes + any-host routes), per wildcard suffix
(its routes + shorter matching wildcards + any-host routes), and for any other host.
A request costs one host normalisation, one dict lookup (plus one per label while the
host's suffixes lead to a configured wildcard), then a scan of the pre-sorted list that
stops at the first match; nothing is allocated beyond the host key. Measured with
``timeit`` (best of 7 x 100k calls, CPython 3.11, 2-core VM under load) on
``conf/edge.yaml`` plus 40 virtual hosts and a wildcard: 0.5-0.6 µs for an exact-host
or first-candidate hit, 0.9-1.4 µs for an IP Host with port, a wildcard host, or the
default route (fourth candidate); ``host_key`` alone is about 0.35 µs.

Per route, ``upstream_path`` (strip_prefix, then the regex rewrite),
``redirect_location`` (``$host``/``$path``/``$query``) and the fixed ``response`` are
prepared here so the request path only calls them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from edge.config import EdgeConfig, RouteConfig, TimeoutsConfig
from edge.context import Headers, Response
from edge.errors import BadRequest, ConfigError
from edge.http import parse_host
from edge.pattern import check_template, compile_client_pattern
from edge.urlpath import SLASH_FORMS, decode_slashes, has_slash_forms, normalize_path, slash_interpretations

__all__ = ["Action", "Route", "RouteTable", "compile_routes", "host_key"]


class Action(enum.Enum):
    """What a route does with a matching request."""

    FORWARD = "forward"
    REDIRECT = "redirect"
    RESPOND = "respond"


class _HeaderLookup(Protocol):
    def get_all(self, name: str) -> list[str]: ...


def _no_redirect(host: str, path: str, query: str) -> str:
    raise TypeError("not a redirect route")


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One compiled route. Shared by every request of a worker: never mutate it.

    ``upstream_path(path, raw_path)`` is the path sent to the backend, where ``path``
    is the request's path when it is forwarded (normalised, and possibly rewritten by a
    plugin): ``strip_prefix`` then ``rewrite`` applied to ``path``, or to the raw one when
    ``forward_normalized_path`` is false and no plugin changed the path; it always
    starts with ``/``. With ``encoded_slash: decode`` the path's ``%2F``/``%5C``/``\\``
    are read as ``/`` first (and the normalised path is sent).

    ``upgrade_protocols`` are the lower-cased protocol names a client may upgrade to
    through this route (``Upgrade``); ``encoded_slash`` is ``keep``, ``decode`` or ``reject``.

    ``redirect_location(host, path, query)`` is the ``Location`` of a redirect route:
    ``$host`` is ``host`` verbatim (the request's Host, port included), ``$path`` is
    the normalised ``path`` after ``strip_prefix``/``rewrite``, ``$query`` is
    ``"?" + query``, or ``""`` when the query is empty. Other routes raise TypeError.

    ``timeouts`` is the route's override as configured; ``timeouts_for(pool)`` merges it
    over a pool's timeouts.

    ``response`` is the prebuilt answer of a RESPOND route (status, Content-Type,
    configured headers, body). It is shared: copy it before changing its headers.

    Routes compare and hash by identity (one object per configured route).
    """

    index: int
    name: str
    config: RouteConfig = field(repr=False)
    action: Action
    upstream: str | None
    upgrade_protocols: frozenset[str]
    encoded_slash: str
    host_header: str
    forward_normalized_path: bool
    timeouts: TimeoutsConfig | None = field(repr=False)
    upstream_path: Callable[[str, str], str] = field(repr=False)
    redirect_location: Callable[[str, str, str], str] = field(repr=False)
    response: Response | None = field(repr=False)
    _timeouts_by_upstream: Mapping[str, TimeoutsConfig] = field(repr=False)

    def timeouts_for(self, upstream: str) -> TimeoutsConfig | None:
        """This route's timeouts towards pool ``upstream``, or None to use the pool's own.

        A route's ``timeouts`` override only the keys it sets: ``timeouts: {read: 5s}``
        keeps the pool's ``connect``. Merged at compile time for every pool, since a
        plugin may send the request to another pool than ``self.upstream``.
        """
        return self._timeouts_by_upstream.get(upstream)

    @property
    def redirect_status(self) -> int | None:
        redirect = self.config.redirect
        return redirect.status if redirect is not None else None


# A candidate: (route, path kind, arg, arg2, methods or None, header tests), where by kind
#   _ANY_PATH: no path condition;
#   _EXACT:    path == arg;
#   _PREFIX:   path.startswith(arg) or path == arg2 (arg ends with "/"; arg2 is the
#              configured prefix without its trailing "/", or None if it had one);
#   _REGEX:    arg(path), arg being a compiled pattern's match method.
# Plain comparisons inline in match() cost less than a call per candidate.
# A header test is (name, exact value or None, compiled regex search or None).
_ANY_PATH, _EXACT, _PREFIX, _REGEX = 0, 1, 2, 3
_HeaderTest = tuple[str, str | None, Callable[[str], object] | None]
_Candidate = tuple[Route, int, object, str | None, frozenset[str] | None, tuple[_HeaderTest, ...]]
# value in RouteTable._wild for a suffix that only leads to longer wildcard suffixes
# (empty, so it is falsy; the list of a configured wildcard holds at least its routes)
_PARTIAL: tuple[_Candidate, ...] = ()


class RouteTable:
    """The routes of one configuration, compiled for matching. Read only."""

    __slots__ = ("routes", "_exact", "_wild", "_any")

    def __init__(
        self,
        routes: tuple[Route, ...],
        exact: dict[str, tuple[_Candidate, ...]],
        wild: dict[str, tuple[_Candidate, ...]],
        any_host: tuple[_Candidate, ...],
    ) -> None:
        self.routes = routes
        self._exact = exact
        self._wild = wild
        self._any = any_host

    def match(self, host: str, path: str, method: str, headers: _HeaderLookup) -> Route | None:
        """The route for a request, or None. ``path`` must already be normalised.

        Raises BadRequest (400) for a path with an encoded slash that routes differently
        under another reading, or that a route with ``encoded_slash: reject`` would take
        (see "Encoded slashes" in the module docstring).
        """
        cands = self._lookup(host_key(host))
        found = _first_match(cands, path, method, headers)
        if "%" in path or "\\" in path or ";" in path:  # three scans; the rest only for the rare paths that need it
            if has_slash_forms(path):
                self._check_slash_readings(cands, found, path, method, headers)
        return found

    @staticmethod
    def _check_slash_readings(
        cands: tuple[_Candidate, ...], found: Route | None, path: str, method: str, headers: _HeaderLookup
    ) -> None:
        if found is not None and found.encoded_slash == "reject" and any(f in path for f in SLASH_FORMS):
            raise BadRequest(f"route {found.name} refuses encoded slashes (path {path[:80]!r})")
        for other in slash_interpretations(path):
            alt = _first_match(cands, other, method, headers)
            if alt is not found:
                raise BadRequest(
                    f"ambiguous path {path[:80]!r}: as sent it is routed to "
                    f"{found.name if found else 'no route'}, read as {other[:80]!r} to {alt.name if alt else 'no route'}"
                )

    def _lookup(self, h: str) -> tuple[_Candidate, ...]:
        cands = self._exact.get(h)
        if cands is not None:
            return cands
        cands = self._any
        wild = self._wild
        if wild:
            # Walk the host's suffixes from the shortest (".com") while they lead to some
            # configured wildcard; the last wildcard found is the longest that matches.
            # i > 0 keeps at least one label in front: the bare domain never matches.
            i = h.rfind(".")
            while i > 0:
                found = wild.get(h[i:])
                if found is None:
                    break
                if found:  # _PARTIAL is empty; a wildcard's own list never is
                    cands = found
                i = h.rfind(".", 0, i)
        return cands

    def candidates(self, host: str) -> tuple[Route, ...]:
        """The routes tried for ``host``, in precedence order (for diagnostics and tests)."""
        return tuple(c[0] for c in self._lookup(host_key(host)))

    def __len__(self) -> int:
        return len(self.routes)

    def __repr__(self) -> str:
        return f"<RouteTable {len(self.routes)} routes, {len(self._exact)} hosts, {len(self._wild)} wildcards>"


def _first_match(cands: tuple[_Candidate, ...], path: str, method: str, headers: _HeaderLookup) -> Route | None:
    for route, kind, arg, arg2, methods, header_tests in cands:
        if kind:
            if kind == _PREFIX:
                if not path.startswith(arg) and path != arg2:  # type: ignore[arg-type]
                    continue
            elif kind == _EXACT:
                if path != arg:
                    continue
            elif not arg(path):  # type: ignore[operator]
                continue
        if methods is not None and method not in methods:
            continue
        if header_tests and not _headers_match(header_tests, headers):
            continue
        return route
    return None


def _headers_match(tests: tuple[_HeaderTest, ...], headers: _HeaderLookup) -> bool:
    for name, exact, search in tests:
        values = headers.get_all(name)
        if exact is not None:
            if exact not in values:
                return False
        elif search is not None:
            for v in values:
                if search(v):
                    break
            else:
                return False
    return True


def host_key(host: str) -> str:
    """The host name of a Host header value, as routes compare it.

    Lower case, port removed, IPv6 brackets removed (``[::1]:8080`` -> ``::1``),
    trailing dot removed. A bare IPv6 address (several colons, no brackets) is kept
    whole.
    """
    h = host.lower()
    if ":" in h:
        if h[0] == "[" or h.count(":") == 1:
            try:
                h = parse_host(h)[0]
            except ValueError:
                return h  # matches no configured host (those passed parse_host at load)
    if h[-1:] == ".":
        h = h[:-1]
    return h


# --------------------------------------------------------------------------- compile


def compile_routes(cfg: EdgeConfig, scheme: str | None = None) -> RouteTable:
    """Compile ``cfg.routes``; raise ConfigError for what the schema cannot see.

    With ``scheme`` (``http`` or ``https``), routes whose ``match.scheme`` names the
    other one are left out of the matching (they keep their index): the table for the
    requests of that kind of listener (``scheme_tables``)."""
    source = cfg.source
    routes: list[Route] = []
    seen_names: dict[str, int] = {}
    # (rank key, candidate) per host pattern
    exact: dict[str, list[tuple[tuple, _Candidate]]] = {}
    wild: dict[str, list[tuple[tuple, _Candidate]]] = {}
    any_host: list[tuple[tuple, _Candidate]] = []

    for i, rc in enumerate(cfg.routes):
        name = rc.name or f"route{i}"
        if name in seen_names:
            raise ConfigError(source, f"routes[{i}].name", f"duplicate route name {name!r} (also routes[{seen_names[name]}])")
        seen_names[name] = i
        route = _build_route(i, name, rc, source, cfg)
        routes.append(route)
        if scheme is not None and rc.match.scheme not in (None, scheme):
            continue

        kind, arg, arg2, path_rank = _path_test(rc)
        methods = frozenset(rc.match.methods) or None
        header_tests = _header_tests(rc)
        cond_rank = 0 if (methods or header_tests) else 1
        cand: _Candidate = (route, kind, arg, arg2, methods, header_tests)

        def key(host_rank: tuple[int, int]) -> tuple:
            return (-rc.priority, host_rank, path_rank, cond_rank, i)

        if not rc.match.host:
            any_host.append((key((2, 0)), cand))
        for j, pattern in enumerate(rc.match.host):
            if pattern.startswith("*."):
                suffix = pattern[1:].rstrip(".")  # ".example.com"
                wild.setdefault(suffix, []).append((key((1, -len(suffix))), cand))
            else:
                h = _config_host(pattern, source, f"routes[{i}].match.host[{j}]")
                exact.setdefault(h, []).append((key((0, 0)), cand))

    def merged(*groups: Iterable[tuple[tuple, _Candidate]]) -> tuple[_Candidate, ...]:
        best: dict[int, tuple[tuple, _Candidate]] = {}
        for group in groups:
            for k, cand in group:
                idx = cand[0].index
                if idx not in best or k < best[idx][0]:
                    best[idx] = (k, cand)
        return tuple(c for _, c in sorted(best.values(), key=lambda kc: kc[0]))

    def wildcards_covering(h: str) -> list[tuple[tuple, _Candidate]]:
        # every wildcard suffix that matches host h (at least one label in front)
        out: list[tuple[tuple, _Candidate]] = []
        i = h.find(".", 1)
        while i != -1:
            out.extend(wild.get(h[i:], ()))
            i = h.find(".", i + 1)
        return out

    exact_table = {h: merged(group, wildcards_covering(h), any_host) for h, group in exact.items()}
    # For a wildcard suffix S (".a.example.com"), the hosts it covers are also covered by
    # every shorter wildcard suffix of S: wildcards_covering("x" + S) lists them all.
    wild_table: dict[str, tuple[_Candidate, ...]] = {}
    for s in wild:
        # every shorter suffix of a wildcard (".com" of ".example.com") marks the way to it
        i = s.find(".", 1)
        while i != -1:
            wild_table.setdefault(s[i:], _PARTIAL)
            i = s.find(".", i + 1)
    wild_table.update({s: merged(wildcards_covering("x" + s), any_host) for s in wild})
    return RouteTable(tuple(routes), exact_table, wild_table, merged(any_host))


def _config_host(pattern: str, source: str, key_path: str) -> str:
    """Normalise a configured exact host the way host_key normalises a request's."""
    if pattern.count(":") > 1 and not pattern.startswith("["):
        pattern = f"[{pattern}]"  # a bare IPv6 address
    try:
        name, port = parse_host(pattern)
    except ValueError as e:
        raise ConfigError(source, key_path, str(e)) from None
    if port is not None or pattern.endswith(":"):
        raise ConfigError(source, key_path, f"host must not include a port (got {pattern!r})")
    return name.rstrip(".")


def _path_test(rc: RouteConfig) -> tuple[int, object, str | None, tuple[int, int]]:
    """(kind, arg, arg2, path rank) of the route's path condition; see _Candidate."""
    pm = rc.match.path
    if pm is None:
        return _ANY_PATH, None, None, (3, 0)
    if pm.exact is not None:
        return _EXACT, pm.exact, None, (0, 0)
    if pm.regex is not None:
        return _REGEX, compile_client_pattern(pm.regex).match, None, (1, 0)
    prefix = pm.prefix
    assert prefix is not None  # PathMatch guarantees exactly one
    if prefix.endswith("/"):
        return _PREFIX, prefix, None, (2, -len(prefix))
    # segment boundary: "/api" matches "/api" and "/api/...", not "/apix"
    return _PREFIX, prefix + "/", prefix, (2, -len(prefix))


def _header_tests(rc: RouteConfig) -> tuple[_HeaderTest, ...]:
    out: list[_HeaderTest] = []
    for name, value in rc.match.headers.items():
        if value.startswith("~"):
            out.append((name, None, compile_client_pattern(value[1:]).search))
        else:
            out.append((name, value, None))
    return tuple(out)


def _build_route(i: int, name: str, rc: RouteConfig, source: str, cfg: EdgeConfig) -> Route:
    if rc.upstream is not None:
        action = Action.FORWARD
    elif rc.redirect is not None:
        action = Action.REDIRECT
    else:
        action = Action.RESPOND
    transform = _path_transform(i, rc, source)
    redirect_location = _no_redirect
    if rc.redirect is not None:
        redirect_location = _redirect_location(i, rc, transform, source)
    return Route(
        index=i,
        name=name,
        config=rc,
        action=action,
        upstream=rc.upstream,
        upgrade_protocols=rc.upgrade_protocols,
        encoded_slash=rc.encoded_slash,
        host_header=rc.host_header,
        forward_normalized_path=rc.forward_normalized_path,
        timeouts=rc.timeouts,
        upstream_path=_upstream_path(rc, transform),
        redirect_location=redirect_location,
        response=_fixed_response(rc) if rc.respond is not None else None,
        _timeouts_by_upstream=_merged_timeouts(rc, cfg),
    )


def _merged_timeouts(rc: RouteConfig, cfg: EdgeConfig) -> Mapping[str, TimeoutsConfig]:
    if rc.timeouts is None or rc.upstream is None:
        return MappingProxyType({})
    override = {k: getattr(rc.timeouts, k) for k in rc.timeouts.model_fields_set}
    return MappingProxyType({name: pool.timeouts.model_copy(update=override) for name, pool in cfg.upstreams.items()})


def _path_transform(i: int, rc: RouteConfig, source: str) -> Callable[[str], str] | None:
    """strip_prefix then rewrite, on one path; None when the route has neither."""
    strip: str | None = None
    if rc.strip_prefix:
        assert rc.match.path is not None and rc.match.path.prefix is not None  # RouteConfig guarantees it
        strip = rc.match.path.prefix
    sub: Callable[[str], str] | None = None
    if rc.rewrite is not None:
        pattern = compile_client_pattern(rc.rewrite.regex)
        replace = rc.rewrite.replace
        try:
            check_template(pattern, replace)  # catches \3 with two groups, \g<bad>
        except ValueError as e:
            raise ConfigError(source, f"routes[{i}].rewrite.replace", str(e)) from None

        def sub(path: str) -> str:
            return pattern.sub(replace, path)

    if strip is None and sub is None:
        return None
    n = len(strip) if strip is not None else 0

    def transform(path: str) -> str:
        if n:
            path = path[n:]
            if path[:1] != "/":
                path = "/" + path
        if sub is not None:
            path = sub(path)
            if path[:1] != "/":
                path = "/" + path
        return path

    return transform


def _upstream_path(rc: RouteConfig, transform: Callable[[str], str] | None) -> Callable[[str, str], str]:
    t: Callable[[str], str] = transform if transform is not None else _same
    if rc.encoded_slash == "decode":
        # The decoded reading is what edge routed by (every reading reaches this route)
        # and what the backend gets, whatever forward_normalized_path says.
        return lambda path, raw: t(decode_slashes(path))
    if rc.forward_normalized_path:
        if transform is None:
            return lambda path, raw: path
        return lambda path, raw: transform(path)
    prefix = rc.match.path.prefix if (rc.strip_prefix and rc.match.path is not None) else None

    def raw_upstream_path(path: str, raw: str) -> str:
        # A plugin that rewrote ctx.path decides what is forwarded (issue 7): the raw
        # path is sent only while ctx.path is still its normalised form.
        try:
            changed = path != normalize_path(raw)
        except ValueError:  # a raw path another front end admitted differently: its normalised form decides
            changed = True
        if changed:
            return t(path)
        # The raw path matched only through its normalised form: when it does not start
        # with the prefix itself (e.g. "/%61pi/x" for "/api"), strip from the normalised one.
        if prefix is not None and not raw.startswith(prefix):
            return t(path)
        return t(raw)

    return raw_upstream_path


def _same(path: str) -> str:
    return path


_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_]+)\}|([A-Za-z_]+))")
_PLACEHOLDER_INDEX = {"host": 0, "path": 1, "query": 2}


def _redirect_location(
    i: int, rc: RouteConfig, transform: Callable[[str], str] | None, source: str
) -> Callable[[str, str, str], str]:
    assert rc.redirect is not None
    location = rc.redirect.location
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(location):
        word = m.group(1) or m.group(2)
        if word not in _PLACEHOLDER_INDEX:
            raise ConfigError(
                source, f"routes[{i}].redirect.location", f"unknown placeholder ${word} (known: $host, $path, $query)"
            )
        parts.append(location[pos:m.start()].replace("{", "{{").replace("}", "}}"))
        parts.append("{%d}" % _PLACEHOLDER_INDEX[word])
        pos = m.end()
    parts.append(location[pos:].replace("{", "{{").replace("}", "}}"))
    fmt = "".join(parts).format

    decode = rc.encoded_slash == "decode"

    def redirect_location(host: str, path: str, query: str) -> str:
        if decode:
            path = decode_slashes(path)
        if transform is not None:
            path = transform(path)
        return fmt(host, path, "?" + query if query else "")

    return redirect_location


def _fixed_response(rc: RouteConfig) -> Response:
    assert rc.respond is not None
    r = rc.respond
    headers = Headers([("Content-Type", r.content_type)])
    for name, value in r.headers.items():
        if name.lower() == "content-type":
            headers.set(name, value)
        else:
            headers.add(name, value)
    return Response(r.status, headers, r.body)


def scheme_tables(cfg: EdgeConfig, table: RouteTable) -> dict[str, RouteTable]:
    """The route table per request scheme: ``table`` itself for both unless a route has
    a ``match.scheme`` condition."""
    if not any(rc.match.scheme for rc in cfg.routes):
        return {"http": table, "https": table}
    return {"http": compile_routes(cfg, "http"), "https": compile_routes(cfg, "https")}
