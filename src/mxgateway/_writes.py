"""Correlating writes with their ``OnWriteComplete`` (one table of waiters per session).

Upstream, Write/Write2/WriteSecured/WriteSecured2 answer a plain OK once MXAccess accepted
the write; whether it took effect arrives later as ``OnWriteComplete(hLMX, hItem,
status[])``. The event names no write, only the item, so a waiter takes the first
completion of its ``(server_handle, item_handle)`` that the session's event stream decodes
after the write was sent (after sequence ``after``), in the order the writes were sent. A
completion whose statuses are all PENDING is interim: the waiter keeps waiting for the
final one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from mxgateway._events import Event, WriteComplete
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["WriteWaiter", "WriteWaiters"]

_PENDING = pb.MX_STATUS_CATEGORY_PENDING


class WriteWaiter:
    """One awaited write: its item, the sequence it must come after, and the future."""

    __slots__ = ("after", "future", "key")

    def __init__(self, key: tuple[int, int], after: int) -> None:
        self.key = key
        self.after = after
        self.future: asyncio.Future[WriteComplete] = asyncio.get_running_loop().create_future()


class WriteWaiters:
    """The session's pending waiters, fed by every decoded event batch (``observe``)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, int], deque[WriteWaiter]] = {}
        # Per item, the sequence of the last completion that answered a write: a stream that
        # delivers it again (a new stream resuming from an earlier point) cannot answer a
        # later write with it. One int per item ever written with wait=True.
        self._answered: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def expect(self, server_handle: int, item_handle: int, *, after: int = 0) -> WriteWaiter:
        """Register a waiter before the write is sent (its completion may come first).

        It takes a completion after sequence ``after`` and after the completion that
        answered the item's previous write."""
        key = (server_handle, item_handle)
        waiter = WriteWaiter(key, max(after, self._answered.get(key, 0)))
        self._pending.setdefault(waiter.key, deque()).append(waiter)
        return waiter

    def discard(self, waiters: Sequence[WriteWaiter]) -> None:
        """Forget waiters (write refused, timed out or cancelled, or already answered);
        one pass per item however many waiters it has."""
        by_key: dict[tuple[int, int], set[int]] = {}
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.cancel()
            by_key.setdefault(waiter.key, set()).add(id(waiter))
        for key, gone in by_key.items():
            queue = self._pending.get(key)
            if queue is None:
                continue
            kept = deque(w for w in queue if id(w) not in gone)
            if kept:
                self._pending[key] = kept
            else:
                del self._pending[key]

    def observe(self, events: Sequence[Event]) -> None:
        """Resolve the oldest waiter of each completed item (an ``EventStream`` observer)."""
        if not self._pending:
            return
        for event in events:
            if type(event) is not WriteComplete:
                continue
            queue = self._pending.get((event.server_handle, event.item_handle))
            if not queue or event.worker_sequence <= queue[0].after:
                continue
            if event.statuses and all(s.category == _PENDING for s in event.statuses):
                continue  # interim: the final completion follows
            waiter = queue.popleft()
            self._answered[waiter.key] = event.worker_sequence
            if queue:
                # The next write of the item came later: not this completion again.
                queue[0].after = max(queue[0].after, event.worker_sequence)
            else:
                del self._pending[waiter.key]
            if not waiter.future.done():
                waiter.future.set_result(event)
