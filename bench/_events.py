"""Realistic pre-built events, shared by the replay server and the parse ceilings."""

from __future__ import annotations

from mxgateway.generated import mxaccess_gateway_pb2 as pb

SESSION_ID = "session-" + "b" * 32
"""The one session the replay server knows (its OpenSession always answers it)."""

BASE_SECONDS = 1_764_000_000


def make_event(seq: int, *, values: str = "double", session_id: str = SESSION_ID) -> pb.MxEvent:
    """One OnDataChange event as a gateway sends it (value, quality, timestamps, one status)."""
    ev = pb.MxEvent(
        session_id=session_id,
        worker_sequence=seq,
        family=pb.MX_EVENT_FAMILY_ON_DATA_CHANGE,
    )
    ns = seq * 1000
    ev.gateway_timestamp.seconds = BASE_SECONDS + ns // 1_000_000_000
    ev.gateway_timestamp.nanos = ns % 1_000_000_000 + 500
    ev.worker_timestamp.seconds = BASE_SECONDS + ns // 1_000_000_000
    ev.worker_timestamp.nanos = ns % 1_000_000_000
    dc = ev.on_data_change
    dc.server_handle = 1
    dc.item_handle = 1 + seq % 100
    v = dc.value
    if values == "string":
        v.data_type = pb.MX_DATA_TYPE_STRING
        v.variant_type = pb.VT_BSTR
        v.raw_data_type = 5
        v.string_value = f"Batch-{seq:08d}"
    elif values == "int":
        v.data_type = pb.MX_DATA_TYPE_INTEGER
        v.variant_type = pb.VT_I4
        v.raw_data_type = 2
        v.int32_value = seq
    else:
        v.data_type = pb.MX_DATA_TYPE_DOUBLE
        v.variant_type = pb.VT_R8
        v.raw_data_type = 4
        v.double_value = seq * 0.25
    dc.quality = 192
    dc.timestamp.seconds = ev.worker_timestamp.seconds
    dc.timestamp.nanos = ev.worker_timestamp.nanos
    st = dc.statuses.add()
    st.success = 1
    st.category = pb.MX_STATUS_CATEGORY_OK
    st.detected_by = pb.MX_STATUS_SOURCE_RESPONDING_LMX
    st.raw_category = 0
    st.raw_detected_by = 1
    return ev


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def batch_bytes(serialized_events: list[bytes]) -> bytes:
    """An ``MxEventBatch`` built by concatenating already serialized events (field 1)."""
    return b"".join(b"\x0a" + _varint(len(e)) + e for e in serialized_events)


def stream_fault_bytes(kind: int, message: str, session_id: str = SESSION_ID) -> bytes:
    """A serialized stream notice (worker_sequence 0)."""
    ev = pb.MxEvent(
        session_id=session_id, worker_sequence=0, family=pb.MX_EVENT_FAMILY_STREAM_FAULT
    )
    ev.stream_fault.kind = kind  # type: ignore[assignment]
    ev.stream_fault.message = message
    return ev.SerializeToString()
