"""``--session-isolation process``: one worker per session; a worker that dies or hangs
faults only its own session, is reaped, and the client's ``Subscription`` recovers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from workerhelpers import gone as _gone
from workerhelpers import live_workers as _workers
from workerhelpers import process_gateway as _gateway
from workerhelpers import worker_pid as _pid

from mxgateway import (
    DataChange,
    GatewayClient,
    MxGatewayOverloadedError,
    MxGatewaySessionFaultedError,
    MxGatewayUnavailableError,
    Session,
    StateChange,
    SubscriptionState,
    TagValue,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import (
    GatewaySimulator,
    InMemoryCatalog,
    SessionOptions,
    TagInfo,
    builtin_catalog,
)
from mxgateway_sim._builtin import tag
from mxgateway_sim._domain import MX_DOUBLE
from mxgateway_sim._limits import LimitError
from mxgateway_sim._sessions import SessionState
from mxgateway_sim._wire import read_reply_bytes
from mxgateway_sim._workerclient import WorkerRuntime, WorkerSettings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
DEADLINE = 30.0
TAGS = ["Tank01.Level", "Pump01.Speed"]


@pytest.fixture
async def sim() -> AsyncIterator[GatewaySimulator]:
    settings = WorkerSettings(heartbeat_s=0.1, heartbeat_grace_s=1.0, shutdown_timeout_s=5.0)
    async with GatewaySimulator(
        catalog=builtin_catalog(),
        scan_interval_ms=20,
        flaky_one_in=0,
        session_isolation="process",
        worker_settings=settings,
    ) as s:
        yield s


@pytest.fixture
async def client(sim: GatewaySimulator) -> AsyncIterator[GatewayClient]:
    async with await GatewayClient.connect(
        endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
    ) as c:
        yield c


async def _data_changes(session: Session, n: int) -> list[DataChange]:
    out: list[DataChange] = []

    async def run() -> None:
        async for event in session.events():
            if isinstance(event, DataChange):
                out.append(event)
                if len(out) >= n:
                    return

    await asyncio.wait_for(run(), DEADLINE)
    return out


async def test_each_session_has_its_own_worker_and_closing_reaps_it(
    client: GatewayClient,
) -> None:
    async with await client.open_session(client_session_name="a") as a:
        async with await client.open_session(client_session_name="b") as b:
            pa, pb_ = await _pid(a), await _pid(b)
            assert pa != pb_
            assert psutil.Process(pa).ppid() == os.getpid()
            handle = await a.register("t")
            assert handle > 0
        assert await _gone(pb_)
        assert psutil.pid_exists(pa)
        await a.ping()
    assert await _gone(pa)


async def _attached(session: Session) -> AsyncIterator[object]:
    """The session's event stream, once it delivers a DataChange (so it is attached)."""
    events = aiter(session.events())
    while not isinstance(await asyncio.wait_for(anext(events), DEADLINE), DataChange):
        pass
    return events


async def _until_faulted(events: AsyncIterator[object]) -> None:
    with pytest.raises(MxGatewaySessionFaultedError):
        while True:
            await asyncio.wait_for(anext(events), DEADLINE)


async def test_sigkill_faults_only_that_session(client: GatewayClient) -> None:
    async with (
        await client.open_session(client_session_name="victim") as victim,
        await client.open_session(client_session_name="bystander") as bystander,
    ):
        for s in (victim, bystander):
            h = await s.register("t")
            await s.subscribe_bulk(h, TAGS)
        pid = await _pid(victim)
        events = await _attached(victim)
        os.kill(pid, signal.SIGKILL)

        await _until_faulted(events)
        with pytest.raises(MxGatewaySessionFaultedError, match="exited"):
            await victim.ping()
        assert await _gone(pid)

        # The other session's worker, commands and events are untouched.
        await bystander.ping()
        assert len(await _data_changes(bystander, 4)) == 4
        # A faulted session still closes (nothing to release: its worker is gone).


async def test_a_hung_worker_is_faulted_by_heartbeat_and_killed(client: GatewayClient) -> None:
    async with (
        await client.open_session(client_session_name="hung") as hung,
        await client.open_session(client_session_name="fine") as fine,
    ):
        pid = await _pid(hung)
        await hung.subscribe_bulk(await hung.register("t"), TAGS)
        events = await _attached(hung)
        os.kill(pid, signal.SIGSTOP)
        try:
            await _until_faulted(events)
            with pytest.raises(MxGatewaySessionFaultedError, match="stopped answering heartbeats"):
                await hung.ping()
            assert await _gone(pid)  # SIGKILL works on a stopped process
        finally:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
        await fine.ping()


