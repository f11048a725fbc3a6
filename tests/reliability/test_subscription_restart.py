"""A recovering subscription of 1,000 items across a real restart of mxgw-sim on its port."""

from __future__ import annotations

import asyncio

from reliability_sim import ITEMS, client_options, fast_reconnect, plant_catalog, references

from mxgateway import (
    GatewayClient,
    ItemFailure,
    StateChange,
    Subscription,
    SubscriptionState,
    TagValue,
)
from mxgateway_sim import GatewaySimulator

DEADLINE = 30.0  # generous bound of every wait: nothing may hang


async def _read_until(sub: Subscription, target: dict[str, TagValue], resync: bool) -> None:
    async for update in sub:
        assert not isinstance(update, ItemFailure), update
        if isinstance(update, TagValue) and update.resynchronized == resync:
            target.setdefault(update.tag, update)
            if len(target) == ITEMS:
                return


async def _record(sub: Subscription, into: list[StateChange]) -> None:
    async for change in sub.state_changes():
        into.append(change)


async def test_subscription_survives_a_gateway_restart_on_the_same_port() -> None:
    catalog = plant_catalog()
    first = GatewaySimulator(catalog=catalog, scan_interval_ms=500)
    await first.start()
    endpoint, key = first.endpoint, first.api_key
    assert key is not None
    port = int(endpoint.rpartition(":")[2])
    second: GatewaySimulator | None = None
    seen_by_callback: list[StateChange] = []
    seen_by_iterator: list[StateChange] = []
    loop = asyncio.get_running_loop()
    try:
        async with (
            await GatewayClient.connect(options=client_options(endpoint, key)) as client,
            client.subscribe(
                references(), reconnect=fast_reconnect(), on_state_change=seen_by_callback.append
            ) as sub,
        ):
            recorder = asyncio.ensure_future(_record(sub, seen_by_iterator))
            first_values: dict[str, TagValue] = {}
            await asyncio.wait_for(_read_until(sub, first_values, False), DEADLINE)
            assert sub.state is SubscriptionState.CONNECTED
            old_session = sub.session_id
            assert old_session is not None
            assert all(v.initial and v.session_id == old_session for v in first_values.values())
            assert sub.failed_items == {}

            # Restart: stop the gateway (its sessions die with it), then start a new one
            # on the same port with the same key.
            t_stop = loop.time()
            await first.stop()
            second = GatewaySimulator(
                catalog=catalog, scan_interval_ms=500, port=port, api_keys=[key]
            )
            await second.start()
            assert second.endpoint == endpoint
            t_listening = loop.time()

            resync_values: dict[str, TagValue] = {}
            await asyncio.wait_for(_read_until(sub, resync_values, True), DEADLINE)
            t_resynced = loop.time()
            assert sub.state is SubscriptionState.RESYNCHRONIZED
            new_session = sub.session_id
            assert new_session not in (None, old_session)
            assert sub.recoveries == 1
            assert all(v.initial and v.session_id == new_session for v in resync_values.values())
            assert set(resync_values) == set(references())
            print(
                f"\n{ITEMS} items: the restart took {t_listening - t_stop:.2f} s; every item "
                f"delivered a resynchronised value {t_resynced - t_listening:.2f} s after the "
                f"new gateway listened ({t_resynced - t_stop:.2f} s after the stop began)"
            )
        await asyncio.wait_for(recorder, DEADLINE)  # ends after CLOSED
    finally:
        await first.stop()
        if second is not None:
            await second.stop()

    expected = [
        SubscriptionState.CONNECTING,
        SubscriptionState.CONNECTED,
        SubscriptionState.RECONNECTING,
        SubscriptionState.RESYNCHRONIZED,
        SubscriptionState.CLOSED,
    ]
    assert [c.state for c in seen_by_callback] == expected
    assert [c.state for c in seen_by_iterator] == expected
    reconnecting = seen_by_callback[2]
    assert reconnecting.error is not None  # why the session was lost
    assert seen_by_callback[1].attempt == 1  # the gateway was there: first attempt
    assert seen_by_callback[3].attempt >= 1
    assert seen_by_callback[3].session_id == new_session
    assert seen_by_callback[-1].error is None  # closed by us, not failed
    assert sub.closed and sub.session_id is None
