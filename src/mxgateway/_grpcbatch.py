"""A message sent and the next one received in one gRPC batch, on a grpc.aio call.

grpc.aio's ``write()`` and ``read()`` each start a batch of one operation in gRPC core, and
each batch's completion wakes grpc.aio's poller thread, which wakes the event loop. On a
stream where each message sent is answered by the next one received (the persistent
command stream: a command and its reply, a reply and the next command), the completion of
the send only wakes both threads for the loop to start the receive and sleep again. One
batch of both operations completes once, when the message is in: two thread wake-ups
fewer a message, and the CPU of one completion (``docs/benchmarks.md``, "Thread wake-ups
per command").

grpc.aio has no public call for it: this uses the primitives its own calls are built of
(``grpc._cython.cygrpc``: ``execute_batch`` and the operation classes), exactly as its
``unary_unary`` does with its six operations. :data:`AVAILABLE` is False where a grpcio
lacks them; callers then use ``write()``/``read()``.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

__all__ = ["AVAILABLE", "BatchFailed", "exchange", "server_call"]

try:
    from grpc._cython import cygrpc as _cygrpc  # type: ignore[attr-defined]

    _execute_batch: Any = _cygrpc.execute_batch
    _SendMessage: Any = _cygrpc.SendMessageOperation
    _ReceiveMessage: Any = _cygrpc.ReceiveMessageOperation
    _RPCState: Any = _cygrpc.RPCState
    BatchFailed: Any = _cygrpc.ExecuteBatchError
    """The batch failed in gRPC core: the call ended (cancelled, broken, or ended by the
    peer before the send); what it sent, if anything, is unknown."""
    AVAILABLE = True
except (ImportError, AttributeError):  # pragma: no cover - a grpcio without them
    BatchFailed = RuntimeError
    AVAILABLE = False


async def exchange(call: Any, data: bytes | None) -> bytes | None:
    """Send ``data`` (None: nothing) on ``call`` and receive the next message, in one batch.

    ``call``: gRPC's own object of the call (a client call's ``_cython_call``, a server
    call's :func:`server_call`), whose metadata was sent and whose reads were begun
    through grpc.aio. Returns the message received, or None when the peer ended its side
    (the call's status tells how). Raises :data:`BatchFailed`.
    """
    received = _ReceiveMessage(0)
    operations = (received,) if data is None else (_SendMessage(data, 0), received)
    await _execute_batch(call, operations, asyncio.get_running_loop())
    message: bytes | None = received.message()
    return message


def server_call(context: Any) -> Any:
    """gRPC's own object of the server call of ``context`` (a grpc.aio servicer context),
    or None when it cannot be found (another grpcio). grpc.aio keeps it out of reach; the
    context refers to it, and the garbage collector lists what an object refers to."""
    if not AVAILABLE:
        return None
    for referent in gc.get_referents(context):
        if type(referent) is _RPCState:
            return referent
    return None
