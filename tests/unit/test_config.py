"""Configuration loading: exact error texts, shipped files, `edge check`, docs/config.md."""

import importlib.util
import textwrap
from pathlib import Path

import pytest
import yaml

from edge.__main__ import COMMANDS, main, validate
from edge.config import EdgeConfig, load_config, parse_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([ROOT / "conf" / "edge.yaml", *(ROOT / "conf" / "examples").glob("*.yaml")])

BASE = """\
upstreams:
  demo:
    servers: ["127.0.0.1:9001"]
"""
ROUTE = "routes: [{respond: {status: 204}}]\n"


def write(tmp_path, text, name="edge.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path):
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value).replace(str(path), "FILE")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "server:\n  worker: 2\n",
            "FILE: server.worker: unknown key",
        ),
        (
            "rotues: []\n",
            "FILE: rotues: unknown key",
        ),
        (
            "upstreams:\n  demo:\n    servers: ['127.0.0.1:9001', '127.0.0.1:70000']\n",
            "FILE: upstreams.demo.servers[1].port: port must be 1-65535 (got 70000)",
        ),
        (
            "upstreams:\n  demo:\n    servers: [{host: a, port: 0}]\n",
            "FILE: upstreams.demo.servers[0].port: port must be 1-65535 (got 0)",
        ),
        (
            "upstreams:\n  demo:\n    servers: ['https://a b']\n",
            "FILE: upstreams.demo.servers[0]: expected 'https://host[:port]' (got 'https://a b')",
        ),
        (
            "upstreams:\n  demo:\n    servers: []\n",
            "FILE: upstreams.demo.servers: Tuple should have at least 1 item after validation, not 0",
        ),
        (
            BASE + "    timeouts: {read: 5 parsecs}\n",
            "FILE: upstreams.demo.timeouts.read: expected a duration such as '2s' or '500ms' (got '5 parsecs')",
        ),
        (
            BASE + "    timeouts: {connect: 0s}\n",
            "FILE: upstreams.demo.timeouts.connect: must be positive (got 0.0)",
        ),
        (
            "store: {max_bytes: lots}\n",
            "FILE: store.max_bytes: expected a size such as '10MB' or '64KiB' (got 'lots')",
        ),
        (
            "store: {backend: redis}\n",
            "FILE: store: backend redis needs url",
        ),
        (
            BASE + "routes:\n  - upstream: demo\n  - upstream: dmeo\n",
            "FILE: routes[1].upstream: unknown upstream 'dmeo' (known: demo)",
        ),
        (
            "routes:\n  - upstream: demo\n",
            "FILE: routes[0].upstream: unknown upstream 'demo' (known: none defined)",
        ),
        (
            BASE + "routes:\n  - upstream: demo\n    respond: {body: hi}\n",
            "FILE: routes[0]: a route needs exactly one of upstream, redirect, respond",
        ),
        (
            "routes:\n  - match: {path: /x}\n",
            "FILE: routes[0]: a route needs exactly one of upstream, redirect, respond",
        ),
        (
            BASE + "routes:\n  - match: {path: {regex: '^/(a'}}\n    upstream: demo\n",
            "FILE: routes[0].match.path: bad regular expression '^/(a': missing ): ^/(a (RE2 syntax: no backreferences, no lookaround)",
        ),
        (
            BASE + "routes:\n  - match: {headers: {X-A: '~[a'}}\n    upstream: demo\n",
            "FILE: routes[0].match.headers: header X-A: bad regular expression '[a': missing ]: [a (RE2 syntax: no backreferences, no lookaround)",
        ),
        (
            BASE + "routes:\n  - rewrite: {regex: '(', replace: x}\n    upstream: demo\n",
            "FILE: routes[0].rewrite.regex: bad regular expression '(': missing ): ( (RE2 syntax: no backreferences, no lookaround)",
        ),
        (
            BASE + "routes:\n  - match: {path: {exact: /a, prefix: /b}}\n    upstream: demo\n",
            "FILE: routes[0].match.path: give exactly one of exact, prefix, regex",
        ),
        (
            BASE + "routes:\n  - match: {path: api}\n    upstream: demo\n",
            "FILE: routes[0].match.path: prefix must start with '/' (got 'api')",
        ),
        (
            BASE + "routes:\n  - match: {host: ['a.*.com']}\n    upstream: demo\n",
            "FILE: routes[0].match.host: host must be a name or '*.domain' (got 'a.*.com')",
        ),
        (
            BASE + "routes:\n  - match: {path: {exact: /a}}\n    strip_prefix: true\n    upstream: demo\n",
            "FILE: routes[0]: strip_prefix needs a path prefix match",
        ),
        (
            "routes:\n  - redirect: {status: 300, location: /}\n",
            "FILE: routes[0].redirect.status: Input should be 301, 302, 303, 307 or 308 (got 300)",
        ),
        (
            "server: {loglevel: loud}\n",
            "FILE: server.loglevel: Input should be 'debug', 'info', 'warning', 'error' or 'critical' (got 'loud')",
        ),
        (
            "server: {trusted_proxies: [10.0.0.0/33]}\n",
            "FILE: server.trusted_proxies: not an IP network: '10.0.0.0/33'",
        ),
        (
            "tls: {certfile: a.pem}\n",
            "FILE: tls.keyfile: required key is missing",
        ),
        (
            "- server\n",
            "FILE: the top level must be a mapping",
        ),
        (
            "server:\n  bind: [127.0.0.1:8080\n  workers: 2\n",
            "FILE: invalid YAML: line 3, column 10: expected ',' or ']', but got ':'",
        ),
        (
            "server:\n\tworkers: 2\n",
            "FILE: invalid YAML: line 2, column 1: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_error_text(tmp_path, text, message):
    assert error_of(write(tmp_path, text)) == message


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == "FILE: cannot read: No such file or directory"


def test_config_is_frozen():
    cfg = parse_config(yaml.safe_load(BASE))
    with pytest.raises(Exception):
        cfg.upstreams = {}


def test_defaults_fill_everything_but_routes(tmp_path):
    cfg = load_config(write(tmp_path, "routes: [{respond: {status: 204}}]\n"))
    assert cfg.upstreams == {}
    assert cfg.server.bind == ("127.0.0.1:8080",)


@pytest.mark.parametrize("text, message", [
    ("", "FILE: the file is empty (a configuration needs at least one route)"),
    ("# only a comment\n", "FILE: the file is empty (a configuration needs at least one route)"),
    (BASE, "FILE: routes: no routes: edge would answer every request with 404"),
    (BASE + "routes: []\n", "FILE: routes: no routes: edge would answer every request with 404"),
])
def test_empty_file_or_no_routes_is_refused(tmp_path, text, message):
    assert error_of(write(tmp_path, text)) == message



@pytest.mark.parametrize("bind, message", [
    ("[localhost]", "FILE: server.bind: no port in 'localhost' (write 'host:port')"),
    ("['127.0.0.1:8080', '[::1]']", "FILE: server.bind: no port in '[::1]' (write 'host:port')"),
    ("['127.0.0.1:99999']", "FILE: server.bind: expected 'host:port', '[ipv6]:port' or 'unix:/path' (got '127.0.0.1:99999')"),
])
def test_bind_without_port_is_refused(tmp_path, bind, message):
    assert error_of(write(tmp_path, f"server: {{bind: {bind}}}\n" + ROUTE)) == message


def test_bind_accepts_ports_and_unix_sockets(tmp_path):
    cfg = load_config(write(tmp_path, "server: {bind: ['127.0.0.1:8080', '[::1]:8443', 'unix:/tmp/e.sock']}\n" + ROUTE))
    assert cfg.server.bind == ("127.0.0.1:8080", "[::1]:8443", "unix:/tmp/e.sock")


def test_check_reports_every_error_of_a_file(tmp_path, capsys):
    path = write(tmp_path, """\
        server:
          bind: [localhost]
          workres: 3
        upstreams:
          demo:
            servers: ['127.0.0.1:70000', 'x']
        routes:
          - upstream: demo
        """)
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: server.bind: no port in 'localhost' (write 'host:port')\n"
        f"{path}: server.workres: unknown key\n"
        f"{path}: upstreams.demo.servers[0].port: port must be 1-65535 (got 70000)\n"
        f"{path}: upstreams.demo.servers[1]: expected 'host:port' or 'http://host:port' (got 'x')\n"
    )


