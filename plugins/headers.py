"""headers: add, set or remove request and response headers; a security preset.

Request operations change what the backend receives (``on_request``); response
operations change what the client receives (``on_response``). Within each side the
order is: ``remove``, then ``set`` (replaces every field of that name), then ``add``
(appends one more field). All names and values are checked once at load.

``security: true`` adds, unless the backend already sent them (it knows its own
pages best; an explicit ``response.set`` overrides either way):

- ``Strict-Transport-Security`` (value ``hsts``), on HTTPS responses only: RFC 6797
  §7.2 "An HSTS Host MUST NOT include the STS header field in HTTP responses conveyed
  over non-secure transport."
- ``X-Content-Type-Options: nosniff``
- ``X-Frame-Options: DENY``
- ``Referrer-Policy: strict-origin-when-cross-origin``

``content_security_policy`` sets that header on every response when given (it is not
part of the preset because a wrong policy breaks pages; write one for your site).

Example (conf/edge.yaml)::

    plugins:
      headers:
        security: true
        content_security_policy: "default-src 'self'"
        response: {remove: [X-Powered-By]}
    routes:
      - name: api
        upstream: api
        plugins:
          headers:
            request: {set: {X-Env: prod}}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.context import Headers as HeaderList
from edge.context import RequestContext, UpstreamResponse
from edge.fields import field_error, is_token
from edge.http import framing_field_error
from edge.plugins import Plugin, PluginConfig, Services


def _check_name(name: str) -> str:
    # RFC 9110 §5.1: field-name = token
    if not is_token(name):
        raise ValueError(f"invalid header name {name!r}: must be a token (RFC 9110 §5.1)")
    return name


def _check_value(name: str, value: str) -> str:
    # RFC 9110 §5.5: no CR, LF, NUL (edge writes no other CTL either), no surrounding whitespace
    reason = field_error(name, value)
    if reason is not None:
        raise ValueError(reason)
    return value


class HeaderOps(BaseModel):
    """One side's operations (a plain frozen model: the common plugin fields are not repeated here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    add: dict[str, str] = Field({}, description="fields appended (a second field if one exists)")
    set: dict[str, str] = Field({}, description="fields replaced (every field of that name becomes this one)")
    remove: tuple[str, ...] = Field((), description="fields removed")

    @field_validator("add", "set")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _check_name(name)
            _check_value(name, value)
            reason = framing_field_error(name)  # Content-Length, Transfer-Encoding...: the writer's
            if reason is not None:
                raise ValueError(reason)
        return v

    @field_validator("remove")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            _check_name(name)
        return v

    def compile(self) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        return self.remove, tuple(self.set.items()), tuple(self.add.items())


def _apply(headers: HeaderList, remove: tuple[str, ...], set_: tuple[tuple[str, str], ...],
           add: tuple[tuple[str, str], ...]) -> None:
    for name in remove:
        headers.remove(name)
    for name, value in set_:
        headers.set(name, value)
    for name, value in add:
        headers.add(name, value)


class Headers(Plugin):
    """Add, set or remove request and response headers; optional security headers."""

    name = "headers"
    priority = 100   # late in the request phase (after auth, limits and rewrites); early in the response phase

    class Config(PluginConfig):
        request: HeaderOps = Field(HeaderOps(), description="operations on the request sent to the backend")
        response: HeaderOps = Field(HeaderOps(), description="operations on the response sent to the client")
        security: bool = Field(False, description="add HSTS (HTTPS only), nosniff, X-Frame-Options DENY, Referrer-Policy")
        hsts: str = Field("max-age=31536000; includeSubDomains", description="Strict-Transport-Security value of the preset")
        frame_options: str = Field("DENY", description="X-Frame-Options value of the preset")
        referrer_policy: str = Field("strict-origin-when-cross-origin", description="Referrer-Policy value of the preset")
        content_security_policy: str | None = Field(None, description="Content-Security-Policy set on every response when given")

        @field_validator("hsts", "frame_options", "referrer_policy", "content_security_policy")
        @classmethod
        def _value(cls, v: str | None, info) -> str | None:
            names = {"hsts": "Strict-Transport-Security", "frame_options": "X-Frame-Options",
                     "referrer_policy": "Referrer-Policy", "content_security_policy": "Content-Security-Policy"}
            return v if v is None else _check_value(names[info.field_name], v)

    def __init__(self, config: Config, services: Services) -> None:
        self._req = config.request.compile()
        self._resp = config.response.compile()
        self._has_req = any(self._req)
        preset: list[tuple[str, str]] = []
        if config.security:
            preset += [
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", config.frame_options),
                ("Referrer-Policy", config.referrer_policy),
            ]
        self._preset = tuple(preset)
        self._hsts = config.hsts if config.security else None
        self._csp = config.content_security_policy

    def on_request(self, ctx: RequestContext) -> None:
        if self._has_req:
            _apply(ctx.headers, *self._req)
        return None

    def on_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        # A replacement set by a plugin that ran before us is what the client gets.
        headers = response.replacement.headers if response.replacement is not None else response.headers
        for name, value in self._preset:
            headers.setdefault(name, value)
        if self._hsts is not None and ctx.scheme == "https":
            headers.setdefault("Strict-Transport-Security", self._hsts)
        if self._csp is not None:
            headers.set("Content-Security-Policy", self._csp)
        _apply(headers, *self._resp)
        return None
