"""limits: per-route request limits — methods (405), URI length (414), header count and size (431), body size (413).

Theory of operation
-------------------
edge's server-wide bounds (``server.max_request_line``, ``max_header_fields``,
``max_header_field_size``, ``max_head_size``) protect the worker itself: they are
checked while the head is read and answer 414/431 before any route is known. This
plugin adds *per-route* limits below those bounds (an upload route may take 1 GB,
a JSON API 1 MB; a login form needs no 50-field heads), checked in ``on_request``
once the route is known. A limit above the server's own bound never triggers: the
server refuses first.

- ``methods``: anything else is ``405 Method Not Allowed`` with ``Allow`` (RFC 9110
  §15.5.6: "The origin server MUST generate an Allow header field in a 405
  response"). ``GET`` allows ``HEAD`` too (RFC 9110 §9.3.2: HEAD is GET without the
  body; nginx's ``limit_except`` does the same).
- ``max_uri_length``: the request target as the client sent it (path and query),
  in bytes, beyond: ``414 URI Too Long`` (RFC 9110 §15.5.15).
- ``max_header_count`` / ``max_header_bytes``: the number of header fields, and
  their total size counted as on the wire (``name: value\\r\\n``); beyond either:
  ``431 Request Header Fields Too Large`` (RFC 6585 §5). The fields counted are
  the request's as earlier plugins left them (``request_id``, priority 2000, may
  have added one).
- ``max_body_size``: a ``Content-Length`` above it is ``413 Content Too Large``
  (RFC 9110 §15.5.14) at once, before a byte of the body is read, and without a
  ``100 Continue`` (edge only sends one when the body is read). A body without a
  length (chunked) is counted while it streams, in ``on_request_body``: when the
  count would pass the limit, the filter raises ``BodyTooLarge`` before passing
  that chunk on. The request to the backend is abandoned there (its connection is
  closed, never reused: the backend saw a truncated body and answers nothing) and
  the client gets 413 and a closed connection. The backend has seen at most
  ``max_body_size`` bytes.

Priority 980: after ``ipfilter`` (1000), so a denied address costs nothing more,
and before ``bot`` (950), ``auth`` (900), ``waf`` (850) and ``ratelimit`` (800):
checks on the request's shape are the cheapest after the address, and an
oversized request costs no pattern matching, credential check or token.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from edge.config import Size
from edge.context import RequestContext, Response
from edge.errors import BodyTooLarge
from edge.fields import is_token
from edge.plugins import Plugin, PluginConfig, Services

#: ``ctx.facts`` key: request body bytes passed on so far
RECEIVED = "limits.body_bytes"

M_REFUSED = "plugin.limits.refused."  # + status


class Limits(Plugin):
    """Per-route request limits: methods, URI length, header count and size, body size."""

    name = "limits"
    priority = 980

    class Config(PluginConfig):
        methods: tuple[str, ...] = Field((), description="methods allowed (405 with `Allow` otherwise; `GET` "
                                                         "allows `HEAD`); empty: any method")
        max_uri_length: Size | None = Field(None, gt=0, description="longest request target (path and query) "
                                                                   "in bytes; 414 beyond")
        max_header_count: int | None = Field(None, gt=0, description="most request header fields; 431 beyond")
        max_header_bytes: Size | None = Field(None, gt=0, description="largest total of the request header "
                                                                     "fields (`name: value\\r\\n` each); 431 beyond")
        max_body_size: Size | None = Field(None, ge=0, description="largest request body in bytes; 413 beyond, "
                                                                  "from Content-Length at once or while a chunked body streams")

        @field_validator("methods")
        @classmethod
        def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for m in v:
                if not is_token(m):
                    raise ValueError(f"not a method name: {m!r}")
            return v

    def __init__(self, config: Config, services: Services) -> None:
        methods = frozenset(config.methods)
        if "GET" in methods:
            methods |= {"HEAD"}
        self._methods = methods or None
        self._allow = ", ".join(dict.fromkeys(m for m in (*config.methods, *(("HEAD",) if "GET" in methods else ()))))
        self._max_uri = config.max_uri_length
        self._max_count = config.max_header_count
        self._max_header_bytes = config.max_header_bytes
        self._max_body = config.max_body_size
        self._metrics = services.metrics
        if self._max_body is None:
            # No body limit: the route streams bodies untouched (no filter call per chunk).
            self.on_request_body = None  # type: ignore[assignment]

    def _refuse(self, ctx: RequestContext, status: int, message: str) -> Response:
        if self._metrics is not None:
            self._metrics.incr(f"{M_REFUSED}{status}")
        return Response.error(status, message, ctx.request_id)

    def on_request(self, ctx: RequestContext) -> Response | None:
        if self._methods is not None and ctx.method not in self._methods:
            answer = self._refuse(ctx, 405, "method not allowed")
            answer.headers.set("Allow", self._allow)
            return answer
        if self._max_uri is not None:
            n = len(ctx.raw_path) + (len(ctx.query) + 1 if ctx.query else 0)
            if n > self._max_uri:
                return self._refuse(ctx, 414, "URI too long")
        if self._max_count is not None or self._max_header_bytes is not None:
            fields = ctx.headers.items()
            if self._max_count is not None and len(fields) > self._max_count:
                return self._refuse(ctx, 431, "too many header fields")
            if self._max_header_bytes is not None:
                size = sum(len(name) + len(value) + 4 for name, value in fields)  # name ": " value CRLF
                if size > self._max_header_bytes:
                    return self._refuse(ctx, 431, "header fields too large")
        if self._max_body is not None:
            length = ctx.headers.get("Content-Length")
            # admission checked the value (digits, one value): a bad one never gets here
            if length is not None and length.isdigit() and int(length) > self._max_body:
                return self._refuse(ctx, 413, "content too large")
            ctx.facts[RECEIVED] = 0
        return None

    def on_request_body(self, ctx: RequestContext, chunk: bytes, end: bool) -> bytes | None:
        received = ctx.facts.get(RECEIVED, 0) + len(chunk)
        if received > self._max_body:
            if self._metrics is not None:
                self._metrics.incr(f"{M_REFUSED}413")
            raise BodyTooLarge(f"request body over {self._max_body} bytes")
        ctx.facts[RECEIVED] = received
        return None
