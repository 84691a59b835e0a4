"""Cookies for plugins: read the request's ``Cookie`` fields, add a ``Set-Cookie`` (pure).

Theory of operation
-------------------
Reading is lenient, writing is strict (RFC 6265 §4 defines what a server sends, §5
what a receiver should put up with):

- ``request_cookies(ctx)`` / ``parse_cookies(headers)`` read every ``Cookie`` field of
  the request. HTTP/2 clients may split the header into several fields ("cookie
  crumbs", RFC 9113 §8.2.3), so all of them are read, in order. A pair is
  ``name=value`` separated by ``;``; whitespace around names and values is dropped,
  a value in double quotes loses them (RFC 6265 §4.1.1: ``cookie-value = *cookie-octet
  / ( DQUOTE *cookie-octet DQUOTE )``), and pieces without ``=`` are skipped. Nothing
  is percent-decoded: a value is what the client sent. When a name occurs twice, the
  first one wins: RFC 6265 §5.4 has clients list cookies with longer (more specific)
  paths first.
- ``set_cookie(headers, name, value, ...)`` appends one ``Set-Cookie`` field to a
  response's headers (``Response.headers`` or ``UpstreamResponse.headers``; both are
  ``edge.context.Headers``, which keeps duplicates, so several cookies stay several
  fields as RFC 6265 §3 requires). Every part is checked before it is written and a
  bad one raises ``ValueError`` naming the attribute: a cookie built from request data
  can never inject a field or an attribute. The assembled field passes
  ``edge.fields.field_error`` like every other header edge writes.

Nothing here does I/O, reads the clock or keeps state; ``Expires`` is not offered,
``Max-Age`` says the same without depending on the client's clock (RFC 6265 §5.3
step 3: Max-Age wins over Expires anyway).
"""

from __future__ import annotations

import re
from typing import Literal

from edge.context import Headers, RequestContext
from edge.fields import field_error, is_token

__all__ = ["parse_cookies", "request_cookies", "get_cookie", "set_cookie", "cookie_error"]

