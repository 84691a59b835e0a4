"""The raw-request corpus (tests/data/http) through a real edge in front of a recording origin.

Each case sends the exact bytes of ``NNN.http`` on a fresh connection, reads everything edge
answers (until it closes, or until it has been quiet for a moment after the expected answers),
and checks, from ``NNN.json`` (see tests/data/http/make_corpus.py for the keys):

- the number of final responses (exactly one unless the case pipelines: a second response would
  be a smuggled request) and that no stray bytes follow them;
- each status against the set the RFC allows;
- that edge closed the connection where the RFC requires it, and after every 400-class framing or
  syntax error (the rest of the stream cannot be trusted);
- what reached the backend, from the recording origin's log: one record per answer that carries the
  origin's ``X-Recorded`` header and none for answers edge made itself; the expected method, target,
  fields and body bytes;
- on every forwarded request, whatever the case: unambiguous framing, one Host, token field names,
  no CR/NUL in values, no underscore names or HTTP2-Settings, a well-formed Forwarded header, and a
  target that never resolves to ``/admin`` under any interpretation a backend may apply (encoded
  slash and backslash decoded or kept, double decoding, ``\\`` as ``/``, truncation at NUL).

Edge runs with 2 workers and the routes below: ``/admin`` is denied by a fixed 403, ``/ws`` allows
WebSocket, everything else goes to the recording origin with WebSocket off; ``forwarded: true``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from edge.fields import is_token
from edge.launch import start_edge
from tests.fixtures.recording_origin import read_records, start_recording_origin

CORPUS = Path(__file__).resolve().parent.parent / "data" / "http"
CASES = sorted(p for kind in ("valid", "invalid") for p in (CORPUS / kind).glob("*.http"))
DENIED = "/admin"
# After these, edge cannot know where the next request starts (or refuses the connection's
# protocol): it must close (RFC 9112 §6.3, §9.6; nginx and h11 do the same).
CLOSING_STATUSES = {400, 413, 414, 431, 501, 505}
QUIET_S = 0.5  # how long a connection must stay silent after the expected answers
CASE_LIMIT_S = 15.0  # upper bound on one case's exchange; edge's own timeouts are far above it
SETTLE_S = 0.2  # lets a request edge forwarded while answering itself reach the origin's log
# origin-form characters a forwarded target may hold (RFC 3986 §2, §3.3, §3.4: pchar, '/', '?', pct-encoded)
URI_TARGET = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})+")


@pytest.fixture(scope="module")
def corpus_edge(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    origin, log_path = start_recording_origin(str(d))
    config = {
        "upstreams": {"rec": {"servers": [f"127.0.0.1:{origin.port}"]}},
        "routes": [
            {"name": "admin", "match": {"path": DENIED}, "respond": {"status": 403}},
            {"name": "ws", "match": {"path": "/ws"}, "upstream": "rec", "websocket": True},
            {"name": "all", "match": {"path": "/"}, "upstream": "rec", "websocket": False},
        ],
        "headers": {"forwarded": True},
    }
    edge_dir = d / "edge"
    edge_dir.mkdir()
    try:
        edge = start_edge(config, workers=2, work_dir=str(edge_dir))
    except Exception:
        origin.stop()
        raise
    yield edge, log_path, origin
    edge.stop()
    origin.stop()


# --------------------------------------------------------------------------- reading edge's answers


class Response:
    def __init__(self, status: int, fields: list[tuple[str, str]], body: bytes, interim: list[int]) -> None:
        self.status = status
        self.fields = fields
        self.body = body
        self.interim = interim

    def get(self, name: str) -> str | None:
        vals = [v for n, v in self.fields if n == name]
        return ", ".join(vals) if vals else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.fields} {self.body[:80]!r}>"


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    """(payload, bytes consumed) of a complete chunked body at the start of ``data``, else None."""
    out, i = b"", 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return None
        size = int(data[i:j].split(b";")[0].strip(), 16)
        i = j + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", i - 2)
            return (out, end + 4) if end >= 0 else None
        if len(data) < i + size + 2:
            return None
        out += data[i:i + size]
        i += size + 2


def parse_responses(buf: bytes, heads: list[bool], closed: bool) -> tuple[list[Response], bytes]:
    """The complete responses at the start of ``buf`` and the bytes left over."""
    out: list[Response] = []
    interim: list[int] = []
    while buf:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = buf[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0] in ("HTTP/1.1", "HTTP/1.0"), f"not a status line: {lines[0]!r}"
        status = int(parts[1])
        fields = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
        rest = buf[end + 4:]
        if 100 <= status < 200 and status != 101:
            interim.append(status)
            buf = rest
            continue
        names = {n for n, _ in fields}
        head = heads[len(out)] if len(out) < len(heads) else False
        if head or status in (204, 304) or status == 101:
            body, used = b"", 0
        elif "transfer-encoding" in names:
            got = _dechunk(rest)
            if got is None:
                break
            body, used = got
        elif "content-length" in names:
            n = int(next(v for k, v in fields if k == "content-length"))
            if len(rest) < n:
                break
            body, used = rest[:n], n
        elif closed:
            body, used = rest, len(rest)
        else:
            break
        out.append(Response(status, fields, body, interim))
        interim = []
        buf = rest[used:]
    return out, buf


def exchange(port: int, raw: bytes, expected: int, heads: list[bool], must_close: bool):
    """Send ``raw`` on a new connection; (responses, leftover bytes, closed by edge)."""
    buf, closed = b"", False
    deadline = time.monotonic() + CASE_LIMIT_S
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        while time.monotonic() < deadline:
            resps, _ = parse_responses(buf, heads, closed)
            done = len(resps) >= expected
            need_close = must_close or any(r.status in CLOSING_STATUSES for r in resps)
            s.settimeout(QUIET_S if done and not need_close else max(0.05, deadline - time.monotonic()))
            try:
                data = s.recv(65536)
            except socket.timeout:
                if done and not need_close:
                    break
                continue
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            buf += data
    resps, rest = parse_responses(buf, heads, closed)
    return resps, rest, closed


# --------------------------------------------------------------------------- what reached the backend


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 §4: elements of ``pair *(";" pair)``, pairs ``token "=" (token / quoted-string)``."""
    elements, pairs, i, n = [], {}, 0, len(value)
    while True:
        while i < n and value[i] in " \t":
            i += 1
        j = i
        while j < n and value[j] != "=":
            j += 1
        name = value[i:j].strip()
        assert is_token(name), f"Forwarded: bad parameter name {name!r} in {value!r}"
        i = j + 1
        if i < n and value[i] == '"':
            i += 1
            v = ""
            while i < n and value[i] != '"':
                if value[i] == "\\":
                    i += 1
                v += value[i]
                i += 1
            assert i < n, f"Forwarded: unterminated quoted-string in {value!r}"
            i += 1
        else:
            j = i
            while j < n and value[j] not in ";, \t":
                j += 1
            v = value[i:j]
            assert is_token(v), f"Forwarded: value {v!r} must be a token or quoted in {value!r}"
            i = j
        pairs[name.lower()] = v
        while i < n and value[i] in " \t":
            i += 1
        if i >= n or value[i] == ",":
            elements.append(pairs)
            pairs = {}
            if i >= n:
                return elements
        else:
            assert value[i] == ";", f"Forwarded: unexpected {value[i]!r} in {value!r}"
        i += 1


