"""HTTP/2 streams (and plain WSGI servers) in front of ``Proxy``, on the same admission and framing.

Theory of operation. gunicorn owns the HTTP/2 connection (``h2``: frames, HPACK,
flow control, its own stream limits) and hands every stream whose HEADERS arrived
to ``EdgeWorker.handle_http2_request``, which calls ``serve_stream``. Instead of
gunicorn's WSGI environ (which loses the raw ``:path``, joins repeated fields and
adds a ``Version: 2`` field that edge then forwarded: issue 7, defect 1),
``serve_stream`` reads the raw pseudo-headers and fields off the stream and puts
them through ``edge.admission.admit``, the step HTTP/1 requests pass too: a
``:path`` with a space, a ``#fragment`` or non-ASCII bytes is refused with 400
exactly as over HTTP/1 (see edge/admission.py for why UTF-8 is refused rather than
percent-encoded). A stream whose HEADERS did not end it has a body, whatever the
method; its length is the Content-Length, if any.

The reply is framed by ``edge.framing.plan`` and written through gunicorn's
connection (``send_response_headers``, ``send_data``, ``end_stream``): HEAD keeps
the backend's Content-Length, trailers go out as a final HEADERS frame. Header
names and values are validated first (``edge.fields``); an invalid one gives 500
and one log line. When the backend fails after the head went out, the stream is
reset (RST_STREAM INTERNAL_ERROR), logged and counted, as HTTP/1 aborts its
connection; the access log records the error. A request body that breaks the
HTTP/2 rules after dispatch (DATA beyond or short of its Content-Length) is a
client error (400, logged at info), not an internal error.

Interim responses (issue 10; RFC 9110 §15.2, RFC 9113 §8.1: "a HEADERS frame ... containing
a 1xx ... status" may precede the final one). While ``Proxy.handle`` works on a stream,
``ctx.interim`` sends the backend's 1xx heads (never 100 or 101: edge/upstream/client.py)
through gunicorn's ``send_informational``: one HEADERS frame without END_STREAM, ``:status``
and the fields a final response keeps (``Proxy.interim_fields``, then the connection-specific
ones, checked by ``edge.fields``; an invalid field drops that 1xx, logged and counted). It is
cleared before the final HEADERS are written, and gunicorn refuses a 1xx after them. This costs
one small closure per stream (the stream id); the plain-WSGI ``application`` sends none.

``application`` is the WSGI entry point named in gunicorn.conf.py, for gunicorn
worker classes other than edge's: it builds the same admission from the environ
(``RAW_URI`` is the target as received) and lets the WSGI server write the reply.
"""

from __future__ import annotations

import logging
import time

from gunicorn.http2.errors import HTTP2ConnectionError, HTTP2Error, HTTP2ProtocolError, HTTP2StreamError
from h2.exceptions import ProtocolError as H2ProtocolError

from edge import admission, framing
from edge.context import UNKNOWN_CLIENT, Headers, Reply, RequestBody, RequestContext, close_body
from edge.errors import BadRequest, ClientDisconnected, ClientError, EdgeError, InvalidResponseField, UpstreamError
from edge.fields import fields_valid
from edge.http import without_framing

log = logging.getLogger("edge.h2")

INTERNAL_ERROR = 0x2  # RFC 9113 §7
# RFC 9113 §8.2.2: connection-specific fields must not appear in HTTP/2.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})