def test_reported_errors_are_capped(tmp_path):
    from edge.config import MAX_REPORTED_ERRORS, ConfigErrors

    keys = "".join(f"  bad{i}: 1\n" for i in range(MAX_REPORTED_ERRORS + 5))
    with pytest.raises(ConfigErrors) as e:
        load_config(write(tmp_path, "server:\n" + keys + ROUTE))
    lines = str(e.value).replace(str(tmp_path / "edge.yaml"), "FILE").splitlines()
    assert len(e.value.errors) == MAX_REPORTED_ERRORS
    assert lines[0] == "FILE: server.bad0: unknown key"
    assert lines[-1] == "FILE: ... and 5 more errors"
    assert len(lines) == MAX_REPORTED_ERRORS + 1
    # the first error is also the ConfigError's own file/key/reason
    assert (e.value.key_path, e.value.reason) == ("server.bad0", "unknown key")


def test_edge_config_env_names_the_default_file(tmp_path, monkeypatch):
    path = write(tmp_path, "server: {workers: 3}\n" + ROUTE)
    monkeypatch.setenv("EDGE_CONFIG", str(path))
    assert load_config().server.workers == 3


def test_duplicate_yaml_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, BASE + "routes: []\nroutes: []\n"))


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_exist():
    assert ROOT / "conf" / "edge.yaml" in SHIPPED
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_validate(path):
    from edge.boot import validate as boot_validate

    cfg = load_config(path)
    # routes and plugin settings; building a worker (fleet examples open store sockets) is
    # what tests/integration/test_plugins.py checks
    boot_validate(str(path), construct=False)
    assert cfg.routes


