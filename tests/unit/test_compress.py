"""Response compression (issue 10, item 5): negotiation, eligibility and header tables, encoders, the glue."""

import gzip
import random

import brotli
import pytest
import zstandard

from edge.compress.codecs import OUT_MIN_BYTES, ZSTD_IDLE_MAX, Encoders, Levels, encode_bytes, encode_stream, new_encoder
from edge.compress.compressor import Compressor, variant_of
from edge.compress.negotiate import (
    CODINGS, AcceptEncoding, Decision, Rules, TypeFilter, cache_directive_names, choose_coding, decide,
    encoded_headers, identity_headers, media_type, parse_accept_encoding, parse_qvalue, parse_type_pattern,
    weak_etag, with_vary,
)
from edge.config import parse_config
from edge.testing import make_ctx


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


# --------------------------------------------------------------------------- RFC 9110 §12.4.2 qvalue

@pytest.mark.parametrize("text, expected", [
    ("1", 1.0), ("0", 0.0), ("0.5", 0.5), ("0.001", 0.001), ("1.000", 1.0), ("1.", 1.0), ("0.", 0.0),
    ("0.1234", None),   # at most 3 digits
    ("1.001", None),    # above 1
    ("2", None), ("-1", None), ("", None), ("x", None), (".5", None), ("0,5", None), ("1e0", None),
    ("0.5 ", None),     # the caller strips OWS; the qvalue itself has none
])
def test_qvalue_syntax_rfc9110_12_4_2(text, expected):
    assert parse_qvalue(text) == expected


# --------------------------------------------------------------------------- RFC 9110 §12.5.3 Accept-Encoding

@pytest.mark.parametrize("values, coding, weight", [
    (["gzip"], "gzip", 1.0),
    (["GZIP"], "gzip", 1.0),                               # codings are case-insensitive (§8.4.1)
    (["gzip;q=0.5"], "gzip", 0.5),
    (["gzip ; Q = 0.5"], "gzip", 0.5),                     # OWS around ";" (§12.4.2); "q" case-insensitive
    (["gzip;q=0"], "gzip", 0.0),                           # q=0: not acceptable
    (["x-gzip"], "gzip", 1.0),                             # §8.4.1.3 x-gzip == gzip
    (["*"], "br", 1.0),                                    # "*" matches any coding not listed
    (["*;q=0.2, br;q=0.8"], "br", 0.8),                    # an explicit entry beats "*"
    (["*;q=0.2, br;q=0.8"], "zstd", 0.2),
    (["br;q=0, *"], "br", 0.0),                            # excluded by name despite "*"
    (["deflate"], "gzip", 0.0),                            # not listed, no "*"
    (["gzip;q=2"], "gzip", 0.0),                           # invalid weight: element ignored
    (["gzip;q=abc, br"], "gzip", 0.0),
    (["gzip;q="], "gzip", 0.0),
    (["gzip, gzip;q=0"], "gzip", 0.0),                     # repeated: the lower weight counts
    (["gzip;level=9"], "gzip", 1.0),                       # unknown parameter ignored
    (["", " , ,gzip"], "gzip", 1.0),                       # empty list elements (§5.6.1)
    (["br", "zstd;q=0.7"], "zstd", 0.7),                   # several field lines combine (§5.3)
])
def test_accept_encoding_weights_rfc9110_12_5_3(values, coding, weight):
    assert parse_accept_encoding(values).weight(coding) == weight


def test_accept_encoding_identity_and_star_are_kept_apart():
    ae = parse_accept_encoding(["identity;q=0, *;q=0.3"])
    assert ae.identity == 0.0 and ae.star == 0.3 and ae.weights == {}


def test_absent_field_is_not_present():
    assert parse_accept_encoding(None).present is False


PREF = ("zstd", "br", "gzip")


@pytest.mark.parametrize("values, preference, expected", [
    (None, PREF, None),                                    # no field: identity (see choose_coding)
    ([""], PREF, None),                                    # empty value: 'does not want any content coding'
    (["gzip, deflate, br, zstd"], PREF, "zstd"),           # a tie goes to the server's order
    (["gzip, deflate, br, zstd"], ("gzip", "br", "zstd"), "gzip"),
    (["gzip, deflate, br"], PREF, "br"),
    (["gzip;q=1, br;q=0.5, zstd;q=0.1"], PREF, "gzip"),     # the client's weights come first
    (["gzip;q=0, br;q=0, zstd;q=0"], PREF, None),
    (["*"], PREF, "zstd"),
    (["*;q=0"], PREF, None),
    (["identity"], PREF, None),
    (["identity;q=0"], PREF, None),                        # nothing acceptable: a proxy still relays identity
    (["identity;q=0, gzip"], PREF, "gzip"),
    (["deflate, compress"], PREF, None),
    (["zstd"], ("gzip", "br"), None),                      # a coding the server does not offer
])
def test_choose_coding(values, preference, expected):
    assert choose_coding(parse_accept_encoding(values), preference) == expected


