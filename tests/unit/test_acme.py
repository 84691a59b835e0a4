"""edge.acme without a network: the renewal and back-off rules (tables), tokens, storage, and the
manager's sync, lease and back-off decisions over a memory store (an order is never reached)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from edge.acme import (
    AcmeManager,
    CertFacts,
    Storage,
    backoff_s,
    cert_facts,
    renewal_due,
    set_id,
    valid_token,
)
from edge.config import AcmeConfig
from edge.store.memory import MemoryStore
from tests.integration.testca import TestCA

NAMES = frozenset({"a.example", "b.example"})
DAY = 86400.0


def facts(names=NAMES, not_after=100 * DAY) -> CertFacts:
    return CertFacts(frozenset(names), 0.0, not_after, "fp")


@pytest.mark.parametrize("current, now, due", [
    (None, 0.0, True),                                   # nothing yet
    (facts(names={"a.example"}), 0.0, True),             # the configured names changed
    (facts(), 69 * DAY, False),                          # 31 days left
    (facts(), 70 * DAY, True),                           # exactly renew_before left
    (facts(), 200 * DAY, True),                          # expired
])
def test_renewal_due(current, now, due):
    assert renewal_due(current, NAMES, now, 30 * DAY) is due


@pytest.mark.parametrize("failures, wait", [(0, 0.0), (1, 60.0), (2, 120.0), (3, 240.0), (10, 3600.0), (500, 3600.0)])
def test_backoff_doubles_and_is_capped(failures, wait):
    assert backoff_s(failures, 60.0, 3600.0) == wait


@pytest.mark.parametrize("token, ok", [
    ("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", True),
    ("abc_-XYZ", True),
    ("", False), ("a/b", False), ("a.b", False), ("..", False), ("a b", False), ("x" * 257, False),
])
def test_challenge_tokens_are_base64url(token, ok):
    assert valid_token(token) is ok


def test_set_id_is_stable_and_order_free():
    assert set_id(("a", "b"), "https://x/dir") == set_id(frozenset({"b", "a"}), "https://x/dir")
    assert set_id(("a", "b"), "https://x/dir") != set_id(("a", "b"), "https://y/dir")


def test_storage_writes_keys_private_and_atomically(tmp_path):
    st = Storage(tmp_path / "acme", "https://x/dir", "s1")
    st.write(b"CERT", b"KEY")
    assert st.read() == (b"CERT", b"KEY")
    assert stat.S_IMODE(os.stat(st.key_path).st_mode) == 0o600
    assert not [p for p in st.key_path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


class _Metrics:
    def __init__(self):
        self.counts = {}

    def incr(self, name, count=1):
        self.counts[name] = self.counts.get(name, 0) + count


@pytest.fixture
def pki(tmp_path):
    ca = TestCA(tmp_path / "pki")
    return ca


def manager(tmp_path, **kw) -> AcmeManager:
    cfg = AcmeConfig(directory="https://acme.invalid/dir", accept_terms=True, names=sorted(NAMES),
                     storage_dir=str(tmp_path / "acme"), **kw)
    return AcmeManager(cfg, MemoryStore(), _Metrics())


def test_the_store_copy_wins_and_is_written_to_disk(tmp_path, pki):
    m = manager(tmp_path)
    cert, key = pki.issue("leaf", tuple(sorted(NAMES)), days=90)
    m.store.set(m.cert_key, json.dumps({"cert": cert.read_text(), "key": key.read_text()}).encode())
    seen = []
    m.on_change(lambda ctx, info: seen.append(info))
    wait = m.step()
    assert m.storage.read() == (cert.read_bytes(), key.read_bytes())
    assert m.current().names == NAMES and seen == [m.current()]
    assert m.context is not None
    assert 0 < wait <= m.cfg.check_interval  # not due: no lease taken
    assert m.store.get(m.lease_key) is None and m.orders == 0


def test_a_disk_copy_is_published_when_the_store_has_none(tmp_path, pki):
    m = manager(tmp_path)
    cert, key = pki.issue("leaf", tuple(sorted(NAMES)), days=90)
    m.storage.write(cert.read_bytes(), key.read_bytes())
    m.step()
    doc = json.loads(m.store.get(m.cert_key))
    assert doc["cert"].encode() == cert.read_bytes()
    assert m.current().fingerprint == cert_facts(cert.read_bytes()).fingerprint


def test_no_order_while_another_worker_holds_the_lease(tmp_path):
    m = manager(tmp_path)
    assert m.store.acquire_lock(m.lease_key, 60) is not None  # someone else is ordering
    m.step()
    assert m.orders == 0


def test_no_order_while_backing_off(tmp_path):
    m = manager(tmp_path)
    m.store.set(m.fail_key, json.dumps({"failures": 2, "next_try": time.time() + 100}).encode())
    wait = m.step()
    assert m.orders == 0 and 0 < wait <= 100


def test_challenge_answers_come_from_the_store(tmp_path):
    m = manager(tmp_path)
    m._publish_challenge("tok_1", b"tok_1.thumb")
    assert m.answer_challenge("tok_1") == b"tok_1.thumb"
    assert m.answer_challenge("tok_2") is None
    assert m.answer_challenge("../acme:lease") is None
    m._withdraw_challenge("tok_1")
    assert m.answer_challenge("tok_1") is None


@pytest.mark.parametrize("acme, error", [
    ({"names": ["a.example"]}, "FILE: tls.acme: set accept_terms: true"),
    ({"names": ["*.a.example"], "accept_terms": True}, "tls.acme.names[0]: a DNS name without port or wildcard"),
    ({"names": ["10.0.0.1"], "accept_terms": True}, "tls.acme.names[0]: a DNS name without port or wildcard"),
    ({"names": ["a.example"], "accept_terms": True, "directory": "http://x/dir"}, "directory must be an https:// URL"),
])
def test_acme_config_errors(acme, error):
    from edge.config import parse_config
    from edge.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({"tls": {"acme": acme}}, "FILE")
    assert error in str(e.value), str(e.value)


def test_acme_needs_a_store_shared_by_the_workers():
    from edge.config import parse_config
    from edge.errors import ConfigError

    acme = {"names": ["a.example"], "accept_terms": True}
    listeners = [{"bind": "127.0.0.1:80"}, {"bind": "127.0.0.1:443", "tls": True}]
    with pytest.raises(ConfigError) as e:
        parse_config({"tls": {"acme": acme}, "store": {"backend": "memory"}, "server": {"listeners": listeners}}, "FILE")
    assert str(e.value).startswith("FILE: tls.acme: needs a store shared by the workers")
    parse_config({"tls": {"acme": acme}, "store": {"backend": "memory"}, "server": {"workers": 1, "listeners": listeners}},
                 "FILE")


def test_acme_needs_a_plain_http_listener_for_http01():
    from edge.config import parse_config
    from edge.errors import ConfigError

    acme = {"names": ["a.example"], "accept_terms": True}
    with pytest.raises(ConfigError) as e:
        parse_config({"tls": {"acme": acme}, "server": {"bind": ["127.0.0.1:443"]}}, "FILE")
    assert "FILE: tls.acme: the http-01 challenge needs a plain-HTTP listener" in str(e.value)


@pytest.mark.parametrize("days, backs_off", [(90, False), (10, True)])
def test_an_order_stores_loads_and_releases_the_lease(tmp_path, pki, monkeypatch, days, backs_off):
    """The CA's side replaced by a function returning a certificate (the real exchange runs
    against Pebble in tests/integration/test_acme.py); a certificate already due backs off."""
    import edge.acme as acme_mod

    cert, key = pki.issue("leaf", tuple(sorted(NAMES)), days=days)
    calls = []

    def fake_order(cfg, account_pem, publish, withdraw, keep_alive):
        calls.append(account_pem)
        publish("tok", b"tok.thumb")
        withdraw("tok")
        return cert.read_bytes(), key.read_bytes()

    monkeypatch.setattr(acme_mod, "order_certificate", fake_order)
    m = manager(tmp_path)
    m.step()
    assert m.orders == 1 and len(calls) == 1
    assert m.storage.read() == (cert.read_bytes(), key.read_bytes())
    assert json.loads(m.store.get(m.cert_key))["cert"].encode() == cert.read_bytes()
    assert m.store.get(m.lease_key) is None                 # released
    assert m.store.get(m.account_key) == calls[0]           # one account key, shared
    assert m.current() is not None
    assert (m.store.get(m.fail_key) is not None) is backs_off
    m.step()
    assert m.orders == 1  # not due (90 days), or backing off (10 days < renew_before)


def test_the_termination_code_builds_the_served_context(tmp_path, pki):
    m = manager(tmp_path)
    built = []

    def factory(cert_path, key_path):
        built.append((cert_path, key_path))
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx

    m.context_factory = factory
    cert, key = pki.issue("leaf", tuple(sorted(NAMES)), days=90)
    m.storage.write(cert.read_bytes(), key.read_bytes())
    m.step()
    m.step()  # unchanged files: not rebuilt
    assert built == [(m.storage.cert_path, m.storage.key_path)]


@pytest.mark.parametrize("disk_days, store_days, winner", [(90, 30, "disk"), (30, 90, "store"), (60, 60, "store")])
def test_the_copy_that_expires_later_wins(tmp_path, pki, disk_days, store_days, winner):
    m = manager(tmp_path)
    d_cert, d_key = pki.issue("disk", tuple(sorted(NAMES)), days=disk_days)
    s_cert, s_key = pki.issue("store", tuple(sorted(NAMES)), days=store_days)
    m.storage.write(d_cert.read_bytes(), d_key.read_bytes())
    m.store.set(m.cert_key, json.dumps({"cert": s_cert.read_text(), "key": s_key.read_text()}).encode())
    m.step()
    want = d_cert.read_bytes() if winner == "disk" else s_cert.read_bytes()
    assert m.storage.read()[0] == want
    assert json.loads(m.store.get(m.cert_key))["cert"].encode() == want


def _clocked_pair(tmp_path):
    """Two workers' managers over one store, all on one fake clock (seconds, advanced by hand)."""
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    cfg = AcmeConfig(directory="https://acme.invalid/dir", accept_terms=True, names=sorted(NAMES),
                     storage_dir=str(tmp_path / "acme"))
    m1, m2 = (AcmeManager(cfg, store, _Metrics(), clock=lambda: now[0]) for _ in range(2))
    return now, m1, m2


