"""Cancelling a grpc.aio call so that gRPC's last word on it lands in this event loop.

gRPC finishes a cancelled call on its poller thread and hands that completion (the call's
status, received by a task grpc.aio starts with the call) to the call's event loop. When
that loop has closed by then (an application that runs ``asyncio.run`` again, every
test), whichever loop runs gRPC next logs "Exception in callback
PollerCompletionQueue._handle_events ... Event loop is closed" (grpc/grpc#34139). A close
that cancels a call therefore waits, briefly, for that task to end: the status is a call's
last completion (gRPC core completes it after the call's other operations), and a locally
cancelled call gets it at once, without the peer.

grpc.aio keeps no handle on that task: it is found among the loop's tasks by the call its
coroutine holds (what the collector sees of it). Where it is not found (another grpcio),
the call is only cancelled, as before.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

__all__ = ["cancel_and_settle"]

_STATUS_TASK = "_handle_status_once_received"
"""The name of grpc.aio's coroutine that receives a streaming call's status."""


async def cancel_and_settle(call: Any, timeout: float) -> None:
    """Cancel ``call`` and wait (at most ``timeout`` seconds) until gRPC has handed this
    loop the call's last completion."""
    task = _status_task(call)
    call.cancel()
    if task is not None:
        await asyncio.wait({task}, timeout=timeout)


def _status_task(call: Any) -> asyncio.Task[Any] | None:
    """The task of this loop that waits for ``call``'s status, or None."""
    core = getattr(call, "_cython_call", None)
    if core is None:
        return None
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if not getattr(coro, "__qualname__", "").endswith(_STATUS_TASK):
            continue
        # The coroutine's scope holds the call (``self``) it belongs to.
        for scope in gc.get_referents(coro):
            if any(held is core for held in gc.get_referents(scope)):
                return task
    return None
