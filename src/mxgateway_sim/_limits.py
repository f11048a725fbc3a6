"""The gateway's byte limits: one table of flags, defaults and refusals, and the error they raise.

Counts alone do not bound memory (one 8 MiB value fills a 10,000-event queue's worth of
RAM), so every resource a caller can make the server hold is also bounded in bytes. The
table below is the one source for ``SessionOptions`` defaults, the ``mxgw-sim serve`` flags
and the rows of docs/security.md and docs/simulator.md (a test checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024

DEFAULT_MAX_MESSAGE_BYTES = 16 * MIB
DEFAULT_MAX_VALUE_BYTES = 1 * MIB
DEFAULT_MAX_ITEMS_PER_SESSION = 100_000
DEFAULT_EVENT_QUEUE_BYTES = 16 * MIB
DEFAULT_REPLAY_RING_BYTES = 8 * MIB
DEFAULT_REFERENCE_CACHE_BYTES = 4 * MIB
DEFAULT_READ_CACHE_BYTES = 16 * MIB

REPLY_OVERHEAD_BYTES = 4096
"""Room kept in every reply for what is not rows or events (session id, correlation id,
protocol status): a reply is built only if its rows fit in the message limit minus this."""

MAX_SESSION_NAME_CHARS = 256
"""Longest ``client_session_name``: the name lives as long as the session and goes into the
log, so it is not allowed to be megabytes (a longer one is ``INVALID_ARGUMENT``)."""

MAX_ACK_COMMENT_CHARS = 1024
"""Longest alarm acknowledgement comment (the operator name: ``MAX_SESSION_NAME_CHARS``):
kept with the alarm and carried by every transition event of it."""

MIN_MESSAGE_BYTES = 64 * 1024
"""Smallest ``--max-message-bytes`` accepted (a reply must hold at least one value)."""


@dataclass(frozen=True, slots=True)
class ByteLimit:
    """One limit: the ``SessionOptions`` field, its ``mxgw-sim serve`` flag and what a
    caller sees when it is hit."""

    field: str
    flag: str
    default: int
    help: str
    refusal: str


LIMITS: tuple[ByteLimit, ...] = (
    ByteLimit(
        "max_message_bytes",
        "--max-message-bytes",
        DEFAULT_MAX_MESSAGE_BYTES,
        "largest gRPC message received or sent; replies are sized against it before they are built",
        "a request over it fails with gRPC `RESOURCE_EXHAUSTED` (the client library raises "
        "`MxGatewayInvalidRequestError` naming the limit); a reply that would be over it "
        "answers `PROTOCOL_STATUS_CODE_INVALID_REQUEST` naming the flag, before it is built",
    ),
    ByteLimit(
        "max_value_bytes",
        "--max-value-bytes",
        DEFAULT_MAX_VALUE_BYTES,
        "largest encoded value a Write* command may carry",
        "the write answers `PROTOCOL_STATUS_CODE_INVALID_REQUEST` naming the flag; nothing is "
        "written",
    ),
    ByteLimit(
        "max_items_per_session",
        "--max-items-per-session",
        DEFAULT_MAX_ITEMS_PER_SESSION,
        "items (AddItem*, SubscribeBulk) one session may hold at a time, and as many registrations",
        "AddItem (or Register) answers `PROTOCOL_STATUS_CODE_OVERLOADED` naming the flag; a "
        "bulk add that would pass it creates nothing",
    ),
    ByteLimit(
        "event_queue_bytes",
        "--event-queue-bytes",
        DEFAULT_EVENT_QUEUE_BYTES,
        "encoded events one event subscriber may have queued (with --event-queue-size)",
        "like `--event-queue-size`: the subscriber gets an `EventQueueOverflow` fault naming "
        "the flag and is disconnected (or the session faults under `fail-fast`)",
    ),
    ByteLimit(
        "replay_ring_bytes",
        "--replay-ring-bytes",
        DEFAULT_REPLAY_RING_BYTES,
        "encoded events a session keeps for resume and DrainEvents (with --replay-ring-size)",
        "older events leave the ring sooner: a resume from before them reports an event gap",
    ),
    ByteLimit(
        "reference_cache_bytes",
        "--reference-cache-bytes",
        DEFAULT_REFERENCE_CACHE_BYTES,
        "parsed item references (with their item_context) one session keeps cached",
        "nothing: the least recently used entries are dropped and parsed again when needed",
    ),
    ByteLimit(
        "read_cache_bytes",
        "--read-cache-bytes",
        DEFAULT_READ_CACHE_BYTES,
        "ReadBulk rows one session keeps ready (each read reference, what it resolves to and "
        "its last encoded row); 0 turns the cache off",
        "nothing: the oldest rows are dropped and built again when read",
    ),
)
"""Every byte (and item) limit of the gateway, in the order the docs list them."""


class LimitError(Exception):
    """A request would pass one of the limits; nothing was done for it.

    ``overloaded`` True: the session is at a limit that frees up (answered ``OVERLOADED``);
    False: the request itself is too large for this gateway (``INVALID_REQUEST``).
    """

    def __init__(self, message: str, *, overloaded: bool = False) -> None:
        super().__init__(message)
        self.overloaded = overloaded


def too_large(what: str, size: int, limit: int, flag: str) -> LimitError:
    """``what`` is ``size`` bytes, more than ``limit`` (the ``flag`` of ``mxgw-sim serve``)."""
    return LimitError(f"{what} is {size:,} bytes, over the {limit:,}-byte limit ({flag})")


def reply_too_large(size: int, limit: int, advice: str) -> LimitError:
    """The reply would be at least ``size`` bytes; nothing was done."""
    return LimitError(
        f"the reply would be at least {size:,} bytes, over the {limit:,}-byte message limit "
        f"(--max-message-bytes); {advice}"
    )


def check_limits(max_message_bytes: int, max_value_bytes: int) -> None:
    """Refuse limits that contradict each other (a value must fit in a reply).

    Raises:
        ValueError: naming the flags.
    """
    if not MIN_MESSAGE_BYTES <= max_message_bytes < 2**31:
        raise ValueError(
            f"--max-message-bytes {max_message_bytes} must be between {MIN_MESSAGE_BYTES} and "
            f"{2**31 - 1}"
        )
    if max_value_bytes > max_message_bytes - REPLY_OVERHEAD_BYTES:
        raise ValueError(
            f"--max-value-bytes {max_value_bytes} must be at most --max-message-bytes minus "
            f"{REPLY_OVERHEAD_BYTES} ({max_message_bytes - REPLY_OVERHEAD_BYTES}): a value "
            "has to fit in a reply"
        )