def test_a_long_order_keeps_its_lease_and_no_second_worker_orders(tmp_path, monkeypatch):
    """An order whose polling outlasts the lease's TTL many times over (the CA is slow) renews
    the lease at every step, so the other worker, checking meanwhile, does not order too."""
    import edge.acme as acme_mod

    now, m1, m2 = _clocked_pair(tmp_path)
    orders = []

    def slow_order(cfg, account_pem, publish, withdraw, keep_alive):
        orders.append(len(orders) + 1)
        if len(orders) == 1:
            for _ in range(24):  # four TTLs in all
                now[0] += acme_mod.LEASE_TTL_S / 6  # one polling step
                keep_alive()
                m2.step()                       # the other worker checks between steps
        raise acme_mod.OrderError("the test's CA gives up")

    monkeypatch.setattr(acme_mod, "order_certificate", slow_order)
    m1.step()
    assert orders == [1]
    assert m2.orders == 0


def test_a_worker_whose_lease_was_taken_stops_its_order(tmp_path, monkeypatch):
    """When the lease lapsed and another worker took it, the first one's next renewal fails and
    its order stops there, without a back-off for the fleet (the CA did not fail)."""
    import edge.acme as acme_mod

    now, m1, _ = _clocked_pair(tmp_path)
    reached = []

    def order(cfg, account_pem, publish, withdraw, keep_alive):
        keep_alive()
        now[0] += acme_mod.LEASE_TTL_S + 1  # stalled past the TTL (a suspended process)
        assert m1.store.acquire_lock(m1.lease_key, acme_mod.LEASE_TTL_S) is not None  # another worker takes it
        keep_alive()
        reached.append("after the lease was lost")
        raise acme_mod.OrderError("the test's CA gives up")

    monkeypatch.setattr(acme_mod, "order_certificate", order)
    m1.step()
    assert m1.orders == 1 and reached == []
    assert m1.metrics.counts.get("acme.order.lease_lost") == 1
    assert m1.store.get(m1.fail_key) is None    # no back-off written
    assert m1.store.get(m1.lease_key) is not None  # the other worker's lease is left alone