async def test_subscription_recovers_on_a_new_session_after_sigkill(
    client: GatewayClient,
) -> None:
    changes: list[StateChange] = []
    tags = set(TAGS)
    async with client.subscribe(TAGS, on_state_change=changes.append) as sub:
        seen: set[str] = set()

        async def until_all(resync: bool) -> None:
            seen.clear()
            async for update in sub:
                if isinstance(update, TagValue) and update.resynchronized == resync:
                    seen.add(update.tag)
                    if seen >= tags:
                        return

        await asyncio.wait_for(until_all(False), DEADLINE)
        old = sub.session_id
        assert old is not None
        command = pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_GET_WORKER_INFO, get_worker_info=pb.GetWorkerInfoCommand()
        )
        pid = (await client.invoke_raw(old, command)).worker_info.process_id
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(until_all(True), DEADLINE)
        assert sub.state is SubscriptionState.RESYNCHRONIZED
        assert sub.session_id != old and sub.recoveries == 1
    lost = next(c for c in changes if c.state is SubscriptionState.RECONNECTING)
    assert isinstance(lost.error, MxGatewaySessionFaultedError)
    assert await _gone(pid)


async def test_stopping_the_gateway_stops_every_worker() -> None:
    async with _gateway() as (sim, client):
        sessions = [await client.open_session(client_session_name=f"s{i}") for i in range(3)]
        pids = [await _pid(s) for s in sessions]
        await sim.stop()
    for pid in pids:
        assert await _gone(pid)


async def _until_workers(n: int) -> dict[int, psutil.Process]:
    for _ in range(int(DEADLINE / 0.05)):
        workers = _workers()
        if len(workers) == n:
            return workers
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(_workers())} workers, not {n}")


async def test_pooled_workers_wait_without_a_session_and_are_handed_out() -> None:
    """Two workers start with the gateway, knowing no session; a new session gets one of
    them (its session id arrives in the first frame only) and the pool is topped up; a
    pooled worker that died meanwhile is never handed out; stopping ends them all."""
    settings = WorkerSettings(pool_size=2)
    async with _gateway(settings) as (sim, client):
        pooled = await _until_workers(2)
        for worker in pooled.values():
            assert "--session-id" not in worker.cmdline()
            assert "MXGATEWAY_WORKER_SESSION_ID" not in worker.environ()
        async with await client.open_session(client_session_name="first") as first:
            pid = await _pid(first)
            assert pid in pooled
            await first.register("t")
            workers = await _until_workers(3)  # the pool refilled behind it
            spare = sorted(set(workers) - {pid})
            os.kill(spare[0], signal.SIGKILL)
            assert await _gone(spare[0])
            async with await client.open_session(client_session_name="second") as second:
                assert await _pid(second) == spare[1]  # the live one, not the dead one
                await second.ping()
            await first.ping()
        every = set(await _until_workers(2))
        await sim.stop()
    for pid in every:
        assert await _gone(pid)


class _Redeployable(InMemoryCatalog):
    """A catalog a test can redeploy (its version goes up)."""

    def redeploy(self, tags: list[TagInfo]) -> None:
        self.__init__(tags, self.version + 1)  # type: ignore[misc]


async def test_a_redeploy_retires_the_pooled_workers_started_before_it() -> None:
    """Pooled workers were started with the catalog of their time: after a redeploy a new
    session gets a worker with the new catalog, and the stale ones are stopped."""
    base = builtin_catalog().all_tags()
    catalog = _Redeployable(base)
    async with _gateway(WorkerSettings(pool_size=2), catalog=catalog) as (_sim, client):
        stale = await _until_workers(2)
        catalog.redeploy([*base, tag("Tank99", "Level", MX_DOUBLE)])
        async with await client.open_session(client_session_name="after") as session:
            assert await _pid(session) not in stale
            h = await session.register("t")
            (row,) = await session.read_bulk(h, ["Tank99.Level"])
            assert row.was_successful, row  # the worker knows the new object
        for pid in stale:
            assert await _gone(pid)


async def test_without_a_pool_each_worker_starts_with_its_session() -> None:
    settings = WorkerSettings(pool_size=0)
    async with _gateway(settings) as (_sim, client):
        assert _workers() == {}
        async with await client.open_session() as session:
            assert set(_workers()) == {await _pid(session)}
        assert await _until_workers(0) == {}


def test_the_pool_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="0 to 16"):
        WorkerSettings(pool_size=17)
    with pytest.raises(ValueError, match="0 to 16"):
        WorkerSettings(pool_size=-1)


