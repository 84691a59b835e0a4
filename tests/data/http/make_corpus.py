"""Writes the raw-request corpus: ``valid/NNN.http`` + ``NNN.json`` and ``invalid/NNN.http`` + ``NNN.json``.

Theory of operation. Each case is one table row below: the exact request bytes (built with
explicit ``\\r\\n``, so bare LF, bare CR, NUL and non-ASCII bytes are deliberate) and what edge
must do, written from RFC 9110/9112 and known attack classes (request smuggling,
request-line injection, path confusion), never from edge's current behaviour. This table is
the source: ``python tests/data/http/make_corpus.py`` rewrites every file, and a test checks the
files on disk still match it (``.gitattributes`` keeps their bytes exact in git). Add a case at
the end of its list, so existing case ids (``valid/NNN.http``) stay stable.

Expectation keys (read by tests/integration/test_http_corpus.py):
  about, ref      what the case is and the rule it comes from
  status          statuses edge may answer (a set where the RFC allows a choice)
  responses       instead of ``status`` for pipelining: one status set per expected response
  close           edge must close the connection after its (last) response
  head            the (single) request is HEAD: the response has no body
  no_interim      edge must send no 1xx before the final answer
  edge_may_answer a valid request edge may answer itself instead of forwarding (OPTIONS *)
  backend         what the backend must receive when the answer came from it: one entry per
                  request, in order: method, target (or target_in), headers {name: exact
                  value}, match {name: regex}, present/absent [names], body (latin-1 text),
                  forwarded_host (the ``host`` parameter of the last Forwarded element)
Rules the runner applies to every case: an answer edge made itself (4xx/5xx) means the backend
received nothing; every forwarded request has unambiguous framing, one Host, token header names
and never resolves to /admin under any interpretation a backend may apply.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRLF = b"\r\n"
HOST = b"Host: example.com"


def req(line: bytes, *fields: bytes, body: bytes = b"", host: bool = True) -> bytes:
    """A request: the line, Host (unless ``host=False``), the fields, an empty line, the body."""
    head = [line] + ([HOST] if host else []) + list(fields)
    return CRLF.join(head) + CRLF + CRLF + body


def get(target: bytes, *fields: bytes, **kw) -> bytes:
    return req(b"GET " + target + b" HTTP/1.1", *fields, **kw)


def fwd(method: str = "GET", target: str | None = None, **kw) -> dict:
    return {"method": method, **({"target": target} if target is not None else {}), **kw}


BAD = [400]
FRAMING = "RFC 9112 §6.3"
SMUGGLE = "request smuggling (CL.TE / TE.CL / TE.TE)"
PATHCONF = "path confusion: a deny rule must hold under every backend interpretation (issue 7 part 2.8)"
DENY = [400, 403]
REQ_IN_BODY = b"GET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n"
DENY_OR_SAFE = [400, 403, 200]  # 200 only if what reached the backend never resolves to /admin (checked on every record)

# ----------------------------------------------------------------------------- valid: edge forwards them

VALID: list[tuple[bytes, dict]] = [
    # framing
    (get(b"/plain"), dict(
        about="plain GET in origin-form", ref="RFC 9112 §3.2.1", status=[200],
        backend=[fwd("GET", "/plain", headers={"host": "example.com"}, absent=["transfer-encoding"], body="")])),
    (req(b"POST /cl HTTP/1.1", b"Content-Length: 5", body=b"hello"), dict(
        about="body framed by Content-Length", ref="RFC 9112 §6.2", status=[200],
        backend=[fwd("POST", "/cl", body="hello")])),
    (req(b"POST /chunked HTTP/1.1", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), dict(
        about="chunked body of two chunks", ref="RFC 9112 §7.1", status=[200],
        backend=[fwd("POST", "/chunked", body="hello world")])),
    (req(b"POST /ext HTTP/1.1", b"Transfer-Encoding: chunked",
         body=b"5;name=value\r\nhello\r\n6 ; q=\"a b\"\r\n world\r\n0;last\r\n\r\n"), dict(
        about="chunk extensions (token and quoted values, BWS before ';') are ignored", ref="RFC 9112 §7.1.1", status=[200],
        backend=[fwd("POST", "/ext", body="hello world")])),
    (req(b"POST /trailers HTTP/1.1", b"Transfer-Encoding: chunked", b"Trailer: X-Checksum",
         body=b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"), dict(
        about="chunked body with a trailer section", ref="RFC 9112 §7.1.2", status=[200],
        backend=[fwd("POST", "/trailers", body="hello")])),
    (req(b"POST /hex HTTP/1.1", b"Transfer-Encoding: chunked", body=b"000A\r\n0123456789\r\na\r\nabcdefghij\r\n0000\r\n\r\n"), dict(
        about="chunk sizes in upper/lower case hex with leading zeros", ref="RFC 9112 §7.1 (chunk-size = 1*HEXDIG)", status=[200],
        backend=[fwd("POST", "/hex", body="0123456789abcdefghij")])),
    (req(b"POST /te-case HTTP/1.1", b"Transfer-Encoding: Chunked", body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="transfer-coding names are case-insensitive", ref="RFC 9112 §7", status=[200],
        backend=[fwd("POST", "/te-case", body="abc")])),
    (req(b"POST /te-tab HTTP/1.1", b"Transfer-Encoding:\tchunked\t", body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="HTAB is optional whitespace around a field value", ref="RFC 9110 §5.6.3", status=[200],
        backend=[fwd("POST", "/te-tab", body="abc")])),
    (req(b"POST /empty HTTP/1.1", b"Content-Length: 0"), dict(
        about="POST with Content-Length: 0", ref="RFC 9112 §6.2", status=[200],
        backend=[fwd("POST", "/empty", body="")])),
    (req(b"POST /cl-zeros HTTP/1.1", b"Content-Length: 005", body=b"hello"), dict(
        about="Content-Length with leading zeros is still 1*DIGIT", ref="RFC 9110 §8.6", status=[200],
        backend=[fwd("POST", "/cl-zeros", body="hello")])),
    (req(b"POST /cl-ows HTTP/1.1", b"Content-Length:  5  ", body=b"hello"), dict(
        about="optional whitespace around the Content-Length value", ref="RFC 9110 §5.5", status=[200],
        backend=[fwd("POST", "/cl-ows", body="hello")])),
    (req(b"GET /get-body HTTP/1.1", b"Transfer-Encoding: chunked", body=b"2\r\nhi\r\n0\r\n\r\n"), dict(
        about="a GET may carry a framed body; it must be forwarded, not left to be read as the next request",
        ref="RFC 9110 §9.3.1, RFC 9112 §6.3", status=[200], backend=[fwd("GET", "/get-body", body="hi")])),
    (req(b"HEAD /head HTTP/1.1"), dict(
        about="HEAD is forwarded as HEAD and the answer has no body", ref="RFC 9110 §9.3.2", status=[200], head=True,
        backend=[fwd("HEAD", "/head")])),
    (get(b"/p1") + get(b"/p2") + get(b"/p3"), dict(
        about="three pipelined GETs: answered in order", ref="RFC 9112 §9.3.2", responses=[[200], [200], [200]],
        backend=[fwd("GET", "/p1"), fwd("GET", "/p2"), fwd("GET", "/p3")])),
    (req(b"POST /pc HTTP/1.1", b"Content-Length: 3", body=b"abc") + get(b"/after-cl"), dict(
        about="pipelined request after a Content-Length body", ref="RFC 9112 §9.3.2", responses=[[200], [200]],
        backend=[fwd("POST", "/pc", body="abc"), fwd("GET", "/after-cl")])),
    (req(b"POST /pt HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n") + get(b"/after-chunked"), dict(
        about="pipelined request after a chunked body", ref="RFC 9112 §9.3.2", responses=[[200], [200]],
        backend=[fwd("POST", "/pt", body="abc"), fwd("GET", "/after-chunked")])),
    (get(b"/close-first", b"Connection: close") + get(b"/never"), dict(
        about="nothing after a request with Connection: close is processed", ref="RFC 9112 §9.6", responses=[[200]], close=True,
        backend=[fwd("GET", "/close-first")])),
    (req(b"GET /http10 HTTP/1.0", host=False), dict(
        about="HTTP/1.0 without Host is allowed; edge supplies Host upstream and closes", ref="RFC 9112 §3.2, §9.3",
        status=[200], close=True, backend=[fwd("GET", "/http10", present=["host"])])),
    (req(b"POST /http10-cl HTTP/1.0", b"Content-Length: 4", body=b"data"), dict(
        about="HTTP/1.0 body framed by Content-Length", ref="RFC 9112 §6.2", status=[200], close=True,
        backend=[fwd("POST", "/http10-cl", body="data")])),
    (req(b"GET /ka10 HTTP/1.0", b"Connection: keep-alive") + get(b"/ka10-second"), dict(
        about="HTTP/1.0 keep-alive: a second request on the connection is served", ref="RFC 9112 §9.3, Appendix C.2.2",
        responses=[[200], [200]], backend=[fwd("GET", "/ka10", absent=["keep-alive"]), fwd("GET", "/ka10-second")])),
    (b"\r\n" + get(b"/leading-crlf"), dict(
        about="an empty line before the request line is ignored", ref="RFC 9112 §2.2 (SHOULD ignore)", status=[200],
        backend=[fwd("GET", "/leading-crlf")])),
    (req(b"GET /get-cl-body HTTP/1.1", b"Content-Length: %d" % len(REQ_IN_BODY), body=REQ_IN_BODY), dict(
        about="a GET body that looks like a request is body, never a second request", ref=f"RFC 9112 §6.3; {SMUGGLE}",
        status=[200], backend=[fwd("GET", "/get-cl-body", body="GET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n")])),
    (req(b"POST /expect10 HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 2", body=b"ok"), dict(
        about="100-continue from an HTTP/1.0 client is ignored: no interim 100", ref="RFC 9110 §10.1.1 (MUST ignore)",
        status=[200], no_interim=True, close=True, backend=[fwd("POST", "/expect10", body="ok")])),
    # request targets
    (req(b"GET http://example.com/abs?x=1 HTTP/1.1"), dict(
        about="absolute-form is accepted and sent upstream in origin-form", ref="RFC 9112 §3.2.2", status=[200],
        backend=[fwd("GET", "/abs?x=1", headers={"host": "example.com"})])),
    (req(b"GET http://a.example/abs2 HTTP/1.1", b"Host: b.example", host=False), dict(
        about="absolute-form: Host is replaced by the target's authority", ref="RFC 9112 §3.2.2", status=[200],
        backend=[fwd("GET", "/abs2", headers={"host": "a.example"})])),
    (req(b"OPTIONS * HTTP/1.1"), dict(
        about="asterisk-form with OPTIONS: answered by edge or forwarded as OPTIONS *", ref="RFC 9112 §3.2.4", status=[200, 204],
        edge_may_answer=True,
        backend=[fwd("OPTIONS", "*")])),
    (get(b"/q?a=1&b=%20x&c=/?:@!$'()*+,;="), dict(
        about="query with every sub-delim, '/', '?', ':' and '@' reaches the backend unchanged", ref="RFC 3986 §3.4",
        status=[200], backend=[fwd("GET", "/q?a=1&b=%20x&c=/?:@!$'()*+,;=")])),
    (get(b"/files/a%2Fb"), dict(
        about="an encoded slash outside any deny rule reaches the backend unchanged", ref="issue 7 part 2.8; RFC 3986 §2.2",
        status=[200], backend=[fwd("GET", "/files/a%2Fb")])),
    (get(b"/caf%C3%A9"), dict(
        about="percent-encoded UTF-8 stays encoded", ref="RFC 3986 §2.1", status=[200],
        backend=[fwd("GET", target_in=["/caf%C3%A9", "/caf%c3%a9"])])),
    (get(b"/%7Euser/x"), dict(
        about="encoded unreserved octet: forwarded encoded or decoded (equivalent)", ref="RFC 3986 §2.3, §6.2.2.2",
        status=[200], backend=[fwd("GET", target_in=["/%7Euser/x", "/~user/x"])])),
    (get(b"/a/./b/../c"), dict(
        about="dot segments are resolved before routing and forwarding", ref="RFC 3986 §5.2.4", status=[200],
        backend=[fwd("GET", "/a/c")])),
    (get(b"/" + b"a" * 8000), dict(
        about="an 8 KB request line under the 8190 limit", ref="RFC 9112 §3 (at least 8000 octets SHOULD be supported)",
        status=[200], backend=[fwd("GET", "/" + "a" * 8000)])),
    # header syntax
    (get(b"/ows", b"X-Pad:   v  \t"), dict(
        about="leading and trailing OWS is not part of the value", ref="RFC 9110 §5.5", status=[200],
        backend=[fwd("GET", "/ows", headers={"x-pad": "v"})])),
    (get(b"/empty-value", b"X-Empty:"), dict(
        about="an empty field value is valid", ref="RFC 9110 §5.5 (field-value = *field-content)", status=[200],
        backend=[fwd("GET", "/empty-value", headers={"x-empty": ""})])),
    (get(b"/obs-text", b"X-Latin: caf\xe9"), dict(
        about="obs-text in a field value is opaque data and kept", ref="RFC 9110 §5.5", status=[200],
        backend=[fwd("GET", "/obs-text", headers={"x-latin": "caf\xe9"})])),
    (get(b"/many", *[b"X-F%d: v" % i for i in range(80)]), dict(
        about="80 header fields, under the 100-field limit", ref="RFC 9110 §5.4", status=[200],
        backend=[fwd("GET", "/many", headers={"x-f0": "v", "x-f79": "v"})])),
    (get(b"/underscore", b"X_Real_IP: 6.6.6.6", b"X-Auth_User: admin"), dict(
        about="names with underscores are dropped (they collide with dashed names in CGI/WSGI environ)",
        ref="header-name confusion (nginx underscores_in_headers)", status=[200],
        backend=[fwd("GET", "/underscore", absent=["x_real_ip", "x-auth_user"])])),
    # Host and forwarding headers
    (get(b"/v6", b"Host: [::1]:8080", host=False), dict(
        about="IPv6 literal Host with port; quoted in Forwarded", ref="RFC 9112 §3.2, RFC 3986 §3.2.2, RFC 7239 §6",
        status=[200], backend=[fwd("GET", "/v6", headers={"host": "[::1]:8080"}, forwarded_host="[::1]:8080")])),
    (get(b"/hostport", b"Host: example.com:8080", host=False), dict(
        about="Host with a port: Forwarded host is a quoted-string (':' is not a tchar)", ref="RFC 7239 §4, §5.3",
        status=[200], backend=[fwd("GET", "/hostport", headers={"host": "example.com:8080"},
                                   match={"forwarded": r'.*host="example\.com:8080".*'}, forwarded_host="example.com:8080")])),
    (get(b"/v4port", b"Host: 127.0.0.1:8080", host=False), dict(
        about="IPv4 Host with a port; quoted in Forwarded", ref="RFC 9112 §3.2, RFC 7239 §4",
        status=[200], backend=[fwd("GET", "/v4port", headers={"host": "127.0.0.1:8080"}, forwarded_host="127.0.0.1:8080")])),
    (get(b"/ws/ten", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
         b"Sec-WebSocket-Version: 13").replace(b"HTTP/1.1", b"HTTP/1.0", 1), dict(
        about="Upgrade in an HTTP/1.0 request is ignored", ref="RFC 9110 §7.8 (MUST ignore)", status=[200], close=True,
        backend=[fwd("GET", "/ws/ten", absent=["upgrade"])])),
    (get(b"/xff", b"X-Forwarded-For: 10.0.0.1"), dict(
        about="X-Forwarded-For is appended to, not replaced", ref="de-facto X-Forwarded-For; RFC 7239 §4 (append)",
        status=[200], backend=[fwd("GET", "/xff", headers={"x-forwarded-for": "10.0.0.1, 127.0.0.1"},
                                   match={"forwarded": r'(.*, *)?for="?127\.0\.0\.1"?(;.*)?'})])),
    (get(b"/ws/chat", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
         b"Sec-WebSocket-Version: 13"), dict(
        about="WebSocket upgrade on a route that allows it is forwarded with Upgrade", ref="RFC 6455 §4.1, RFC 9110 §7.8",
        status=[200, 101], backend=[fwd("GET", "/ws/chat", headers={"upgrade": "websocket"}, match={"connection": r"(?i).*upgrade.*"},
                                        present=["sec-websocket-key"])])),
    (get(b"/ws/h2c", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings", b"HTTP2-Settings: AAMAAABkAAQAAP__"), dict(
        about="h2c upgrade is dropped together with HTTP2-Settings, the request is served as HTTP/1.1",
        ref="RFC 9110 §7.8 (server MAY ignore Upgrade); issue 7 part 2.7", status=[200],
        backend=[fwd("GET", "/ws/h2c", absent=["upgrade", "http2-settings"])])),
    (get(b"/ws/other", b"Upgrade: anything/1.0", b"Connection: upgrade"), dict(
        about="an Upgrade protocol the route does not allow is dropped", ref="RFC 9110 §7.8; issue 7 part 2.7", status=[200],
        backend=[fwd("GET", "/ws/other", absent=["upgrade"])])),
    (get(b"/hop", b"Connection: X-Hop-A, x-hop-b", b"X-Hop-A: 1", b"X-Hop-B: 2", b"X-Kept: 3"), dict(
        about="fields named in Connection are removed before forwarding", ref="RFC 9110 §7.6.1", status=[200],
        backend=[fwd("GET", "/hop", absent=["x-hop-a", "x-hop-b"], headers={"x-kept": "3"})])),
    (get(b"/ka", b"Connection: keep-alive", b"Keep-Alive: timeout=5", b"Proxy-Connection: keep-alive", b"TE: trailers"), dict(
        about="hop-by-hop Keep-Alive, Proxy-Connection and TE are not forwarded", ref="RFC 9110 §7.6.1, RFC 9112 Appendix C.2.2",
        status=[200], backend=[fwd("GET", "/ka", absent=["keep-alive", "proxy-connection", "te"])])),
    (req(b"POST /expect HTTP/1.1", b"Expect: 100-continue", b"Content-Length: 5", body=b"hello"), dict(
        about="Expect: 100-continue: the body is forwarded and the final answer follows any 100", ref="RFC 9110 §10.1.1",
        status=[200], backend=[fwd("POST", "/expect", body="hello")])),
    (req(b"POST /expect-case HTTP/1.1", b"Expect: 100-Continue", b"Content-Length: 2", body=b"ok"), dict(
        about="the 100-continue expectation is case-insensitive", ref="RFC 9110 §10.1.1", status=[200],
        backend=[fwd("POST", "/expect-case", body="ok")])),
]

# ----------------------------------------------------------------------------- invalid or ambiguous

INVALID: list[tuple[bytes, dict]] = [
    # framing and smuggling
    (req(b"POST /clte HTTP/1.1", b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nG"), dict(
        about="CL and TE together: reject, or use chunked, drop CL and close", ref=f"RFC 9112 §6.1, §6.3; {SMUGGLE}",
        status=[400, 200], close=True,
        backend=[fwd("POST", "/clte", body="")])),
    (req(b"POST /tecl HTTP/1.1", b"Transfer-Encoding: chunked", b"Content-Length: 3",
         body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), dict(
        about="TE before CL: reject, or frame by chunked only and close", ref=f"RFC 9112 §6.1; {SMUGGLE}", status=[400, 200], close=True,
        backend=[fwd("POST", "/tecl", body="SMUGGLED", absent=["content-length"])])),
    (req(b"POST /te-gzip-last HTTP/1.1", b"Transfer-Encoding: chunked, gzip", body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="chunked not the final coding: length cannot be determined", ref="RFC 9112 §6.3 rule 4", status=BAD, close=True)),
    (req(b"POST /te-gzip-chunked HTTP/1.1", b"Transfer-Encoding: gzip, chunked", body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="a transfer coding edge does not implement", ref="RFC 9112 §6.1 (SHOULD 501)", status=[501, 400], close=True)),
    (req(b"POST /xchunked HTTP/1.1", b"Transfer-Encoding: xchunked", b"Content-Length: 3", body=b"abc"), dict(
        about="unknown transfer coding that looks like chunked, with a CL decoy", ref=f"RFC 9112 §6.1, §6.3; {SMUGGLE}",
        status=[501, 400], close=True)),
    (req(b"POST /te-twice HTTP/1.1", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
         body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="chunked applied twice (two TE lines)", ref="RFC 9112 §6.1 (MUST NOT apply chunked more than once)",
        status=[400, 501], close=True)),
    (req(b"POST /te-obfuscated HTTP/1.1", b"Transfer-Encoding: chunked", b"Transfer-encoding: x", b"Content-Length: 3",
         body=b"abc"), dict(
        about="TE.TE obfuscation: combined value 'chunked, x' has chunked not last", ref=f"RFC 9112 §6.3 rule 4; {SMUGGLE}",
        status=[400, 501], close=True)),
    (req(b"POST /te-quoted HTTP/1.1", b'Transfer-Encoding: "chunked"', body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="a quoted coding name is not the token chunked", ref="RFC 9112 §7", status=[400, 501], close=True)),
    (req(b"POST /te-identity HTTP/1.1", b"Transfer-Encoding: identity", b"Content-Length: 3", body=b"abc"), dict(
        about="identity is no longer a transfer coding", ref="RFC 9112 §7 (registry), Appendix C.2.3", status=[400, 501], close=True)),
    (req(b"POST /te-space HTTP/1.1", b"Transfer-Encoding : chunked", b"Content-Length: 3", body=b"abc"), dict(
        about="whitespace between field name and colon", ref=f"RFC 9112 §5.1 (MUST reject with 400); {SMUGGLE}",
        status=BAD, close=True)),
    (req(b"POST /te-fold HTTP/1.1", b"Transfer-Encoding:", b" chunked", b"Content-Length: 3", body=b"abc"), dict(
        about="obs-fold in Transfer-Encoding with a CL decoy", ref=f"RFC 9112 §5.2; {SMUGGLE}", status=BAD, close=True)),
    (req(b"POST /te-http10 HTTP/1.0", b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n"), dict(
        about="Transfer-Encoding in HTTP/1.0: framing is faulty", ref="RFC 9112 §6.1", status=BAD, close=True)),
    (req(b"POST /cl-dup HTTP/1.1", b"Content-Length: 3", b"Content-Length: 5", body=b"hello"), dict(
        about="two different Content-Length values", ref=f"RFC 9112 §6.3 rule 5; {SMUGGLE}", status=BAD, close=True)),
    (req(b"POST /cl-dup-same HTTP/1.1", b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), dict(
        about="the same Content-Length twice: reject or use one value", ref="RFC 9110 §8.6", status=[400, 200],
        backend=[fwd("POST", "/cl-dup-same", body="hello", headers={"content-length": "5"})])),
    (req(b"POST /cl-list HTTP/1.1", b"Content-Length: 5, 5", body=b"hello"), dict(
        about="a Content-Length list of identical values: reject or use one value", ref="RFC 9110 §8.6", status=[400, 200],
        backend=[fwd("POST", "/cl-list", body="hello", headers={"content-length": "5"})])),
    (req(b"POST /cl-plus HTTP/1.1", b"Content-Length: +5", body=b"hello"), dict(
        about="a sign is not a DIGIT", ref="RFC 9110 §8.6, RFC 9112 §6.3 rule 5", status=BAD, close=True)),
    (req(b"POST /cl-neg HTTP/1.1", b"Content-Length: -1", body=b"hello"), dict(
        about="negative Content-Length", ref="RFC 9112 §6.3 rule 5", status=BAD, close=True)),
    (req(b"POST /cl-hex HTTP/1.1", b"Content-Length: 0x5", body=b"hello"), dict(
        about="hex Content-Length", ref="RFC 9112 §6.3 rule 5", status=BAD, close=True)),
    (req(b"POST /cl-sup HTTP/1.1", b"Content-Length: \xc2\xb2", body=b"hi"), dict(
        about="Unicode superscript two (str.isdigit accepts it)", ref="RFC 9110 §8.6; issue 7 part 2.10", status=BAD, close=True)),
    (req(b"POST /cl-empty HTTP/1.1", b"Content-Length:", body=b"hi"), dict(
        about="empty Content-Length", ref="RFC 9112 §6.3 rule 5", status=BAD, close=True)),
    (req(b"POST /cl-huge HTTP/1.1", b"Content-Length: 99999999999999999999999999", body=b"hi"), dict(
        about="Content-Length beyond 64 bits", ref="RFC 9110 §8.6 (anticipate overflow)", status=[400, 413], close=True)),
    (req(b"POST /chunk-overflow HTTP/1.1", b"Transfer-Encoding: chunked", body=b"10000000000000001\r\nx\r\n0\r\n\r\n"), dict(
        about="chunk size overflowing 64 bits (wraps to 1)", ref=f"RFC 9112 §7.1 (anticipate overflow); {SMUGGLE}",
        status=[400, 413], close=True)),
    (req(b"POST /chunk-neg HTTP/1.1", b"Transfer-Encoding: chunked", body=b"-3\r\nabc\r\n0\r\n\r\n"), dict(
        about="negative chunk size", ref="RFC 9112 §7.1", status=BAD, close=True)),
    (req(b"POST /chunk-junk HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3x\r\nabc\r\n0\r\n\r\n"), dict(
        about="chunk size followed by junk instead of an extension", ref="RFC 9112 §7.1", status=BAD, close=True)),
    (req(b"POST /chunk-long HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3\r\nabcde\r\n0\r\n\r\n"), dict(
        about="chunk data longer than its size (no CRLF after the data)", ref=f"RFC 9112 §7.1; {SMUGGLE}", status=BAD, close=True)),
    (req(b"POST /chunk-lf HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3\nabc\n0\n\n"), dict(
        about="bare LF as chunk line terminator", ref=f"RFC 9112 §7.1 (CRLF); chunk-line smuggling", status=BAD, close=True)),
    (req(b"POST /chunk-ext-ctl HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3;a\x00b\r\nabc\r\n0\r\n\r\n"), dict(
        about="NUL inside a chunk extension", ref="RFC 9112 §7.1.1", status=BAD, close=True)),
    (req(b"POST /chunk-ext-lf HTTP/1.1", b"Transfer-Encoding: chunked", body=b"3;x\nabc\r\n0\r\n\r\n"), dict(
        about="bare LF inside a chunk extension", ref=f"RFC 9112 §7.1.1; chunk-extension smuggling", status=BAD, close=True)),
    (req(b"POST /cl-two HTTP/1.1", b"Content-Length: 5 5", body=b"hello"), dict(
        about="two numbers in one Content-Length", ref="RFC 9110 §8.6", status=BAD, close=True)),
    (req(b"POST /trailer-cl HTTP/1.1", b"Transfer-Encoding: chunked",
         body=b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n"), dict(
        about="a framing field in the trailer section must not be acted on", ref="RFC 9110 §6.5.1", status=[200, 400],
        backend=[fwd("POST", "/trailer-cl", body="abc")])),
    (req(b"POST /clte-smuggle HTTP/1.1", b"Content-Length: 4", b"Transfer-Encoding: chunked",
         body=b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: example.com\r\n\r\n"), dict(
        about="CL.TE smuggling of a GET /admin: never processed as a second request", ref=f"RFC 9112 §6.1; {SMUGGLE}",
        status=[400, 200], close=True, backend=[fwd("POST", "/clte-smuggle", body="")])),
    (get(b"/pipe-ok") + b"GARBAGE\r\n\r\n", dict(
        about="pipelined: a valid request then garbage: 200 then 400 and close", ref="RFC 9112 §9.3.2, §3",
        responses=[[200], [400]], close=True, backend=[fwd("GET", "/pipe-ok")])),
    # request line and targets
    (req(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443", host=False), dict(
        about="CONNECT is refused by a reverse proxy", ref="RFC 9110 §9.3.6", status=[400, 403, 405, 501])),
    (get(b"*"), dict(about="asterisk-form only with OPTIONS", ref="RFC 9112 §3.2.4", status=BAD)),
    (get(b"/page#frag"), dict(about="a fragment is not part of a request target", ref="RFC 9112 §3.2", status=BAD)),
    (get(b"/admin#x"), dict(about="fragment after a denied path", ref="RFC 9112 §3.2; HAProxy CVE-2023-45539", status=DENY)),
    (get(b"/a b"), dict(about="space inside the target", ref="RFC 9112 §3", status=BAD, close=True)),
    (get(b"/admin HTTP/1.1 x"), dict(about="request-line injection: extra words", ref="RFC 9112 §3", status=BAD, close=True)),
    (get(b"/a\tb"), dict(about="HTAB inside the target", ref="RFC 9112 §3, RFC 3986", status=BAD, close=True)),
    (get(b"/a\x01b"), dict(about="control byte in the target", ref="RFC 9112 §3, RFC 3986", status=BAD, close=True)),
    (get(b"/caf\xc3\xa9"), dict(
        about="raw non-ASCII bytes in the target: 400, or a 301 to the encoded target", ref="RFC 9112 §3; RFC 3986 §2",
        status=[400, 301])),
    (get(b"/q?a=<b>"), dict(about="'<' and '>' are not allowed in a query", ref="RFC 3986 §3.4; issue 7 part 1", status=BAD)),
    (get(b"/q?a=\"x\""), dict(about="'\"' is not allowed in a query", ref="RFC 3986 §3.4; issue 7 part 1", status=BAD)),
    (req(b"G(T / HTTP/1.1"), dict(about="method is not a token", ref="RFC 9110 §9.1", status=BAD, close=True)),
    (req(b"GET / HTTP/3.0"), dict(about="unsupported major version", ref="RFC 9110 §15.6.6", status=[505, 400], close=True)),
    (req(b"GET / HTTP/1.1x"), dict(about="malformed HTTP-version", ref="RFC 9112 §2.3", status=BAD, close=True)),
    (b"GET /\r\n\r\n", dict(about="HTTP/0.9 simple request", ref="RFC 9112 §2.3, Appendix C.1", status=[400, 505], close=True)),
    (get(b"/" + b"a" * 9000), dict(about="request line over the 8190-byte limit", ref="RFC 9112 §3; RFC 9110 §15.5.15", status=[414],
                                   close=True)),
    (req(b"GET  /double-space  HTTP/1.1"), dict(
        about="extra spaces in the request line: reject, or parse on word boundaries", ref="RFC 9112 §3", status=[400, 200],
        backend=[fwd("GET", "/double-space")])),
    (req(b"GET ftp://example.com/x HTTP/1.1"), dict(
        about="absolute-form with a scheme edge does not serve", ref="RFC 9112 §3.2.2, RFC 9110 §4.2", status=BAD)),
    (req(b"GET http://evil,for=6.6.6.6/x HTTP/1.1"), dict(
        about="absolute-form authority forging a Forwarded element", ref="RFC 3986 §3.2.2; RFC 7239 §4", status=BAD)),
    (req(b"GET http://user@example.com/ HTTP/1.1"), dict(
        about="userinfo in an http URI", ref="RFC 9110 §4.2.4 (treat as an error)", status=BAD)),
    # header syntax
    (get(b"/empty-name", b": value"), dict(about="empty field name", ref="RFC 9110 §5.1 (token)", status=BAD, close=True)),
    (get(b"/no-colon", b"X-Foo bar"), dict(about="field line without a colon", ref="RFC 9112 §5", status=BAD, close=True)),
    (get(b"/bad-name", b"X(Y): 1"), dict(about="field name with a delimiter", ref="RFC 9110 §5.1", status=BAD, close=True)),
    (get(b"/nul-name", b"X-A\x00B: 1"), dict(about="NUL in a field name", ref="RFC 9110 §5.1", status=BAD, close=True)),
    (get(b"/space-colon", b"X-Foo : bar"), dict(about="whitespace before the colon", ref="RFC 9112 §5.1", status=BAD, close=True)),
    (get(b"/nul-value", b"X-Foo: a\x00b"), dict(
        about="NUL in a value: reject, or replace with SP", ref="RFC 9110 §5.5", status=[400, 200],
        backend=[fwd("GET", "/nul-value", headers={"x-foo": "a b"})])),
    (get(b"/cr-value", b"X-Foo: a\rX-Injected: 1"), dict(
        about="bare CR in a value: reject, or replace with SP (never a new field)", ref="RFC 9112 §2.2, RFC 9110 §5.5",
        status=[400, 200], backend=[fwd("GET", "/cr-value", absent=["x-injected"], headers={"x-foo": "a X-Injected: 1"})])),
    (b"GET /bare-lf HTTP/1.1\nHost: example.com\nX-Foo: 1\n\n", dict(
        about="bare LF line endings in the head: reject or treat as CRLF", ref="RFC 9112 §2.2 (MAY recognise LF)",
        status=[400, 200], backend=[fwd("GET", "/bare-lf", headers={"x-foo": "1"})])),
    (get(b"/fold", b"X-Foo: a", b"  b"), dict(
        about="obs-fold: reject, or replace with SP before forwarding", ref="RFC 9112 §5.2", status=[400, 200],
        backend=[fwd("GET", "/fold", match={"x-foo": r"a +b"})])),
    (req(b"GET /ws-first HTTP/1.1", b" X-Injected: 1", b"Host: example.com", host=False), dict(
        about="whitespace-preceded line right after the request line: reject or ignore that line", ref="RFC 9112 §2.2",
        status=[400, 200], backend=[fwd("GET", "/ws-first", absent=["x-injected"])])),
    (get(b"/too-many", *[b"X-F%d: v" % i for i in range(200)]), dict(
        about="200 header fields, over the 100-field limit", ref="RFC 6585 §5", status=[431], close=True)),
    (get(b"/too-large", b"X-Big: " + b"v" * 10000), dict(
        about="one field line over the 8190-byte limit", ref="RFC 6585 §5", status=[431], close=True)),
    (get(b"/no-ws", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
         b"Sec-WebSocket-Version: 13"), dict(
        about="WebSocket upgrade on a route that does not allow it: refused, or forwarded without Upgrade",
        ref="RFC 9110 §7.8; issue 7 part 2.7", status=[200, 400, 403, 426],
        backend=[fwd("GET", "/no-ws", absent=["upgrade"])])),
    (req(b"POST /expect-other HTTP/1.1", b"Expect: something-else", b"Content-Length: 2", body=b"ok"), dict(
        about="an expectation edge cannot meet", ref="RFC 9110 §10.1.1", status=[417])),
    # Host
    (req(b"GET /no-host HTTP/1.1", host=False), dict(about="HTTP/1.1 without Host", ref="RFC 9112 §3.2", status=BAD)),
    (get(b"/two-hosts", b"Host: other.example"), dict(about="two Host fields", ref="RFC 9112 §3.2", status=BAD)),
    (get(b"/host-forged", b"Host: evil,for=6.6.6.6", host=False), dict(
        about="Host forging a Forwarded element", ref="RFC 9112 §3.2, RFC 7239 §4; issue 7 part 2.2", status=BAD)),
    (get(b"/host-space", b"Host: a b", host=False), dict(about="space in Host", ref="RFC 9112 §3.2, RFC 3986 §3.2.2", status=BAD)),
    (get(b"/host-userinfo", b"Host: user@example.com", host=False), dict(
        about="userinfo in Host", ref="RFC 9110 §7.2 (Host = uri-host [':' port])", status=BAD)),
    (get(b"/host-port", b"Host: example.com:8o", host=False), dict(about="non-digit port", ref="RFC 3986 §3.2.3", status=BAD)),
    (get(b"/host-bigport", b"Host: example.com:99999", host=False), dict(
        about="port out of range", ref="RFC 9110 §4.2.1 (TCP port)", status=BAD)),
    (get(b"/host-slash", b"Host: example.com/x", host=False), dict(about="path in Host", ref="RFC 9110 §7.2", status=BAD)),
    (get(b"/host-v6", b"Host: [::1", host=False), dict(about="unterminated IPv6 literal", ref="RFC 3986 §3.2.2", status=BAD)),
    (get(b"/host-quote", b'Host: a"b', host=False), dict(about="quote in Host", ref="RFC 3986 §3.2.2", status=BAD)),
    (get(b"/host-ctl", b"Host: exa\x01mple.com", host=False), dict(about="control byte in Host", ref="RFC 9110 §5.5", status=BAD, close=True)),
    # encoded paths and the /admin deny rule
    (get(b"/admin"), dict(about="the deny rule itself", ref="edge config", status=[403])),
    (get(b"/admin/x?y=1"), dict(about="under the denied prefix", ref="edge config", status=[403])),
    (req(b"GET http://example.com/admin/x HTTP/1.1"), dict(about="denied path in absolute-form", ref="RFC 9112 §3.2.2", status=DENY)),
    (get(b"/%61dmin"), dict(about="encoded unreserved letter", ref=f"RFC 3986 §6.2.2.2; {PATHCONF}", status=DENY)),
    (get(b"//admin"), dict(about="empty segment before the denied one", ref=PATHCONF, status=DENY)),
    (get(b"/./admin"), dict(about="dot segment before the denied one", ref=f"RFC 3986 §5.2.4; {PATHCONF}", status=DENY)),
    (get(b"/x/%2e%2e/admin"), dict(about="encoded dot-dot", ref=f"RFC 3986 §2.3; {PATHCONF}", status=DENY)),
    (get(b"/x/%2E%2E/admin"), dict(about="encoded dot-dot, upper-case hex", ref=PATHCONF, status=DENY)),
    (get(b"/x/.%2e/admin"), dict(about="half-encoded dot-dot", ref=PATHCONF, status=DENY)),
    (get(b"/p/..%2fadmin/secret"), dict(
        about="dot-dot then an encoded slash: /admin/secret for a backend that decodes %2F", ref=f"issue 7 part 2.8; {PATHCONF}",
        status=DENY_OR_SAFE)),
    (get(b"/p/..%2Fadmin"), dict(about="as above, upper-case %2F", ref=PATHCONF, status=DENY_OR_SAFE)),
    (get(b"/admin%2fsecret"), dict(about="encoded slash right after the denied segment", ref=PATHCONF, status=DENY_OR_SAFE)),
    (get(b"/p/..%5cadmin"), dict(about="encoded backslash as a separator", ref=PATHCONF, status=DENY_OR_SAFE)),
    (get(b"/%5cadmin"), dict(about="encoded backslash before the denied segment", ref=PATHCONF, status=DENY_OR_SAFE)),
    (get(b"/p/..\\admin"), dict(about="raw backslash (not a URI character) as a separator", ref=f"RFC 3986 §2; {PATHCONF}",
                                status=DENY_OR_SAFE)),
    (get(b"/x/%252e%252e/admin"), dict(about="double-encoded dot-dot", ref=f"double decoding (IIS CVE-2001-0333); {PATHCONF}",
                                       status=DENY_OR_SAFE)),
    (get(b"/%2561dmin"), dict(about="double-encoded letter", ref=f"double decoding; {PATHCONF}", status=DENY_OR_SAFE)),
    (get(b"/admin%00.html"), dict(about="encoded NUL truncating the path in a C backend", ref=f"NUL truncation; {PATHCONF}",
                                  status=DENY_OR_SAFE)),
]


def write(kind: str, cases: list[tuple[bytes, dict]]) -> None:
    d = HERE / kind
    d.mkdir(exist_ok=True)
    for old in d.glob("*.*"):
        old.unlink()
    for i, (raw, expect) in enumerate(cases, 1):
        (d / f"{i:03d}.http").write_bytes(raw)
        (d / f"{i:03d}.json").write_text(json.dumps(expect, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write("valid", VALID)
    write("invalid", INVALID)
    print(f"{len(VALID)} valid, {len(INVALID)} invalid cases written under {HERE}")
