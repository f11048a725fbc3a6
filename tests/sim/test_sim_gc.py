"""The simulator's garbage-collector policy (``mxgateway_sim._gcpolicy``) and what its items
cost the collector.

A collection walks every tracked object of its generations in one piece on the event loop,
so what a session's items leave for it to walk is how long the loop stops
(``bench/loop_stall.py`` measures that; nothing here is timed).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import grpc
import pytest
from simhelpers import Gw

from mxgateway_sim import GatewaySimulator, InMemoryCatalog
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_BOOLEAN, MX_DOUBLE, MX_INTEGER, MX_STRING, MX_TIME
from mxgateway_sim._gcpolicy import THRESHOLDS, server_thresholds

ATTRIBUTES = 2_000
TYPES = (MX_BOOLEAN, MX_INTEGER, MX_DOUBLE, MX_STRING, MX_TIME)


def _catalog() -> InMemoryCatalog:
    """2,000 distinct attributes of every kind of value model (ramps, walks, toggles...)."""
    return InMemoryCatalog(
        tag(f"Obj{i // 20:03d}", f"Attr{i:04d}", TYPES[i % len(TYPES)]) for i in range(ATTRIBUTES)
    )


@pytest.fixture
async def gateway() -> AsyncIterator[Gw]:
    async with (
        GatewaySimulator(catalog=_catalog(), scan_interval_ms=60_000, flaky_one_in=0) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        yield Gw(channel, sim.api_key)


def _tracked() -> int:
    """Objects the collector tracks in its generations (frozen ones are not walked)."""
    gc.collect()
    return len(gc.get_objects())


async def test_items_leave_few_objects_for_the_collector(gateway: Gw) -> None:
    sid = await gateway.open()
    sh = await gateway.register(sid)
    refs = [f"Obj{i // 20:03d}.Attr{i:04d}" for i in range(ATTRIBUTES)]
    before = _tracked()
    reply = await gateway.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=refs)
    handles = [r.item_handle for r in reply.bulk_subscribe.results]
    assert len(handles) == ATTRIBUTES and all(handles)
    added = _tracked() - before
    # Each item of a distinct attribute: the item, the attribute's model, its current
    # sample and the session's parsed-reference cache entry (bounded in bytes). The item's
    # reference and the model's value generator are no objects of their own (they were:
    # 8.2 objects an item before).
    assert added <= 4.5 * ATTRIBUTES, f"{added / ATTRIBUTES:.1f} tracked objects per item"
    before = _tracked()
    await gateway.ok(sid, "advise_item_bulk", server_handle=sh, item_handles=handles)
    await gateway.drain(sid)  # the first values are events; they leave with the drain
    advised = _tracked() - before
    assert advised <= 2.5 * ATTRIBUTES, f"{advised / ATTRIBUTES:.1f} tracked objects per advise"
    await gateway.ok(sid, "unsubscribe_bulk", server_handle=sh, item_handles=handles)
    assert _tracked() - before <= 0.5 * ATTRIBUTES  # unsubscribing releases the items


async def test_policy_applies_while_a_simulator_runs_and_is_undone_after() -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    async with (
        GatewaySimulator(scan_interval_ms=60_000) as _outer,
        GatewaySimulator(scan_interval_ms=60_000) as _inner,
    ):
        assert gc.get_threshold() == server_thresholds(thresholds)
        assert gc.get_threshold()[1:] == THRESHOLDS[1:]
        if frozen == 0:  # start-up's objects are out of the collector's way
            assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == frozen
    async with GatewaySimulator(scan_interval_ms=60_000, tune_gc=False):
        assert gc.get_threshold() == thresholds
        assert gc.get_freeze_count() == frozen
