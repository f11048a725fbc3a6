"""BoundedQueue (the Subscription's value queue) behaves as asyncio.Queue does: each
scenario runs on both and must give the same result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mxgateway._boundedqueue import BoundedQueue

KINDS = [asyncio.Queue, BoundedQueue]


@pytest.mark.parametrize("kind", KINDS)
async def test_fifo_bound_and_the_nowait_errors(kind: Any) -> None:
    q = kind(3)
    assert q.empty() and not q.full() and q.qsize() == 0
    for i in range(3):
        q.put_nowait(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(3)
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


@pytest.mark.parametrize("kind", KINDS)
async def test_waiting_getters_are_served_in_order(kind: Any) -> None:
    q = kind(10)
    got: list[tuple[int, int]] = []

    async def getter(n: int) -> None:
        got.append((n, await q.get()))

    tasks = [asyncio.ensure_future(getter(n)) for n in range(3)]
    await asyncio.sleep(0)
    for item in (10, 11, 12):
        q.put_nowait(item)
    await asyncio.gather(*tasks)
    assert got == [(0, 10), (1, 11), (2, 12)]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_putter_waits_for_room_and_keeps_the_order(kind: Any) -> None:
    q = kind(2)
    q.put_nowait(1)
    q.put_nowait(2)
    putter = asyncio.ensure_future(q.put(3))
    await asyncio.sleep(0)
    assert not putter.done()
    assert q.get_nowait() == 1
    await putter
    assert [await q.get(), await q.get()] == [2, 3]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_woken_getter_cancelled_before_its_turn_passes_the_item_on(kind: Any) -> None:
    q = kind(10)
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("x")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "x"
    assert first.cancelled()
    assert q.empty()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cancelled_waiting_putter_queues_nothing(kind: Any) -> None:
    q = kind(1)
    q.put_nowait(1)
    putter = asyncio.ensure_future(q.put(2))
    other = asyncio.ensure_future(q.put(3))
    await asyncio.sleep(0)
    putter.cancel()
    await asyncio.sleep(0)
    assert q.get_nowait() == 1
    await asyncio.wait_for(other, 5)
    assert [q.get_nowait()] == [3] and q.empty()


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BoundedQueue(0)


async def test_offer_and_poll_are_the_nowait_calls_without_raising() -> None:
    q: BoundedQueue[int] = BoundedQueue(2)
    nothing = object()
    assert q.poll(nothing) is nothing
    assert q.offer(1) and q.offer(2) and not q.offer(3)
    assert q.qsize() == 2
    getter = asyncio.ensure_future(q.put(4))  # waits for room
    await asyncio.sleep(0)
    assert q.poll(nothing) == 1  # makes room: the waiting putter is woken
    await asyncio.wait_for(getter, 5)
    assert [q.poll(nothing), q.poll(nothing), q.poll(nothing)] == [2, 4, nothing]
    waiting = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert q.offer(5)  # wakes the waiting getter
    assert await asyncio.wait_for(waiting, 5) == 5
