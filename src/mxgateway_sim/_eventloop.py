"""The event loop a server process runs on: uvloop where it is installed, else asyncio's own.

``mxgw-sim serve`` (``--event-loop auto``, the default) runs the server on uvloop, a libuv
loop written in C, when it can be imported: each turn of the loop, and so each gRPC
message, costs the server far less CPU (docs/benchmarks.md). uvloop is a base dependency
except on Windows, where it does not exist and ``auto`` means asyncio's own loop;
``--event-loop asyncio`` opts out. uvloop's clock counts whole milliseconds, so timers
shorter than that (a scan below 1 ms) are rounded; the 1 ms scan keeps up on both loops
(``python -m bench keepup``).

A gateway that starts worker processes (``--session-isolation process``) runs on either:
it starts them itself, without ``fork()`` (``mxgateway_sim._spawn``), not through the
loop's ``subprocess_exec`` (uvloop's forks, and gRPC's fork handlers then aborted some
workers).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EVENT_LOOPS", "EventLoopUnavailable", "is_uvloop", "resolve", "run"]

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
"""The values of ``--event-loop``: ``auto`` is uvloop when it can be imported, else asyncio."""

_T = TypeVar("_T")


class EventLoopUnavailable(Exception):
    """The event loop asked for is not installed (the message says how to get it)."""


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is one of uvloop's."""
    return type(loop).__module__.split(".")[0] == "uvloop"


def resolve(event_loop: str) -> str:
    """The loop ``event_loop`` stands for: ``auto`` becomes ``uvloop`` where it can be
    imported, else ``asyncio``."""
    if event_loop != "auto":
        return event_loop
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, _T], event_loop: str = "auto") -> _T:
    """Run ``main`` to completion on a new loop of the kind ``event_loop`` names.

    Raises:
        EventLoopUnavailable: ``uvloop`` was asked for and cannot be imported (``main`` is
            closed unstarted).
        ValueError: an event loop not in :data:`EVENT_LOOPS`.
    """
    event_loop = resolve(event_loop)
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