# --------------------------------------------------------------------------- media types

@pytest.mark.parametrize("content_type, ok", [
    ("text/html", True), ("text/html; charset=utf-8", True), ("TEXT/HTML", True), ("text/plain;charset=x", True),
    ("application/json", True), ("application/problem+json", True), ("application/ld+json; x=1", True),
    ("application/javascript", True), ("application/xml", True), ("application/atom+xml", True),
    ("image/svg+xml", True), ("application/wasm", True),
    ("text/event-stream", False),                          # excluded: events must not wait in a buffer
    ("image/png", False), ("image/jpeg", False), ("application/octet-stream", False), ("video/mp4", False),
    ("application/zip", False), ("font/woff2", False), ("application/grpc", False),
    (None, False), ("", False), ("text", False), ("/html", False),
])
def test_default_type_filter(content_type, ok):
    assert Rules().types.accepts(content_type) is ok


@pytest.mark.parametrize("pattern", ["text", "*/*", "text/*/x", "text/a*", "text/*+", "text/**+json", "text/html;q=1", ""])
def test_type_pattern_refused(pattern):
    with pytest.raises(ValueError):
        parse_type_pattern(pattern)


def test_media_type_parsing():
    assert media_type(" Text/HTML ; charset=utf-8") == ("text", "html")
    assert media_type("nonsense") is None


# --------------------------------------------------------------------------- Cache-Control directive names

@pytest.mark.parametrize("values, has", [
    (["no-transform"], True),
    (["max-age=60, No-Transform"], True),                  # names are case-insensitive (RFC 9111 §5.2)
    (["max-age=60", "no-transform"], True),                # several field lines
    (['private="no-transform, x"'], False),                # inside a quoted string: not a directive
    (['private="a\\"b, no-transform"'], False),            # an escaped quote does not end the string
    (['private="a, b", no-transform'], True),
    (["no-transformer"], False),
    ([], False),
])
def test_cache_control_no_transform_detection(values, has):
    assert ("no-transform" in cache_directive_names(values)) is has


# --------------------------------------------------------------------------- eligibility

AE = [("Accept-Encoding", "gzip, br, zstd")]
HTML = [("Content-Type", "text/html")]
R = Rules(min_size=512)


@pytest.mark.parametrize("method, req, status, resp, length, expected", [
    # eligible
    ("GET", AE, 200, HTML, 10000, ("zstd", True)),
    ("GET", AE, 200, HTML, None, ("zstd", True)),                                 # unknown length: compress
    ("GET", AE, 200, HTML, 512, ("zstd", True)),                                  # min_size inclusive
    ("GET", AE, 404, HTML, 10000, ("zstd", True)),                                # error pages too
    ("POST", AE, 201, HTML, 10000, ("zstd", True)),
    ("GET", AE, 200, HTML + [("Content-Encoding", "identity")], 10000, ("zstd", True)),
    # response-side refusals: no Vary, the answer does not depend on Accept-Encoding
    ("GET", AE, 200, HTML, 511, (None, False)),                                   # too small
    ("GET", AE, 200, HTML, 0, (None, False)),
    ("GET", AE, 200, [("Content-Type", "image/png")], 10000, (None, False)),      # type not on the list
    ("GET", AE, 200, [], 10000, (None, False)),                                   # no Content-Type
    ("GET", AE, 200, HTML + [("Content-Encoding", "gzip")], 10000, (None, False)),  # RFC 9110 §8.4: already encoded
    ("GET", AE, 200, HTML + [("content-encoding", "BR")], None, (None, False)),
    ("GET", AE, 200, HTML + [("Cache-Control", "public, no-transform")], 10000, (None, False)),  # RFC 9111 §5.2.2.6
    ("GET", AE, 206, HTML + [("Content-Range", "bytes 0-9/100")], 10, (None, False)),  # RFC 9110 §15.3.7
    ("GET", AE, 416, HTML + [("Content-Range", "bytes */100")], 1000, (None, False)),  # RFC 9110 §14.4
    ("GET", AE, 204, HTML, None, (None, False)),                                  # RFC 9110 §6.4.1: no content
    ("GET", AE, 101, [], None, (None, False)),
    ("GET", AE, 103, HTML, None, (None, False)),
    # request-side refusals of an eligible response: identity, but Vary (RFC 9110 §12.5.5)
    ("HEAD", AE, 200, HTML, 10000, (None, True)),                                 # RFC 9110 §9.3.2
    ("GET", AE + [("Range", "bytes=0-99")], 200, HTML, 10000, (None, True)),      # RFC 9110 §14.2
    ("GET", AE + [("Cache-Control", "no-transform")], 200, HTML, 10000, (None, True)),  # RFC 9111 §5.2.1.6
    ("GET", [], 200, HTML, 10000, (None, True)),                                  # no Accept-Encoding
    ("GET", [("Accept-Encoding", "gzip;q=0, br;q=0, zstd;q=0")], 200, HTML, 10000, (None, True)),
    ("GET", [("Accept-Encoding", "deflate")], 200, HTML, 10000, (None, True)),
])
def test_decide(method, req, status, resp, length, expected):
    d = decide(method, req, status, resp, length, R)
    assert (d.coding, d.vary) == expected, d.reason
    assert d.weaken_etag is False