def _remove_dots(path: str) -> str:
    out: list[str] = []
    for seg in re.sub("/+", "/", path).split("/")[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    return "/" + "/".join(out)


def interpretations(target: str) -> set[str]:
    """Every path a backend may resolve ``target`` to: decoded 0-2 times, ``\\`` as ``/``, cut at NUL."""
    path = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*", "", target).split("?")[0].split("#")[0]
    seen = {path}
    for _ in range(3):
        for p in list(seen):
            seen.add(unquote_to_bytes(p).decode("latin-1"))
            seen.add(p.replace("\\", "/"))
            seen.add(p.split("\x00")[0])
    return {_remove_dots(p) for p in seen if p.startswith(("/", "\\"))} | {_remove_dots("/" + p) for p in seen}


class Forwarded:
    """One request as the recording origin received it."""

    def __init__(self, rec: dict) -> None:
        self.rec = rec
        lines = rec["head"][:-4].split(b"\r\n") if rec["head"].endswith(b"\r\n\r\n") else [rec["head"]]
        self.line = lines[0]
        self.raw_fields = lines[1:]
        self.fields: list[tuple[str, str]] = []
        for raw in self.raw_fields:
            name, _, value = raw.partition(b":")
            self.fields.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
        parts = self.line.decode("latin-1").split(" ")
        self.method, self.target, self.version = (parts + ["", "", ""])[:3] if len(parts) == 3 else ("", "", "")

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def get(self, name: str) -> str | None:
        vals = self.values(name)
        return ", ".join(vals) if vals else None

    def payload(self) -> bytes:
        te = self.get("transfer-encoding")
        if te and te.lower().split(",")[-1].strip() == "chunked":
            got = _dechunk(self.rec["body"])
            assert got is not None, f"backend got an incomplete chunked body {self.rec['body']!r}"
            return got[0]
        return self.rec["body"]


def check_safe(f: Forwarded) -> None:
    """Rules for every request edge forwards (RFC 9112 §3, §5, §6; RFC 9110 §5.5, §7.6.1; RFC 7239)."""
    assert f.rec["error"] is None, f"the backend could not frame what edge sent ({f.rec['error']}): {f.rec['head']!r}"
    parts = f.line.split(b" ")
    assert len(parts) == 3, f"request line is not three words: {f.line!r}"
    assert is_token(parts[0].decode("latin-1")), f"method not a token: {f.line!r}"
    assert parts[2] in (b"HTTP/1.1", b"HTTP/1.0"), f"bad version: {f.line!r}"
    assert parts[1] == b"*" or URI_TARGET.fullmatch(parts[1]), f"target outside the RFC 3986 grammar: {f.line!r}"
    for raw in f.raw_fields:
        name, sep, value = raw.partition(b":")
        assert sep and is_token(name.decode("latin-1")), f"bad field line sent to the backend: {raw!r}"
        assert b"\r" not in value and b"\x00" not in value and b"\n" not in value, f"CR/LF/NUL in value: {raw!r}"
        assert b"_" not in name, f"underscore field name forwarded: {raw!r}"
    assert len(f.values("host")) == 1, f"backend got {len(f.values('host'))} Host fields"
    assert len(f.values("content-length")) <= 1, "backend got several Content-Length fields"
    assert not (f.values("content-length") and f.values("transfer-encoding")), "backend got both CL and TE"
    for hop in ("keep-alive", "proxy-connection", "http2-settings"):
        assert hop not in [n for n, _ in f.fields], f"hop-by-hop {hop} forwarded"
    if f.get("forwarded") is not None:
        parse_forwarded(f.get("forwarded"))
    for p in interpretations(f.target):
        assert not (p == DENIED or p.startswith(DENIED + "/")), (
            f"{f.target!r} reached the backend and resolves to {p!r} under the denied {DENIED} prefix")


def check_expected(f: Forwarded, exp: dict) -> None:
    if "method" in exp:
        assert f.method == exp["method"], f"method {f.method!r}, expected {exp['method']!r}"
    if "target" in exp:
        assert f.target == exp["target"], f"target {f.target!r}, expected {exp['target']!r}"
    if "target_in" in exp:
        assert f.target in exp["target_in"], f"target {f.target!r}, expected one of {exp['target_in']!r}"
    for name, value in exp.get("headers", {}).items():
        assert f.get(name) == value, f"{name}: {f.get(name)!r}, expected {value!r}"
    for name, pattern in exp.get("match", {}).items():
        got = f.get(name)
        assert got is not None and re.fullmatch(pattern, got), f"{name}: {got!r} does not match {pattern!r}"
    for name in exp.get("present", []):
        assert f.get(name) is not None, f"{name} missing at the backend"
    for name in exp.get("absent", []):
        assert f.get(name) is None, f"{name} reached the backend: {f.get(name)!r}"
    if "body" in exp:
        assert f.payload() == exp["body"].encode("latin-1"), f"body {f.payload()!r}, expected {exp['body']!r}"
    if "forwarded_host" in exp:
        els = parse_forwarded(f.get("forwarded") or "")
        assert els and els[-1].get("host") == exp["forwarded_host"], f"Forwarded {f.get('forwarded')!r}"


# --------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("case", CASES, ids=[str(p.relative_to(CORPUS)) for p in CASES])
def test_http_corpus(corpus_edge, case: Path) -> None:
    edge, log_path, _ = corpus_edge
    raw = case.read_bytes()
    spec = json.loads(case.with_suffix(".json").read_text(encoding="utf-8"))
    status_sets = spec.get("responses") or [spec["status"]]
    heads = [bool(spec.get("head"))] * len(status_sets)
    before = len(read_records(log_path))

    resps, rest, closed = exchange(edge.port, raw, len(status_sets), heads, bool(spec.get("close")))
    about = f"{case.relative_to(CORPUS)} ({spec['about']}; {spec['ref']}): got {resps!r} rest={rest[:200]!r}"

    assert len(resps) == len(status_sets), f"expected {len(status_sets)} response(s): {about}"
    assert not rest, f"stray bytes after the responses: {about}"
    for r, allowed in zip(resps, status_sets):
        assert r.status in allowed, f"status {r.status} not in {allowed}: {about}"
    if spec.get("no_interim"):
        assert not any(r.interim for r in resps), f"interim response sent: {[r.interim for r in resps]}: {about}"
    if spec.get("close") or resps[-1].status in CLOSING_STATUSES:
        assert closed, f"edge left the connection open after {resps[-1].status}: {about}"

    from_backend = [r for r in resps if r.get("x-recorded") is not None]
    if len(from_backend) < len(resps):
        time.sleep(SETTLE_S)
    records = [Forwarded(r) for r in read_records(log_path)[before:]]
    for f in records:
        check_safe(f)
    assert len(records) == len(from_backend), (
        f"backend received {len(records)} request(s) ({[f.line for f in records]}) "
        f"for {len(from_backend)} answer(s) it gave: {about}")
    for r in resps:
        if r.get("x-recorded") is None:
            assert r.status >= 400 or spec.get("edge_may_answer"), f"edge answered {r.status} itself: {about}"
    if case.parent.name == "valid" and not spec.get("edge_may_answer"):
        assert len(from_backend) == len(resps), f"a valid request was not forwarded: {about}"
    if records and "backend" in spec:
        assert len(records) == len(spec["backend"]), f"expected {len(spec['backend'])} forwarded request(s): {about}"
        for f, exp in zip(records, spec["backend"]):
            try:
                check_expected(f, exp)
            except AssertionError as e:
                raise AssertionError(f"{e}\nforwarded: {f.rec['head']!r} {f.rec['body']!r}\n{about}") from None


def test_runner_sees_a_smuggled_response(corpus_edge) -> None:
    """The runner must catch what it exists to catch: sent straight to the (lenient) recording origin,
    the CL.TE case is framed by chunked and its tail served as a second request to /admin."""
    _, log_path, origin = corpus_edge
    raw = (CORPUS / "invalid").joinpath(next(
        p.with_suffix(".http").name for p in sorted((CORPUS / "invalid").glob("*.json"))
        if "/clte-smuggle" in p.with_suffix(".http").read_bytes().split(b"\r\n")[0].decode("latin-1"))).read_bytes()
    before = len(read_records(log_path))
    resps, rest, _ = exchange(origin.port, raw, 1, [False], False)
    assert [r.status for r in resps] == [200, 200] and not rest
    smuggled = Forwarded(read_records(log_path)[before:][1])
    with pytest.raises(AssertionError, match="denied /admin"):
        check_safe(smuggled)


def test_corpus_files_match_their_table() -> None:
    """At least 60 cases (issue 7), and the files are exactly what make_corpus.py writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert len(CASES) >= 60
    for kind, rows in (("valid", table.VALID), ("invalid", table.INVALID)):
        on_disk = sorted((CORPUS / kind).glob("*.http"))
        assert len(on_disk) == len(rows), f"{kind}: {len(on_disk)} files for {len(rows)} rows: run make_corpus.py"
        for path, (raw, expect) in zip(on_disk, rows):
            assert path.read_bytes() == raw, f"{path} differs from its row in make_corpus.py"
            assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == expect, path


def test_interpretations_cover_known_bypasses() -> None:
    """The safety check itself: each classic spelling of /admin is caught, a harmless path is not."""
    for target in ("/p/..%2fadmin/x", "/x/%252e%252e/admin", "/p/..\\admin", "/%5cadmin", "/admin%00.html", "//admin",
                   "http://h/admin"):
        assert any(p == DENIED or p.startswith(DENIED + "/") for p in interpretations(target)), target
    for target in ("/files/a%2Fb", "/administrator", "/x/admin"):
        assert not any(p == DENIED or p.startswith(DENIED + "/") for p in interpretations(target)), target


def test_forwarded_parser() -> None:
    assert parse_forwarded('for=127.0.0.1;host="example.com:8080";proto=http') == [
        {"for": "127.0.0.1", "host": "example.com:8080", "proto": "http"}]
    assert parse_forwarded('for=1.2.3.4, for="[::1]"') == [{"for": "1.2.3.4"}, {"for": "[::1]"}]
    with pytest.raises(AssertionError):
        parse_forwarded("for=127.0.0.1;host=example.com:8080")
