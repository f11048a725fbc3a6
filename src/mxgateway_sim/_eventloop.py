"""The event loop a server process runs on: asyncio's own (the default) or uvloop.

``mxgw-sim serve --event-loop uvloop`` (and the benchmarks' simulator) run the server on
uvloop, a libuv loop written in C: each turn of the loop, and so each gRPC message, costs
the server far less CPU (docs/benchmarks.md). Opt-in: uvloop is a separate package (not
on Windows), and its clock counts whole milliseconds, so timers shorter than that (a scan
below 1 ms) are rounded.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOPS", "EventLoopUnavailable", "run"]

EVENT_LOOPS = ("asyncio", "uvloop")
"""The values of ``--event-loop``."""

_T = TypeVar("_T")


class EventLoopUnavailable(Exception):
    """The event loop asked for is not installed (the message says how to get it)."""


def run(main: Coroutine[Any, Any, _T], event_loop: str = "asyncio") -> _T:
    """Run ``main`` to completion on a new loop of the kind ``event_loop`` names.

    Raises:
        EventLoopUnavailable: ``uvloop`` was asked for and cannot be imported (``main``
            is closed unstarted).
        ValueError: an event loop not in :data:`EVENT_LOOPS`.
    """
    if event_loop == "asyncio":
        return asyncio.run(main)
    if event_loop != "uvloop":
        main.close()
        raise ValueError(f"unknown event loop {event_loop!r}; one of {', '.join(EVENT_LOOPS)}")
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        main.close()
        raise EventLoopUnavailable(
            "--event-loop uvloop needs the uvloop package (pip install uvloop; not on Windows)"
        ) from None
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    loop = uvloop.new_event_loop()  # pragma: no cover - Python 3.10
    try:  # pragma: no cover
        asyncio.set_event_loop(loop)
        result: _T = loop.run_until_complete(main)
        return result
    finally:  # pragma: no cover
        asyncio.set_event_loop(None)
        loop.close()
