"""Waiting for a condition without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_WAIT", "wait_for"]

DEFAULT_WAIT = 20.0
"""Seconds before a wait fails: an upper bound for a loaded 2-core machine, not a speed
assertion (a condition that holds returns at its first poll)."""


async def wait_for(
    condition: Callable[[], object | Awaitable[object]],
    timeout: float = DEFAULT_WAIT,
    *,
    what: str = "",
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` (plain or async) until its result is truthy; fail at the deadline.

    Raises:
        AssertionError: ``timeout`` seconds passed first (naming ``what``, or the condition).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(interval)
