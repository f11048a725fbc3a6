"""Write waiters: an ``OnWriteComplete`` answers one write only, even when delivered twice.

A new correlation stream may start from an earlier point than the last completion the
session already matched (a stream closed with events read ahead but never handed to a
caller): the replayed completion must not answer a later write of the same item. A real
gateway replays only on such timing, so the waiters are fed decoded events directly.
"""

from __future__ import annotations

from mxgateway import WriteComplete
from mxgateway._writes import WriteWaiters
from mxgateway.generated import mxaccess_gateway_pb2 as pb


def _completion(sequence: int, item: int, detail: int) -> WriteComplete:
    status = pb.MxStatusProxy(
        success=0, category=pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, detail=detail
    )
    return WriteComplete(sequence, 1, item, [status], pb.MxEvent(worker_sequence=sequence))


async def test_a_replayed_completion_does_not_answer_a_later_write() -> None:
    waiters = WriteWaiters()
    first = waiters.expect(1, 7)
    waiters.observe([_completion(10, 7, detail=20)])
    assert first.future.result().statuses[0].detail == 20

    second = waiters.expect(1, 7)  # a new stream: it knows no sequence yet (after=0)
    waiters.observe([_completion(10, 7, detail=20)])  # the first write's, delivered again
    assert not second.future.done()
    waiters.observe([_completion(12, 7, detail=1005)])
    assert second.future.result().statuses[0].detail == 1005


async def test_two_writes_in_flight_take_two_completions_in_order() -> None:
    waiters = WriteWaiters()
    first, second = waiters.expect(1, 7), waiters.expect(1, 7)
    other = waiters.expect(1, 8)
    waiters.observe([_completion(5, 7, detail=1), _completion(5, 7, detail=1)])  # a duplicate
    assert first.future.result().worker_sequence == 5 and not second.future.done()
    waiters.observe([_completion(6, 8, detail=3), _completion(9, 7, detail=2)])
    assert second.future.result().statuses[0].detail == 2
    assert other.future.result().statuses[0].detail == 3
    assert len(waiters) == 0
