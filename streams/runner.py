"""Run one worker in its own event loop until SIGINT/SIGTERM asks it to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Protocol

from streams.config import LetheSettings


class Worker(Protocol):
    def stop(self) -> None: ...

    async def run(self) -> None: ...


def run_until_signalled(make_worker: Callable[[LetheSettings], Worker], settings: LetheSettings):
    """Build the worker inside the loop (its asyncio objects belong there), wire the signals
    to its ``stop`` (which lets it save its state and exit cleanly) and run it."""

    async def main() -> None:
        worker = make_worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    try:
        asyncio.run(main())
    finally:
        # the loop's signal handlers go with the loop, and the process still has threads to
        # join: a second SIGINT/SIGTERM then (Ctrl-C reaches the worker, then its parent's
        # SIGTERM) would kill it with -15 after a clean stop. The worker is stopping anyway.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
