"""A bounded FIFO queue for one event loop, cheaper per item than ``asyncio.Queue``.

``Subscription`` hands every value through a queue, so its per-item cost counts:
``asyncio.Queue.put_nowait`` + ``get_nowait`` cost ~0.5 us (``task_done``/``join``
bookkeeping, an Event cleared on every put, waiter queues looked at on every call), this
~0.1 us when nobody waits. The waiting side keeps ``asyncio.Queue``'s behaviour: waiters are
served first come first served, and a cancelled waiter passes its wake-up on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BoundedQueue"]

T = TypeVar("T")
D = TypeVar("D")


class BoundedQueue(Generic[T]):
    """``put``/``put_nowait``/``get``/``get_nowait``/``full``/``empty``/``qsize`` as in
    ``asyncio.Queue`` (``QueueFull``/``QueueEmpty`` included), bounded to ``maxsize`` >= 1
    items; no ``task_done``/``join``."""

    __slots__ = ("_getters", "_items", "_maxsize", "_putters")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def maxsize(self) -> int:
        """The bound."""
        return self._maxsize

    def qsize(self) -> int:
        """Items queued."""
        return len(self._items)

    def empty(self) -> bool:
        """True when no item is queued."""
        return not self._items

    def full(self) -> bool:
        """True when ``maxsize`` items are queued."""
        return len(self._items) >= self._maxsize

    @staticmethod
    def _wake_next(waiters: collections.deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def put_nowait(self, item: T) -> None:
        """Queue ``item``; ``asyncio.QueueFull`` when full."""
        items = self._items
        if len(items) >= self._maxsize:
            raise asyncio.QueueFull
        items.append(item)
        if self._getters:
            self._wake_next(self._getters)

    def get_nowait(self) -> T:
        """Take the oldest item; ``asyncio.QueueEmpty`` when empty."""
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if self._putters:
            self._wake_next(self._putters)
        return item

    def _has_room(self) -> bool:
        return len(self._items) < self._maxsize

    def _has_items(self) -> bool:
        return bool(self._items)

    def offer(self, item: T) -> bool:
        """``put_nowait`` that answers False instead of raising when full."""
        items = self._items
        if len(items) >= self._maxsize:
            return False
        items.append(item)
        if self._getters:
            self._wake_next(self._getters)
        return True

    def poll(self, default: D) -> T | D:
        """``get_nowait`` that answers ``default`` instead of raising when empty."""
        items = self._items
        if not items:
            return default
        item = items.popleft()
        if self._putters:
            self._wake_next(self._putters)
        return item

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting while the queue is full."""
        while len(self._items) >= self._maxsize:
            await self._wait(self._putters, self._has_room)
        self.put_nowait(item)

    async def get(self) -> T:
        """Take the oldest item, waiting while the queue is empty."""
        while not self._items:
            await self._wait(self._getters, self._has_items)
        return self.get_nowait()

    async def _wait(
        self, waiters: collections.deque[asyncio.Future[None]], ready: Callable[[], bool]
    ) -> None:
        """Wait in line to be woken (as ``asyncio.Queue`` does)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.cancel()  # in case it is not done yet
            with contextlib.suppress(ValueError):  # already taken off the line if woken
                waiters.remove(waiter)
            if ready() and not waiter.cancelled():
                # Woken, but cancelled before taking its turn: the next in line takes it.
                self._wake_next(waiters)
            raise
