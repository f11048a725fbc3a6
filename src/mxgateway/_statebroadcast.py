"""The state of a :class:`~mxgateway.Subscription` and everyone who follows it.

One :class:`StateBroadcaster` per subscription holds the current state and its last
transition, and hands every transition to the ``on_state_change`` callback, to each
:meth:`~mxgateway.Subscription.state_changes` iterator (bounded queues: the oldest change is
dropped when a reader falls behind) and to :meth:`~mxgateway.Subscription.wait_for_state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from mxgateway._errors import ClientClosedError
from mxgateway._logsafe import get_logger
from mxgateway._tagvalues import StateChange, SubscriptionState

__all__ = ["StateBroadcaster"]

# The subscription's logger: its state lines read as they did before the split.
_log = get_logger("mxgateway._subscription")
_log.addHandler(logging.NullHandler())

_STATE_QUEUE_SIZE = 256


class StateBroadcaster:
    """The current state of one subscription, its last transition and its listeners."""

    __slots__ = ("_callback", "_changed", "_items", "_last_change", "_listeners", "_state")

    def __init__(self, on_change: Callable[[StateChange], None] | None, items: int) -> None:
        self._callback = on_change
        self._items = items  # for the log line of each transition
        self._state = SubscriptionState.CONNECTING
        self._last_change = StateChange(SubscriptionState.CONNECTING, None)
        self._changed = asyncio.Event()
        self._listeners: list[asyncio.Queue[StateChange]] = []

    @property
    def state(self) -> SubscriptionState:
        """The current state."""
        return self._state

    @property
    def last_change(self) -> StateChange:
        """The most recent transition."""
        return self._last_change

    def changes(self) -> AsyncIterator[StateChange]:
        """An iterator of the transitions from now on, starting with the current one."""
        queue: asyncio.Queue[StateChange] = asyncio.Queue(_STATE_QUEUE_SIZE)
        queue.put_nowait(self._last_change)
        if self._state is not SubscriptionState.CLOSED:
            self._listeners.append(queue)
        return _StateIterator(queue, self._listeners)

    async def wait_for(
        self, states: tuple[SubscriptionState, ...], error: Callable[[], BaseException | None]
    ) -> StateChange:
        """Wait until the state is one of ``states``; ``error()`` is raised if the
        subscription closes first with one (``ClientClosedError`` without)."""
        while self._state not in states:
            if self._state is SubscriptionState.CLOSED:
                failure = error()
                if failure is not None:
                    raise failure
                raise ClientClosedError("the subscription is closed")
            await self._changed.wait()
        return self._last_change

    def set(
        self,
        state: SubscriptionState,
        *,
        session_id: str | None,
        error: BaseException | None = None,
        attempt: int = 0,
    ) -> None:
        """Move to ``state`` (nothing after ``CLOSED``, nothing if unchanged) and tell
        every listener."""
        if self._state is SubscriptionState.CLOSED:
            return
        if state is self._state:
            return
        change = StateChange(state, self._state, session_id, error, attempt)
        self._state = state
        self._last_change = change
        level = logging.WARNING if state is SubscriptionState.RECONNECTING else logging.INFO
        _log.log(
            level,
            "subscription of %d items: %s%s",
            self._items,
            state.name,
            f" ({type(error).__name__}: {error})" if error is not None else "",
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(change)
        if state is SubscriptionState.CLOSED:
            self._listeners.clear()
        self.notify(change)

    def notify(self, change: StateChange) -> None:
        """Hand ``change`` to the ``on_state_change`` callback (its errors are logged)."""
        if self._callback is not None:
            try:
                self._callback(change)
            except Exception:
                _log.exception("on_state_change callback failed")


class _StateIterator:
    __slots__ = ("_done", "_listeners", "_queue")

    def __init__(
        self, queue: asyncio.Queue[StateChange], listeners: list[asyncio.Queue[StateChange]]
    ) -> None:
        self._queue = queue
        self._listeners = listeners
        self._done = False

    def __aiter__(self) -> _StateIterator:
        return self

    async def __anext__(self) -> StateChange:
        if self._done:
            raise StopAsyncIteration
        change = await self._queue.get()
        if change.state is SubscriptionState.CLOSED:
            self._done = True
            if self._queue in self._listeners:
                self._listeners.remove(self._queue)
        return change

    async def aclose(self) -> None:
        self._done = True
        if self._queue in self._listeners:
            self._listeners.remove(self._queue)