async def test_stopping_the_gateway_closes_the_workers_side_by_side() -> None:
    """Three workers that cannot acknowledge their shutdown (stopped with SIGSTOP): when the
    first one's wait runs out, every session is already closing (one at a time, the others
    would still be READY); after the bound they are killed and reaped."""
    settings = WorkerSettings(shutdown_timeout_s=1.0, pool_size=0)
    snapshots: list[list[object]] = []
    async with _gateway(settings) as (sim, client):
        sessions = [await client.open_session(client_session_name=f"s{i}") for i in range(3)]
        ids = [s.session_id for s in sessions]
        pids = [await _pid(s) for s in sessions]
        manager = sim.sessions
        assert manager is not None

        class Snapshot(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "did not acknowledge" in record.getMessage() and not snapshots:
                    states = [manager.get(i) for i in ids]
                    snapshots.append([s.state if s is not None else None for s in states])

        handler = Snapshot()
        logger = logging.getLogger("mxgateway_sim.workers")
        logger.addHandler(handler)
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            await sim.stop()
        finally:
            logger.removeHandler(handler)
    assert snapshots == [[SessionState.CLOSING] * 3]
    for pid in pids:
        assert await _gone(pid)


async def test_read_bulk_rows_pass_through_as_the_worker_encoded_them() -> None:
    """The ReadBulk handler takes the rows' bytes from the worker (read_bytes) instead of
    decoding them and encoding them again; the bytes are exactly those of the plain path
    (read() then read_reply_bytes), for cached, fresh, failed and unknown rows, and the
    reply's byte limit applies the same. (No scan runs meanwhile: the values hold still.)"""
    async with (
        _gateway(WorkerSettings(pool_size=0), scan_interval_ms=3_600_000) as (sim, client),
        await client.open_session(client_session_name="reads") as session,
    ):
        h = await session.register("t")
        await session.advise(h, await session.add_item(h, "Tank01.Level"))
        gateway_session = sim.sessions.get(session.session_id) if sim.sessions else None
        assert gateway_session is not None
        runtime = gateway_session.runtime
        assert isinstance(runtime, WorkerRuntime)
        many = ["Tank01.Level", "Pump01.Speed", "No.Such", "bad ref!"]
        for refs in (["Tank01.Level"], many):
            for handle in (h, 999):
                fast = await runtime.read_bytes(handle, refs, 5.0)
                plain = read_reply_bytes(await runtime.read(handle, refs, 5.0))
                assert fast == plain
        with pytest.raises(LimitError):
            await runtime.read_bytes(h, ["Tank01.Level"], 5.0, max_bytes=10)
        rows = await session.read_bulk(h, many)
        assert [r.tag_address for r in rows] == many


async def test_bulk_adds_through_a_worker_keep_the_item_limit_and_create_nothing() -> None:
    options = SessionOptions(max_items_per_session=100)
    async with (
        _gateway(session_options=options) as (_sim, client),
        await client.open_session(client_session_name="limits") as session,
    ):
        h = await session.register("t")
        # 150 references: three slices of 64 through the worker; the limit stops the third.
        refs = [f"Tank01.Level{i}" for i in range(150)]
        with pytest.raises(MxGatewayOverloadedError, match="max-items-per-session"):
            await session.subscribe_bulk(h, refs)
        # Nothing was left behind: the whole limit is still free.
        rows = await session.subscribe_bulk(h, TAGS * 50)
        assert len(rows) == 100
        assert all(r.item_handle for r in rows)
        with pytest.raises(MxGatewayOverloadedError, match="max-items-per-session"):
            await session.add_item_bulk(h, ["Pump01.Speed"])


async def test_workers_do_not_inherit_the_gateways_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MXGATEWAY_API_KEY", "mxgw_k_SecretThatStaysInTheGateway")
    monkeypatch.setenv("MY_GATEWAY_KEY", "mxgw_k_AnotherSecretOfTheGateway")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    settings = WorkerSettings(private_env=("MY_GATEWAY_KEY",))
    async with (
        _gateway(settings) as (_sim, client),
        await client.open_session(client_session_name="env") as session,
    ):
        environ = psutil.Process(await _pid(session)).environ()
        assert environ.get("HARMLESS_SETTING") == "kept"
        assert "MY_GATEWAY_KEY" not in environ
        # Only the launch nonce (one use: it is spent by the handshake); psutil reads the
        # environment the process started with. The session id came in the first frame.
        assert sorted(n for n in environ if n.startswith("MXGATEWAY_")) == [
            "MXGATEWAY_WORKER_NONCE"
        ]
        assert session.session_id not in " ".join(environ.values())
        cmdline = " ".join(psutil.Process(await _pid(session)).cmdline())
        assert "Secret" not in cmdline
        # The command line, which every local user can read, names no session.
        assert session.session_id not in cmdline
        assert "--session-id" not in cmdline


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (("/nonexistent/mxgw-worker",), "cannot start the worker"),
        ((sys.executable, "-c", "import time; time.sleep(60)"), "not ready within"),
        ((sys.executable, "-c", "raise SystemExit(3)"), r"exited \(code 3\)"),
    ],
)
async def test_a_worker_that_does_not_start_fails_the_open_cleanly(
    command: tuple[str, ...], why: str
) -> None:
    settings = WorkerSettings(command=command, startup_timeout_s=1.0, pool_size=0)
    async with _gateway(settings) as (sim, client):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        with pytest.raises(MxGatewayUnavailableError, match=why):
            await client.open_session(client_session_name="broken")
        assert sim.sessions is not None and len(sim.sessions) == 0
        started = {p.pid for p in psutil.Process().children(recursive=True)} - before
        for pid in started:
            assert await _gone(pid)


