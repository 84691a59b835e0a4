"""The request path: route, plugins, forward, respond. Nothing else lives here.

Theory of operation. ``Proxy.handle(ctx, body)`` takes a request that a front end
(``edge.h1`` for HTTP/1, ``edge.h2`` for HTTP/2 streams and plain WSGI servers)
has admitted (``edge.admission``: target, fields, Host, body framing) and turned
into a ``RequestContext`` and a ``RequestBody``, and returns a ``Reply``: status,
headers, and a body that is either bytes (answers edge makes itself) or an
iterator streaming from the backend. The front end frames the reply
(``edge.framing``), writes it and then calls ``Proxy.finish`` (log phase,
metrics). Every failure with a client-visible meaning is an ``EdgeError`` and
becomes ``e.status`` with a short body; anything else is a bug: 500, logged with
its traceback, counted. docs/request-path.md draws the whole path.
"""

from __future__ import annotations

import logging
import time

from edge import http as rules
from edge.acme import CHALLENGE_PREFIX
from edge.compress.compressor import Compressor
from edge.context import STATUS_REASONS, Headers, Reply, RequestBody, RequestContext, Response, UpstreamResponse, close_body
from edge.cookies import get_cookie
from edge.errors import BadRequest, EdgeError, UnsendableRequest, UpstreamError
from edge.logs import request_label
from edge.plugins import UPSTREAM_SET_BY
from edge.routing import Action, scheme_tables
from edge.tls import https_location, https_port, redirect_status, redirects_to_https
from edge.upstream.selection import Affinity
from edge.urlpath import normalize_path

log = logging.getLogger("edge.app")


def reply_from_response(resp: Response) -> Reply:
    # A Response comes from edge itself, the config (checked at load) or a plugin (anything):
    # framing fields are the writer's, so they are left out here.
    headers = rules.without_framing(resp.headers.items())
    return Reply(resp.status, STATUS_REASONS.get(resp.status, "Unknown"), headers, resp.body, len(resp.body))


# The answer to "OPTIONS *" (shared, like a fixed route's response): the usual methods; CONNECT is refused by admission.
SERVER_OPTIONS = Response(204, [("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")])

# The client's validators and ranges, replaced by the cache's own when it revalidates (RFC 9111 §4.3.1).
_CLIENT_VALIDATORS = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"})


def _affinity_key(ctx: RequestContext, affinity: tuple[Affinity, str | None]) -> str | None:
    """The value a hash or sticky pool balances this request on (None: the request has none)."""
    kind, name = affinity
    if kind is Affinity.CLIENT_IP:
        return ctx.client_ip
    if kind is Affinity.PATH:
        return ctx.path
    if kind is Affinity.HEADER:
        return ctx.headers.get(name)
    return get_cookie(ctx.headers, name)  # COOKIE, STICKY


