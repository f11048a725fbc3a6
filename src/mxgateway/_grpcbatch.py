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
lacks them; callers then use ``write()``/``read()``. grpcio has no upper version pin, so
these internals may differ at run time (renamed, another signature): the first such
failure raises :class:`Unusable` and sets :data:`AVAILABLE` False for good, and callers
go on with ``write()``/``read()`` instead of failing every call.

An operator turns batches off for the whole process, client and simulator alike, with
``MXGATEWAY_GRPC_BATCH=0`` (:data:`ENV`; read once, at import): the day a grpcio upgrade
misbehaves in a way this module cannot see, every call goes through ``write()``/``read()``.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Mapping
from typing import Any

from mxgateway._logsafe import get_logger

__all__ = [
    "AVAILABLE",
    "ENV",
    "SWITCHED_OFF",
    "BatchFailed",
    "Unusable",
    "exchange",
    "server_call",
    "switched_off",
]

_log = get_logger(__name__)

ENV = "MXGATEWAY_GRPC_BATCH"
"""The environment variable that turns batches off for the process (``0``, ``off``,
``false`` or ``no``, any case); unset or any other value leaves them on where grpcio
has what they need."""

_OFF_VALUES = frozenset({"0", "off", "false", "no"})


def switched_off(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns batches off (:data:`ENV`)."""
    return environ.get(ENV, "").strip().lower() in _OFF_VALUES


SWITCHED_OFF = switched_off(os.environ)
"""Batches turned off by the operator (:data:`ENV`, read at import)."""

try:
    from grpc._cython import cygrpc as _cygrpc  # type: ignore[attr-defined]

    _execute_batch: Any = _cygrpc.execute_batch
    _SendMessage: Any = _cygrpc.SendMessageOperation
    _ReceiveMessage: Any = _cygrpc.ReceiveMessageOperation
    _RPCState: Any = _cygrpc.RPCState
    BatchFailed: Any = _cygrpc.ExecuteBatchError
    """The batch failed in gRPC core: the call ended (cancelled, broken, or ended by the
    peer before the send); what it sent, if anything, is unknown."""
    AVAILABLE = not SWITCHED_OFF
except (ImportError, AttributeError):  # pragma: no cover - a grpcio without them
    BatchFailed = RuntimeError
    AVAILABLE = False


if SWITCHED_OFF:
    _log.info("gRPC batches turned off by %s", ENV)


class Unusable(Exception):
    """This grpcio's internals are not what this module expects; batches are off for good
    (:data:`AVAILABLE` is False from now on)."""

    def __init__(self, sent: bool) -> None:
        super().__init__("gRPC batches are unusable with this grpcio")
        self.sent = sent
        """Whether the batch may have run: the message sent, one received and lost. When
        False nothing happened on the call, which goes on through ``write()``/``read()``."""


def unusable(sent: bool, exc: BaseException) -> Unusable:
    """Turn batches off for good (``exc``: what failed) and return the error to raise."""
    global AVAILABLE
    if AVAILABLE:
        AVAILABLE = False
        _log.warning("gRPC batches turned off, this grpcio differs: %r", exc)
    return Unusable(sent)


async def exchange(call: Any, data: bytes | None) -> bytes | None:
    """Send ``data`` (None: nothing) on ``call`` and receive the next message, in one batch.

    ``call``: gRPC's own object of the call (a client call's ``_cython_call``, a server
    call's :func:`server_call`), whose metadata was sent and whose reads were begun
    through grpc.aio. Returns the message received, or None when the peer ended its side
    (the call's status tells how). Raises :data:`BatchFailed`, or :class:`Unusable` (the
    first time grpcio's internals are found to differ from what this module expects).
    """
    try:
        received = _ReceiveMessage(0)
        operations = (received,) if data is None else (_SendMessage(data, 0), received)
        # A call checks the arguments; the batch starts when awaited: nothing has
        # happened on the call when this raises.
        batch = _execute_batch(call, operations, asyncio.get_running_loop())
    except Exception as exc:
        raise unusable(False, exc) from exc
    try:
        await batch
        message: bytes | None = received.message()
    except BatchFailed:
        raise
    except Exception as exc:
        raise unusable(True, exc) from exc
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
