"""Enum numbers newer than the bindings, from a fake gateway on loopback, through the
library's decoders: typed events and errors name them ``UNKNOWN(n)`` and never raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from client_fakes import SESSION_ID, FakeGateway, attached

from mxgateway import (
    DataChange,
    StreamFault,
    WriteComplete,
    describe_status,
    enum_name,
    status_failed,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb


def _newer_batch() -> pb.MxEventBatch:
    status = pb.MxStatusProxy(success=1, category=42, detected_by=17, detail=3)  # type: ignore[arg-type]
    change = pb.MxEvent(session_id=SESSION_ID, worker_sequence=1, family=99)  # type: ignore[arg-type]
    change.on_data_change.item_handle = 2
    change.on_data_change.value.int32_value = 5
    change.on_data_change.statuses.append(status)
    done = pb.MxEvent(session_id=SESSION_ID, worker_sequence=2, family=99)  # type: ignore[arg-type]
    done.on_write_complete.item_handle = 2
    done.on_write_complete.statuses.append(status)
    notice = pb.MxEvent(session_id=SESSION_ID, family=99)  # type: ignore[arg-type]
    notice.stream_fault.kind = 77  # type: ignore[assignment]
    unknown_body = pb.MxEvent(session_id=SESSION_ID, worker_sequence=3, family=98)  # type: ignore[arg-type]
    return pb.MxEventBatch(events=[change, done, notice, unknown_body])


async def test_typed_events_tolerate_newer_numbers() -> None:
    fake = FakeGateway()

    async def batches(request: pb.StreamEventsRequest, attempt: int) -> AsyncIterator[object]:
        yield _newer_batch()
        await asyncio.Event().wait()

    fake.batches_plan = batches
    async with attached(fake) as session, session.events() as events:
        got = [await asyncio.wait_for(events.__anext__(), 10) for _ in range(3)]
    change, done, notice = got
    assert isinstance(change, DataChange) and change.value == 5
    assert isinstance(done, WriteComplete) and not done.succeeded  # unknown = failure
    assert isinstance(notice, StreamFault) and notice.kind_name == "UNKNOWN(77)"
    (status,) = done.statuses
    assert status_failed(status)
    assert describe_status(status).startswith("UNKNOWN(42) detected by UNKNOWN(17), detail 3")
    assert enum_name(pb.MxEventFamily, done.raw.family) == "UNKNOWN(99)"
