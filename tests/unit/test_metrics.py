"""edge.metrics: a statsd host that does not resolve is one warning, never an exception."""

from __future__ import annotations

import logging
import socket

import statsd

import edge.metrics as metrics_mod
from edge.metrics import RESOLVE_RETRY_S, Metrics


class FakeClient:
    def __init__(self, host, port, prefix):
        self.sent = []

    def incr(self, name, count=1):
        self.sent.append(("incr", name, count))

    def timing(self, name, ms):
        self.sent.append(("timing", name))


def test_unresolvable_statsd_warns_once_drops_and_retries_later(monkeypatch, caplog):
    now = [100.0]
    resolvable = [False]
    clients = []

    def client(host, port, prefix):
        if not resolvable[0]:
            raise socket.gaierror(-2, "Name or service not known")
        clients.append(FakeClient(host, port, prefix))
        return clients[-1]

    monkeypatch.setattr(statsd, "StatsClient", client)
    monkeypatch.setattr(metrics_mod.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="edge.metrics"):
        m = Metrics("statsd.invalid:8125")
        for _ in range(3):
            m.incr("a")
        m.request("r", 200, 0.01)
        now[0] += RESOLVE_RETRY_S / 2
        m.incr("b")              # too early: not even tried
        resolvable[0] = True
        m.incr("c")              # still too early
        now[0] += RESOLVE_RETRY_S
        m.incr("d")              # tried again: the client exists and sends this one
    assert m.dropped == 6
    assert clients[0].sent == [("incr", "d", 1)]
    assert [r.getMessage() for r in caplog.records] == [
        "statsd statsd.invalid:8125 unusable, metrics are dropped until it resolves: [Errno -2] Name or service not known",
        "statsd statsd.invalid:8125 resolves again; 6 metrics were dropped",
    ]


def test_no_statsd_configured_is_free(monkeypatch):
    monkeypatch.setattr(statsd, "StatsClient", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    m = Metrics(None)
    m.incr("a")
    m.request("r", 200, 0.01)
    assert m.dropped == 0
