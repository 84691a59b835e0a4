"""cors: Cross-Origin Resource Sharing answered at the edge (Fetch standard, "CORS protocol").

Origins are listed exactly (``https://app.example.com``; scheme, host and port,
no path), as ``"*"`` (any origin), or as a regular expression prefixed with ``~``
(``"~https://[a-z0-9-]+\\.example\\.com"``, matched against the whole origin).

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  is answered ``204`` by edge, without asking the backend, with
  ``Access-Control-Allow-Origin``, ``-Allow-Methods``, ``-Allow-Headers``,
  ``-Allow-Credentials`` and ``-Max-Age`` as configured. A preflight from an
  origin that is not allowed gets a ``204`` with no CORS headers: the browser then
  refuses the real request. Other ``OPTIONS`` requests go to the backend.
- Other responses to an allowed origin get ``Access-Control-Allow-Origin`` (and
  ``-Allow-Credentials``, ``-Expose-Headers``). Responses to an origin that is not
  allowed get no CORS headers from edge.
- Whenever the answer depends on the request's ``Origin`` (anything but ``"*"``
  without credentials), every response carries ``Vary: Origin`` so that caches keep
  one copy per origin.

``headers`` empty (the default) allows whatever request headers the preflight asks
for; ``"*"`` does the same without credentials. ``credentials: true`` cannot be
combined with ``"*"`` in ``origins``: browsers refuse ``Access-Control-Allow-Origin: *``
with credentials, and echoing any origin would let every site read authenticated
answers, so list the origins instead.

Priority 1500: before ``ipfilter``/``auth``/``ratelimit``, so that preflights (which
carry no credentials) are answered before authentication could refuse them.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from edge.config import Duration
from edge.context import Headers, RequestContext, Response, UpstreamResponse
from edge.fields import is_token
from edge.pattern import compile_client_pattern
from edge.plugins import Plugin, PluginConfig, Services

_ORIGIN = re.compile(r"[a-z][a-z0-9+.\-]*://(\[[0-9a-f:.]+\]|[a-z0-9.\-_]+)(:[0-9]{1,5})?")


def _token_list(value: str) -> bool:
    """True when ``value`` is ``token *( "," token )`` (RFC 9110 §5.6.1 list of field names)."""
    return all(is_token(item.strip()) for item in value.split(","))


class Cors(Plugin):
    """Answer CORS preflights and add CORS headers for allowed origins."""

    name = "cors"
    priority = 1500

    class Config(PluginConfig):
        origins: tuple[str, ...] = Field(
            (), description='allowed origins: exact, "*" for any, or "~regex" (RE2 syntax, matched against the whole origin)'
        )
        methods: tuple[str, ...] = Field(
            ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"), description="methods allowed in preflight answers"
        )
        headers: tuple[str, ...] = Field(
            (), description='request headers allowed; empty allows those the preflight asks for, "*" any (without credentials)'
        )
        expose_headers: tuple[str, ...] = Field((), description="response headers scripts may read")
        credentials: bool = Field(False, description="allow cookies and HTTP authentication (Access-Control-Allow-Credentials)")
        max_age: Duration | None = Field(None, description="how long browsers may cache a preflight answer")

        @field_validator("origins")
        @classmethod
        def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            out = []
            for o in v:
                if o.startswith("~"):
                    compile_client_pattern(o[1:])  # runs on the client's Origin: linear time
                    out.append(o)
                elif o in ("*", "null"):
                    out.append(o)
                else:
                    low = o.lower()
                    if not _ORIGIN.fullmatch(low):
                        raise ValueError(f"an origin is scheme://host[:port] without a path, '*' or '~regex' (got {o!r})")
                    out.append(low)
            return tuple(out)

        @field_validator("methods")
        @classmethod
        def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for m in v:
                if not is_token(m):
                    raise ValueError(f"not a method: {m!r}")
            return tuple(m.upper() for m in v)

        @field_validator("headers", "expose_headers")
        @classmethod
        def _header_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for h in v:
                if h != "*" and not is_token(h):
                    raise ValueError(f"invalid header name {h!r}: must be a token (RFC 9110 §5.1)")
            return v

        @model_validator(mode="after")
        def _credentials(self) -> "Cors.Config":
            if self.credentials and "*" in self.origins:
                raise ValueError("origins '*' cannot be combined with credentials: true; list the allowed origins")
            return self

    def __init__(self, config: Config, services: Services) -> None:
        self._any = "*" in config.origins
        self._exact = frozenset(o for o in config.origins if o != "*" and not o.startswith("~"))
        self._regexes = tuple(compile_client_pattern(o[1:]) for o in config.origins if o.startswith("~"))
        self._credentials = config.credentials
        # The answer is the constant "*" only for any origin without credentials.
        self._star = self._any and not config.credentials
        self._vary = not self._star
        self._methods = ", ".join(config.methods)
        self._reflect_headers = not config.headers or ("*" in config.headers and config.credentials)
        self._allow_headers = None if self._reflect_headers else ", ".join(config.headers)
        self._expose = ", ".join(config.expose_headers) or None
        self._max_age = str(int(config.max_age)) if config.max_age is not None else None

    def _allowed(self, origin: str) -> bool:
        if self._any:
            return True
        return origin.lower() in self._exact or any(r.fullmatch(origin) for r in self._regexes)

    def on_request(self, ctx: RequestContext) -> Response | None:
        if ctx.method != "OPTIONS":
            return None
        headers = ctx.headers
        origin = headers.get("Origin")
        if origin is None or headers.get("Access-Control-Request-Method") is None:
            return None  # not a preflight: the backend answers OPTIONS itself
        out = Headers()
        vary = ["Origin"] if self._vary else []
        if self._allowed(origin):
            out.add("Access-Control-Allow-Origin", "*" if self._star else origin)
            if self._credentials:
                out.add("Access-Control-Allow-Credentials", "true")
            out.add("Access-Control-Allow-Methods", self._methods)
            if self._reflect_headers:
                vary.append("Access-Control-Request-Headers")
                asked = headers.get("Access-Control-Request-Headers")
                if asked and _token_list(asked.strip()):
                    out.add("Access-Control-Allow-Headers", asked.strip())
            else:
                out.add("Access-Control-Allow-Headers", self._allow_headers)  # type: ignore[arg-type]
            if self._max_age is not None:
                out.add("Access-Control-Max-Age", self._max_age)
        if vary:
            out.add("Vary", ", ".join(vary))
        return Response(204, out)

    def on_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        headers = response.replacement.headers if response.replacement is not None else response.headers
        if self._vary:
            _add_vary(headers, "Origin")
        origin = ctx.headers.get("Origin")
        if origin is None or not self._allowed(origin):
            return None
        headers.set("Access-Control-Allow-Origin", "*" if self._star else origin)
        if self._credentials:
            headers.set("Access-Control-Allow-Credentials", "true")
        if self._expose is not None:
            headers.set("Access-Control-Expose-Headers", self._expose)
        return None


def _add_vary(headers: Headers, name: str) -> None:
    """Add ``name`` to Vary unless it (or ``*``) is already listed (RFC 9110 §12.5.5)."""
    lname = name.lower()
    for value in headers.get_all("Vary"):
        for item in value.split(","):
            item = item.strip().lower()
            if item == lname or item == "*":
                return
    headers.add("Vary", name)
