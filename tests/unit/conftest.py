"""Unit tests are pure: any attempt to open a socket is a bug in the test or the code."""

import socket

import pytest


class _NoSockets(socket.socket):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("unit tests must not open sockets; move this test to tests/integration")


@pytest.fixture(autouse=True)
def _forbid_sockets(monkeypatch):
    monkeypatch.setattr(socket, "socket", _NoSockets)
