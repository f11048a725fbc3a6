"""An unexpected error in a servicer method: ``INTERNAL`` with an incident id to the caller,
the traceback under that id to the log.

grpc.aio would answer ``UNKNOWN "Unexpected <class ...>: <the exception's text>"``, which
can carry paths, SQL or host names to anyone on the network. Every method the gateway
serves (gateway, Galaxy, health, reflection) runs inside the ``try`` of the interceptor's
wrapper (``_auth._guarded``; ``InvokeStream`` in its own body), whose one ``except`` hands
what it caught to :func:`answered`: no wrapper of its own, so the call path gains no
allocation.
The operations listener (``/metrics``, the status page) answers HTTP 500 with the same
details, and a session worker names a runtime's failure by the same kind of id
(:func:`log_unexpected` both).

A handler that ends its call with ``context.abort`` leaves no cycle behind: gRPC keeps the
``AbortError`` for the call (its ``RPCState``), and the error's traceback keeps every frame
it passed through, each holding the context that holds that state: a cycle of the call,
request and all, freed only by a collection, for every refused call. So the outermost
frame of each handler (the interceptor's wrappers, ``InvokeStream``) catches it, drops
its traceback and returns (:func:`answered`): gRPC, finding the call aborted, raises the
same error again from its own frames, which hold nothing, and ends the call as before
(the status went out with the abort).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from mxgateway._incident import incident_details, new_incident_id
from mxgateway._logsafe import get_logger

__all__ = ["GRPC_OWN_ERRORS", "answer_unexpected", "answered", "log_unexpected"]

log = get_logger("mxgateway_sim.gateway")

GRPC_OWN_ERRORS = aio.BaseError
"""gRPC's own exceptions in a handler (``context.abort``'s, a write after the end): they
carry the status gRPC answers and are not the handler's failure, so they pass through."""


def log_unexpected(exc: BaseException, what: str) -> str:
    """Log ``exc`` with its traceback under a new incident id (returned): the one line an
    operator finds from the id a caller was given."""
    incident = new_incident_id()
    log.error("%s failed unexpectedly (incident %s)", what, incident, exc_info=exc)
    return incident


async def answered(exc: Exception, context: aio.ServicerContext[Any, Any], method: str) -> bool:
    """Answer ``exc``, caught by the outermost frame of the handler of ``method``; False
    when it is not to be answered there (the caller raises it again).

    - ``context.abort``'s error: the status went out with it. Its traceback (and the
      error being handled when it was raised, :func:`answer_unexpected`'s) would tie the
      call to a cycle (see the module docstring): both are dropped, the handler returns,
      and gRPC raises it again itself.
    - gRPC's other errors (:data:`GRPC_OWN_ERRORS`) pass through (False).
    - Anything else is unexpected: :func:`answer_unexpected`.
    """
    if isinstance(exc, aio.AbortError):
        _aborted(exc)
    elif isinstance(exc, GRPC_OWN_ERRORS):
        return False
    else:
        await answer_unexpected(exc, context, method)
    return True


def _aborted(exc: aio.AbortError) -> None:
    exc.__traceback__ = None
    exc.__context__ = None


async def answer_unexpected(
    exc: Exception, context: aio.ServicerContext[Any, Any], method: str
) -> None:
    """Log ``exc`` with its traceback under a new incident id, then end the call
    ``INTERNAL`` with that id and nothing of the exception's text; the handler returns
    next (the call is over, and gRPC says so if it goes on)."""
    incident = log_unexpected(exc, method)
    try:
        await context.abort(grpc.StatusCode.INTERNAL, incident_details(incident))
    except aio.AbortError as ended:
        _aborted(ended)
