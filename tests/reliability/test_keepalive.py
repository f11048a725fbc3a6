"""Keepalive finds a half-open connection; the stream resumes without loss or duplicates.

A TCP proxy between client and fake gateway "freezes" its connections: both sockets stay
open but nothing is forwarded any more (a pulled cable, a dropped NAT entry). Only the
client's HTTP/2 keepalive can notice that. The fake gateway accepts pings every 100 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from reliability_fakes import SESSION_ID, FakeGatewayServer, FreezingProxy

from mxgateway import (
    ClientOptions,
    DataChange,
    GatewayClient,
    SubscriptionState,
    TagValue,
)

DEADLINE = 20.0  # generous: keepalive below detects in about a second


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[FakeGatewayServer, FreezingProxy]]:
    async with FakeGatewayServer() as server, FreezingProxy(server.endpoint) as proxy:
        yield server, proxy


def _options(endpoint: str) -> ClientOptions:
    return ClientOptions(
        endpoint=endpoint,
        plaintext=True,
        timeout=5.0,
        keepalive_time=0.5,
        keepalive_timeout=0.5,
        channel_options=(
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ),
    )


async def test_keepalive_detects_a_half_open_stream_and_events_resume(
    proxied: tuple[FakeGatewayServer, FreezingProxy],
) -> None:
    server, proxy = proxied
    loop = asyncio.get_running_loop()
    async with await GatewayClient.connect(options=_options(proxy.endpoint)) as client:
        session = client.attach_session(SESSION_ID)
        sequences: list[int] = []
        async with session.events(after_worker_sequence=0) as events:

            async def read(n: int) -> None:
                async for event in events:
                    assert isinstance(event, DataChange), event
                    sequences.append(event.worker_sequence)
                    if len(sequences) >= n:
                        return

            await asyncio.wait_for(read(20), DEADLINE)
            assert proxy.freeze() >= 1
            frozen_at = loop.time()
            await asyncio.wait_for(read(40), DEADLINE)
            recovered_after = loop.time() - frozen_at
            assert events.resume_count >= 1
            assert events.gap_count == 0
        assert sequences == list(range(1, len(sequences) + 1))  # no hole, no duplicate
        assert len(server.servicer.stream_requests) >= 2
        assert server.servicer.stream_requests[-1].after_worker_sequence >= 20
        assert proxy.connections >= 2
        print(f"\nhalf-open connection detected and the stream resumed in {recovered_after:.2f} s")


async def test_a_subscription_rides_out_a_half_open_connection_on_the_same_session(
    proxied: tuple[FakeGatewayServer, FreezingProxy],
) -> None:
    server, proxy = proxied
    tags = [f"Dev{i}.PV" for i in range(10)]
    async with (
        await GatewayClient.connect(options=_options(proxy.endpoint)) as client,
        client.subscribe(tags) as sub,
    ):
        seen: list[TagValue] = []

        async def read(n: int) -> None:
            async for update in sub:
                assert isinstance(update, TagValue), update
                seen.append(update)
                if len(seen) >= n:
                    return

        await asyncio.wait_for(read(30), DEADLINE)
        assert sub.state is SubscriptionState.CONNECTED
        proxy.freeze()
        await asyncio.wait_for(read(80), DEADLINE)
        # The session survived: the stream resumed, no new session, nothing resynchronised.
        assert sub.state is SubscriptionState.CONNECTED
        assert sub.recoveries == 0
        assert server.servicer.open_session_calls == 1
        assert not any(v.resynchronized for v in seen)
        assert {v.tag for v in seen} == set(tags)
        sequences = [v.worker_sequence for v in seen]
        assert sequences == list(range(1, len(seen) + 1))