def test_default_config_is_what_make_run_expects():
    cfg = load_config(ROOT / "conf" / "edge.yaml")
    assert cfg.server.bind == ("127.0.0.1:8080",)
    assert cfg.server.workers == 2
    assert cfg.store.backend == "local"
    assert [s.authority for s in cfg.upstreams["demo"].servers] == ["127.0.0.1:9001", "127.0.0.1:9002"]


# --------------------------------------------------------------------------- edge check


def test_check_ok(capsys):
    path = ROOT / "conf" / "edge.yaml"
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: ok (4 routes, 1 upstreams)\n" and err == ""


def test_check_refuses_with_the_message_on_stderr(tmp_path, capsys):
    path = write(tmp_path, "server: {workres: 2}\n")
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{path}: server.workres: unknown key\n")


def test_check_compiles_routes(tmp_path, capsys):
    # the schema accepts this (the regex compiles); the route table does not
    path = write(tmp_path, BASE + "routes:\n  - rewrite: {regex: '^/(a)', replace: '/\\2'}\n    upstream: demo\n")
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: routes[0].rewrite.replace: bad replacement '/\\\\2': invalid group reference 2 at position 2\n"
    )


def test_check_uses_edge_config_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_CONFIG", str(write(tmp_path, BASE + "routes: [{upstream: demo}]\n")))
    assert main(["check"]) == 0
    assert capsys.readouterr().out.endswith(": ok (1 routes, 1 upstreams)\n")


def test_unknown_command(capsys):
    assert main(["chekc"]) == 2
    assert "unknown command 'chekc'" in capsys.readouterr().err
    assert "check" in COMMANDS


# --------------------------------------------------------------------------- docs/config.md


def _gen_config_doc():
    spec = importlib.util.spec_from_file_location("gen_config_doc", ROOT / "scripts" / "gen_config_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_doc_is_up_to_date():
    expected = _gen_config_doc().render()
    current = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert current == expected, "docs/config.md is out of date: run python scripts/gen_config_doc.py"


def test_config_doc_example_validates():
    cfg = parse_config(yaml.safe_load(_gen_config_doc().EXAMPLE), "docs/config.md")
    validate(cfg)


def test_config_doc_names_every_key():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    for name, field in EdgeConfig.model_fields.items():
        if not field.exclude:
            assert f"### `{name}`" in text
    for key in ("routes[].match.path.prefix", "upstreams.<name>.servers[].port", "routes[].timeouts.read", "store.max_bytes"):
        assert f"| `{key}` |" in text


# --------------------------------------------------------------------------- issue 7: values that break the server


def route_with(extra: str) -> str:
    return BASE + "routes:\n  - upstream: demo\n" + textwrap.indent(textwrap.dedent(extra), "    ")


@pytest.mark.parametrize("text, message", [
    ("server: {max_request_line: 0}\n",
     "FILE: server.max_request_line: must be 1-65535 (got 0) (0 does not mean unlimited here, unlike gunicorn's limit_request_line)"),
    ("server: {max_request_line: 70000}\n", "FILE: server.max_request_line: must be 1-65535 (got 70000)"),
    ("server: {max_header_fields: 0}\n", "FILE: server.max_header_fields: Input should be greater than or equal to 1 (got 0)"),
    ("server: {max_header_field_size: 0}\n", "FILE: server.max_header_field_size: Input should be greater than or equal to 1 (got 0)"),
    ("server: {keepalive: -1}\n", "FILE: server.keepalive: duration must not be negative (got -1)"),
    ("store: {timeout: 0s}\n", "FILE: store.timeout: must be positive (got 0)"),
    ("store: {max_bytes: 0}\n", "FILE: store.max_bytes: must be positive (got 0)"),
    (BASE.replace('servers: ["127.0.0.1:9001"]', 'servers: ["127.0.0.1:9001"]\n    keepalive: {idle_timeout: 0}'),
     "FILE: upstreams.demo.keepalive.idle_timeout: must be positive (got 0)"),
    (BASE.replace('servers: ["127.0.0.1:9001"]', 'servers: ["127.0.0.1:9001"]\n    timeouts: {read: 0ms}'),
     "FILE: upstreams.demo.timeouts.read: must be positive (got 0.0)"),
])
def test_durations_and_sizes_that_must_be_positive(tmp_path, text, message):
    assert error_of(write(tmp_path, text)) == message


def test_keepalive_zero_means_no_keep_alive_and_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, BASE + ROUTE + "server: {keepalive: 0}\n"))
    assert cfg.server.keepalive == 0.0


