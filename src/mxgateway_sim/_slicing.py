"""Cooperative slicing: long work on the event loop gives the loop back every few milliseconds.

The whole gateway (every session, health checks, event streams) runs on one asyncio loop, so
one request that computes for seconds stalls every other caller for seconds. Bulk commands
and other work proportional to the request's size therefore run in slices: every
:data:`CHUNK_ROWS` rows they call :meth:`Slicer.checkpoint`, which yields to the loop once
the slice has used :data:`SLICE_BUDGET_S` of wall time. Each yield is also the point where a
command timeout (or a client cancel) can stop the work, always between two rows, never in
the middle of one. ``bench/loop_stall.py`` measures the longest stall under attack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from time import perf_counter
from typing import TypeVar

__all__ = ["CHUNK_ROWS", "SLICE_BUDGET_S", "Slicer", "chunks"]

_T = TypeVar("_T")

SLICE_BUDGET_S = 0.005
"""Wall time a slice may use before the loop gets a turn (a few ms: far under the few tens of
ms the gateway promises, with room for a slow row or a loaded machine)."""

CHUNK_ROWS = 64
"""Rows between two checks of the clock (each row costs microseconds, so a chunk stays well
inside one slice; checking per chunk keeps the clock's cost off the per-row path)."""


class Slicer:
    """Yields to the event loop when the current slice has used its time budget."""

    __slots__ = ("_budget", "_until")

    def __init__(self, budget_s: float = SLICE_BUDGET_S) -> None:
        self._budget = budget_s
        self._until = perf_counter() + budget_s

    async def checkpoint(self) -> None:
        """Give the loop a turn if this slice is used up (cancellation lands here)."""
        if perf_counter() >= self._until:
            await asyncio.sleep(0)
            self._until = perf_counter() + self._budget


def chunks(items: Sequence[_T], size: int = CHUNK_ROWS) -> Iterator[Sequence[_T]]:
    """``items`` in consecutive slices of at most ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