class _Answered(Exception):
    """A plugin answered the request from its whole body, before the backend was contacted:
    the reply, carried past the exchange (which otherwise returns a backend's answer)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


class Proxy:
    """The request path over one worker's state (routes, pools, plugins, metrics)."""

    def __init__(self, state) -> None:
        self.state = state
        cfg = state.cfg
        self.routes = state.routes
        # per request scheme (plain or TLS listener), for routes with match.scheme (edge/tls.py)
        self.routes_by_scheme = scheme_tables(cfg, state.routes)
        self.https_redirect_port = https_port(cfg) if cfg.tls is not None and cfg.tls.redirect_http else None
        self.pools = state.pools
        self.plugins = state.plugins
        self.metrics = state.metrics
        self.trusted = rules.TrustedProxies(cfg.server.trusted_proxies)
        h = cfg.headers
        self.x_forwarded = h.x_forwarded
        self.forwarded = h.forwarded
        self.via = "1.1 edge" if h.via else None
        self.hide = frozenset(n.lower() for n in h.hide_backend)
        self.request_id_header = h.request_id_header
        self.client_errors = state.client_errors
        self.route_timeouts = state.route_timeouts
        self.access_log = state.access_log
        self.compressor = Compressor.from_config(cfg)  # None when no route compresses
        self.acme = state.acme  # answers ACME HTTP-01 challenges (edge.acme), None without tls.acme
        self.cache = state.cache  # edge.cache.cache.Cache, or None when no route caches

    # ------------------------------------------------------------------ entry

    def handle(self, ctx: RequestContext, body: RequestBody | None) -> Reply:
        try:
            return self._handle(ctx, body)
        except _Answered as a:
            return a.reply
        except UnsendableRequest as e:
            # a plugin or the configuration made the request invalid: the client logged it once, count it too
            self.metrics.incr(e.metric)
            return self.error_reply(ctx, e)
        except EdgeError as e:
            return self.error_reply(ctx, e)
        except Exception as e:  # a bug: answer 500, keep the worker serving
            log.exception("internal error handling %s %s (request id %s)", ctx.method, ctx.raw_path, self.request_id_of(ctx))
            self.metrics.incr("internal_error")
            return self.error_reply(ctx, e)

    def _arrived_over_tls(self, ctx: RequestContext) -> bool:
        """A trusted proxy in front terminated TLS (``X-Forwarded-Proto: https``): redirecting
        it to HTTPS would loop. Believed only from ``server.trusted_proxies``, as everywhere."""
        return bool(self.trusted) and ctx.peer_ip in self.trusted and \
            (ctx.headers.get("X-Forwarded-Proto") or "").strip().lower() == "https"

    def _to_https(self, ctx: RequestContext, host_value: str | None) -> Reply:
        """``tls.redirect_http``: a plain-HTTP request answered with its HTTPS address."""
        if not host_value:
            raise BadRequest("a request without Host cannot be redirected to HTTPS")
        location = https_location(host_value, ctx.raw_path, ctx.query, self.https_redirect_port)
        return self.answer(ctx, Response.redirect(redirect_status(ctx.method), location), self.plugins.default_chain)

    def finish(self, ctx: RequestContext) -> None:
        """After the last byte: log phase of the plugins, then metrics."""
        route = ctx.route
        chain = self.plugins.chain_for(route.index) if route is not None else self.plugins.default_chain
        chain.run_log(ctx)
        duration_s = time.monotonic() - ctx.start
        self.metrics.request(route.name if route is not None else "_none", ctx.status, duration_s)
        if self.access_log is not None:
            self.access_log.write(ctx, duration_s)

    # ------------------------------------------------------------------ steps

    def _handle(self, ctx: RequestContext, body: RequestBody | None) -> Reply:
        host_value = ctx.host  # checked by edge.admission
        try:
            ctx.path = normalize_path(ctx.raw_path)
        except ValueError as e:
            raise BadRequest(f"invalid path: {e}") from None
        if self.acme is not None and ctx.path.startswith(CHALLENGE_PREFIX):
            return self._acme_challenge(ctx)
        try:
            hostname, _port = rules.split_host_port(host_value, ctx.port) if host_value else ("", ctx.port)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if self.trusted:
            xff = ctx.headers.get_all("X-Forwarded-For")
            if xff:
                ctx.client_ip = rules.resolve_client_ip(ctx.peer_ip, xff, self.trusted)

        if ctx.scheme == "http" and self.https_redirect_port is not None and ctx.path != "*" \
                and redirects_to_https(ctx.raw_path) and not self._arrived_over_tls(ctx):
            return self._to_https(ctx, host_value)
        routes = self.routes_by_scheme.get(ctx.scheme, self.routes)
        route = routes.match(hostname, ctx.path, ctx.method, ctx.headers) if ctx.path != "*" else None
        if route is None:
            chain = self.plugins.default_chain
            answer = chain.run_request(ctx)
            if answer is not None:
                return self.answer(ctx, answer, chain)
            if ctx.path == "*":
                # RFC 9110 §9.3.7: "OPTIONS *" asks about the server in general, not a resource:
                # edge is that server and answers it (admission lets "*" through only for OPTIONS).
                return self.answer(ctx, SERVER_OPTIONS, chain)
            return self.answer(ctx, Response.error(404, "not found", ctx.request_id), chain)
        ctx.route = route
        ctx.upstream = route.upstream
        chain = self.plugins.chain_for(route.index)
        answer = chain.run_request(ctx)
        if answer is not None:
            return self.answer(ctx, answer, chain)
        action = route.action
        if action is Action.RESPOND:
            return self.answer(ctx, route.response, chain)
        if action is Action.REDIRECT:
            location = route.redirect_location(host_value, ctx.path, ctx.query)
            return self.answer(ctx, Response.redirect(route.redirect_status, location), chain)
        return self._forward(ctx, route, chain, body)

    def _acme_challenge(self, ctx: RequestContext) -> Reply:
        """RFC 8555 §8.3: the key authorization for the token, before routing and plugins (the CA
        must not meet a WAF or an auth plugin); 404 for a token edge did not publish."""
        answer = self.acme.answer_challenge(ctx.path[len(CHALLENGE_PREFIX):])
        if answer is None:
            return self.answer(ctx, Response.error(404, "not found", ctx.request_id))
        return self.answer(ctx, Response(200, [("Content-Type", "application/octet-stream")], answer))

    def _forward(self, ctx: RequestContext, route, chain, body: RequestBody | None) -> Reply:
        cache = self.cache
        if cache is not None and cache.routes[route.index] is not None:
            return cache.handle(self, ctx, route, chain, body)  # edge.cache.cache: lookup, then forward()/relay()
        return self.forward(ctx, route, chain, body)

    def forward(self, ctx: RequestContext, route, chain, body: RequestBody | None, tap=None) -> Reply:
        """Send the request to the backend and relay its answer (``tap``: see ``relay``)."""
        try:
            up = self.exchange(ctx, route, chain, body)
        except UpstreamError as e:
            return self.upstream_failed(ctx, chain, e)
        return self.relay(ctx, chain, up, tap)

    def exchange(self, ctx: RequestContext, route, chain, body: RequestBody | None, conditional=None,
                 interim: bool = True):
        """One exchange with the route's pool: the ``UpstreamReply`` (head read, body to stream).

        ``conditional``: the cache revalidating: the client's own validators and ranges are
        replaced by these request fields. ``interim``: the backend's 1xx heads go to the
        front end's ``ctx.interim`` (RFC 9110 §15.2); False for an exchange no client waits
        on (a background revalidation). An ``UpstreamError`` is logged, counted and raised."""
        pool = self.pools.get(ctx.upstream)
        if pool is None:
            raise self._unknown_upstream(ctx, route)
        headers = rules.upstream_request_headers(
            ctx.headers.items(),
            peer_ip=ctx.peer_ip,
            scheme=ctx.scheme,
            client_host=ctx.host,
            client_port=ctx.port,
            peer_trusted=ctx.peer_ip in self.trusted,
            # kept only when the client asked for an upgrade; RFC 9110 §7.8: "A server MUST ignore an
            # Upgrade header field that is received in an HTTP/1.0 request"
            upgrade_protocols=route.upgrade_protocols if ctx.version == "1.1" else (),
            x_forwarded=self.x_forwarded,
            forwarded=self.forwarded,
            via=self.via,
        )
        if conditional is not None:
            headers = [(n, v) for n, v in headers if n.lower() not in _CLIENT_VALIDATORS]
            headers.extend(conditional)
        hh = route.host_header
        # an HTTP/1.0 request may come without Host: the server's address is sent then (None)
        host = (ctx.host or None) if hh == "pass" else (None if hh == "upstream" else hh)
        target = route.upstream_path(ctx.path, ctx.raw_path)
        if ctx.query:
            target = f"{target}?{ctx.query}"
        body_iter = None
        body_length = None
        if body is not None:
            body_iter = body.chunks()
            body_length = body.length
            if chain.request_body_buffer is not None:
                # a plugin here needs the whole body (a WAF): read it before the backend is contacted
                early, body_iter, body_length = chain.inspect_request_body(ctx, body_iter, body_length)
                if early is not None:
                    raise _Answered(self.answer(ctx, early, chain))
            if chain.has_request_body_filters:
                body_iter = chain.filter_request_body(ctx, body_iter)
                body_length = None
        # Hash and sticky pools balance on a request attribute; the others cost one attribute read here.
        affinity = None if pool.affinity is None else _affinity_key(ctx, pool.affinity)
        started = time.monotonic()
        try:
            up = pool.exchange(ctx.method, target, host, headers, body_iter, body_length, self.route_timeouts.get((route.index, pool.name)),
                               affinity=affinity, interim=ctx.interim if interim else None)
        except UpstreamError as e:
            log.warning("%s %s (request id %s) -> upstream %s: %s", ctx.method, ctx.raw_path, self.request_id_of(ctx) or "-",
                        pool.name, e)
            self.metrics.incr(f"upstream.{pool.name}.{e.metric}")
            raise
        ctx.upstream_addr = up.server.authority
        ctx.upstream_time = time.monotonic() - started
        return up

    def response_headers(self, up) -> list[tuple[str, str]]:
        """A backend's response fields as they go to clients (hop-by-hop and hidden ones removed, Via)."""
        return rules.downstream_response_headers(up.headers, hide=self.hide, via=self.via, keep_upgrade=up.status == 101)

    def interim_fields(self, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A backend's 1xx fields as they go to the client: the rules of a final response
        (``response_headers``: hop-by-hop, Connection-named, hidden and framing fields removed,
        Via added). No response hook sees them (docs/plugins.md): they are not the answer."""
        return rules.downstream_response_headers(fields, hide=self.hide, via=self.via)

    def upstream_failed(self, ctx: RequestContext, chain, e: UpstreamError) -> Reply:
        """The backend failed: the plugins' error phase may answer, else ``e.status``."""
        ctx.error = e
        custom = chain.run_error(ctx, e)
        if custom is not None:
            return self.answer(ctx, custom, None)
        return self.error_reply(ctx, e)

    def relay(self, ctx: RequestContext, chain, up, tap=None) -> Reply:
        """The backend's answer to the client, through the response phase and body filters.

        ``tap(up, headers) -> (headers, body)`` (the cache) sees the head as it goes to
        clients before the plugins do, and may change it and wrap the body iterator; a tap
        that stores the answer sets ``tap.variants`` (``edge.cache.variants``), which the
        compressor's encoded stream is teed into."""
        out_headers = self.response_headers(up)
        body = up.body
        if tap is not None:
            out_headers, body = tap(up, out_headers)
        resp = UpstreamResponse(up.status, up.reason, Headers.wrap(out_headers), body)
        chain.run_response(ctx, resp)
        if resp.replacement is not None:
            close_body(body)
            up.close()
            return self.answer(ctx, resp.replacement, None)
        out = resp.headers.items()
        if chain.has_response_hooks and up.status != 101:
            out = rules.without_framing(out)  # a plugin may have added framing fields: the writer owns them
        pool = self.pools.get(ctx.upstream)
        if pool is not None and pool.sticky is not None and up.status != 101:
            # Pin the client to the server that answered, unless its cookie already names it (a new
            # client, or one whose server is gone, excluded or unknown). The field was checked when the
            # pool was built, and the writer checks every field again (edge/h1.py reply_head).
            cookie = pool.sticky.set_cookie_for(up.server.index, _affinity_key(ctx, pool.affinity))
            if cookie is not None:
                out.append(("Set-Cookie", cookie))
        reply = Reply(resp.status, up.reason or STATUS_REASONS.get(resp.status, ""), out, body, up.length)
        if up.status == 101:
            reply.upgrade = (up.upgrade_sock, up.upgrade_data)
            reply.body = None
            reply.length = None
        elif body is not None:
            if chain.has_body_filters:
                reply.body = chain.filter_body(ctx, body)
                reply.length = None
            else:
                reply.trailers_from = up
        if self.compressor is not None and up.status != 101:
            variants = getattr(tap, "variants", None)  # the cache stores this answer: tee the encoded stream too
            if variants is not None and reply.body is body:
                variants.compress(self.compressor, ctx, reply)
            else:
                self._compress(ctx, reply)
        ctx.status = reply.status
        ctx.response_headers = resp.headers
        return reply

    def _compress(self, ctx: RequestContext, reply: Reply) -> None:
        """After the plugins' body filters (they see identity bytes): edge.compress."""
        headers, body, length = self.compressor.apply(ctx, reply.status, reply.headers, reply.body, reply.length)
        if body is not reply.body:
            reply.trailers_from = None  # trailers about the identity bytes (digests) would be false now
        reply.headers, reply.body, reply.length = headers, body, length

    def reply_stored(self, ctx: RequestContext, chain, status: int, headers: list[tuple[str, str]], body, length: int | None,
                     variants=None) -> Reply:
        """A response from the cache: the response phase and body filters see it as they see a backend's.

        ``variants``: the stored object's encoded variants (``edge.cache.variants``), served
        instead of encoding the body again when no body filter has changed the bytes."""
        resp = UpstreamResponse(status, STATUS_REASONS.get(status, ""), Headers.wrap(headers), body)
        chain.run_response(ctx, resp)
        if resp.replacement is not None:
            close_body(body)
            return self.answer(ctx, resp.replacement, None)
        out = resp.headers.items()
        if chain.has_response_hooks:
            out = rules.without_framing(out)
        reply = Reply(resp.status, STATUS_REASONS.get(resp.status, ""), out, body, length)
        if body is not None and chain.has_body_filters:
            reply.body = chain.filter_body(ctx, body if not isinstance(body, bytes) else iter((body,)))
            reply.length = None
        if self.compressor is not None:
            if variants is not None and reply.body is body:
                variants.compress(self.compressor, ctx, reply)  # a stored encoded variant, or encode and store it
            else:
                self._compress(ctx, reply)
        ctx.status = reply.status
        ctx.response_headers = resp.headers
        return reply

    def _unknown_upstream(self, ctx: RequestContext, route) -> EdgeError:
        """A plugin chose a pool that does not exist (the config's own routes are checked at
        load): name the plugin, count it, and answer 500 with that cause in the access log."""
        by = ctx.facts.get(UPSTREAM_SET_BY)
        log.error("route %s: plugin %s set unknown upstream %r; %s", route.name, by or "(none)", ctx.upstream,
                  request_label(ctx, self.request_id_header))
        self.metrics.incr(f"plugin.{by}.unknown_upstream" if by else "unknown_upstream")
        err = EdgeError(f"route {route.name}: unknown upstream {ctx.upstream!r} (set by plugin {by})")
        err.metric = "unknown_upstream"
        return err

    def answer(self, ctx: RequestContext, resp: Response, chain=None) -> Reply:
        """An answer edge makes itself; the response phase still sees it (CORS, security headers)."""
        if chain is not None and chain.has_response_hooks:
            ur = UpstreamResponse(resp.status, STATUS_REASONS.get(resp.status, ""), Headers(list(resp.headers.items())), None)
            chain.run_response(ctx, ur)
            if ur.replacement is not None:
                resp = ur.replacement
            else:
                resp = Response(ur.status, ur.headers, resp.body)
        ctx.status = resp.status
        ctx.response_headers = resp.headers
        return reply_from_response(resp)

    def request_id_of(self, ctx: RequestContext) -> str | None:
        """The request id to name in log lines: the plugin-set one, else the client's header."""
        return ctx.request_id or ctx.headers.get(self.request_id_header)

    def error_reply(self, ctx: RequestContext, e: BaseException) -> Reply:
        status = e.status if isinstance(e, EdgeError) else 500
        public = e.public if isinstance(e, EdgeError) else "internal error"
        rid = self.request_id_of(ctx)
        if isinstance(e, EdgeError) and not isinstance(e, UpstreamError) and status < 500:
            # at INFO with the address and the reason, rate-limited: a scanner must not flood the log
            self.client_errors.log(ctx.client_ip, status, e, self.state.label(ctx))
        ctx.error = e
        resp = Response.error(status, public, rid)
        ctx.status = status
        ctx.response_headers = resp.headers
        reply = reply_from_response(resp)
        if status == 400:
            reply.close_connection = True
        return reply