@pytest.mark.parametrize("req, etag, expected", [
    # RFC 9110 §15.4.5: a 304 carries the ETag and Vary the 200 would have had
    ([("If-None-Match", 'W/"abc"')] + AE, '"abc"', (True, True)),     # client holds the copy edge encoded
    ([("If-None-Match", '"x", W/"abc"')] + AE, '"abc"', (True, True)),
    ([("If-None-Match", '"abc"')] + AE, '"abc"', (False, False)),     # client holds identity bytes
    ([("If-None-Match", 'W/"abc"')] + AE, 'W/"abc"', (False, False)),  # the origin's own weak tag
    ([("If-None-Match", 'W/"abc"')], '"abc"', (False, False)),        # this client gets identity now
    ([("If-None-Match", 'W/"abc"')] + AE, None, (False, False)),
])
def test_decide_304(req, etag, expected):
    resp = [("ETag", etag)] if etag is not None else []
    d = decide("GET", req, 304, resp, None, R)
    assert d.coding is None
    assert (d.weaken_etag, d.vary) == expected


# --------------------------------------------------------------------------- header changes

@pytest.mark.parametrize("value, expected", [
    ('"abc"', 'W/"abc"'), ('W/"abc"', 'W/"abc"'), ('""', 'W/""'), ("abc", "abc"), (' "a" ', 'W/"a"'),
])
def test_weak_etag_rfc9110_8_8_3(value, expected):
    assert weak_etag(value) == expected


@pytest.mark.parametrize("before, after", [
    ([], [("Vary", "Accept-Encoding")]),
    ([("Vary", "Origin")], [("Vary", "Origin, Accept-Encoding")]),
    ([("Vary", "accept-encoding")], [("Vary", "accept-encoding")]),                     # never duplicated
    ([("vary", "Origin, Accept-Encoding")], [("vary", "Origin, Accept-Encoding")]),
    ([("Vary", "Origin"), ("Vary", "Cookie")], [("Vary", "Origin"), ("Vary", "Cookie, Accept-Encoding")]),
    ([("Vary", "Origin"), ("Vary", " ACCEPT-ENCODING ")], [("Vary", "Origin"), ("Vary", " ACCEPT-ENCODING ")]),
    ([("Vary", "*")], [("Vary", "*")]),                                                   # RFC 9110 §12.5.5
    ([("Vary", "")], [("Vary", "Accept-Encoding")]),
])
def test_vary_merge_rfc9110_12_5_5(before, after):
    assert with_vary(before) == after


def test_encoded_headers():
    before = [("Content-Type", "text/html"), ("ETag", '"v1"'), ("Accept-Ranges", "bytes"), ("Vary", "Origin"),
              ("Content-Digest", "sha-256=:x:"), ("Repr-Digest", "sha-256=:y:"), ("Content-MD5", "z"),
              ("Content-Length", "100"), ("Cache-Control", "max-age=60"), ("Content-Encoding", "identity")]
    assert encoded_headers(before, "br") == [
        ("Content-Type", "text/html"), ("ETag", 'W/"v1"'), ("Vary", "Origin, Accept-Encoding"),
        ("Cache-Control", "max-age=60"), ("Content-Encoding", "br"),
    ]