def stream_fields(raw: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The stream's regular fields as HTTP/1 would hold them.

    gunicorn's h2 decodes field bytes as UTF-8; re-read as latin-1 they are the
    bytes the client sent, as on HTTP/1. RFC 9113 §8.2.3: a Cookie split into
    several fields is joined with "; " before it goes to an HTTP/1.1 backend.
    """
    out: list[tuple[str, str]] = []
    cookies: list[str] = []
    for name, value in raw:
        if not value.isascii():
            value = value.encode("utf-8").decode("latin-1")
        if not name.isascii():
            name = name.encode("utf-8").decode("latin-1")
        if name == "cookie":
            cookies.append(value)
        else:
            out.append((name, value))
    if cookies:
        out.append(("cookie", "; ".join(cookies)))
    return out


def serve_stream(worker, req, addr, h2_conn, port: int) -> None:
    """Admit, proxy and answer one HTTP/2 stream (see the module docstring)."""
    proxy = worker.proxy
    stream = req.stream
    sid = stream.stream_id
    now = time.monotonic()
    peer_ip = addr[0] if isinstance(addr, tuple) else UNKNOWN_CLIENT
    pseudo = stream.get_pseudo_headers()
    method = pseudo.get(":method", "")
    fields = stream_fields(stream.get_regular_headers())
    ended = stream.body_complete and not stream.body_size
    scheme = "https"  # edge negotiates HTTP/2 only by ALPN, on its TLS listeners (edge/tls.py)
    try:
        adm = admission.admit(method, pseudo.get(":path", ""), fields, authority=pseudo.get(":authority"),
                              http2=True, stream_ended=ended)
    except ClientError as e:
        ctx = RequestContext(method or "-", "/", client_ip=peer_ip, scheme=scheme, port=port, start=now, http2=True,
                             version="2")
        reply = proxy.error_reply(ctx, e)
        body = None
    else:
        ctx = RequestContext(adm.method, adm.path, adm.query, Headers.wrap(fields), version="2", scheme=scheme,
                             host=adm.host, port=port, client_ip=peer_ip, start=now, http2=True)
        body = None
        if adm.body:
            body = RequestBody(adm.length, _body_reader(req.body, ctx))
        ctx.interim = _interim_writer(proxy, h2_conn, sid)
        reply = proxy.handle(ctx, body)
        ctx.interim = None  # the final HEADERS follow: no 1xx after them
        if reply.upgrade is not None:
            reply.upgrade[0].close()  # RFC 9113 §8.6: no 101 on HTTP/2
            reply = proxy.error_reply(ctx, UpstreamError("upgrade is not available on HTTP/2"))
    try:
        if h2_conn.is_closed:
            raise ClientDisconnected("HTTP/2 connection closed before the reply")
        _write(proxy, worker.clock.date(), h2_conn, sid, ctx, reply)
    except (ClientDisconnected, H2ProtocolError, HTTP2StreamError, HTTP2ConnectionError) as e:
        # The peer reset the stream or the connection is gone (e.g. h2 refused a body that
        # broke its content-length and sent GOAWAY): nothing can be answered; counted, not a bug.
        if ctx.error is None:
            ctx.error = e if isinstance(e, EdgeError) else ClientDisconnected(str(e))
        proxy.metrics.incr(ClientDisconnected.metric)
        log.debug("HTTP/2 stream %d from %s ended early: %s", sid, peer_ip, e)
    finally:
        if body is not None:
            ctx.bytes_received = body.consumed
        proxy.finish(ctx)


def _interim_writer(proxy, h2_conn, sid: int):
    """``ctx.interim`` of one stream: a backend's 1xx as a HEADERS frame (module docstring)."""

    def send_interim(status: int, reason: str, fields: list[tuple[str, str]]) -> None:
        out = [(k, v) for k, v in proxy.interim_fields(fields) if k.lower() not in _CONNECTION_SPECIFIC]
        if not fields_valid(out):
            log.warning("interim %d response not relayed on HTTP/2 stream %d: %s", status, sid,
                        InvalidResponseField.naming(out))
            proxy.metrics.incr(InvalidResponseField.metric)
            return
        try:
            h2_conn.send_informational(sid, status, out)
        except (HTTP2Error, H2ProtocolError) as e:
            # the stream was reset or the connection is gone: stop waiting on the backend for nobody
            raise ClientDisconnected(f"HTTP/2 stream {sid} closed before an interim response: {e}") from None
    return send_interim


def _body_reader(wsgi_input, ctx: RequestContext):
    """``read(n)`` over the stream's DATA frames, HTTP/2 failures turned into edge's errors."""
    next_chunk = getattr(wsgi_input, "_next_chunk", None)  # one DATA payload at a time, as it arrives

    def read(n: int) -> bytes:
        try:
            if next_chunk is not None:
                return next_chunk() or b""
            return wsgi_input.read(n)
        except HTTP2ProtocolError as e:
            # h2 refuses DATA that overruns (or ends short of) the stream's content-length.
            raise BadRequest(f"HTTP/2 request body: {e}") from None
        except (HTTP2StreamError, HTTP2ConnectionError) as e:
            raise ClientDisconnected(f"HTTP/2 stream closed mid-body: {e}") from None
    return read


def response_fields(reply: Reply, plan: framing.Plan, date: str) -> list[tuple[str, str]]:
    """The reply's fields for HEADERS; InvalidResponseField if one may not be written."""
    headers = reply.headers
    if not fields_valid(headers):
        raise InvalidResponseField.naming(headers)
    out = [(k, v) for k, v in headers if k.lower() not in _CONNECTION_SPECIFIC]
    if not any(k.lower() == "date" for k, _ in out):
        out.append(("date", date))
    if plan.announce_length:
        out.append(("content-length", str(reply.length)))
    return out


def _write(proxy, date: str, h2_conn, sid: int, ctx: RequestContext, reply: Reply) -> None:
    body = reply.body
    plan = framing.plan(ctx.method, reply.status, reply.length, body is not None, http2=True)
    try:
        fields = response_fields(reply, plan, date)
    except InvalidResponseField as e:
        close_body(body)
        log.error("%s %s (request id %s): %s; answering 500",
            ctx.method, ctx.raw_path, proxy.request_id_of(ctx) or "-", e)
        proxy.metrics.incr(e.metric)
        reply = proxy.error_reply(ctx, e)
        body = reply.body
        plan = framing.plan(ctx.method, reply.status, reply.length, True, http2=True)
        fields = response_fields(reply, plan, date)
    if not plan.body:
        close_body(body)
        h2_conn.send_response_headers(sid, reply.status, fields, end_stream=True)
        return
    if isinstance(body, bytes):
        if h2_conn.send_response(sid, reply.status, fields, body):
            ctx.bytes_sent += len(body)
        return
    head_sent = ended = False
    # edge.h2conn's connection can hold frames back while no wait is possible ("cork"), so
    # the HEADERS, a DATA frame and, for the chunk that completes a known length, its
    # END_STREAM leave in one write instead of three; gunicorn's own connection cannot.
    cork = getattr(h2_conn, "cork", None)
    try:
        for chunk in body:  # the next chunk may take a while: everything before it was flushed
            if not chunk:
                continue
            last = plan.announce_length and ctx.bytes_sent + len(chunk) == reply.length
            if cork is not None:
                cork()
            try:
                if not head_sent:
                    if not h2_conn.send_response_headers(sid, reply.status, fields):
                        raise ClientDisconnected("HTTP/2 stream closed before the reply")
                    head_sent = True
                if not h2_conn.send_data(sid, chunk, end_stream=last):
                    raise ClientDisconnected("HTTP/2 stream closed or stalled mid-reply")
            finally:
                if cork is not None:
                    h2_conn.uncork()
            ctx.bytes_sent += len(chunk)
            ended = last
        if plan.announce_length:
            framing.check_complete(reply.length, ctx.bytes_sent)
        if not head_sent:
            h2_conn.send_response_headers(sid, reply.status, fields)
        if not ended:
            h2_conn.end_stream(sid, trailers=_trailers(proxy, ctx, reply) if plan.trailers else None)
    except EdgeError as e:
        if isinstance(e, ClientDisconnected):
            raise
        ctx.error = e
        log.warning("%s %s (request id %s): response cut short: %s",
            ctx.method, ctx.raw_path, proxy.request_id_of(ctx) or "-", e)
        proxy.metrics.incr(e.metric)
        if not head_sent:
            close_body(body)
            _write(proxy, date, h2_conn, sid, ctx, proxy.error_reply(ctx, e))
        else:
            # framing.on_error_after_head(True): reset this stream only; never a short or padded body.
            h2_conn.reset_stream(sid, INTERNAL_ERROR)
    finally:
        close_body(body)


def _trailers(proxy, ctx: RequestContext, reply: Reply):
    trailers = reply.trailers_from.trailers if reply.trailers_from is not None else None
    if not trailers:
        return None
    if not fields_valid(trailers):
        log.error("%s %s (request id %s): invalid trailer dropped",
            ctx.method, ctx.raw_path, proxy.request_id_of(ctx) or "-")
        proxy.metrics.incr(InvalidResponseField.metric)
        return None
    return without_framing(trailers)  # RFC 9110 §6.5.1: no framing fields in a trailer section


# ---------------------------------------------------------------------- plain WSGI servers


class WSGIApplication:
    """``edge.h2:application``: the request path behind a WSGI server (gunicorn worker classes other than edge's)."""

    def __init__(self) -> None:
        self.proxy = None

    def install(self, proxy) -> None:
        self.proxy = proxy

    def __call__(self, environ, start_response):
        proxy = self.proxy
        if proxy is None:
            from edge.app import Proxy  # a plain gunicorn worker class: build on first use
            from edge.runtime import build_worker_state

            proxy = self.proxy = Proxy(build_worker_state())
        now = time.monotonic()
        peer_ip = environ.get("REMOTE_ADDR") or UNKNOWN_CLIENT
        proto = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        scheme = environ.get("wsgi.url_scheme", "http")
        port = int(environ.get("SERVER_PORT") or 0)
        method = environ.get("REQUEST_METHOD", "")
        fields = environ_fields(environ)
        body = None
        try:
            adm = admission.admit(method, environ.get("RAW_URI") or "/", fields, http11=proto == "HTTP/1.1")
        except ClientError as e:
            ctx = RequestContext(method or "-", "/", client_ip=peer_ip, scheme=scheme, port=port, start=now)
            reply = proxy.error_reply(ctx, e)
        else:
            ctx = RequestContext(adm.method, adm.path, adm.query, Headers.wrap(fields), version=proto[5:],
                                 scheme=scheme, host=adm.host, port=port, client_ip=peer_ip, start=now)
            if adm.body:
                # The WSGI server has decoded any chunked coding: the body is a plain stream.
                body = RequestBody(adm.length if adm.body == admission.LENGTH else None, environ["wsgi.input"].read)
            reply = proxy.handle(ctx, body)
            if reply.upgrade is not None:
                reply.upgrade[0].close()
                reply = proxy.error_reply(ctx, UpstreamError("upgrade is not available on this server"))
        plan = framing.plan(ctx.method, reply.status, reply.length, reply.body is not None, http11=proto == "HTTP/1.1")
        try:
            headers = response_fields(reply, plan, "")
        except InvalidResponseField as e:
            close_body(reply.body)
            log.error("%s %s (request id %s): %s; answering 500",
                ctx.method, ctx.raw_path, proxy.request_id_of(ctx) or "-", e)
            reply = proxy.error_reply(ctx, e)
            plan = framing.plan(ctx.method, reply.status, reply.length, True)
            headers = response_fields(reply, plan, "")
        headers = [(k, v) for k, v in headers if k != "date"]  # the WSGI server adds its own
        start_response(f"{reply.status} {reply.reason}", headers)
        return _WSGIBody(proxy, ctx, reply, body)


def environ_fields(environ) -> list[tuple[str, str]]:
    """Request fields from a WSGI environ (``HTTP_*`` keys; never the server's own ``HTTP_VERSION``)."""
    fields = [(key[5:].replace("_", "-").lower(), value) for key, value in environ.items()
              if key.startswith("HTTP_") and key != "HTTP_VERSION"]
    if environ.get("CONTENT_TYPE"):
        fields.append(("content-type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        fields.append(("content-length", environ["CONTENT_LENGTH"]))
    return fields


class _WSGIBody:
    """Iterates the reply body for the WSGI server and runs the log phase when it closes it."""

    __slots__ = ("proxy", "ctx", "reply", "request_body")

    def __init__(self, proxy, ctx: RequestContext, reply: Reply, request_body: RequestBody | None) -> None:
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
        try:
            for chunk in body:
                self.ctx.bytes_sent += len(chunk)
                yield chunk
        except EdgeError as e:
            self.ctx.error = e
            log.warning("%s %s (request id %s): response cut short: %s", self.ctx.method, self.ctx.raw_path,
                        self.proxy.request_id_of(self.ctx) or "-", e)
            self.proxy.metrics.incr(e.metric)
            raise

    def close(self) -> None:
        close_body(self.reply.body)
        if self.request_body is not None:
            self.ctx.bytes_received = self.request_body.consumed
        self.proxy.finish(self.ctx)


application = WSGIApplication()
