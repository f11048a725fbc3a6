"""The wait for a call's first request message, bounded in time and per key.

gRPC hands a unary handler its request only once the whole message has arrived, so a caller
that sends its headers and never a message held its call (a task, gRPC's buffers) until its
deadline, or forever without one. Every handler the gate serves (``AuthInterceptor``) reads
its first message itself through :meth:`BodyGate.first`: it must arrive within
``timeout_s`` of the handler starting (``--body-timeout-seconds``), or the call ends
``DEADLINE_EXCEEDED`` naming the flag; and one key may have at most ``max_waiting_per_key``
calls waiting for their first message at once (``--max-waiting-calls-per-key``), further
calls end ``RESOURCE_EXHAUSTED`` at once. Calls served without a key (health, reflection)
are bounded in time only: a count shared by every keyless caller would let one of them
starve the others' health checks.

The wait costs a call no timer of its own: a waiting call is entered in a table (its task,
the time it started) and leaves it when its message arrives. One sweep, armed only while
calls wait, fires when the oldest of them is due, cancels the calls whose time is up (which
:meth:`BodyGate.first` turns into the status) and arms itself again for the next one due,
no sooner than :data:`SWEEP_MIN_INTERVAL` of the timeout later. A call whose message is
already there (nearly all) pays for two table operations; a timer armed and cancelled per
call cost a unary call about 4,000 more instructions (callgrind). A call ends between the
timeout and the timeout plus that interval after its start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, Protocol

import grpc
from grpc import aio

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_MAX_WAITING_CALLS_PER_KEY",
    "EOF",
    "BodyGate",
]

DEFAULT_BODY_TIMEOUT_S: Final = 10.0
"""How long a call may wait for its first request message (``--body-timeout-seconds``):
the handshake's bound (``--header-timeout-seconds``) again; a 16 MiB message needs about
13 Mbit/s to arrive within it."""
DEFAULT_MAX_WAITING_CALLS_PER_KEY: Final = 1024
"""Calls of one key that may wait for their first message at once
(``--max-waiting-calls-per-key``); a stalled call costs some 15 KiB of gRPC buffers."""

SWEEP_MIN_INTERVAL: Final = 0.125
"""The shortest gap between two sweeps, as a share of the timeout: a flood of stalled calls
started a moment apart is ended in batches (each sweep walks the calls waiting then)."""

EOF: Final[Any] = aio.EOF  # type: ignore[attr-defined]  # not in grpc-stubs
"""What :meth:`BodyGate.first` returns when the caller half-closed without a message."""


class _Counts(Protocol):
    """Where the gate counts what it ended (``GatewayStats``)."""

    def body_timed_out(self) -> None: ...
    def waiting_calls_refused(self) -> None: ...


class BodyGate:
    """Reads the first request message of a call within the bound (see the module).

    Args:
        timeout_s: Longest wait for the first message; None: no bound (tests only).
        max_waiting_per_key: Calls of one key waiting for their first message at once.
        stats: Counts the calls ended by either bound (None: not counted).
    """

    __slots__ = (
        "_expired",
        "_since",
        "_sweep",
        "_sweep_loop",
        "_waiting",
        "max_waiting_per_key",
        "stats",
        "timeout_s",
    )

    def __init__(
        self,
        timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
        max_waiting_per_key: int = DEFAULT_MAX_WAITING_CALLS_PER_KEY,
        stats: _Counts | None = None,
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_waiting_per_key < 1:
            raise ValueError("max_waiting_per_key must be at least 1")
        self.timeout_s = timeout_s
        self.max_waiting_per_key = max_waiting_per_key
        self.stats = stats
        self._waiting: dict[str, int] = {}
        self._since: dict[asyncio.Task[Any], float] = {}
        """The tasks of the calls waiting for their first message -> when each started
        (``time.monotonic()``), oldest first."""
        self._expired: set[asyncio.Task[Any]] = set()
        """Tasks the sweep cancelled because their time was up (until they see it)."""
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def waiting(self, key_id: str) -> int:
        """Calls of ``key_id`` waiting for their first message now."""
        return self._waiting.get(key_id, 0)

    async def first(self, context: aio.ServicerContext[Any, Any], key_id: str | None) -> Any:
        """The call's first request message (as the handler's deserializer made it), or
        :data:`EOF` when the caller half-closed without one.

        ``key_id``: the caller's key (None: a call served without a key, not counted).
        Ends the call (``context.abort``) when a bound is hit.
        """
        waiting = self._waiting
        if key_id is not None:
            held = waiting.get(key_id, 0)
            if held >= self.max_waiting_per_key:
                if self.stats is not None:
                    self.stats.waiting_calls_refused()
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this API key has {held} calls waiting for their request message "
                    "(--max-waiting-calls-per-key)",
                )
            waiting[key_id] = held + 1
        try:
            timeout = self.timeout_s
            if timeout is None:
                return await context.read()
            task = asyncio.current_task()
            assert task is not None  # a handler runs in its call's task
            since = self._since
            since[task] = time.monotonic()
            loop = asyncio.get_running_loop()
            if self._sweep is None or self._sweep_loop is not loop:  # (a gate outlives a loop)
                self._sweep_loop = loop
                self._sweep = loop.call_later(timeout, self._expire)
            try:
                return await context.read()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise  # the caller cancelled, or the server stops
                self._expired.discard(task)
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
            finally:
                since.pop(task, None)  # the sweep took out those it cancelled
            if self.stats is not None:
                self.stats.body_timed_out()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request message arrived within {timeout:g} s of the call's start "
                "(--body-timeout-seconds)",
            )
        finally:
            if key_id is not None:
                left = waiting[key_id] - 1
                if left:
                    waiting[key_id] = left
                else:
                    del waiting[key_id]
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _expire(self) -> None:
        """The sweep: cancel the waiting calls whose time is up; armed again for the next
        one due while any call waits (see the module)."""
        self._sweep = None
        timeout = self.timeout_s
        since = self._since
        if timeout is None or not since:
            return
        now = time.monotonic()
        due = [task for task, start in since.items() if now - start >= timeout]
        for task in due:
            del since[task]
            self._expired.add(task)
            task.cancel()
        if since:
            oldest = next(iter(since.values()))  # the dict keeps the order calls started in
            delay = max(oldest + timeout - now, timeout * SWEEP_MIN_INTERVAL)
            self._sweep = asyncio.get_running_loop().call_later(delay, self._expire)
        # (else the next call to wait arms it again)
