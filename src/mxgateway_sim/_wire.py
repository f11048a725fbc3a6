"""Domain objects <-> protobuf, including a hand-written encoder for the hot event path.

Event streams carry serialized bytes straight from the session's event log: every event is
encoded once, when the runtime raises it, and replay, batching and several subscribers reuse
those bytes. OnDataChange events are assembled from cached pieces (the session id field, the
per-item handle fields, the per-sample value/quality/timestamp/status body), which is what
lets one process produce well over 100k events/s. Protobuf parsers accept fields in any
order, so the output parses to exactly the message the generated classes would build; the
tests check that equivalence.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import to_mx_value
from mxgateway_sim._coerce import wire_type
from mxgateway_sim._commands import BulkRow
from mxgateway_sim._domain import (
    COM_TO_PROTO,
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_FLOAT,
    MX_INTEGER,
    STATUS_OK,
    AlarmSnapshot,
    AlarmTransition,
    BufferedDataChange,
    DataChange,
    MxRuntimeEvent,
    MxStatus,
    OperationComplete,
    ReadResult,
    TagSample,
    WriteComplete,
)
from mxgateway_sim._limits import reply_too_large
from mxgateway_sim._plant import STRING_TYPES

_COM_OFFSET = COM_TO_PROTO
_MASK64 = (1 << 64) - 1


def _encode_varint(n: int) -> bytes:
    n &= _MASK64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_encode_varint(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf varint of ``n`` (negative numbers as 64-bit two's complement)."""
    if 0 <= n < 16384:
        return _VARINTS[n]
    if 0 < n < 1 << 21:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    if 0 < n < 1 << 28:
        return bytes(
            ((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21)
        )
    if 0 < n < 1 << 35:  # timestamp nanos
        return bytes(
            (
                (n & 0x7F) | 0x80,
                ((n >> 7) & 0x7F) | 0x80,
                ((n >> 14) & 0x7F) | 0x80,
                ((n >> 21) & 0x7F) | 0x80,
                n >> 28,
            )
        )
    return _encode_varint(n)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """Length-delimited field."""
    return tag + varint(len(payload)) + payload


def split_time(t: float) -> tuple[int, int]:
    """Seconds and nanoseconds of a Unix time (microsecond resolution)."""
    micros = round(t * 1_000_000)
    seconds, micro = divmod(micros, 1_000_000)
    return seconds, micro * 1000


class _StampCache:
    """The last timestamp encoded, and the last seconds field (a scan tick's samples share
    one time; the values of one bulk write share the second)."""

    t: float | None = None
    value = b""
    seconds = 0
    seconds_field = b""


def timestamp_bytes(t: float) -> bytes:
    """Serialized ``google.protobuf.Timestamp`` of a Unix time."""
    cache = _StampCache
    if t == cache.t:
        return cache.value
    seconds, nanos = split_time(t)
    if not seconds:
        out = b""
    elif seconds == cache.seconds:
        out = cache.seconds_field
    else:
        out = b"\x08" + varint(seconds)
        cache.seconds, cache.seconds_field = seconds, out
    out = out + b"\x10" + varint(nanos) if nanos else out
    cache.t, cache.value = t, out
    return out


def to_timestamp(t: float) -> Timestamp:
    """``Timestamp`` message of a Unix time."""
    seconds, nanos = split_time(t)
    return Timestamp(seconds=seconds, nanos=nanos)


# -- statuses -----------------------------------------------------------------------------


def status_to_pb(status: MxStatus) -> pb.MxStatusProxy:
    """MXSTATUS_PROXY message (proto enums = COM + 2, raw fields = COM)."""
    return pb.MxStatusProxy(
        success=status.success,
        category=status.category + _COM_OFFSET,  # type: ignore[arg-type]
        detected_by=status.detected_by + _COM_OFFSET,  # type: ignore[arg-type]
        detail=status.detail,
        raw_category=status.category,
        raw_detected_by=status.detected_by,
        diagnostic_text=status.text,
    )


_STATUS_CACHE: dict[MxStatus, bytes] = {}


def status_bytes(status: MxStatus) -> bytes:
    """Serialized MXSTATUS_PROXY (cached: ``MxStatus`` is immutable and a few are common)."""
    cached = _STATUS_CACHE.get(status)
    if cached is None:
        cached = status_to_pb(status).SerializeToString()
        if len(_STATUS_CACHE) < 4096:
            _STATUS_CACHE[status] = cached
    return cached


# -- values -------------------------------------------------------------------------------


def value_to_pb(value: object, data_type: int) -> pb.MxValue:
    """``MxValue`` of a Python value held by an attribute of COM type ``data_type``."""
    if value is None:
        return to_mx_value(None)
    try:
        mx = to_mx_value(value, wire_type(data_type))
    except ValueError:
        mx = to_mx_value(value)
    if data_type > 0:
        mx.data_type = data_type + _COM_OFFSET  # type: ignore[assignment]
        mx.raw_data_type = data_type
        if mx.HasField("array_value"):
            mx.array_value.element_data_type = data_type + _COM_OFFSET  # type: ignore[assignment]
    return mx


def _prefix(data_type: int, variant: int) -> bytes:
    return (
        b"\x08"
        + varint(data_type + _COM_OFFSET)
        + b"\x10"
        + varint(variant)
        + (b"\x20" + varint(data_type) if data_type else b"")
    )


_PACK_D = pack_d = struct.Struct("<d").pack
_PACK_F = pack_f = struct.Struct("<f").pack
_BOOL_PREFIX = _prefix(MX_BOOLEAN, pb.VT_BOOL)
_INT_PREFIX = _prefix(MX_INTEGER, pb.VT_I4)
_FLOAT_PREFIX = _prefix(MX_FLOAT, pb.VT_R4)
_DOUBLE_PREFIX = _prefix(MX_DOUBLE, pb.VT_R8)
_STRING_PREFIX = {t: _prefix(t, pb.VT_BSTR) for t in STRING_TYPES}
_FLOAT32_MAX = FLOAT32_MAX = 3.4028234663852886e38


def value_bytes(value: object, data_type: int) -> bytes:
    """Serialized ``MxValue``; scalars of the common types take a fast path."""
    if type(value) is float:
        if data_type == MX_DOUBLE and math.isfinite(value):
            return _DOUBLE_PREFIX + b"\x51" + _PACK_D(value)
        if data_type == MX_FLOAT and abs(value) <= _FLOAT32_MAX:
            return _FLOAT_PREFIX + b"\x4d" + _PACK_F(value)
    elif type(value) is int:
        if data_type == MX_INTEGER and -(2**31) <= value < 2**31:
            return _INT_PREFIX + b"\x38" + varint(value)
    elif type(value) is bool:
        if data_type == MX_BOOLEAN:
            return _BOOL_PREFIX + (b"\x30\x01" if value else b"\x30\x00")
    elif type(value) is str and data_type in STRING_TYPES:
        return _STRING_PREFIX[data_type] + _ld(b"\x5a", value.encode())
    return value_to_pb(value, data_type).SerializeToString()


class _TailCache:
    """The quality/timestamp/status fields shared by every sample of one scan tick."""

    key: tuple[float, int, MxStatus, tuple[MxStatus, ...] | None] | None = None
    value = b""


def statuses_field(tag: bytes, statuses: Sequence[MxStatus]) -> bytes:
    """A repeated ``MxStatusProxy`` field (``tag``: its key byte), one entry per record."""
    return b"".join(_ld(tag, status_bytes(s)) for s in statuses)


def sample_body(sample: TagSample) -> bytes:
    """value/quality/timestamp/statuses fields of an OnDataChangeEvent (cached per sample)."""
    body = sample.wire
    if body is None:
        records = sample.records
        key = (sample.timestamp, sample.quality, sample.status, records)
        if key == _TailCache.key:
            tail = _TailCache.value
        else:
            tail = (
                b"\x20"
                + varint(sample.quality)
                + _ld(b"\x2a", timestamp_bytes(sample.timestamp))
                + (
                    _ld(b"\x32", status_bytes(sample.status))
                    if records is None
                    else statuses_field(b"\x32", records)
                )
            )
            _TailCache.key, _TailCache.value = key, tail
        vb = value_bytes(sample.value, sample.data_type)
        body = b"\x1a" + varint(len(vb)) + vb + tail
        sample.wire = body
    return body


class _ReadTailCache:
    """The quality and timestamp fields of the last ReadBulk row encoded (the rows a read
    computes share its time)."""

    key: tuple[float, int] | None = None
    value = b""


def _read_body(sample: TagSample) -> bytes:
    """value/quality/timestamp fields of a ``BulkReadResult`` (cached per sample)."""
    body = sample.read_wire
    if body is None:
        vb = value_bytes(sample.value, sample.data_type)
        key = (sample.timestamp, sample.quality)
        if key == _ReadTailCache.key:
            tail = _ReadTailCache.value
        else:
            quality = sample.quality
            tail = (b"\x18" + varint(quality) if quality else b"") + _ld(
                b"\x22", timestamp_bytes(sample.timestamp)
            )
            _ReadTailCache.key, _ReadTailCache.value = key, tail
        body = b"\x12" + varint(len(vb)) + vb + tail
        sample.read_wire = body
    return body


_STATUS_FIELD5_CACHE: dict[MxStatus, bytes] = {}


def _status_field5(status: MxStatus) -> bytes:
    """A status as field 5 (``statuses`` of both BulkReadResult and BulkWriteResult)."""
    field = _STATUS_FIELD5_CACHE.get(status)
    if field is None:
        field = _ld(b"\x2a", status_bytes(status))
        if len(_STATUS_FIELD5_CACHE) < 4096:
            _STATUS_FIELD5_CACHE[status] = field
    return field


def read_reply_bytes(
    rows: Sequence[ReadResult], max_bytes: int | None = None, *, already: int = 0
) -> bytes:
    """Serialized ``BulkReadReply`` of ReadBulk rows, built from cached pieces.

    Fields are written in field-number order and zero values are left out, as the generated
    classes do; ``tests/sim`` checks that it parses to what they would build. Each row's
    value bytes are shared, not copied, until the final join, and the total is checked
    against ``max_bytes`` before that join: a tag read 30 times costs 30 references to one
    encoded value, never 30 copies, unless the reply is sent. ``already``: bytes of the same
    reply encoded before these rows (a reply built a chunk at a time).

    Raises:
        LimitError: the reply would be larger than ``max_bytes``.
    """
    out: list[bytes] = []
    append = out.append
    status_field = _STATUS_FIELD5_CACHE.get
    total = already
    for row in rows:
        parts = reference_field(row.reference)
        sample = row.sample
        body = b""
        if sample is not None:
            body = sample.read_wire or _read_body(sample)
        tail = b""
        for status in row.statuses:
            tail += status_field(status) or _status_field5(status)
        if sample is not None and not row.error:  # ReadResult.ok
            tail += b"\x30\x01"
        if row.was_cached:
            tail += b"\x38\x01"
        if row.error:
            tail += _ld(b"\x42", row.error.encode())
        size = len(parts) + len(body) + len(tail)
        head = varint(size)
        total += 1 + len(head) + size
        append(b"\x0a")
        append(head)
        append(parts)
        append(body)
        append(tail)
    check_read_reply(total, max_bytes)
    return b"".join(out)


def check_read_reply(total: int, max_bytes: int | None) -> None:
    """Refuse a ReadBulk reply of ``total`` bytes over ``max_bytes`` (before it is joined).

    Raises:
        LimitError: the reply would be larger than ``max_bytes``.
    """
    if max_bytes is not None and total > max_bytes:
        raise reply_too_large(
            total, max_bytes, "nothing was read; read fewer or smaller tags per call"
        )


def reference_field(reference: str) -> bytes:
    """The ``tag_address`` field of a ``BulkReadResult`` (nothing for an empty one)."""
    return _ld(b"\x0a", reference.encode()) if reference else b""


_GOOD_TAILS: dict[tuple[MxStatus, bool], bytes] = {}
_OK_TAILS = {
    cached: _status_field5(STATUS_OK) + b"\x30\x01" + (b"\x38\x01" if cached else b"")
    for cached in (False, True)
}


def good_read_row(field: bytes, sample: TagSample, cached: bool) -> bytes:
    """One whole ``results`` entry of ``BulkReadReply`` (tag, length, row) for a sample
    whose status is good: exactly what :func:`read_reply_bytes` writes for that row
    (``statuses`` = the sample's status, ``was_successful``, ``was_cached`` when cached, no
    error), with the tail of each status cached. ``field``: :func:`reference_field`."""
    status = sample.status
    # The common status first: no hashing of the status.
    tail = _OK_TAILS[cached] if status is STATUS_OK else _GOOD_TAILS.get((status, cached))
    if tail is None:
        tail = _status_field5(status) + b"\x30\x01" + (b"\x38\x01" if cached else b"")
        if len(_GOOD_TAILS) < 4096:
            _GOOD_TAILS[status, cached] = tail
    body = sample.read_wire or _read_body(sample)
    return b"\x0a" + varint(len(field) + len(body) + len(tail)) + field + body + tail


ROW_HEADS = [b"\x0a" + _VARINTS[i] for i in range(4096)]
"""``row_head(size)`` of the sizes up to 4,095."""


def row_head(size: int) -> bytes:
    """The tag and length of a ``results`` entry of ``size`` bytes."""
    return ROW_HEADS[size] if size < 4096 else b"\x0a" + varint(size)


class _FreshTailCache:
    """The tail of the last good row encoded by :func:`good_row_tail`."""

    key: tuple[float, int] | None = None
    value = b""


def good_row_tail(quality: int, timestamp: float) -> bytes:
    """What follows the value in a good, uncached ``results`` entry (quality, timestamp,
    the OK status, ``was_successful``): the rows one read computes share it."""
    key = (timestamp, quality)
    if key == _FreshTailCache.key:
        return _FreshTailCache.value
    tail = (
        (b"\x18" + varint(quality) if quality else b"")
        + _ld(b"\x22", timestamp_bytes(timestamp))
        + _OK_TAILS[False]
    )
    _FreshTailCache.key, _FreshTailCache.value = key, tail
    return tail


VARIABLE, FIXED_DOUBLE, FIXED_FLOAT, FIXED_BOOL = 1, 2, 3, 4
"""How a reference's rows splice their values (:func:`row_part`): a value of a ``FIXED_``
kind is its payload alone (the ``MxValue`` before it is the same for every value of the
type), any other its whole length-prefixed ``MxValue`` (:func:`value_piece`)."""

_FIXED = {
    MX_DOUBLE: (FIXED_DOUBLE, _DOUBLE_PREFIX + b"\x51", 8),
    MX_FLOAT: (FIXED_FLOAT, _FLOAT_PREFIX + b"\x4d", 4),
    MX_BOOLEAN: (FIXED_BOOL, _BOOL_PREFIX + b"\x30", 1),
}
FIXED_WIDTH = {kind: width for kind, _, width in _FIXED.values()}
"""The bytes of a value's payload, by ``FIXED_`` kind."""


def row_part(field: bytes, data_type: int) -> tuple[int, bytes]:
    """(kind, part) of the rows of a reference whose values are of ``data_type``: ``part``
    is what comes between a row's head and its value's piece (``field``, the
    ``tag_address``; for a ``FIXED_`` kind also the value's tag, length and ``MxValue`` up
    to its payload)."""
    fixed = _FIXED.get(data_type)
    if fixed is None:
        return VARIABLE, field + b"\x12"
    kind, prefix, width = fixed
    return kind, field + b"\x12" + varint(len(prefix) + width) + prefix


_PIECES: dict[tuple[int, type, object], bytes] = {}


def value_piece(value: object, data_type: int) -> bytes:
    """The length-prefixed ``MxValue`` of ``value_bytes(value, data_type)``; kept for
    strings and integers (a few words and small numbers are most values), up to 4,096."""
    kind = type(value)
    if kind is not str and kind is not int:
        vb = value_bytes(value, data_type)
        return varint(len(vb)) + vb
    key = (data_type, kind, value)
    piece = _PIECES.get(key)
    if piece is None:
        vb = value_bytes(value, data_type)
        piece = varint(len(vb)) + vb
        if len(_PIECES) < 4096 and len(piece) <= 256:
            _PIECES[key] = piece
    return piece


def int_prelude(width: int) -> bytes:
    """What comes before the varint of an Integer's value in its ``value_piece`` (the
    piece's length, the ``MxValue`` up to the value), for a varint of ``width`` bytes."""
    return varint(len(_INT_PREFIX) + 1 + width) + _INT_PREFIX + b"\x38"


INT_PIECES = [int_prelude(len(_VARINTS[i])) + _VARINTS[i] for i in range(1024)]
"""``value_piece(i, MX_INTEGER)`` of 0 to 1,023 (a ramp's and a random walk's values), by
index: a read's Integer rows look theirs up by one map in C (~46 kB)."""


def good_read_row_with_tail(field: bytes, sample: TagSample, tail: bytes) -> bytes:
    """:func:`good_read_row` of an uncached row, given its :func:`good_row_tail`."""
    body = b"\x12" + value_piece(sample.value, sample.data_type)
    return row_head(len(field) + len(body) + len(tail)) + field + body + tail


def write_reply_bytes(rows: Sequence[BulkRow]) -> bytes:
    """Serialized ``BulkWriteReply`` of bulk write rows (field order and zeros as
    :func:`read_reply_bytes`)."""
    out: list[bytes] = []
    append = out.append
    status_field = _STATUS_FIELD5_CACHE.get
    for row in rows:
        parts = b"\x08" + varint(row.item_handle) if row.item_handle else b""
        if row.ok:
            parts += b"\x10\x01"
        if row.error:
            parts += _ld(b"\x1a", row.error.encode())
        if row.hresult:
            parts += b"\x20" + varint(row.hresult)
        for status in row.statuses:
            parts += status_field(status) or _status_field5(status)
        append(b"\x0a")
        append(varint(len(parts)))
        append(parts)
    return b"".join(out)


# -- events -------------------------------------------------------------------------------


def _sample_pb(sample: TagSample) -> pb.BufferedSample:
    return pb.BufferedSample(
        value=value_to_pb(sample.value, sample.data_type),
        quality=sample.quality,
        timestamp=to_timestamp(sample.timestamp),
    )


def event_to_pb(event: MxRuntimeEvent, session_id: str, sequence: int, now: float) -> pb.MxEvent:
    """Reference (slow) translation of one runtime event to ``MxEvent``."""
    msg = pb.MxEvent(session_id=session_id, worker_sequence=sequence)
    msg.gateway_timestamp.CopyFrom(to_timestamp(now))
    msg.worker_timestamp.CopyFrom(to_timestamp(now))
    if isinstance(event, DataChange):
        s = event.sample
        msg.family = pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
        body = msg.on_data_change
        body.server_handle = event.server_handle
        body.item_handle = event.item_handle
        body.value.CopyFrom(value_to_pb(s.value, s.data_type))
        body.quality = s.quality
        body.timestamp.CopyFrom(to_timestamp(s.timestamp))
        body.statuses.extend(status_to_pb(r) for r in s.statuses)
    elif isinstance(event, WriteComplete):
        msg.family = pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE
        msg.on_write_complete.server_handle = event.server_handle
        msg.on_write_complete.item_handle = event.item_handle
        msg.on_write_complete.statuses.extend(status_to_pb(r) for r in event.statuses)
    elif isinstance(event, OperationComplete):
        msg.family = pb.MX_EVENT_FAMILY_OPERATION_COMPLETE
        msg.operation_complete.server_handle = event.server_handle
        msg.operation_complete.item_handle = event.item_handle
        msg.operation_complete.statuses.extend(status_to_pb(r) for r in event.statuses)
    elif isinstance(event, BufferedDataChange):
        msg.family = pb.MX_EVENT_FAMILY_ON_BUFFERED_DATA_CHANGE
        b = msg.on_buffered_data_change
        b.server_handle = event.server_handle
        b.item_handle = event.item_handle
        b.data_type = event.data_type + _COM_OFFSET  # type: ignore[assignment]
        b.samples.extend(_sample_pb(s) for s in event.samples)
        b.statuses.extend(status_to_pb(r) for r in event.statuses)
    elif isinstance(event, AlarmTransition):
        msg.family = pb.MX_EVENT_FAMILY_ON_ALARM_TRANSITION
        msg.on_alarm_transition.CopyFrom(alarm_transition_to_pb(event))
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown event {type(event).__name__}")
    return msg


def alarm_snapshot_to_pb(alarm: AlarmSnapshot) -> pb.ActiveAlarmSnapshot:
    """``ActiveAlarmSnapshot`` of one alarm of the active set."""
    return pb.ActiveAlarmSnapshot(
        alarm_guid=alarm.alarm_guid,
        alarm_full_reference=alarm.full_reference,
        source_object_reference=alarm.source_object,
        alarm_type_name=alarm.type_name,
        state=alarm.state,  # type: ignore[arg-type]
        raw_severity=alarm.severity,
        original_raise_time=to_timestamp(alarm.raise_time),
        last_transition_time=to_timestamp(alarm.last_transition_time),
        category=alarm.category,
        description=alarm.description,
        current_value=value_to_pb(alarm.value, alarm.data_type),
        limit_value=value_to_pb(alarm.limit, alarm.data_type),
        operator_user=alarm.operator_user,
    )


def alarm_transition_to_pb(transition: AlarmTransition) -> pb.OnAlarmTransitionEvent:
    """``OnAlarmTransitionEvent`` of one alarm change."""
    alarm = transition.alarm
    return pb.OnAlarmTransitionEvent(
        alarm_guid=alarm.alarm_guid,
        alarm_full_reference=alarm.full_reference,
        source_object_reference=alarm.source_object,
        alarm_type_name=alarm.type_name,
        transition_kind=transition.kind,  # type: ignore[arg-type]
        state=alarm.state,  # type: ignore[arg-type]
        raw_severity=alarm.severity,
        original_raise_time=to_timestamp(alarm.raise_time),
        transition_time=to_timestamp(alarm.last_transition_time),
        operator_user=alarm.operator_user,
        operator_comment=transition.comment,
        category=alarm.category,
        description=alarm.description,
        current_value=value_to_pb(alarm.value, alarm.data_type),
        limit_value=value_to_pb(alarm.limit, alarm.data_type),
    )


ENCODER_CACHE_ENTRIES = 65_536
"""Entries each of a session's two encoder caches holds before it starts over (about 250
bytes an entry: at most some 30 MiB a session for both)."""


class EventEncoder:
    """Encodes a session's runtime events into framed ``MxEventBatch.events`` entries.

    Each output item is ``0x0A <len> <MxEvent bytes>``: ready to be concatenated into an
    ``MxEventBatch``; :func:`unframe` recovers the bare ``MxEvent`` for ``StreamEvents``.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._head = _ld(b"\x0a", session_id.encode())
        # Keyed by one int made of the two handles (the contract's int32s), with bytes as
        # values: a dict of atomic keys and values is never tracked by the garbage
        # collector, where a tuple key per item was one more object for every young
        # collection to walk (100k of them for a session of 100k items).
        self._items: dict[int, bytes] = {}
        self._completions: dict[int, bytes] = {}
        """Successful completions only (the body: handles and status), with no records of
        their own: an int key cannot name a failure's status, and failures are rare."""

    def encode(
        self, events: Sequence[MxRuntimeEvent], first_sequence: int, now: float
    ) -> list[bytes]:
        """Frame ``events`` with contiguous sequences starting at ``first_sequence``."""
        ts = timestamp_bytes(now)
        stamps = _ld(b"\x22", ts) + _ld(b"\x2a", ts)
        head = self._head
        items = self._items
        completions = self._completions
        out: list[bytes] = []
        append = out.append
        seq = first_sequence
        fixed = len(head) + 1 + 2 + len(stamps) + 1  # session, seq tag, family, stamps, body tag
        # The pieces every OnDataChange of this call shares, joined once.
        head_seq = head + b"\x10"
        family_stamps_body = b"\x18\x01" + stamps + b"\x32"
        for event in events:
            if type(event) is DataChange:
                sample = event.sample
                body = sample.wire or sample_body(sample)
                key = (event.server_handle << 32) | (event.item_handle & 0xFFFFFFFF)
                handles = items.get(key)
                if handles is None:
                    handles = (
                        b"\x08" + varint(event.server_handle) + b"\x10" + varint(event.item_handle)
                    )
                    if len(items) > ENCODER_CACHE_ENTRIES:
                        items.clear()
                    items[key] = handles
                body_len = len(handles) + len(body)
                seq_bytes = varint(seq)
                body_len_bytes = varint(body_len)
                size = fixed + len(seq_bytes) + len(body_len_bytes) + body_len
                append(
                    b"".join(
                        (
                            b"\x0a",
                            varint(size),
                            head_seq,
                            seq_bytes,
                            family_stamps_body,
                            body_len_bytes,
                            handles,
                            body,
                        )
                    )
                )
            elif type(event) is WriteComplete or type(event) is OperationComplete:
                # The body (handles, status) is the same for every completion of one item
                # with one outcome, so a success's is cached whole.
                write = type(event) is WriteComplete
                records = event.records
                ok = event.status is STATUS_OK and records is None
                ckey = (
                    ((event.server_handle << 32) | (event.item_handle & 0xFFFFFFFF)) << 1
                ) | write
                known = completions.get(ckey) if ok else None
                if known is None:
                    cbody = (
                        b"\x08"
                        + varint(event.server_handle)
                        + b"\x10"
                        + varint(event.item_handle)
                        + (
                            _ld(b"\x1a", status_bytes(event.status))
                            if records is None
                            else statuses_field(b"\x1a", records)
                        )
                    )
                    # ON_WRITE_COMPLETE (2) in field 7, OPERATION_COMPLETE (3) in field 8
                    body = (b"\x3a" if write else b"\x42") + varint(len(cbody)) + cbody
                    if ok:
                        if len(completions) > ENCODER_CACHE_ENTRIES:
                            completions.clear()
                        completions[ckey] = body
                else:
                    body = known
                family = b"\x18\x02" if write else b"\x18\x03"
                seq_bytes = varint(seq)
                size = len(head) + 1 + len(seq_bytes) + 2 + len(stamps) + len(body)
                append(
                    b"".join(
                        (b"\x0a", varint(size), head, b"\x10", seq_bytes, family, stamps, body)
                    )
                )
            else:
                data = event_to_pb(event, self.session_id, seq, now).SerializeToString()
                append(b"\x0a" + varint(len(data)) + data)
            seq += 1
        return out


def unframe(framed: bytes) -> bytes:
    """The ``MxEvent`` bytes inside one framed batch entry."""
    i = 1
    while framed[i] & 0x80:
        i += 1
    return framed[i + 1 :]


def fault_event(
    session_id: str,
    kind: int,
    message: str,
    first_missing: int = 0,
    missing: int = 0,
    *,
    now: float,
) -> pb.MxEvent:
    """A ``stream_fault`` notice (worker_sequence 0: not part of the sequence)."""
    msg = pb.MxEvent(
        session_id=session_id,
        worker_sequence=0,
        family=pb.MX_EVENT_FAMILY_STREAM_FAULT,
        stream_fault=pb.StreamFaultEvent(
            kind=kind,  # type: ignore[arg-type]
            message=message,
            first_missing_sequence=first_missing,
            missing_count=missing,
        ),
    )
    msg.gateway_timestamp.CopyFrom(to_timestamp(now))
    msg.worker_timestamp.CopyFrom(to_timestamp(now))
    return msg
