"""Calls whose request message never arrives (a caller with a valid key sends its headers
and nothing else): each ends within ``--body-timeout-seconds`` with a status naming the
flag, one key holds at most ``--max-waiting-calls-per-key`` of them at once, they are
counted, and the server keeps serving everyone else. Over real gRPC on 127.0.0.1: the
stalled calls are request-streaming calls of grpc's own API that never write (on the wire:
HEADERS and no DATA frame, whatever the method's kind)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from simhelpers import gateway, healthy, wait_for

from mxgateway import GatewayClient
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import ApiKeyStore, GatewaySimulator
from mxgateway_sim import new_key as _new_key
from mxgateway_sim._auth import split_key
from mxgateway_sim._bodygate import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_WAITING_CALLS_PER_KEY
from mxgateway_sim.cli import build_parser

GATEWAY = "/mxaccess_gateway.v1.MxAccessGateway/"
HEALTH = "/grpc.health.v1.Health/"
# One method of each kind the gateway serves: unary, server-streaming, bidirectional.
METHODS = [GATEWAY + "OpenSession", GATEWAY + "Invoke", GATEWAY + "StreamEvents"]
METHODS += [GATEWAY + "InvokeStream", "/galaxy_repository.v1.GalaxyRepository/TestConnection"]


def stalled(channel: grpc.aio.Channel, method: str, key: str | None) -> Any:
    """A call that sends its headers (with ``key``) and never a message, nor half-closes."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    return channel.stream_unary(method)(metadata=metadata)


async def outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    """How the server ended ``call`` (the test's own bound, far above the server's)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, 60)
    return caught.value.code(), caught.value.details() or ""


async def serves(sim: GatewaySimulator, key: str) -> bool:
    """A normal client of ``key`` opens a session, runs a command and closes it."""
    async with await GatewayClient.connect(
        endpoint=sim.endpoint, api_key=key, plaintext=True
    ) as client:
        session = await client.open_session(client_session_name="after")
        await session.ping()
        await session.close()
    return True


async def test_a_call_whose_message_never_arrives_ends_in_time() -> None:
    async with gateway(body_timeout_s=0.5) as (sim, channel):
        key = sim.api_key
        assert key is not None
        methods = [m for m in METHODS if "Galaxy" not in m or sim.galaxy_available]
        results = await asyncio.gather(*(outcome(stalled(channel, m, key)) for m in methods))
        for method, (code, details) in zip(methods, results, strict=True):
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (method, code, details)
            assert "--body-timeout-seconds" in details and "0.5 s" in details, details
        assert sim.stats.stalled_calls == {"body_timeout": len(methods)}
        assert sim.body_gate.waiting(split_key(key)[0]) == 0
        assert await healthy(channel) and await serves(sim, key)


async def test_each_stalled_call_gets_its_own_time() -> None:
    """The gate sweeps its waiting calls when the oldest is due: one started later is not
    ended with it, and a normal call in between leaves nothing behind."""
    async with gateway(body_timeout_s=0.5) as (sim, channel):
        key = sim.api_key
        assert key is not None
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(outcome(stalled(channel, GATEWAY + "Invoke", key)))
        await asyncio.sleep(0.3)
        assert await serves(sim, key)
        started = loop.time()
        second = await outcome(stalled(channel, GATEWAY + "OpenSession", key))
        ended = loop.time()
        for code, details in (await first, second):
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "0.5 s" in details, details
        assert ended - started >= 0.5  # not ended by the sweep that ended the first call
        assert sim.stats.stalled_calls == {"body_timeout": 2}
        assert sim.body_gate.waiting(split_key(key)[0]) == 0


async def test_keyless_health_checks_are_bounded_too() -> None:
    async with gateway(body_timeout_s=0.5) as (_sim, channel):
        code, details = await outcome(stalled(channel, HEALTH + "Check", None))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "--body-timeout-seconds" in details
        assert await healthy(channel)


async def test_a_call_that_half_closes_without_a_message_is_invalid() -> None:
    async with gateway() as (sim, channel):
        call = stalled(channel, GATEWAY + "OpenSession", sim.api_key)
        await call.done_writing()
        code, details = await outcome(call)
        assert (code, details) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "the call carried no request message",
        )
        assert not sim.stats.stalled_calls


async def test_one_key_holds_a_bounded_number_of_waiting_calls() -> None:
    store = ApiKeyStore()
    stalling, other = _new_key(), _new_key()
    store.add(stalling, name="stalling")
    store.add(other, name="other")
    stalling_id = split_key(stalling)[0]
    async with gateway(key_store=store, body_timeout_s=60, max_waiting_calls_per_key=3) as (
        sim,
        channel,
    ):
        held = [stalled(channel, m, stalling) for m in METHODS[:3]]
        await wait_for(lambda: sim.body_gate.waiting(stalling_id) == 3, timeout=30)
        # The fourth is refused at once (not after the 60 s body timeout)...
        code, details = await outcome(stalled(channel, GATEWAY + "CloseSession", stalling))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-waiting-calls-per-key" in details and "3 calls" in details
        assert sim.stats.stalled_calls == {"waiting_limit": 1}
        # ...while another key, and the health check, are served.
        assert await serves(sim, other) and await healthy(channel)
        for call in held:
            call.cancel()
        await wait_for(lambda: sim.body_gate.waiting(stalling_id) == 0, timeout=30)
        assert await serves(sim, stalling)


async def test_a_request_that_arrives_is_served_as_before() -> None:
    async with gateway() as (sim, channel):
        md = (("authorization", f"Bearer {sim.api_key}"),)
        call = channel.stream_unary(
            GATEWAY + "OpenSession",
            request_serializer=pb.OpenSessionRequest.SerializeToString,
            response_deserializer=pb.OpenSessionReply.FromString,
        )(metadata=md)
        await asyncio.sleep(0.2)  # headers first, the message a moment later
        await call.write(pb.OpenSessionRequest(client_session_name="late but in time"))
        await call.done_writing()
        reply = await call
        assert reply.session_id.startswith("session-")
        assert not sim.stats.stalled_calls


def test_flags_default_to_the_gate_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.body_timeout_seconds == DEFAULT_BODY_TIMEOUT_S
    assert args.max_waiting_calls_per_key == DEFAULT_MAX_WAITING_CALLS_PER_KEY