def test_identity_headers():
    h = [("ETag", '"v1"')]
    assert identity_headers(h, Decision(None, True, "not accepted")) == [("ETag", '"v1"'), ("Vary", "Accept-Encoding")]
    assert identity_headers(h, Decision(None, False, "too small")) == h
    assert identity_headers(h, Decision(None, True, "no content", weaken_etag=True)) == [
        ("ETag", 'W/"v1"'), ("Vary", "Accept-Encoding")]


def test_rules_validation():
    with pytest.raises(ValueError):
        Rules(preference=("gzip", "deflate"))
    with pytest.raises(ValueError):
        Rules(preference=())
    with pytest.raises(ValueError):
        Rules(preference=("gzip", "gzip"))
    assert Rules().preference == ("zstd", "gzip", "br")
    assert set(Rules().preference) == set(CODINGS)


# --------------------------------------------------------------------------- encoders

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("piece", [1, 100, 65536])
def test_stream_round_trip(coding, piece):
    body = TEXT[: 200_000] if piece > 1 else TEXT[:3000]
    chunks = [body[i:i + piece] for i in range(0, len(body), piece)]
    out = list(encode_stream(iter(chunks), new_encoder(coding, Levels())))
    assert decode(coding, b"".join(out)) == body
    assert all(out)
    # tiny input chunks are not each written out: every chunk but the last is at least OUT_MIN_BYTES
    assert all(len(c) >= OUT_MIN_BYTES for c in out[:-1])
    assert len(out) < len(chunks) or len(chunks) == len(out) == 1 or piece == 65536


@pytest.mark.parametrize("coding", CODINGS)
def test_empty_body_round_trip(coding):
    assert decode(coding, b"".join(encode_stream(iter([]), new_encoder(coding, Levels())))) == b""
    assert decode(coding, encode_bytes(b"", coding, Levels())) == b""


def test_gzip_is_the_gzip_format():
    out = encode_bytes(TEXT[:1000], "gzip", Levels())
    assert out[:2] == b"\x1f\x8b"                       # RFC 1952 magic, not a zlib or raw deflate stream


@pytest.mark.parametrize("coding", CODINGS)
def test_levels_change_output(coding):
    rng = random.Random(10)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    text = b" ".join(rng.choice(words) for _ in range(6000))
    fast = encode_bytes(text, coding, Levels(gzip=1, br=0, zstd=1))
    small = encode_bytes(text, coding, Levels(gzip=9, br=11, zstd=19))
    assert len(small) < len(fast)
    assert decode(coding, small) == text


@pytest.mark.parametrize("kw", [{"gzip": 0}, {"gzip": 10}, {"br": 12}, {"br": -1}, {"zstd": 0}, {"zstd": 20}])
def test_levels_refused(kw):
    with pytest.raises(ValueError):
        Levels(**kw)


@pytest.mark.parametrize("coding", CODINGS)
def test_output_starts_before_the_source_ends(coding):
    # streaming, not buffering: encoded bytes leave while most of a large body is still to come
    rng = random.Random(3)
    alphabet = b"abcdefghij klmnop\n"
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    pieces = [rng.randbytes(65536).translate(table) for _ in range(40)]
    consumed = []

    def source():
        for i, p in enumerate(pieces):
            consumed.append(i)
            yield p

    it = encode_stream(source(), new_encoder(coding, Levels()))
    first = next(it)
    assert first and len(consumed) < len(pieces) // 2
    rest = b"".join(it)
    assert decode(coding, first + rest) == b"".join(pieces)


def test_negotiated_choice_is_remembered_and_equals_the_parse():
    from edge.compress.negotiate import negotiated
    for values in (["gzip, deflate, br, zstd"], ["br;q=0.9", "gzip;q=0.1"], None, ["*;q=0"]):
        for _ in range(2):
            assert negotiated(values, PREF) == choose_coding(parse_accept_encoding(values), PREF)


def test_closing_the_stream_closes_the_source():
    closed = []

    def source():
        try:
            while True:
                yield TEXT[:65536]
        finally:
            closed.append(True)

    it = encode_stream(source(), new_encoder("gzip", Levels()))
    next(it)
    it.close()
    assert closed == [True]


