"""The request path: route, plugins, forward, respond. Nothing else lives here.

Theory of operation. ``Proxy.handle(ctx, body)`` takes a request that a front end
(the HTTP/1 fast path in ``edge.worker`` or the WSGI adapter below, used for
HTTP/2 and for any other gunicorn worker) has turned into a ``RequestContext`` and
a ``RequestBody``, and returns a ``Reply``: status, headers, and a body that is
either bytes (answers edge makes itself) or an iterator streaming from the
backend. The front end writes the reply and then calls ``Proxy.finish`` (log
phase, metrics). Every failure with a client-visible meaning is an ``EdgeError``
and becomes ``e.status`` with a short body; anything else is a bug: 500, logged
with its traceback, counted.

The WSGI entry point is ``edge.app:application``; its per-worker state is built
after fork (``edge.runtime.build_worker_state``) by the worker or, under a plain
gunicorn worker class, on first use.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

from edge import http as rules
from edge.context import Headers, RequestContext, Response, UpstreamResponse
from edge.errors import BadRequest, EdgeError, UpstreamError
from edge.logs import request_label
from edge.plugins import UPSTREAM_SET_BY
from edge.routing import Action
from edge.urlpath import normalize_path

log = logging.getLogger("edge.app")

STATUS_REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large", 499: "Client Closed Request",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}

BODY_CHUNK = 65536


class RequestBody:
    """The client's request body as a front end delivers it.

    ``length`` is the Content-Length, or None for a chunked (or HTTP/2 unsized) body.
    ``read(n)`` returns b"" at the end. ``on_first_read`` runs once before the first
    read: the HTTP/1 front end sends ``100 Continue`` there, so a client that waits
    for it is only asked for the body once the request was accepted.
    """

    __slots__ = ("length", "read", "on_first_read", "consumed", "finished")

    def __init__(self, length: int | None, read: Callable[[int], bytes], on_first_read: Callable[[], None] | None = None) -> None:
        self.length = length
        self.read = read
        self.on_first_read = on_first_read
        self.consumed = 0
        self.finished = False

    def chunks(self) -> Iterator[bytes]:
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        read = self.read
        while True:
            chunk = read(BODY_CHUNK)
            if not chunk:
                self.finished = True
                return
            self.consumed += len(chunk)
            yield chunk


class Reply:
    """What the front end writes: status, headers, body (bytes or an iterator of chunks)."""

    __slots__ = ("status", "reason", "headers", "body", "length", "upgrade", "close_connection", "trailers_from")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body, length: int | None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body                 # bytes, an iterator of bytes, or None (no body)
        self.length = length             # Content-Length to announce, None for chunked
        self.upgrade = None              # (backend socket, bytes already read) after a 101
        self.close_connection = False
        self.trailers_from = None        # the UpstreamReply whose trailers follow a chunked body


def reply_from_response(resp: Response, headers_extra: list[tuple[str, str]] | None = None) -> Reply:
    headers = resp.headers.items()
    if headers_extra:
        headers = headers + headers_extra
    return Reply(resp.status, STATUS_REASONS.get(resp.status, "Unknown"), headers, resp.body, len(resp.body))


class Proxy:
    """The request path over one worker's state (routes, pools, plugins, metrics)."""

    def __init__(self, state) -> None:
        self.state = state
        cfg = state.cfg
        self.routes = state.routes
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
        self.route_timeouts = state.route_timeouts
        self.access_log = state.access_log

    # ------------------------------------------------------------------ entry

    def handle(self, ctx: RequestContext, body: RequestBody | None) -> Reply:
        try:
            return self._handle(ctx, body)
        except EdgeError as e:
            return self.error_reply(ctx, e)
        except Exception as e:  # a bug: answer 500, keep the worker serving
            log.exception("internal error handling %s %s", ctx.method, ctx.raw_path)
            self.metrics.incr("internal_error")
            return self.error_reply(ctx, e)

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
        host_value = ctx.host
        if not host_value:
            if ctx.version == "1.1" and not ctx.http2:
                raise BadRequest("HTTP/1.1 request without Host")
        elif not rules.valid_host(host_value):
            raise BadRequest(f"invalid Host {host_value!r}")
        try:
            ctx.path = normalize_path(ctx.raw_path)
        except ValueError as e:
            raise BadRequest(f"invalid path: {e}") from None
        try:
            hostname, _port = rules.split_host_port(host_value, ctx.port) if host_value else ("", ctx.port)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if self.trusted:
            xff = ctx.headers.get_all("X-Forwarded-For")
            if xff:
                ctx.client_ip = rules.resolve_client_ip(ctx.peer_ip, xff, self.trusted)

        route = self.routes.match(hostname, ctx.path, ctx.method, ctx.headers)
        if route is None:
            chain = self.plugins.default_chain
            answer = chain.run_request(ctx)
            if answer is not None:
                return self.answer(ctx, answer, chain)
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

    def _forward(self, ctx: RequestContext, route, chain, body: RequestBody | None) -> Reply:
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
            upgrade_protocols=route.upgrade_protocols,  # kept only when the client asked for an upgrade
            x_forwarded=self.x_forwarded,
            forwarded=self.forwarded,
            via=self.via,
        )
        hh = route.host_header
        host = ctx.host if hh == "pass" else (None if hh == "upstream" else hh)
        target = route.upstream_path(ctx.path, ctx.raw_path)
        if ctx.query:
            target = f"{target}?{ctx.query}"
        body_iter = None
        body_length = None
        if body is not None:
            body_iter = body.chunks()
            body_length = body.length
            if chain.has_request_body_filters:
                body_iter = chain.filter_request_body(ctx, body_iter)
                body_length = None
        started = time.monotonic()
        try:
            up = pool.exchange(ctx.method, target, host, headers, body_iter, body_length, self.route_timeouts.get((route.index, pool.name)))
        except UpstreamError as e:
            ctx.error = e
            log.warning("%s %s -> upstream %s: %s", ctx.method, ctx.raw_path, pool.name, e)
            self.metrics.incr(f"upstream.{pool.name}.{e.metric}")
            custom = chain.run_error(ctx, e)
            if custom is not None:
                return self.answer(ctx, custom, None)
            return self.error_reply(ctx, e)
        ctx.upstream_addr = up.server.authority
        ctx.upstream_time = time.monotonic() - started
        out_headers = rules.downstream_response_headers(up.headers, hide=self.hide, via=self.via, keep_upgrade=up.status == 101)
        resp = UpstreamResponse(up.status, up.reason, Headers(out_headers), up.body)
        chain.run_response(ctx, resp)
        if resp.replacement is not None:
            up.close()
            return self.answer(ctx, resp.replacement, None)
        reply = Reply(resp.status, up.reason or STATUS_REASONS.get(resp.status, ""), resp.headers.items(), up.body, up.length)
        if up.status == 101:
            reply.upgrade = (up.upgrade_sock, up.upgrade_data)
            reply.body = None
            reply.length = None
        elif up.body is not None:
            if chain.has_body_filters:
                reply.body = chain.filter_body(ctx, up.body)
                reply.length = None
            else:
                reply.trailers_from = up
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

    def error_reply(self, ctx: RequestContext, e: BaseException) -> Reply:
        status = e.status if isinstance(e, EdgeError) else 500
        public = e.public if isinstance(e, EdgeError) else "internal error"
        if isinstance(e, EdgeError) and not isinstance(e, UpstreamError) and status < 500:
            log.info("%s %s from %s: %s", ctx.method, ctx.raw_path, ctx.client_ip, e)
        ctx.error = e
        rid = ctx.request_id or ctx.headers.get(self.request_id_header)
        resp = Response.error(status, public, rid)
        ctx.status = status
        ctx.response_headers = resp.headers
        reply = reply_from_response(resp)
        if status == 400:
            reply.close_connection = True
        return reply


