"""The event decoder's fast paths agree with the reference conversions in _values."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from mxgateway import DataChange, EventGap, to_mx_value
from mxgateway._events import _Tracker, _ts, decode_events
from mxgateway._values import from_mx_value, timestamp_to_datetime
from mxgateway.generated import mxaccess_gateway_pb2 as pb


@given(
    seconds=st.one_of(
        st.integers(min_value=-62135596800, max_value=253402300799),
        st.integers(min_value=1_500_000_000, max_value=2_100_000_000),
        st.sampled_from([0, 7_999_999_999, 8_000_000_000]),
    ),
    nanos=st.one_of(st.integers(0, 999_999_999), st.sampled_from([0, 999, 999_999_999, 500_000])),
)
def test_timestamp_fast_path_matches_reference(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    assert _ts(ts) == timestamp_to_datetime(ts)
    ev = pb.MxEvent(worker_sequence=1, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
    ev.on_data_change.timestamp.CopyFrom(ts)
    out: list[object] = []
    decode_events([ev], out, _Tracker(None))  # type: ignore[arg-type]
    (dc,) = out
    assert isinstance(dc, DataChange)
    assert dc.timestamp == timestamp_to_datetime(ts)
    assert dc.timestamp.tzinfo is not None


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1_764_000_000, 1_764_000_001, 7_999_999_999, 9_000_000_000]),
            st.sampled_from([0, 999, 1_000, 1_999, 500_000_000, 999_999_999]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_timestamp_cache_gives_each_timestamp_its_own_value(pairs: list[tuple[int, int]]) -> None:
    # Repeated, alternating and same-microsecond timestamps (nanos 1,000 and 1,999): the
    # one-entry cache of the last conversion answers exactly what a fresh conversion does.
    for seconds, nanos in pairs:
        ts = Timestamp(seconds=seconds, nanos=nanos)
        assert _ts(ts) == timestamp_to_datetime(ts)


VALUES = [
    7,
    -(2**40),
    2.5,
    True,
    "text",
    b"\x00\x01",
    datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc),
    timedelta(seconds=90),
    [1, 2, 3],
    ["a", "b"],
    None,
]


def test_data_change_values_match_from_mx_value() -> None:
    events = []
    for i, value in enumerate(VALUES, start=1):
        ev = pb.MxEvent(worker_sequence=i, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
        ev.on_data_change.value.CopyFrom(to_mx_value(value))
        events.append(ev)
    out: list[object] = []
    decode_events(events, out, _Tracker(None))  # type: ignore[arg-type]
    assert [e.value for e in out] == [from_mx_value(ev.on_data_change.value) for ev in events]  # type: ignore[attr-defined]
    assert [e.value for e in out] == VALUES  # type: ignore[attr-defined]


def test_tracker_drops_duplicates_and_reports_holes() -> None:
    def ev(seq: int) -> pb.MxEvent:
        return pb.MxEvent(worker_sequence=seq, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)

    tracker = _Tracker(3)
    out: list[object] = []
    decode_events([ev(2), ev(3), ev(4), ev(4), ev(7), ev(8)], out, tracker)  # type: ignore[arg-type]
    kinds = [(type(e).__name__, getattr(e, "worker_sequence", None)) for e in out]
    assert kinds == [
        ("DataChange", 4),
        ("EventGap", None),
        ("DataChange", 7),
        ("DataChange", 8),
    ]
    gap = out[1]
    assert isinstance(gap, EventGap) and (gap.first_missing_sequence, gap.missing_count) == (5, 2)
    assert (tracker.last, tracker.duplicates, tracker.gaps, tracker.missed) == (8, 3, 1, 2)


def test_data_change_without_family_is_still_decoded() -> None:
    ev = pb.MxEvent(worker_sequence=1)  # family left UNSPECIFIED by a sloppy server
    ev.on_data_change.item_handle = 4
    ev.on_data_change.value.string_value = "x"
    out: list[object] = []
    decode_events([ev], out, _Tracker(None))  # type: ignore[arg-type]
    (dc,) = out
    assert isinstance(dc, DataChange) and (dc.item_handle, dc.value) == (4, "x")


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.sampled_from([0.0, -0.0, 0, False, True, "", "0", b""]),
    )
)
def test_value_fast_path_matches_from_mx_value(value: object) -> None:
    # The decoder reads double_value / int32_value before asking WhichOneof: zero, -0.0,
    # NaN and the other kinds must come out exactly as the reference conversion gives them.
    ev = pb.MxEvent(worker_sequence=1, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
    if isinstance(value, float):  # as a gateway may send it (to_mx_value refuses NaN/inf)
        ev.on_data_change.value.double_value = value
    else:
        ev.on_data_change.value.CopyFrom(to_mx_value(value))
    out: list[object] = []
    decode_events([ev], out, _Tracker(None))  # type: ignore[arg-type]
    (dc,) = out
    assert isinstance(dc, DataChange)
    expected = from_mx_value(ev.on_data_change.value)
    assert type(dc.value) is type(expected)
    assert repr(dc.value) == repr(expected)  # NaN and -0.0 compare by their repr


def test_a_data_change_built_by_hand_keeps_its_event() -> None:
    ev = pb.MxEvent(worker_sequence=3, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
    ev.on_data_change.timestamp.seconds = 1_700_000_000
    ev.on_data_change.statuses.add(success=1)
    dc = DataChange(3, 1, 2, 4.5, 192, None, ev)
    assert dc.raw is ev
    assert dc.statuses[0].success == 1
    assert dc.timestamp == datetime.fromtimestamp(1_700_000_000, timezone.utc)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1_764_000_000, 1_764_000_001, 9_000_000_000]),
            st.sampled_from([0, 999, 1_000, 1_999, 500_000_000]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_each_decoded_change_gets_its_own_timestamp(pairs: list[tuple[int, int]]) -> None:
    # The decoder converts a timestamp only when it differs from the previous event's:
    # runs, alternations and same-microsecond nanos still give each event its own value.
    events = []
    for i, (seconds, nanos) in enumerate(pairs, start=1):
        ev = pb.MxEvent(worker_sequence=i, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
        ev.on_data_change.timestamp.seconds = seconds
        ev.on_data_change.timestamp.nanos = nanos
        events.append(ev)
    out: list[object] = []
    decode_events(events, out, _Tracker(None))  # type: ignore[arg-type]
    assert [dc.timestamp for dc in out] == [  # type: ignore[attr-defined]
        timestamp_to_datetime(ev.on_data_change.timestamp) for ev in events
    ]


def test_decoded_changes_are_what_the_constructor_makes() -> None:
    # The decoder fills DataChange's slots itself (without __init__): every field, raw,
    # statuses, equality and repr must come out as for a DataChange built the plain way.
    events = []
    for i, value in enumerate([2.5, 7, "text", 0.0], start=1):
        ev = pb.MxEvent(worker_sequence=i, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
        d = ev.on_data_change
        d.server_handle, d.item_handle, d.quality = 4, 10 + i, 192 if i % 2 else 0
        d.value.CopyFrom(to_mx_value(value))
        d.timestamp.seconds, d.timestamp.nanos = 1_764_000_000 + i // 2, 5_000 * i
        d.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_OK)
        events.append(ev)
    out: list[object] = []
    decode_events(events, out, _Tracker(None))  # type: ignore[arg-type]
    for dc, ev in zip(out, events, strict=True):
        d = ev.on_data_change
        plain = DataChange(
            ev.worker_sequence,
            d.server_handle,
            d.item_handle,
            from_mx_value(d.value),
            d.quality,
            None,
            ev,
        )
        assert type(dc) is DataChange
        assert dc == plain and repr(dc) == repr(plain)
        assert (dc.server_handle, dc.item_handle, dc.is_good) == (
            plain.server_handle,
            plain.item_handle,
            plain.is_good,
        )
        assert dc.raw == plain.raw and list(dc.statuses) == list(plain.statuses)


# -- the stream's view of the messages (mxgateway._eventwire) -----------------------------


def _every_kind_of_event() -> list[pb.MxEvent]:
    """One batch as a gateway may send it: changes of every value kind with shared,
    alternating and unset timestamps and several statuses, and every other family."""
    events: list[pb.MxEvent] = []
    stamps = [(1_764_000_000, 5_000), (1_764_000_000, 5_000), (1_764_000_001, 0), None]
    for i, value in enumerate(VALUES, start=1):
        ev = pb.MxEvent(
            session_id="s-1", worker_sequence=i, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
        )
        ev.gateway_timestamp.seconds = 1_764_000_002
        ev.worker_timestamp.seconds, ev.worker_timestamp.nanos = 1_764_000_002, 7_000 + i
        d = ev.on_data_change
        d.server_handle, d.item_handle, d.quality = 3, 100 + i, 192 if i % 3 else 24
        d.value.CopyFrom(to_mx_value(value))
        stamp = stamps[i % len(stamps)]
        if stamp is not None:
            d.timestamp.seconds, d.timestamp.nanos = stamp
        d.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_OK)
        if i % 2:
            d.statuses.add(success=0, category=pb.MX_STATUS_CATEGORY_COMMUNICATION_ERROR)
        events.append(ev)
    seq = len(events)
    nofamily = pb.MxEvent(worker_sequence=seq + 1)  # a data change known only by its body
    nofamily.on_data_change.item_handle = 9
    nofamily.on_data_change.value.double_value = 1.5
    nofamily.on_data_change.timestamp.seconds = 1_764_000_003
    write = pb.MxEvent(worker_sequence=seq + 2, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE)
    write.on_write_complete.item_handle = 101
    write.on_write_complete.statuses.add(success=1)
    op = pb.MxEvent(worker_sequence=seq + 3, family=pb.MX_EVENT_FAMILY_OPERATION_COMPLETE)
    op.operation_complete.item_handle = 102
    buffered = pb.MxEvent(
        worker_sequence=seq + 4, family=pb.MX_EVENT_FAMILY_ON_BUFFERED_DATA_CHANGE
    )
    sample = buffered.on_buffered_data_change.samples.add(quality=192)
    sample.value.CopyFrom(to_mx_value(4.25))
    sample.timestamp.seconds = 1_764_000_004
    alarm = pb.MxEvent(worker_sequence=seq + 5)
    alarm.on_alarm_transition.alarm_full_reference = "Tank.Level.Hi"
    fault = pb.MxEvent(worker_sequence=0, family=pb.MX_EVENT_FAMILY_STREAM_FAULT)
    fault.stream_fault.kind = pb.STREAM_FAULT_KIND_REPLAY_GAP
    fault.stream_fault.first_missing_sequence = seq + 6
    fault.stream_fault.missing_count = 2
    after = pb.MxEvent(worker_sequence=seq + 8, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
    after.on_data_change.value.int32_value = 5
    events += [nofamily, write, op, buffered, alarm, fault, after, after]  # a duplicate too
    return events


def _described(event: object) -> tuple[object, ...]:
    """An event's type, public fields and raw message (what a caller can see of it)."""
    fields = tuple(
        (name, getattr(event, name))
        for name in sorted(dir(event))
        if not name.startswith("_")
        and name not in ("raw", "statuses", "samples")
        and not callable(getattr(event, name))
    )
    raw = getattr(event, "raw", None)
    statuses = getattr(event, "statuses", None)
    return (
        type(event),
        fields,
        raw.SerializeToString(deterministic=True) if raw is not None else None,
        type(raw),
        [s.SerializeToString() for s in statuses] if statuses is not None else None,
        repr(event),
    )