def test_source_error_propagates_and_source_is_closed():
    class Boom(Exception):
        pass

    closed = []

    class Source:
        def __iter__(self):
            yield TEXT[:1000]
            raise Boom()

        def close(self):
            closed.append(True)

    with pytest.raises(Boom):
        list(encode_stream(Source(), new_encoder("br", Levels())))
    assert closed == [True]


def test_zstd_contexts_are_reused_never_shared():
    enc = Encoders(Levels())
    a = enc.new("zstd", 5000)
    b = enc.new("zstd")                                  # a second stream while the first is open
    assert a._c is not b._c
    out_a = a.compress(TEXT[:5000]) + a.finish()
    a.close()                                            # after finish: must not be given back twice
    assert len(enc._zstd_idle) == 1
    c = enc.new("zstd")
    assert c._c is not b._c and enc._zstd_idle == []     # reused, and b still has its own
    out_b = b.compress(TEXT[:7000]) + b.finish()
    out_c = c.compress(TEXT[:9000]) + c.finish()
    assert decode("zstd", out_a) == TEXT[:5000]
    assert decode("zstd", out_b) == TEXT[:7000]
    assert decode("zstd", out_c) == TEXT[:9000]


def test_abandoned_zstd_stream_gives_its_context_back_and_the_next_one_is_clean():
    enc = Encoders(Levels())
    it = encode_stream(iter([TEXT[:65536]] * 4), enc.new("zstd"))
    next(it)
    it.close()
    assert len(enc._zstd_idle) == 1
    out = b"".join(encode_stream(iter([TEXT[:3000]]), enc.new("zstd", 3000)))
    assert decode("zstd", out) == TEXT[:3000]


def test_idle_zstd_contexts_are_bounded():
    enc = Encoders(Levels())
    open_ = [enc.new("zstd") for _ in range(ZSTD_IDLE_MAX + 5)]
    for e in open_:
        e.close()
    assert len(enc._zstd_idle) == ZSTD_IDLE_MAX


# --------------------------------------------------------------------------- Compressor (the glue)

CONF = {
    "upstreams": {"o": {"servers": ["127.0.0.1:1"]}},
    "routes": [
        {"name": "on", "match": {"path": "/on"}, "upstream": "o"},
        {"name": "off", "match": {"path": "/off"}, "upstream": "o", "compression": False},
    ],
    "compression": {"enabled": True, "codecs": ["gzip", "br"], "min_size": 100},
}


class _Route:
    def __init__(self, index):
        self.index = index


def _ctx(route_index, headers, method="GET"):
    ctx = make_ctx(method=method, path="/on", headers=headers)
    ctx.route = _Route(route_index) if route_index is not None else None
    return ctx


def test_compressor_from_config_none_when_nothing_compresses():
    conf = dict(CONF, compression={"enabled": False})
    assert Compressor.from_config(parse_config(conf)) is None
    conf["routes"] = [dict(CONF["routes"][0], compression=True)]
    assert Compressor.from_config(parse_config(conf)) is not None


def test_compressor_streams_and_drops_length():
    c = Compressor.from_config(parse_config(CONF))
    ctx = _ctx(0, [("Accept-Encoding", "gzip, br")])
    headers, body, length = c.apply(ctx, 200, [("Content-Type", "text/plain"), ("ETag", '"e"')],
                                    iter([TEXT[:5000], TEXT[5000:9000]]), 9000)
    assert length is None
    assert dict(headers) == {"Content-Type": "text/plain", "ETag": 'W/"e"', "Content-Encoding": "gzip",
                             "Vary": "Accept-Encoding"}
    assert gzip.decompress(b"".join(body)) == TEXT[:9000]


def test_compressor_bytes_body_keeps_a_length():
    c = Compressor.from_config(parse_config(CONF))
    headers, body, length = c.apply(_ctx(0, [("Accept-Encoding", "br")]), 200, [("Content-Type", "text/plain")],
                                    TEXT[:4000], 4000)
    assert isinstance(body, bytes) and length == len(body) < 4000
    assert brotli.decompress(body) == TEXT[:4000]


def test_compressor_route_off_and_no_route_untouched():
    c = Compressor.from_config(parse_config(CONF))
    head = [("Content-Type", "text/plain")]
    body = iter([TEXT[:4000]])
    for ctx in (_ctx(1, [("Accept-Encoding", "gzip")]), _ctx(None, [("Accept-Encoding", "gzip")])):
        assert c.apply(ctx, 200, head, body, 4000) == (head, body, 4000)