# ---------------------------------------------------------------------- WSGI


class WSGIApplication:
    """``edge.app:application``: the request path behind gunicorn's WSGI layer (HTTP/2 and other workers)."""

    def __init__(self) -> None:
        self.proxy: Proxy | None = None

    def install(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def __call__(self, environ, start_response):
        proxy = self.proxy
        if proxy is None:
            from edge.runtime import build_worker_state  # a plain gunicorn worker class: build on first use

            proxy = self.proxy = Proxy(build_worker_state())
        ctx = context_from_environ(environ, time.monotonic())
        body = None
        cl = environ.get("CONTENT_LENGTH")
        wsgi_input = environ["wsgi.input"]
        if cl and not cl.isdigit():
            reply = proxy.error_reply(ctx, BadRequest("bad Content-Length"))
        else:
            if cl:
                body = RequestBody(int(cl), wsgi_input.read) if int(cl) else None
            elif ctx.method in ("POST", "PUT", "PATCH") or environ.get("HTTP_TRANSFER_ENCODING"):
                body = RequestBody(None, wsgi_input.read)  # HTTP/2 DATA frames without a length
            reply = proxy.handle(ctx, body)
        headers = list(reply.headers)
        if reply.upgrade is not None:
            reply.upgrade[0].close()
            reply = proxy.error_reply(ctx, UpstreamError("upgrade is not available on this protocol"))
            headers = list(reply.headers)
        if reply.length is not None and rules.response_has_body(ctx.method, reply.status):
            headers.append(("Content-Length", str(reply.length)))
        start_response(f"{reply.status} {reply.reason}", headers)
        return _WSGIBody(proxy, ctx, reply, body)


class _WSGIBody:
    """Iterates the reply body for gunicorn and runs the log phase when gunicorn closes it."""

    __slots__ = ("proxy", "ctx", "reply", "request_body")

    def __init__(self, proxy: Proxy, ctx: RequestContext, reply: Reply, request_body: RequestBody | None) -> None:
        self.proxy, self.ctx, self.reply, self.request_body = proxy, ctx, reply, request_body

    def __iter__(self):
        body = self.reply.body
        if body is None:
            return
        if isinstance(body, bytes):
            if body:
                self.ctx.bytes_sent += len(body)
                yield body
            return
        for chunk in body:
            self.ctx.bytes_sent += len(chunk)
            yield chunk

    def close(self) -> None:
        body = self.reply.body
        if body is not None and not isinstance(body, bytes) and hasattr(body, "close"):
            body.close()
        if self.request_body is not None:
            self.ctx.bytes_received = self.request_body.consumed
        self.proxy.finish(self.ctx)


def context_from_environ(environ, now: float) -> RequestContext:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-"), value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("CONTENT-TYPE", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        headers.append(("CONTENT-LENGTH", environ["CONTENT_LENGTH"]))
    raw_path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
    raw_path = raw_path.split("?", 1)[0]
    peer = environ.get("REMOTE_ADDR", "")
    proto = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    is_h2 = environ.get("HTTP_VERSION") == "2" or proto.startswith("HTTP/2")
    host = environ.get("HTTP_HOST") or environ.get("HTTP_:AUTHORITY", "")
    return RequestContext(
        environ["REQUEST_METHOD"],
        raw_path,
        environ.get("QUERY_STRING", ""),
        Headers(headers),
        raw_path=raw_path,
        version="2" if is_h2 else proto[5:],
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=host,
        port=int(environ.get("SERVER_PORT") or 0),
        client_ip=peer,
        start=now,
        http2=is_h2,
    )


application = WSGIApplication()