def test_the_view_of_a_batch_decodes_to_the_same_events() -> None:
    # Session.events() parses each message into the view (data-change timestamps kept as
    # bytes); what comes out must be exactly what decoding the generated classes gives:
    # every value kind, timestamp, status, family, gap and duplicate, raw included.
    from mxgateway._eventwire import EventBatchView

    batch = pb.MxEventBatch(events=_every_kind_of_event())
    data = batch.SerializeToString()
    full_out: list[object] = []
    full_tracker = _Tracker(None)
    decode_events(pb.MxEventBatch.FromString(data).events, full_out, full_tracker)  # type: ignore[arg-type]
    view_out: list[object] = []
    view_tracker = _Tracker(None)
    view = EventBatchView.FromString(data)
    decode_events(view.events, view_out, view_tracker)
    assert len(view_out) == len(full_out) == len(batch.events) - 1  # the duplicate dropped
    assert [_described(e) for e in view_out] == [_described(e) for e in full_out]
    for event in view_out:  # every message a caller is handed is the generated class
        raw = getattr(event, "raw", None)
        assert raw is None or type(raw) is pb.MxEvent
    changes = [e for e in view_out if isinstance(e, DataChange)]
    assert changes[0].raw == batch.events[0]
    assert [s.category for s in changes[0].statuses] == [
        s.category for s in batch.events[0].on_data_change.statuses
    ]
    for name in ("last", "duplicates", "gaps", "missed"):
        assert getattr(view_tracker, name) == getattr(full_tracker, name)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1, 1_764_000_000, 1_764_000_001, 7_999_999_999, 9_000_000_000]),
            st.sampled_from([0, 999, 1_000, 1_999, 500_000_000, 999_999_999]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_view_timestamps_match_the_generated_ones(pairs: list[tuple[int, int]]) -> None:
    from mxgateway._eventwire import EventBatchView

    batch = pb.MxEventBatch()
    for i, (seconds, nanos) in enumerate(pairs, start=1):
        ev = batch.events.add(worker_sequence=i, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
        ev.on_data_change.timestamp.seconds = seconds
        ev.on_data_change.timestamp.nanos = nanos
    out: list[object] = []
    decode_events(EventBatchView.FromString(batch.SerializeToString()).events, out, _Tracker(None))
    assert [dc.timestamp for dc in out] == [  # type: ignore[attr-defined]
        timestamp_to_datetime(ev.on_data_change.timestamp) for ev in batch.events
    ]


def test_the_view_decodes_values_newer_than_the_bindings_alike() -> None:
    # Session.events() reads through the view: an event with a family, a value type and
    # a status category newer than the bindings, and a field they do not know, decodes as
    # the generated classes decode it, and its raw message keeps the unknown field.
    from mxgateway._eventwire import EventBatchView

    newer = pb.MxEvent(worker_sequence=1, family=99)  # type: ignore[arg-type]
    newer.on_data_change.item_handle = 5
    newer.on_data_change.value.double_value = 2.5
    newer.on_data_change.timestamp.seconds = 1_764_000_000
    typed = pb.MxEvent(worker_sequence=2, family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE)
    typed.on_data_change.item_handle = 6
    typed.on_data_change.value.data_type = 77  # type: ignore[assignment]
    typed.on_data_change.statuses.add(success=0, category=55)  # type: ignore[arg-type]
    unknown = b"\xb8\x3e\x07"  # field 999, varint 7: a field newer than the bindings
    first = newer.SerializeToString() + unknown
    data = b"".join(b"\x0a" + bytes([len(m)]) + m for m in (first, typed.SerializeToString()))
    full_out: list[object] = []
    decode_events(pb.MxEventBatch.FromString(data).events, full_out, _Tracker(None))  # type: ignore[arg-type]
    view_out: list[object] = []
    decode_events(EventBatchView.FromString(data).events, view_out, _Tracker(None))
    assert len(view_out) == 2
    assert [_described(e) for e in view_out] == [_described(e) for e in full_out]
    raw = view_out[0].raw  # type: ignore[attr-defined]
    assert raw.family == 99 and raw.SerializeToString().endswith(unknown)
    assert [s.category for s in view_out[1].statuses] == [55]  # type: ignore[attr-defined]