def test_compressor_identity_answer_gets_vary_only():
    c = Compressor.from_config(parse_config(CONF))
    body = iter([TEXT[:4000]])
    headers, out, length = c.apply(_ctx(0, [("Accept-Encoding", "zstd")]), 200, [("Content-Type", "text/plain")],
                                   body, 4000)
    assert out is body and length == 4000
    assert headers == [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")]


def test_compressor_head_keeps_length():
    c = Compressor.from_config(parse_config(CONF))
    headers, out, length = c.apply(_ctx(0, [("Accept-Encoding", "gzip")], method="HEAD"), 200,
                                   [("Content-Type", "text/plain")], None, 4000)
    assert out is None and length == 4000 and ("Vary", "Accept-Encoding") in headers
    assert all(k != "Content-Encoding" for k, _ in headers)


@pytest.mark.parametrize("compression, error", [
    ({"codecs": ["gzip", "deflate"]}, "compression.codecs"),
    ({"codecs": []}, "compression.codecs"),
    ({"types": ["text"]}, "compression.types"),
    ({"gzip_level": 0}, "compression.gzip_level"),
    ({"zstd_level": 22}, "compression.zstd_level"),
    ({"min_size": "-1"}, "compression.min_size"),
    ({"level": 3}, "compression.level"),
])
def test_config_errors_name_the_key(compression, error):
    with pytest.raises(Exception) as e:
        parse_config(dict(CONF, compression=compression))
    assert error in str(e.value)


def test_typefilter_parse_roundtrip():
    f = TypeFilter.parse(["text/*", "application/*+json"], ["text/csv"])
    assert f.accepts("text/html") and f.accepts("application/vnd.api+json") and not f.accepts("text/csv")


def test_accept_encoding_dataclass_is_frozen():
    with pytest.raises(Exception):
        AcceptEncoding(True, {}).present = False


def test_decide_head_and_variant_for_the_cache():
    c = Compressor.from_config(parse_config(CONF))
    head = [("Content-Type", "text/plain"), ("ETag", '"e"')]
    d = c.decide(_ctx(0, [("Accept-Encoding", "br;q=0.5, gzip;q=0.4")]), 200, head, 4000)
    assert variant_of(d) == "br"
    assert c.head(head, d) == [("Content-Type", "text/plain"), ("ETag", 'W/"e"'), ("Content-Encoding", "br"),
                               ("Vary", "Accept-Encoding")]
    d = c.decide(_ctx(0, []), 200, head, 4000)
    assert variant_of(d) == "identity" and c.head(head, d) == head + [("Vary", "Accept-Encoding")]
    assert c.decide(_ctx(1, [("Accept-Encoding", "br")]), 200, head, 4000) is None
    assert variant_of(None) == "identity"


def test_accept_encoding_invariants_on_generated_values():
    # seeded, bounded generation of messy field values: parsing never fails, weights stay in [0, 1],
    # and the chosen coding always has a weight above 0 and no configured coding weighs more
    rng = random.Random(2024)
    atoms = ["gzip", "GZip", "br", "zstd", "x-gzip", "identity", "*", "deflate", "", " ", ";", "q=", "q=0", "q=1",
             "q=0.5", "Q=0.001", "q=1.0", "q=2", "q=-1", "q=abc", ",", "=", '"', "\t", "br;q=0", "zstd ; q = 0.3"]
    for _ in range(2000):
        value = "".join(rng.choice(atoms) + rng.choice(["", ",", ";", " "]) for _ in range(rng.randint(0, 8)))
        ae = parse_accept_encoding([value])
        assert all(0.0 <= w <= 1.0 for w in ae.weights.values())
        chosen = choose_coding(ae, PREF)
        if chosen is not None:
            assert ae.weight(chosen) > 0
            assert all(ae.weight(c) <= ae.weight(chosen) for c in PREF)
        else:
            assert all(ae.weight(c) == 0 for c in PREF)


@pytest.mark.parametrize("actual", [10, 30])
def test_zstd_wrong_length_hint_is_an_edge_error_and_frees_the_context(actual):
    from edge.errors import BodyLengthMismatch
    enc = Encoders(Levels())
    with pytest.raises(BodyLengthMismatch):
        list(encode_stream(iter([TEXT[:actual]]), enc.new("zstd", 20)))
    assert len(enc._zstd_idle) == 1
    assert decode("zstd", enc.encode(TEXT[:50], "zstd")) == TEXT[:50]   # the reused context is clean
