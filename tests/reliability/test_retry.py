"""Unary retries: only calls that are safe to repeat, only on UNAVAILABLE, bounded."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest
from reliability_fakes import SESSION_ID, FakeGatewayServer

from mxgateway import (
    ClientOptions,
    GalaxyRepositoryClient,
    GatewayClient,
    MxGatewayProtocolError,
    MxGatewayTimeoutError,
    MxGatewayUnavailableError,
    RetryPolicy,
)
from mxgateway._retry import IDEMPOTENT_COMMAND_KINDS, is_idempotent
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import mxaccess_gateway_pb2 as pb

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_elapsed=5.0)

SAFE = {
    "PING",
    "GET_SESSION_STATE",
    "GET_WORKER_INFO",
    "READ_BULK",
    "ARCHESTRA_USER_TO_ID",
    "QUERY_ACTIVE_ALARMS",
}


@pytest.fixture
async def server() -> AsyncIterator[FakeGatewayServer]:
    async with FakeGatewayServer() as srv:
        yield srv


async def _client(server: FakeGatewayServer, retry: RetryPolicy | None = FAST) -> GatewayClient:
    options = ClientOptions(endpoint=server.endpoint, plaintext=True, retry=retry, timeout=10.0)
    return await GatewayClient.connect(options=options)


def test_the_idempotent_table_is_exactly_the_read_only_kinds() -> None:
    for name, kind in pb.MxCommandKind.items():
        short = name.removeprefix("MX_COMMAND_KIND_")
        request = pb.MxCommandRequest(command=pb.MxCommand(kind=kind))
        assert is_idempotent(request) is (short in SAFE), short
    assert {pb.MxCommandKind.Name(k) for k in IDEMPOTENT_COMMAND_KINDS} == {
        f"MX_COMMAND_KIND_{n}" for n in SAFE
    }


def test_open_and_ack_are_never_idempotent_and_close_and_galaxy_reads_are() -> None:
    assert not is_idempotent(pb.OpenSessionRequest())
    assert is_idempotent(pb.CloseSessionRequest())  # a repeat close answers CLOSED
    assert not is_idempotent(pb.AcknowledgeAlarmRequest())
    assert not is_idempotent(b"")
    assert is_idempotent(gr.TestConnectionRequest())
    assert is_idempotent(gr.GetLastDeployTimeRequest())
    assert is_idempotent(gr.DiscoverHierarchyRequest())
    assert is_idempotent(gr.BrowseChildrenRequest())


def test_policy_validation_and_bounded_jittered_backoff() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError):
        RetryPolicy(initial_backoff=1.0, max_backoff=0.5)
    with pytest.raises(ValueError):
        ClientOptions(endpoint="h:1", retry=3)  # type: ignore[arg-type]
    assert ClientOptions(endpoint="h:1").retry == RetryPolicy()
    assert not RetryPolicy.disabled().enabled
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for retry in range(1, 12):
        base = min(1.0, 0.1 * 2 ** (retry - 1))
        for _ in range(50):
            assert base * 0.5 <= policy.backoff(retry, rng) <= base
    assert not RetryPolicy(max_attempts=3).allows(3, 0.0)
    assert RetryPolicy(max_attempts=3).allows(2, 0.0)
    assert not RetryPolicy(max_elapsed=1.0).allows(1, 1.5)
    assert RetryPolicy(max_attempts=None, max_elapsed=None).allows(10**6, 1e9)


async def test_a_safe_call_is_retried_on_unavailable(server: FakeGatewayServer) -> None:
    fake = server.servicer
    fake.fail_times[pb.MX_COMMAND_KIND_PING] = 2
    fake.fail_times[pb.MX_COMMAND_KIND_GET_SESSION_STATE] = 3
    async with await _client(server) as client:
        session = client.attach_session(SESSION_ID)
        await session.ping()
        assert await session.get_session_state() == pb.SESSION_STATE_READY
        assert fake.calls[pb.MX_COMMAND_KIND_PING] == 3
        assert fake.calls[pb.MX_COMMAND_KIND_GET_SESSION_STATE] == 4
        assert client.transport.retry_count == 5


async def test_retries_are_bounded(server: FakeGatewayServer) -> None:
    fake = server.servicer
    fake.fail_times[pb.MX_COMMAND_KIND_PING] = 100
    async with await _client(server) as client:
        with pytest.raises(MxGatewayUnavailableError):
            await client.attach_session(SESSION_ID).ping()
        assert fake.calls[pb.MX_COMMAND_KIND_PING] == FAST.max_attempts


async def test_the_call_deadline_bounds_unlimited_retries(server: FakeGatewayServer) -> None:
    fake = server.servicer
    fake.fail_times[pb.MX_COMMAND_KIND_PING] = 10**9
    unlimited = RetryPolicy(
        max_attempts=None, initial_backoff=0.01, max_backoff=0.02, max_elapsed=None
    )
    async with await _client(server, unlimited) as client:
        # The last attempt fails with UNAVAILABLE, or runs into the deadline (under load).
        with pytest.raises((MxGatewayUnavailableError, MxGatewayTimeoutError)):
            await client.invoke_raw(
                SESSION_ID,
                pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()),
                timeout=0.3,
            )
        assert fake.calls[pb.MX_COMMAND_KIND_PING] > 1


@pytest.mark.parametrize(
    ("kind", "call"),
    [
        (pb.MX_COMMAND_KIND_WRITE, "write"),
        (pb.MX_COMMAND_KIND_WRITE_BULK, "write_bulk"),
        (pb.MX_COMMAND_KIND_WRITE_SECURED, "write_secured"),
        (pb.MX_COMMAND_KIND_REGISTER, "register"),
        (pb.MX_COMMAND_KIND_ADD_ITEM, "add_item"),
        (pb.MX_COMMAND_KIND_SUBSCRIBE_BULK, "subscribe_bulk"),
        (pb.MX_COMMAND_KIND_DRAIN_EVENTS, "drain_events"),
    ],
)
async def test_writes_and_handle_creating_calls_are_never_retried(
    server: FakeGatewayServer, kind: int, call: str
) -> None:
    fake = server.servicer
    fake.fail_times[kind] = 1  # one failure: a retry would succeed
    async with await _client(server) as client:
        session = client.attach_session(SESSION_ID)
        calls = {
            "write": lambda: session.write(1, 2, 3.5),
            "write_bulk": lambda: session.write_bulk(1, {2: 3.5}),
            "write_secured": lambda: session.write_secured(1, 2, 1, current_user_id=5),
            "register": lambda: session.register("app"),
            "add_item": lambda: session.add_item(1, "Tank01.Level"),
            "subscribe_bulk": lambda: session.subscribe_bulk(1, ["Tank01.Level"]),
            "drain_events": lambda: session.drain_events(),
        }
        with pytest.raises(MxGatewayUnavailableError):
            await calls[call]()
        assert fake.calls[kind] == 1
        assert client.transport.retry_count == 0


async def test_open_session_is_never_retried(server: FakeGatewayServer) -> None:
    server.servicer.fail_all_open_session = True
    async with await _client(server) as client:
        with pytest.raises(MxGatewayUnavailableError):
            await client.open_session("x")
        assert server.servicer.open_session_calls == 1


async def test_other_status_codes_are_not_retried(server: FakeGatewayServer) -> None:
    fake = server.servicer
    fake.fail_code = grpc.StatusCode.INTERNAL
    fake.fail_times[pb.MX_COMMAND_KIND_PING] = 1
    async with await _client(server) as client:
        with pytest.raises(MxGatewayProtocolError):
            await client.attach_session(SESSION_ID).ping()
        assert fake.calls[pb.MX_COMMAND_KIND_PING] == 1


@pytest.mark.parametrize("policy", [None, RetryPolicy.disabled()])
async def test_retries_can_be_turned_off(
    server: FakeGatewayServer, policy: RetryPolicy | None
) -> None:
    fake = server.servicer
    fake.fail_times[pb.MX_COMMAND_KIND_PING] = 1
    async with await _client(server, policy) as client:
        with pytest.raises(MxGatewayUnavailableError):
            await client.attach_session(SESSION_ID).ping()
        assert fake.calls[pb.MX_COMMAND_KIND_PING] == 1


async def test_galaxy_reads_are_retried_through_the_same_seam(server: FakeGatewayServer) -> None:
    server.galaxy.fail_times = 2
    options = ClientOptions(endpoint=server.endpoint, plaintext=True, retry=FAST)
    async with await GalaxyRepositoryClient.connect(options=options) as galaxy:
        assert await galaxy.test_connection() is True
        assert server.galaxy.calls == 3
        assert galaxy.transport.retry_count == 2