@pytest.mark.parametrize("extra, message", [
    ("respond: {headers: {'X-A': \"a\\r\\nSet-Cookie: x=1\"}}\n",
     "FILE: routes[0].respond.headers: invalid value for header X-A: 'a\\r\\nSet-Cookie: x=1' contains a control character, a character above U+00FF or surrounding whitespace"),
    ("respond: {headers: {'Bad Name': 'x'}}\n",
     "FILE: routes[0].respond.headers: invalid header name 'Bad Name': must be a token (RFC 9110 §5.1)"),
    ("respond: {content_type: \"text/html\\nX: y\"}\n",
     "FILE: routes[0].respond.content_type: invalid value for header Content-Type: 'text/html\\nX: y' contains a control character, a character above U+00FF or surrounding whitespace"),
    ("host_header: \"example.com\\r\\nX: y\"\n",
     "FILE: routes[0].host_header: must be pass, upstream or a host name with an optional port: invalid host name in 'example.com\\r\\nX: y'"),
    ("host_header: 'evil,for=6.6.6.6'\n",
     "FILE: routes[0].host_header: must be pass, upstream or a host name with an optional port: invalid host name in 'evil,for=6.6.6.6'"),
    ("match: {headers: {'X A': '1'}}\n",
     "FILE: routes[0].match.headers: invalid header name 'X A': must be a token (RFC 9110 §5.1)"),
    ("match: {path: {regex: '^/(a)\\1'}}\n",
     "FILE: routes[0].match.path: bad regular expression '^/(a)\\\\1': invalid escape sequence: \\1 (RE2 syntax: no backreferences, no lookaround)"),
    ("rewrite: {regex: '^/(?!x)', replace: '/'}\n",
     "FILE: routes[0].rewrite.regex: bad regular expression '^/(?!x)': invalid perl operator: (?! (RE2 syntax: no backreferences, no lookaround)"),
    ("upgrade: ['web socket']\n", "FILE: routes[0].upgrade: not a protocol name (a token, RFC 9110 §7.8): 'web socket'"),
    ("upgrade: [websocket]\nwebsocket: true\n",
     "FILE: routes[0]: give upgrade or websocket, not both (websocket: true is upgrade: [websocket])"),
    ("encoded_slash: drop\n", "FILE: routes[0].encoded_slash: Input should be 'keep', 'decode' or 'reject' (got 'drop')"),
])
def test_route_values_that_would_be_written_badly_are_refused(tmp_path, extra, message):
    text = route_with(extra)
    if "respond:" in extra:
        text = text.replace("  - upstream: demo\n", "  - match: {}\n")
    assert error_of(write(tmp_path, text)) == message


@pytest.mark.parametrize("text, message", [
    ("headers: {request_id_header: 'X Request'}\n",
     "FILE: headers.request_id_header: invalid header name 'X Request': must be a token (RFC 9110 §5.1)"),
    ("headers: {hide_backend: [Server, 'X:Powered']}\n",
     "FILE: headers.hide_backend[1]: invalid header name 'X:Powered': must be a token (RFC 9110 §5.1)"),
    ("metrics: {statsd: 'localhost'}\n", "FILE: metrics.statsd: expected 'host:port' (got 'localhost')"),
])
def test_header_settings_are_refused_at_load(tmp_path, text, message):
    assert error_of(write(tmp_path, BASE + text)) == message


