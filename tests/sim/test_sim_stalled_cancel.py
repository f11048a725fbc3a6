"""Stalled calls that end for another reason than their time are no body timeouts."""

from __future__ import annotations

import asyncio

import grpc
from simhelpers import gateway, healthy, wait_for
from test_sim_stalled_calls import GATEWAY, serves, stalled

from mxgateway_sim._auth import split_key


async def test_a_cancelled_or_stopped_stalled_call_is_no_body_timeout() -> None:
    # Only calls whose time was up are answered with the body timeout and counted as
    # stalled: not those whose caller gives up, nor those the server's stop ends (grpc.aio
    # hands the waiting handler EOF in both cases, seen on grpcio 1.85), and the gate holds
    # nothing of them afterwards.
    async with gateway(body_timeout_s=30) as (sim, channel):
        key = sim.api_key
        assert key is not None
        key_id = split_key(key)[0]
        for method in ("Invoke", "OpenSession", "InvokeStream"):
            call = stalled(channel, GATEWAY + method, key)
            await wait_for(lambda: sim.body_gate.waiting(key_id) == 1, what="the call waits")
            call.cancel()
            await wait_for(lambda: sim.body_gate.waiting(key_id) == 0, what="the call left")
        assert not sim.stats.stalled_calls, sim.stats.stalled_calls
        assert await healthy(channel) and await serves(sim, key)
        # The server stops while calls wait for their message.
        calls = [stalled(channel, GATEWAY + m, key) for m in ("Invoke", "OpenSession")]
        await wait_for(lambda: sim.body_gate.waiting(key_id) == 2, what="the calls wait")
        await sim.stop()
        for call in calls:
            try:
                await asyncio.wait_for(call, 60)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, exc
                assert "--body-timeout-seconds" not in (exc.details() or ""), exc
        assert sim.body_gate.waiting(key_id) == 0
        assert not sim.stats.stalled_calls, sim.stats.stalled_calls
        assert not sim.body_gate._since and not sim.body_gate._expired  # nothing held
