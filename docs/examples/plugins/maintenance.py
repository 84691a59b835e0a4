"""maintenance: answer 503 with Retry-After during a maintenance window or on listed paths.

The worked example of docs/plugins.md. Staff addresses (``allow``) still get through,
so the site can be checked before the window ends.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from ipaddress import IPv4Network, IPv6Network, ip_address

from pydantic import Field, IPvAnyNetwork, model_validator

from edge.context import RequestContext, Response
from edge.plugins import Plugin, PluginConfig, Services


class Maintenance(Plugin):
    """Answer 503 + Retry-After while a window is open or for paths under maintenance."""

    name = "maintenance"
    priority = 1200   # after request_id and cors; before ipfilter, auth, ratelimit: costs them nothing

    class Config(PluginConfig):
        paths: tuple[str, ...] = Field((), description="path prefixes that are always under maintenance")
        start: datetime | None = Field(None, description="window start, ISO 8601 with a time zone")
        end: datetime | None = Field(None, description="window end, ISO 8601 with a time zone")
        retry_after_s: int = Field(300, ge=1, description="Retry-After for listed paths (in a window: until its end)")
        allow: tuple[IPvAnyNetwork, ...] = Field((), description="client networks let through (staff)")
        message: str = Field("down for maintenance", description="text of the 503 body")

        @model_validator(mode="after")
        def _window(self) -> "Maintenance.Config":
            if (self.start is None) != (self.end is None):
                raise ValueError("give both start and end, or neither")
            if self.start is not None and self.end is not None:
                if self.start.tzinfo is None or self.end.tzinfo is None:
                    raise ValueError("start and end need a time zone, e.g. 2026-05-01T02:00:00+00:00")
                if self.end <= self.start:
                    raise ValueError("end must be after start")
            for p in self.paths:
                if not p.startswith("/"):
                    raise ValueError(f"paths must start with '/' (got {p!r})")
            return self

    def __init__(self, config: Config, services: Services) -> None:
        # Everything is computed once per worker; on_request only compares.
        self._prefixes = tuple(p.rstrip("/") for p in config.paths)
        self._window = (config.start.timestamp(), config.end.timestamp()) if config.start and config.end else None
        self._allow: tuple[IPv4Network | IPv6Network, ...] = config.allow
        self._retry_after_s = config.retry_after_s
        self._message = config.message
        self._log = services.logger

    def _under_maintenance(self, path: str) -> bool:
        # a prefix matches at a segment boundary: /admin matches /admin and /admin/x, not /administrator
        return any(path == p or path.startswith(p + "/") or p == "" for p in self._prefixes)

    def on_request(self, ctx: RequestContext) -> Response | None:
        retry_after_s = None
        if self._window is not None:
            now = time.time()
            start, end = self._window
            if start <= now < end:
                retry_after_s = max(1, math.ceil(end - now))
        if retry_after_s is None and self._under_maintenance(ctx.path):
            retry_after_s = self._retry_after_s
        if retry_after_s is None:
            return None                       # None: continue to the backend
        if self._allow and any(ip_address(ctx.client_ip) in net for net in self._allow):
            return None
        answer = Response.error(503, self._message, ctx.request_id)
        answer.headers.set("Retry-After", str(retry_after_s))
        return answer
