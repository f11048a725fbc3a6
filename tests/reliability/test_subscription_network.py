"""A network outage (not a gateway restart): the subscription gets its session back."""

from __future__ import annotations

import asyncio

from reliability_fakes import FreezingProxy
from reliability_sim import client_options, fast_reconnect, plant_catalog, references

from mxgateway import EventGap, GatewayClient, SubscriptionState, TagValue
from mxgateway_sim import GatewaySimulator

DEADLINE = 20.0
ITEMS = 20


async def test_after_a_network_outage_the_subscription_reattaches_to_its_session() -> None:
    async with (
        GatewaySimulator(catalog=plant_catalog(ITEMS), scan_interval_ms=100) as sim,
        FreezingProxy(sim.endpoint) as proxy,
        await GatewayClient.connect(options=client_options(proxy.endpoint, sim.api_key)) as client,
        client.subscribe(references(ITEMS), reconnect=fast_reconnect()) as sub,
    ):
        assert sim.sessions is not None
        values: list[TagValue] = []

        async def read(predicate: object) -> None:
            async for update in sub:
                assert not isinstance(update, EventGap), update
                assert isinstance(update, TagValue), update
                values.append(update)
                if callable(predicate) and predicate():
                    return

        await asyncio.wait_for(read(lambda: len({v.tag for v in values}) == ITEMS), DEADLINE)
        session_id = sub.session_id

        # The network goes down: connections reset, new ones refused.
        proxy.refusing = True
        proxy.drop_all()
        await sub.wait_for_state(SubscriptionState.RECONNECTING, timeout=DEADLINE)
        before = len(values)
        proxy.refusing = False
        change = await sub.wait_for_state(SubscriptionState.CONNECTED, timeout=DEADLINE)
        assert change.previous is SubscriptionState.RECONNECTING
        await asyncio.wait_for(read(lambda: len(values) >= before + 3 * ITEMS), DEADLINE)

        assert sub.session_id == session_id  # the same session, not a new one
        assert sub.reattachments == 1 and sub.recoveries == 0
        assert len(sim.sessions) == 1
        assert not any(v.resynchronized for v in values)
        sequences = [v.worker_sequence for v in values]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


async def test_a_gateway_that_vanished_without_notice_is_resubscribed_on_a_new_session() -> None:
    """The gateway dies while the network is down (no SERVER_SHUTDOWN reaches us): the
    re-attach finds the session unknown to the new gateway and opens a new one."""
    catalog = plant_catalog(ITEMS)
    first = GatewaySimulator(catalog=catalog, scan_interval_ms=100)
    await first.start()
    key = first.api_key
    assert key is not None
    port = int(first.endpoint.rpartition(":")[2])
    second: GatewaySimulator | None = None
    try:
        async with (
            FreezingProxy(first.endpoint) as proxy,
            await GatewayClient.connect(options=client_options(proxy.endpoint, key)) as client,
            client.subscribe(references(ITEMS), reconnect=fast_reconnect()) as sub,
        ):
            await sub.wait_for_state(SubscriptionState.CONNECTED, timeout=DEADLINE)
            old = sub.session_id
            proxy.refusing = True
            proxy.drop_all()
            await sub.wait_for_state(SubscriptionState.RECONNECTING, timeout=DEADLINE)
            await first.stop()
            second = GatewaySimulator(
                catalog=catalog, scan_interval_ms=100, port=port, api_keys=[key]
            )
            await second.start()
            proxy.refusing = False
            await sub.wait_for_state(SubscriptionState.RESYNCHRONIZED, timeout=DEADLINE)
            assert sub.session_id != old
            assert sub.recoveries == 1 and sub.reattachments == 0
            seen: set[str] = set()

            async def read() -> None:
                async for update in sub:
                    if isinstance(update, TagValue) and update.resynchronized:
                        seen.add(update.tag)
                        if len(seen) == ITEMS:
                            return

            await asyncio.wait_for(read(), DEADLINE)
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
