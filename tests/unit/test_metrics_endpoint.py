"""The /metrics endpoint: a port another worker holds does not stop this one."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest

from streams import metrics as m
from streams.config import LetheSettings


def test_a_taken_port_falls_back_to_a_free_one_and_says_where(caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        # a port the operator set is where the worker is scraped: it does not move
        with pytest.raises(m.MetricsPortTaken, match=f"{port} is in use"):
            m.serve("127.0.0.1", port)
        # the default one, which every kind of worker shares, does
        with caplog.at_level(logging.WARNING, logger="lethe.metrics"):
            bound = m.serve("127.0.0.1", port, may_move=True)
        assert bound not in (port, -1)
        assert f"metrics port {port} is in use" in caplog.text and f":{bound}" in caplog.text
        with urllib.request.urlopen(f"http://127.0.0.1:{bound}/metrics", timeout=5) as reply:
            assert b"lethe_events_total" in reply.read()
    finally:
        taken.close()
    assert m.serve("127.0.0.1", -1) == -1  # disabled


def test_only_a_default_port_may_move():
    assert m.port_may_move(LetheSettings())
    assert not m.port_may_move(LetheSettings(metrics_port=9464))