async def test_a_worker_on_threaded_io_serves_a_session() -> None:
    """The Windows channel (blocking pipes in threads), run here on POSIX."""
    command = (sys.executable, "-m", "mxgateway_sim.worker", "--io", "threads")
    async with _gateway(WorkerSettings(command=command), scan_interval_ms=20, flaky_one_in=0) as (
        _sim,
        client,
    ):
        async with await client.open_session(client_session_name="threads") as session:
            pid = await _pid(session)
            h = await session.register("t")
            rows = await session.subscribe_bulk(h, TAGS)
            assert all(r.was_successful for r in rows)
            assert len(await _data_changes(session, 4)) == 4
        assert await _gone(pid)


FAKE_WORKER = str(Path(__file__).with_name("fakeworker.py"))


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("wrong-version", "protocol version 2"),
        ("wrong-nonce", "nonce"),
    ],
)
async def test_the_gateway_refuses_a_worker_that_fails_the_handshake(mode: str, why: str) -> None:
    settings = WorkerSettings(
        command=(sys.executable, FAKE_WORKER, mode), startup_timeout_s=10, pool_size=0
    )
    async with _gateway(settings) as (sim, client):
        with pytest.raises(MxGatewayUnavailableError, match=why):
            await client.open_session(client_session_name="fake")
        assert sim.sessions is not None and len(sim.sessions) == 0


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("sequence-gap", "worker_sequence 4 where 3 was due"),
        ("zero-frame", "zero-length frame"),
        ("silent", "stopped answering heartbeats"),
        ("garbage-reply", "protocol violation: a worker_command_reply that is not an Mx"),
    ],
)
async def test_a_worker_that_breaks_the_protocol_faults_its_session(mode: str, why: str) -> None:
    settings = WorkerSettings(
        command=(sys.executable, FAKE_WORKER, mode),
        heartbeat_s=0.1,
        heartbeat_grace_s=1.0,
        pool_size=0,
    )
    async with (
        _gateway(settings) as (sim, client),
        await client.open_session(client_session_name="fake") as session,
    ):
        assert sim.sessions is not None
        gateway_session = sim.sessions.get(session.session_id)
        assert gateway_session is not None
        pid = gateway_session.runtime.pid  # type: ignore[attr-defined]  # a WorkerRuntime
        if mode == "garbage-reply":  # it breaks only when a command is answered
            with pytest.raises(MxGatewaySessionFaultedError, match=why):
                await session.ping()
        for _ in range(int(DEADLINE / 0.05)):
            if gateway_session.fault_message:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(MxGatewaySessionFaultedError, match=why):
            await session.ping()
        assert await _gone(pid)


async def test_a_worker_that_breaks_right_after_ready_never_leaves_a_ready_session() -> None:
    """Whether the break is seen before OpenSession returns (it fails) or after (the session
    faults), no session is left READY on a dead worker."""
    settings = WorkerSettings(command=(sys.executable, FAKE_WORKER, "break-at-ready"), pool_size=0)
    async with _gateway(settings) as (_sim, client):
        for _ in range(5):
            try:
                session = await client.open_session(client_session_name="fake")
            except MxGatewayUnavailableError as exc:
                assert "zero-length frame" in str(exc)
                continue
            async with session:
                with pytest.raises(MxGatewaySessionFaultedError, match="zero-length frame"):
                    for _ in range(int(DEADLINE / 0.05)):
                        await session.ping()
                        await asyncio.sleep(0.05)
