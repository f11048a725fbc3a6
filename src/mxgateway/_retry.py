"""Retry policy of unary calls and the one table of what is safe to repeat.

:class:`RetryPolicy` is a frozen value object (``ClientOptions.retry``; also the reconnect
policy of :class:`~mxgateway.Subscription`). :func:`is_idempotent` decides, from the request
message alone, whether a unary call may be sent again after it failed with UNAVAILABLE. The
transport (``Transport.unary``) is the only place that retries.

Safe to repeat are read-only requests: every Galaxy Repository unary RPC and the ``Invoke``
command kinds in :data:`IDEMPOTENT_COMMAND_KINDS` (``PING``, ``GET_SESSION_STATE``,
``GET_WORKER_INFO``, ``READ_BULK``, ``ARCHESTRA_USER_TO_ID``, ``QUERY_ACTIVE_ALARMS``), and
``CloseSession``, which the gateway makes idempotent (a repeat close answers the final CLOSED
state, as upstream).
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

from mxgateway.commands import idempotent_kinds
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["IDEMPOTENT_COMMAND_KINDS", "RetryPolicy", "is_idempotent"]


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
