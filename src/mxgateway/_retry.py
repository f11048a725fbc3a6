"""What is worth trying again, and how long to wait: the one module that decides both.

* **Which errors are transient** (:data:`TRANSIENT_ERRORS`, :func:`is_transient`): the
  connection or the gateway is in trouble for now (UNAVAILABLE, a deadline, a cancellation,
  an overloaded gateway); trying again later may work. **Which are fatal**
  (:data:`FATAL_ERRORS`): the key, its scopes or the request are wrong, or the client was
  closed; no retry, reconnect or resume can help.
* **How long to wait**: every backoff is a :class:`RetryPolicy` (bounded exponential backoff
  with jitter): ``ClientOptions.retry`` for unary calls (the transport), :data:`DEFAULT_RECONNECT`
  for :class:`~mxgateway.Subscription`, :func:`resume_policy` for an
  :class:`~mxgateway.EventStream` resuming after a drop. Only the connect wait of
  ``Transport.open`` polls at a fixed :data:`CONNECT_POLL_INTERVAL`: gRPC's channel has its
  own reconnect backoff, the poll only asks whether it is up yet.
* **What is safe to repeat** (:func:`is_idempotent`): decided from the request message
  alone, whether a unary call may be sent again after it failed with UNAVAILABLE. The
  transport (``Transport.unary``) is the only place that retries unary calls.

Safe to repeat are read-only requests: every Galaxy Repository unary RPC and the ``Invoke``
command kinds marked idempotent in :data:`mxgateway.commands.COMMANDS` (``PING``,
``GET_SESSION_STATE``, ``GET_WORKER_INFO``, ``READ_BULK``, ``ARCHESTRA_USER_TO_ID``,
``QUERY_ACTIVE_ALARMS``), and ``CloseSession``, which the gateway makes idempotent (a repeat
close answers the final CLOSED state, as upstream).
Everything else is sent once: writes of every kind, anything that creates or releases a
handle (``REGISTER``, ``ADD_ITEM*``, ``ADVISE*``, the subscribe/unsubscribe bulk family...),
``AUTHENTICATE_USER`` (an audited log-on that may count towards a lock-out),
``DRAIN_EVENTS`` (a retry would lose the events the first attempt drained),
``OpenSession`` and ``AcknowledgeAlarm``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from mxgateway._errors import (
    ClientClosedError,
    MxGatewayAuthenticationError,
    MxGatewayCancelledError,
    MxGatewayInvalidRequestError,
    MxGatewayOverloadedError,
    MxGatewayPermissionError,
    MxGatewayTimeoutError,
    MxGatewayUnavailableError,
    MxGatewayUnimplementedError,
)
from mxgateway.commands import idempotent_kinds
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "CONNECT_POLL_INTERVAL",
    "DEFAULT_RECONNECT",
    "FATAL_ERRORS",
    "IDEMPOTENT_COMMAND_KINDS",
    "RESUMABLE_STREAM_ERRORS",
    "TRANSIENT_ERRORS",
    "RetryPolicy",
    "is_idempotent",
    "is_transient",
    "resume_policy",
]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    The ``n``-th retry (1-based) waits ``min(max_backoff, initial_backoff *
    multiplier ** (n - 1))`` seconds, reduced by a random fraction of up to ``jitter``
    (``jitter=0.5``: somewhere between half and all of it), so that many clients that lost
    the same gateway do not come back in step.

    Attributes:
        max_attempts: Attempts in total, the first one included (``1`` disables retries;
            ``None`` means no limit, for reconnect loops).
        initial_backoff: Delay before the first retry, in seconds.
        max_backoff: Upper bound of one delay, in seconds.
        multiplier: Growth factor of the delay per retry.
        jitter: Fraction (0 to 1) of each delay that is randomised away.
        max_elapsed: No retry starts later than this many seconds after the first attempt
            (``None``: no bound besides ``max_attempts`` and the call's deadline).
    """

    max_attempts: int | None = 3
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_elapsed: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError("max_attempts must be an int >= 1 or None")
        for name in ("initial_backoff", "max_backoff", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be >= initial_backoff")
        if (
            isinstance(self.jitter, bool)
            or not isinstance(self.jitter, (int, float))
            or not 0 <= self.jitter <= 1
        ):
            raise ValueError("jitter must be a number between 0 and 1")
        if self.max_elapsed is not None and (
            isinstance(self.max_elapsed, bool)
            or not isinstance(self.max_elapsed, (int, float))
            or self.max_elapsed <= 0
        ):
            raise ValueError("max_elapsed must be a positive number of seconds or None")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries (one attempt)."""
        return cls(max_attempts=1)

    @property
    def enabled(self) -> bool:
        """False when the policy allows a single attempt only."""
        return self.max_attempts is None or self.max_attempts > 1

    def allows(self, attempt: int, elapsed: float) -> bool:
        """May attempt number ``attempt + 1`` start, ``elapsed`` seconds after the first?"""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        return self.max_elapsed is None or elapsed < self.max_elapsed

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The delay before retry number ``retry`` (1-based), jitter applied."""
        exponent = max(retry - 1, 0)
        # Cap the exponent: the result is bounded by max_backoff anyway.
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(exponent, 64))
        draw = (rng or _rng).random()
        return base * (1.0 - self.jitter * draw)


