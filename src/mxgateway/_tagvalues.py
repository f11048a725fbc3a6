"""What a :class:`~mxgateway.Subscription` hands out: its states and its events.

Plain values (no I/O): the states and transitions of a subscription
(:class:`SubscriptionState`, :class:`StateChange`) and what its iteration yields
(:class:`TagValue`, :class:`ItemFailure`, and :class:`~mxgateway.EventGap`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from mxgateway._events import DataChange, EventGap
from mxgateway._values import MxPythonValue
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "ItemFailure",
    "StateChange",
    "SubscriptionEvent",
    "SubscriptionState",
    "TagValue",
]


class SubscriptionState(enum.Enum):
    """Where a :class:`Subscription` is in its life."""

    CONNECTING = "connecting"
    """Opening the first session and subscribing (also while retrying that)."""
    CONNECTED = "connected"
    """The first session is open and every item was added and advised; or, after
    ``RECONNECTING``, the subscription got its session back (nothing to resynchronise)."""
    RECONNECTING = "reconnecting"
    """The stream was lost; getting the session, or a new one, back (with backoff between
    failed attempts)."""
    RESYNCHRONIZED = "resynchronized"
    """A new session is open and the items were added and advised again; values marked
    ``resynchronized`` follow."""
    CLOSED = "closed"
    """Closed by the application, or failed for good (the iterator raises the error)."""


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of a :class:`Subscription`.

    Attributes:
        state: The new state.
        previous: The state before (``None`` for the first).
        session_id: The session in use in the new state, if any.
        error: Why the session was lost (``RECONNECTING``) or why the subscription failed
            (``CLOSED``); ``None`` otherwise.
        attempt: For ``CONNECTED`` and ``RESYNCHRONIZED``: how many attempts it took
            (1 = the first one worked); 0 otherwise.
    """

    state: SubscriptionState
    previous: SubscriptionState | None
    session_id: str | None = None
    error: BaseException | None = None
    attempt: int = 0


class TagValue:
    """A value of a subscribed tag.

    Attributes:
        tag: The reference as given to ``subscribe``.
        value: The value as a Python object.
        quality: OPC-style 16-bit quality (192 = Good).
        initial: The first value of this item in the current session (the value MXAccess
            reports on advise).
        resynchronized: The first value of this item after a recovery (changes while the
            gateway was unreachable are not replayed, this is the current value again), or
            the value read again after an :class:`~mxgateway.EventGap` on the same session.
        session_id: The session that delivered it.
        item_handle: The item handle in that session.
        worker_sequence: The position in that session's event sequence (for a value read
            after a gap: the last sequence of the gap, the events it stands for).
        change: The underlying :class:`~mxgateway.DataChange` (for a value read after a
            gap, one built from the ``ReadBulk`` row).
    """

    __slots__ = (
        "change",
        "initial",
        "item_handle",
        "quality",
        "resynchronized",
        "session_id",
        "tag",
        "value",
        "worker_sequence",
    )

    def __init__(
        self,
        tag: str,
        change: DataChange,
        session_id: str,
        *,
        initial: bool = False,
        resynchronized: bool = False,
    ) -> None:
        self.tag = tag
        self.change = change
        self.value: MxPythonValue = change.value
        self.quality = change.quality
        self.item_handle = change.item_handle
        self.worker_sequence = change.worker_sequence
        self.session_id = session_id
        self.initial = initial
        self.resynchronized = resynchronized

    @property
    def timestamp(self) -> datetime:
        """Source timestamp, an aware UTC ``datetime``."""
        return self.change.timestamp

    @property
    def is_good(self) -> bool:
        """True when the quality is Good."""
        return self.change.is_good

    @property
    def statuses(self) -> Sequence[pb.MxStatusProxy]:
        """The MXAccess status records of the data change."""
        return self.change.statuses

    def __repr__(self) -> str:
        flags = "".join(f" {name}" for name in ("initial", "resynchronized") if getattr(self, name))
        return (
            f"TagValue({self.tag!r}, value={self.value!r}, quality={self.quality}, "
            f"timestamp={self.timestamp.isoformat()}{flags})"
        )


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """An item the gateway would not add or advise (in the first or a later session).

    Attributes:
        tag: The reference as given to ``subscribe``.
        message: The gateway's error message.
        hresult: The HRESULT of the failed step.
        resynchronized: Reported while resubscribing after a recovery.
        session_id: The session that reported it.
        result: The raw ``SubscribeResult`` row.
    """

    tag: str
    message: str
    hresult: int
    resynchronized: bool
    session_id: str
    result: pb.SubscribeResult


SubscriptionEvent: TypeAlias = TagValue | ItemFailure | EventGap
"""What iterating a :class:`Subscription` yields."""
