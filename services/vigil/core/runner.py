"""Running a service: logging, signals, and a clean drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any


def setup_logging(service: str) -> None:
    logging.basicConfig(
        level=os.environ.get("VIGIL_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )


def run(main: Coroutine[Any, Any, None], service: str) -> int:
    """Run ``main`` until it returns or a signal asks us to stop; exit code 0 on a clean stop."""
    setup_logging(service)
    from . import tracing

    tracing.setup(service)

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await main

    asyncio.run(guarded())
    return 0


def stop_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task has been asked to stop. Python 3.11's
    ``asyncio.wait_for``, which nats-py wraps round every request, swallows a cancellation that
    races the request's answer: the request returns normally, and a loop around it ran on
    forever after its service was cancelled (a test's teardown hung 1 run in 7). The task still
    counts the request (``Task.cancelling``), so every long-running loop looks each round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def every(interval: float, coro_fn: Any, *args: Any) -> None:
    """Call ``coro_fn`` every ``interval`` seconds, logging (not raising) its failures."""
    log = logging.getLogger(getattr(coro_fn, "__module__", __name__))
    while True:
        stop_if_cancelled()
        try:
            await coro_fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic %s failed; retrying", getattr(coro_fn, "__name__", coro_fn))
        await asyncio.sleep(interval)
