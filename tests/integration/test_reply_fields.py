"""What a plugin puts in a reply head is checked before it reaches the client (issue 7).

Framing fields (Content-Length, Transfer-Encoding, Connection...) belong to edge's
writer: a plugin that sets them must not produce a second Content-Length or a
Transfer-Encoding beside edge's own. A value that cannot be written (a control
character, a character above U+00FF) is a 500 and one log line, never a crash of the
connection or bytes on the wire.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.rawhttp import send_until_close

PLUGIN = '''
from edge.context import Response
from edge.plugins import Plugin


class Framer(Plugin):
    name = "framer"

    def on_request(self, ctx):
        if ctx.path == "/answer":
            return Response(200, [("Content-Length", "1"), ("Transfer-Encoding", "chunked")], b"hello")
        return None

    def on_response(self, ctx, response):
        if ctx.path == "/proxied":
            response.headers.add("Content-Length", "1")
            response.headers.add("Transfer-Encoding", "chunked")
        elif ctx.path == "/euro":
            response.headers.set("X-Price", "\\u20ac5")
'''


def raw_get(port: int, path: str) -> bytes:
    return send_until_close(port, f"GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".encode())


@pytest.fixture
def edge(origin, edge_factory, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "framer.py").write_text(textwrap.dedent(PLUGIN))
    return edge_factory({"upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
                         "routes": [{"match": {"path": "/"}, "upstream": "app"}],
                         "plugin_dirs": [str(d)], "plugins": {"framer": {}}})


@pytest.mark.parametrize("path", ["/answer", "/proxied"])
def test_framing_fields_from_a_plugin_never_reach_the_client(edge, path):
    head, _, body = raw_get(edge.port, path).partition(b"\r\n\r\n")
    fields = [line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:]]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert fields.count(b"content-length") == 1
    assert b"transfer-encoding" not in fields
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"content-length")))
    assert length == len(body) > 1


def test_unwritable_value_from_a_plugin_is_500_not_a_dead_connection(edge):
    data = raw_get(edge.port, "/euro")
    assert data.startswith(b"HTTP/1.1 500 ")
    assert "\u20ac".encode("utf-8") not in data
    assert raw_get(edge.port, "/").startswith(b"HTTP/1.1 200 ")  # the worker goes on serving