_rng = random.Random()

DEFAULT_RECONNECT = RetryPolicy(
    max_attempts=None, initial_backoff=0.25, max_backoff=10.0, multiplier=2.0, max_elapsed=None
)
"""Subscription reconnects: for ever, 0.25 s doubling up to 10 s between attempts, 50 %
jitter."""

RESUME_MAX_BACKOFF = 2.0
"""Upper bound of one delay between an event stream's resume attempts, in seconds."""


def resume_policy(initial_backoff: float, max_resume_attempts: int) -> RetryPolicy:
    """The backoff of an :class:`~mxgateway.EventStream` resuming after a drop.

    ``initial_backoff`` doubling up to :data:`RESUME_MAX_BACKOFF`, no jitter (a resume is one
    client getting its own stream back, not many clients coming back at once), at most
    ``max_resume_attempts`` resumes in a row.
    """
    return RetryPolicy(
        max_attempts=max_resume_attempts + 1,
        initial_backoff=initial_backoff,
        max_backoff=max(RESUME_MAX_BACKOFF, initial_backoff),
        jitter=0.0,
        max_elapsed=None,
    )


CONNECT_POLL_INTERVAL = 0.05
"""Seconds between connectivity probes while ``Transport.open`` waits for a refusing gateway
(gRPC's channel reconnects on its own backoff; a probe in the meantime fails at once)."""

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    MxGatewayUnavailableError,
    MxGatewayTimeoutError,
    MxGatewayCancelledError,
    MxGatewayOverloadedError,
)
"""The connection or the gateway is in trouble for now: trying again later may work."""

FATAL_ERRORS: tuple[type[BaseException], ...] = (
    MxGatewayAuthenticationError,
    MxGatewayPermissionError,
    MxGatewayInvalidRequestError,
    MxGatewayUnimplementedError,
    ClientClosedError,
)
"""The key, its scopes or the request itself are wrong, or the client was closed: trying
again cannot help (a subscription stops, a stream does not resume)."""


RESUMABLE_STREAM_ERRORS: tuple[type[BaseException], ...] = (MxGatewayUnavailableError,)
"""An event stream resumes by itself only after these (and after a disconnect that follows
an overflow notice, or a re-subscription the gateway refused while still holding the old
one): a deadline or a cancellation on a stream is the caller's own doing."""


def is_transient(error: BaseException | None) -> bool:
    """True when ``error`` is one of :data:`TRANSIENT_ERRORS` (link trouble, for now)."""
    return isinstance(error, TRANSIENT_ERRORS)


IDEMPOTENT_COMMAND_KINDS: frozenset[int] = idempotent_kinds()
"""``Invoke`` command kinds that only read, so a retry cannot change anything twice
(the ``idempotent`` column of :data:`mxgateway.commands.COMMANDS`)."""

_IDEMPOTENT_REQUESTS: tuple[type[Any], ...] = (
    pb.CloseSessionRequest,  # the gateway answers a repeat close with CLOSED
    gr.TestConnectionRequest,
    gr.GetLastDeployTimeRequest,
    gr.DiscoverHierarchyRequest,
    gr.BrowseChildrenRequest,
)


def is_idempotent(request: object) -> bool:
    """True when a unary call with ``request`` is safe to send again.

    Decided from the request alone: an ``MxCommandRequest`` by its command kind, the Galaxy
    Repository's read-only requests and ``CloseSession`` always; everything else
    (``OpenSession``, ``AcknowledgeAlarm``, unknown types) never.
    """
    if isinstance(request, pb.MxCommandRequest):
        return request.command.kind in IDEMPOTENT_COMMAND_KINDS
    return isinstance(request, _IDEMPOTENT_REQUESTS)