# RFC 6265 §4.1.1: cookie-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
# (US-ASCII without CTLs, whitespace, DQUOTE, comma, semicolon and backslash).
_COOKIE_OCTETS = re.compile(r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*')
# RFC 6265 §4.1.1: path-value = <any CHAR except CTLs or ";">
_PATH_VALUE = re.compile(r"[\x20-\x3a\x3c-\x7e]+")
# RFC 6265 §4.1.2.3 refers to RFC 1034 §3.5 / RFC 1123 §2.1: labels of letters, digits and
# hyphens, not starting or ending with a hyphen. A leading dot is ignored by clients
# (§5.2.3) and therefore refused here rather than written.
_DOMAIN = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")

SameSite = Literal["Strict", "Lax", "None"]


def parse_cookies(headers: Headers) -> dict[str, str]:
    """Every cookie of the request's ``Cookie`` fields, ``{name: value}``; the first of a name wins."""
    out: dict[str, str] = {}
    for field in headers.get_all("Cookie"):
        for pair in field.split(";"):
            name, sep, value = pair.partition("=")
            if not sep:
                continue
            name = name.strip()
            if not name or name in out:
                continue
            out[name] = _unquote(value.strip())
    return out


def request_cookies(ctx: RequestContext) -> dict[str, str]:
    """``parse_cookies`` of the request's headers: ``request_cookies(ctx).get("session")``."""
    return parse_cookies(ctx.headers)


def get_cookie(headers: Headers, name: str) -> str | None:
    """The value of one cookie, or None; stops at the first match (cheaper than a dict per request)."""
    for field in headers.get_all("Cookie"):
        for pair in field.split(";"):
            k, sep, value = pair.partition("=")
            if sep and k.strip() == name:
                return _unquote(value.strip())
    return None


def remove_cookie(headers: Headers, name: str) -> int:
    """Remove every cookie called ``name`` from the request's ``Cookie`` fields (a field left
    empty goes); return how many were removed. For credentials a backend must not see."""
    fields = headers.get_all("Cookie")
    removed = 0
    kept_fields = []
    for field in fields:
        pairs = [p for p in field.split(";") if p.strip()]
        kept = [p.strip() for p in pairs if p.partition("=")[0].strip() != name]
        removed += len(pairs) - len(kept)
        if kept:
            kept_fields.append("; ".join(kept))
    if removed:
        headers.remove("Cookie")
        for field in kept_fields:
            headers.add("Cookie", field)
    return removed


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def cookie_error(
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    samesite: SameSite | None = None,
) -> str | None:
    """Why this cookie cannot be sent, or None when it can (for config checks at load)."""
    # RFC 6265 §4.1.1: cookie-name = token (RFC 2616 token = RFC 9110 token).
    if not is_token(name):
        return f"cookie name {name!r} must be a token (RFC 6265 §4.1.1)"
    if _COOKIE_OCTETS.fullmatch(value) is None:
        return (f"cookie value {value[:60]!r} may only hold printable US-ASCII without space, "
                f"'\"', ',', ';' and '\\' (RFC 6265 §4.1.1)")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        # §4.1.1 writes max-age-av with a non-zero first digit; 0 is what every server sends to
        # delete a cookie, and §5.2.2 tells clients to expire it at once, so 0 is allowed.
        return f"max_age must be a whole number of seconds >= 0 (got {max_age!r})"
    # §5.2 has clients strip whitespace around attribute values, so a path with it would not
    # be the path the client stores.
    if path is not None and (_PATH_VALUE.fullmatch(path) is None or path != path.strip()):
        return f"path {path!r} must be printable US-ASCII without ';' or surrounding spaces (RFC 6265 §4.1.1)"
    if domain is not None and _DOMAIN.fullmatch(domain) is None:
        return f"domain {domain!r} must be a host name such as example.com, without a leading dot (RFC 6265 §4.1.2.3)"
    if samesite not in (None, "Strict", "Lax", "None"):
        return f"samesite must be 'Strict', 'Lax' or 'None' (got {samesite!r})"
    # RFC 6265bis §4.1.2.7 and §5.4.7: browsers reject SameSite=None without Secure.
    if samesite == "None" and not secure:
        return "samesite='None' needs secure=True (browsers refuse it otherwise)"
    # RFC 6265bis §4.1.3: cookie name prefixes that browsers enforce.
    if name.startswith("__Secure-") and not secure:
        return f"a {name!r} cookie needs secure=True (the __Secure- prefix)"
    if name.startswith("__Host-") and (not secure or path != "/" or domain is not None):
        return f"a {name!r} cookie needs secure=True, path='/' and no domain (the __Host- prefix)"
    return None


def set_cookie_field(
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: SameSite | None = None,
) -> str:
    """The checked ``Set-Cookie`` field value for these attributes (see ``set_cookie``);
    ``ValueError`` naming the bad part. For a field built once and sent many times."""
    problem = cookie_error(name, value, max_age=max_age, path=path, domain=domain, secure=secure, samesite=samesite)
    if problem is not None:
        raise ValueError(problem)
    parts = [f"{name}={value}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if domain is not None:
        parts.append(f"Domain={domain}")
    if path is not None:
        parts.append(f"Path={path}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite is not None:
        parts.append(f"SameSite={samesite}")
    field = "; ".join(parts)
    problem = field_error("Set-Cookie", field)
    if problem is not None:  # the checks above already exclude this; the gate every serialiser has stays
        raise ValueError(problem)
    return field


def set_cookie(
    headers: Headers,
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str | None = "/",
    domain: str | None = None,
    secure: bool = False,
    httponly: bool = False,
    samesite: SameSite | None = None,
) -> str:
    """Append ``Set-Cookie: name=value; ...`` to ``headers`` and return the field value.

    ``max_age`` in seconds (``0`` deletes the cookie; None: a session cookie), ``path``
    (default ``/``; None leaves it to the client's default, RFC 6265 §5.1.4),
    ``domain`` (None: this host only), ``secure``, ``httponly``, ``samesite``
    (``"Strict"``, ``"Lax"``, ``"None"``). Raises ``ValueError`` naming the bad part;
    nothing is added then.
    """
    field = set_cookie_field(name, value, max_age=max_age, path=path, domain=domain, secure=secure,
                             httponly=httponly, samesite=samesite)
    headers.add("Set-Cookie", field)
    return field