@pytest.mark.parametrize("host_header", ["pass", "upstream", "example.com", "example.com:8080", "[::1]:81"])
def test_host_header_literals_accepted(tmp_path, host_header):
    cfg = load_config(write(tmp_path, route_with(f"host_header: '{host_header}'\n")))
    assert cfg.routes[0].host_header == host_header


@pytest.mark.parametrize("server, authority", [
    ("127.0.0.1:9001", "127.0.0.1:9001"), ("http://backend.internal:80/", "backend.internal:80"), ("[::1]:9", "[::1]:9"),
])
def test_server_addresses_parsed_by_the_one_host_parser(tmp_path, server, authority):
    cfg = load_config(write(tmp_path, f"upstreams:\n  demo:\n    servers: ['{server}']\n" + ROUTE))
    assert cfg.upstreams["demo"].servers[0].authority == authority


@pytest.mark.parametrize("server", ["bad host:80", "a,b:80", "[1.2.3.4]:80", "host", "host:"])
def test_server_addresses_refused(tmp_path, server):
    assert error_of(write(tmp_path, f"upstreams:\n  demo:\n    servers: ['{server}']\n")) == (
        f"FILE: upstreams.demo.servers[0]: expected 'host:port' or 'http://host:port' (got '{server}')"
    )


def test_keepalive_zero_never_becomes_a_zero_timeout_for_gunicorn(tmp_path):
    # gunicorn's HTTP/2 connections use keepalive as their idle timeout (0 would mean none);
    # edge's own HTTP/1 loop reads server.keepalive == 0 as "close after each response".
    from edge.boot import Loaded, gunicorn_settings

    cfg = load_config(write(tmp_path, BASE + ROUTE + "server: {keepalive: 0}\n"))
    assert gunicorn_settings(Loaded("x", cfg, None))["keepalive"] >= 1
def test_check_refuses_what_a_worker_could_not_build(tmp_path, capsys):
    # the schema accepts any path; a worker opening the access log would fail to boot
    path = write(tmp_path, f"server: {{accesslog: {tmp_path}/missing/access.log}}\n" + ROUTE)
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: a worker cannot be built from this configuration: FileNotFoundError: "
        f"[Errno 2] No such file or directory: '{tmp_path}/missing/access.log'\n")


@pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding", "Connection"])
def test_respond_headers_cannot_set_framing(tmp_path, name):
    text = BASE + f"routes:\n  - respond: {{headers: {{'{name}': '1'}}}}\n"
    assert error_of(write(tmp_path, text)) == (
        f"FILE: routes[0].respond.headers: header {name} is connection framing, which edge writes itself "
        "(RFC 9112 §6, RFC 9110 §7.6.1)")


# ---------------------------------------------------------------- TLS to backends (issue 13)


@pytest.mark.parametrize("servers, port, tls", [
    ("['https://a.example:8443']", 8443, True),
    ("['https://a.example']", 443, True),           # RFC 9110 §4.2.2: https's default port
    ("['https://[::1]:9443/']", 9443, True),
    ("['http://a.example:80']", 80, False),
    ("[{host: a.example, port: 9000, tls: true}]", 9000, True),
])
def test_https_servers(servers, port, tls):
    cfg = parse_config(yaml.safe_load(f"upstreams:\n  demo:\n    servers: {servers}\n"))
    s = cfg.upstreams["demo"].servers[0]
    assert (s.port, s.tls) == (port, tls)


@pytest.mark.parametrize("tls, error", [
    ("{client_cert: /x.pem}", "upstreams.demo.tls: client_cert and client_key go together"),
    ("{ca_file: /nonexistent/ca.pem}", "upstreams.demo.tls: cannot read /nonexistent/ca.pem: No such file or directory"),
    ("{server_name: 'a b'}", "upstreams.demo.tls.server_name:"),
    ("{server_name: 'a.example:443'}", "upstreams.demo.tls.server_name: a name without a port (got 'a.example:443')"),
    ("{min_version: '1.1'}", "upstreams.demo.tls.min_version:"),
])
def test_upstream_tls_errors(tls, error):
    with pytest.raises(ConfigError) as e:
        parse_config(yaml.safe_load(f"upstreams:\n  demo:\n    servers: ['https://a:1']\n    tls: {tls}\n"), "FILE")
    assert str(e.value).startswith(f"FILE: {error}"), str(e.value)


def test_upstream_tls_settings_need_a_tls_server():
    with pytest.raises(ConfigError) as e:
        parse_config(yaml.safe_load("upstreams:\n  demo:\n    servers: ['a:1']\n    tls: {verify: false}\n"), "FILE")
    assert "no server uses TLS" in str(e.value)
