"""request_id: one identifier per request, shared by the client, the backend and the logs.

A valid incoming ``X-Request-ID`` (header name configurable) is kept, so an id made
by a client or a proxy in front of edge follows the request; otherwise (absent,
too long, characters outside ``A-Z a-z 0-9 . _ : @ + = / -``, or ``trust_incoming:
false``) a new one is generated. The id is stored in ``ctx.request_id`` (edge quotes
it in its error bodies and the access log) and ``ctx.facts["request_id"]``, set on
the request to the backend, and echoed on the response.

Priority 2000, the highest of the shipped plugins: every later plugin, and every
error answer, already sees the id.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Literal

from pydantic import Field, field_validator

from edge.context import RequestContext, UpstreamResponse
from edge.fields import is_token
from edge.plugins import Plugin, PluginConfig, Services

_ID_CHARS = r"[A-Za-z0-9._:@+=/\-]"


def _hex() -> str:
    return os.urandom(16).hex()


def _uuid() -> str:
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


class RequestId(Plugin):
    """Accept a valid incoming request id or generate one; pass it on and return it."""

    name = "request_id"
    priority = 2000

    class Config(PluginConfig):
        header: str = Field("X-Request-ID", description="header that carries the id, both ways")
        trust_incoming: bool = Field(True, description="keep a valid id sent by the client; false always generates")
        max_length: int = Field(128, ge=8, le=1024, description="longest incoming id kept")
        format: Literal["hex", "uuid"] = Field("hex", description="generated ids: 32 hex digits, or a UUID4 with dashes")
        response: bool = Field(True, description="echo the id on the response to the client")

        @field_validator("header")
        @classmethod
        def _name(cls, v: str) -> str:
            if not is_token(v):
                raise ValueError(f"invalid header name {v!r}: must be a token (RFC 9110 §5.1)")
            return v

    def __init__(self, config: Config, services: Services) -> None:
        self._header = config.header
        self._valid = re.compile(f"{_ID_CHARS}{{1,{config.max_length}}}").fullmatch if config.trust_incoming else None
        self._generate = _uuid if config.format == "uuid" else _hex
        self._echo = config.response

    def on_request(self, ctx: RequestContext) -> None:
        rid = ctx.headers.get(self._header) if self._valid is not None else None
        if rid is None or not self._valid(rid):  # type: ignore[misc]
            rid = self._generate()
        ctx.request_id = rid
        ctx.facts["request_id"] = rid
        ctx.headers.set(self._header, rid)
        return None

    def on_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        if self._echo and ctx.request_id is not None:
            headers = response.replacement.headers if response.replacement is not None else response.headers
            headers.set(self._header, ctx.request_id)
        return None