def test_polling_runs_in_steps_with_the_lease_renewed_between_them():
    """order_certificate's polling: short step deadlines, keep_alive between steps, the order's
    deadline kept, and a lost lease ends it."""
    import datetime

    from edge.acme import LeaseLost, POLL_STEP_S, poll_in_steps

    class Timeout(Exception):
        pass

    deadlines, renewals = [], []

    def poll(step_deadline):
        deadlines.append(step_deadline)
        if len(deadlines) < 4:
            raise Timeout()
        return "done"

    start = datetime.datetime.now()
    far = start + datetime.timedelta(seconds=1000)
    assert poll_in_steps(poll, far, lambda: renewals.append(1), Timeout) == "done"
    assert len(renewals) == 3  # between the four steps
    assert all(d <= datetime.datetime.now() + datetime.timedelta(seconds=POLL_STEP_S) for d in deadlines)

    past = start - datetime.timedelta(seconds=1)
    with pytest.raises(Timeout):  # the order's own deadline passed: no endless polling
        poll_in_steps(lambda d: (_ for _ in ()).throw(Timeout()), past, lambda: None, Timeout)

    def lost():
        raise LeaseLost("taken")

    with pytest.raises(LeaseLost):
        poll_in_steps(lambda d: (_ for _ in ()).throw(Timeout()), far, lost, Timeout)


def test_every_acme_call_is_bounded_well_below_the_lease():
    import edge.acme as acme_mod

    assert acme_mod.LEASE_TTL_S >= 4 * acme_mod.NETWORK_TIMEOUT_S
    assert acme_mod.LEASE_TTL_S >= 4 * acme_mod.POLL_STEP_S
