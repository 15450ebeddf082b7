"""How `make demo` exits when interrupted: Ctrl-C reaches the broker too, so what fails after
it is part of stopping, not an error (exit 130, as for a plain Ctrl-C)."""

from __future__ import annotations

import logging
import os
import signal
import warnings

import pytest

from streams import demo


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    levels = {name: logging.getLogger(name).level for name in ("asyncio", "aiokafka")}
    filters = warnings.filters[:]
    demo._INTERRUPTED.clear()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    for name, level in levels.items():  # an interrupted demo quiets its teardown
        logging.getLogger(name).setLevel(level)
    warnings.filters[:] = filters
    demo._INTERRUPTED.clear()


def _replay_that_loses_the_broker(*args) -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, to the whole process group
        signal.pause()
    except KeyboardInterrupt:
        # the broker got the same signal: the replay's producer fails while unwinding
        raise ConnectionError("broker closed the connection") from None


def test_a_failure_after_ctrl_c_still_exits_130(monkeypatch, handlers):
    monkeypatch.setattr(demo, "run", _replay_that_loses_the_broker)
    assert demo.main([]) == 130


def test_a_failure_without_an_interrupt_is_raised(monkeypatch, handlers):
    def broken(*args) -> None:
        raise ConnectionError("no broker")

    monkeypatch.setattr(demo, "run", broken)
    with pytest.raises(ConnectionError):
        demo.main([])
