"""Byte limits (issue 12 items 3 and 4): each attack of the report, refused or bounded.

Memory attacks run against ``mxgw-sim serve`` in its own process, whose resident memory is
sampled (psutil) before and during the attack while a health check is asked again and
again: the bound holds and the server keeps answering. The server runs with
``MALLOC_MMAP_THRESHOLD_`` fixed so freed large buffers go back to the system at once and
the RSS shows what the server holds, not what the allocator kept. Without the limits the
same attacks grew the server by hundreds of MiB (figures in docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simhelpers import Gw
from simhelpers import gateway as raw_gateway

from mxgateway import ClientOptions, GatewayClient, MxGatewayInvalidRequestError
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, SessionOptions, builtin_catalog, new_key
from mxgateway_sim._domain import MX_STRING, STATUS_OK, DataChange, TagSample
from mxgateway_sim._events import EventLog, OverflowPolicy
from mxgateway_sim._limits import LIMITS
from mxgateway_sim._sessions import SessionOptions as _Options
from mxgateway_sim.cli import build_parser

MIB = 1024 * 1024
MXGW_SIM = (sys.executable, "-c", "from mxgateway_sim.cli import run; run()")
BIG_TAG = "Tank01.Description"  # a FreeAccess string attribute of the built-in plant
GALAXY_TAG = "L1_Tank01.Description"  # a writeable string of `mxgw-sim serve`'s galaxy
OK = pb.PROTOCOL_STATUS_CODE_OK
INVALID = pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
OVERLOADED = pb.PROTOCOL_STATUS_CODE_OVERLOADED
DOCS = Path(__file__).resolve().parents[2] / "docs"


# -- a server in its own process, its memory, its health -------------------------------


class Server:
    """``mxgw-sim serve`` in a child process."""

    def __init__(self, proc: subprocess.Popen[str], endpoint: str, key: str) -> None:
        self.proc = proc
        self.endpoint = endpoint
        self.key = key
        self.ps = psutil.Process(proc.pid)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)


@contextlib.contextmanager
def serve(tmp_path: Path, *flags: str) -> Iterator[Server]:
    key = new_key()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": key}]), encoding="utf-8")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    log = tmp_path / "server.log"
    with log.open("w") as stderr, subprocess.Popen(
        [*MXGW_SIM, "serve", "--listen", "127.0.0.1:0", "--plaintext", "--json",
         "--api-keys-file", str(keys), "--scan-interval-ms", "100", "--no-quality-faults",
         *flags],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, log.read_text()
            yield Server(proc, json.loads(line)["address"], key)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                proc.kill()
                proc.wait()


class PeakRss:
    """Samples a process's RSS every few milliseconds in a thread; ``peak`` is the most."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = server.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.server.rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss())


class Health:
    """Asks the health service over and over while an attack runs; every answer must be
    SERVING (an answer that never comes fails the test through its deadline)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.answers = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                self.answers += 1
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Health:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # a failed or refused health check fails the test
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        # One more answer after the attack: still serving.
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[Gw]:
    options = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(server.endpoint, options=options) as channel:
        yield Gw(channel, server.key)


@contextlib.asynccontextmanager
async def gateway(**options: int) -> AsyncIterator[tuple[GatewaySimulator, Gw]]:
    """An in-process simulator with ``SessionOptions(**options)`` and a caller with its key,
    the health service asked throughout (see ``Health``)."""
    async with (
        raw_gateway(session_options=SessionOptions(**options)) as (sim, channel),
        Health(sim.endpoint),
    ):
        yield sim, Gw(channel, sim.api_key)


async def watch(gw: Gw, sid: str, reference: str = BIG_TAG) -> tuple[int, int]:
    sh = await gw.register(sid)
    return sh, await gw.subscribe(sid, sh, reference)


async def until_read(gw: Gw, sid: str, sh: int, reference: str, first: str) -> None:
    """ReadBulk until the value starts with ``first`` (the scan delivered the write)."""
    for _ in range(200):
        reply = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=[reference])
        if reply.bulk_read.results[0].value.string_value[:1] == first:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{reference} never read {first!r}...")


def string_value(size: int) -> pb.MxValue:
    return pb.MxValue(string_value="x" * size)


# -- the table agrees with the options, the flags and the docs -------------------------


def test_the_limits_table_agrees_with_options_flags_and_docs() -> None:
    defaults = _Options()
    args = build_parser().parse_args(["serve"])
    security = (DOCS / "security.md").read_text(encoding="utf-8")
    simulator = (DOCS / "simulator.md").read_text(encoding="utf-8")
    for limit in LIMITS:
        assert getattr(defaults, limit.field) == limit.default, limit.field
        assert getattr(args, limit.field) == limit.default, limit.flag
        row = next((ln for ln in security.splitlines() if f"`{limit.flag} N`" in ln), "")
        assert f"| {limit.default} " in row, f"docs/security.md: no row for {limit.flag} N"
        assert limit.flag in simulator, limit.flag


def test_contradictory_limits_are_a_start_error(tmp_path: Path) -> None:
    key = tmp_path / "keys.json"
    key.write_text(json.dumps([{"key": new_key()}]), encoding="utf-8")
    result = subprocess.run(
        [*MXGW_SIM, "serve", "--listen", "127.0.0.1:0", "--plaintext",
         "--api-keys-file", str(key), "--max-message-bytes", "1048576",
         "--max-value-bytes", "1048576"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--max-value-bytes" in result.stderr and "Traceback" not in result.stderr


# -- value size ----------------------------------------------------------------------


async def test_a_value_over_the_limit_is_refused_naming_it() -> None:
    async with gateway(max_value_bytes=64 * 1024) as (_, gw):
        sid = await gw.open()
        sh, ih = await watch(gw, sid)
        reply = await gw.invoke(
            sid, "write", server_handle=sh, item_handle=ih, value=string_value(100_000)
        )
        assert reply.protocol_status.code == INVALID
        assert "--max-value-bytes" in reply.protocol_status.message
        assert "65,536" in reply.protocol_status.message
        entries = [
            pb.WriteBulkEntry(item_handle=ih, value=string_value(10)),
            pb.WriteBulkEntry(item_handle=ih, value=string_value(100_000)),
        ]
        reply = await gw.invoke(sid, "write_bulk", server_handle=sh, entries=entries)
        assert reply.protocol_status.code == INVALID
        assert "entry 1" in reply.protocol_status.message
        assert not reply.HasField("bulk_write")
        # Nothing was written: the value is still what it was.
        read = await gw.ok(sid, "read_bulk", server_handle=sh, tag_addresses=[BIG_TAG])
        assert len(read.bulk_read.results[0].value.string_value) < 100


async def test_a_50_mb_write_names_the_message_limit_not_overloaded() -> None:
    async with (
        GatewaySimulator(catalog=builtin_catalog(), flaky_one_in=0) as sim,
        Health(sim.endpoint),
    ):
        for limit, side in ((16 * MIB, "ClientOptions.max_message_bytes"), (64 * MIB, "mxgw-sim")):
            options = ClientOptions(
                endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, max_message_bytes=limit
            )
            async with await GatewayClient.connect(options=options) as gc:
                session = await gc.open_session(client_session_name="big")
                sh = await session.register("big")
                ih = await session.add_item(sh, BIG_TAG)
                await session.advise(sh, ih)
                with pytest.raises(MxGatewayInvalidRequestError) as info:
                    await session.write(sh, ih, "x" * (50 * 1000 * 1000))
                message = str(info.value)
                assert "message limit" in message and side in message, message
                assert "16,777,216" in message, message


# -- reply size checked before the reply is built ---------------------------------------


async def test_readbulk_of_a_large_tag_30_times_is_refused_before_it_is_built(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, "--max-value-bytes", str(9 * MIB)) as server:
        async with client(server) as gw:
            sid = await gw.open()
            sh, ih = await watch(gw, sid, GALAXY_TAG)
            await gw.ok(sid, "write", server_handle=sh, item_handle=ih, value=string_value(8 * MIB))
            await until_read(gw, sid, sh, GALAXY_TAG, "x")  # one read of it fits
            await asyncio.sleep(0.5)
            before = server.rss()
            async with Health(server.endpoint):
                with PeakRss(server) as rss:
                    for _ in range(3):
                        reply = await gw.invoke(
                            sid, "read_bulk", server_handle=sh, tag_addresses=[GALAXY_TAG] * 30
                        )
                        assert reply.protocol_status.code == INVALID
                        message = reply.protocol_status.message
                        assert "--max-message-bytes" in message and "nothing was read" in message
                        assert not reply.HasField("bulk_read")
            # Unchecked, each of these built a 251 MB reply (+720 MiB); now at most a few
            # buffers of the size of one value.
            print(f"server RSS +{(rss.peak - before) / MIB:.0f} MiB at peak")
            assert rss.peak - before < 48 * MIB, (before, rss.peak)


# -- keyless calls whose body never arrives -----------------------------------------------


async def _keyless_stalled_calls(
    channel: grpc.aio.Channel, n: int, key: str | None = None
) -> list[object]:
    """``n`` calls (keyless, or with ``key``) that send their headers and never a message;
    how each ended."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    stalled = [
        channel.stream_unary(f"/mxaccess_gateway.v1.MxAccessGateway/{method}")(metadata=metadata)
        for method in ("OpenSession", "Invoke", "StreamEvents") * (n // 3)
    ]
    done = await asyncio.gather(*stalled, return_exceptions=True)
    return [e.code() if isinstance(e, grpc.aio.AioRpcError) else e for e in done]


async def test_keyless_calls_whose_body_never_arrives_cost_no_memory(tmp_path: Path) -> None:
    # 6,000 such calls stayed pending (+91 MiB) when the body was read before the
    # key was checked; now each is refused on its headers alone and nothing accumulates.
    with serve(tmp_path) as server:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            await asyncio.sleep(0.5)
            before = server.rss()
            async with Health(server.endpoint):
                # The first wave grows gRPC's and the allocator's pools (some 40-50 MiB
                # that stay); later waves must not add to it.
                codes = await _keyless_stalled_calls(channel, 6000)
                warm = server.rss()
                with PeakRss(server) as rss:
                    for _ in range(2):
                        codes += await _keyless_stalled_calls(channel, 6000)
            # Every call ended, none was served: refused on its headers, or (a third or so
            # of them, thousands at once) reset by gRPC as CANCELLED after the refusal.
            assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.CANCELLED}
            assert codes.count(grpc.StatusCode.UNAUTHENTICATED) > len(codes) // 2
            print(
                f"server RSS +{(warm - before) / MIB:.0f} MiB after 6,000 calls, "
                f"+{(rss.peak - warm) / MIB:.0f} MiB more at peak over 12,000 more"
            )
            # A call held pending cost about 15 KiB (91 MiB a wave of 6,000): 12,000 more
            # held would be some 180 MiB. Refused ones leave only what gRPC's and the
            # allocator's pools keep (14-34 MiB more at peak in repeated runs of this code
            # and of the code before 2026-12-02, on a quiet machine), so the bound is a third
            # of a held call's cost per call: 5 KiB x 12,000 calls.
            assert rss.peak - warm < 12_000 * 5 * 1024, (before, warm, rss.peak)


async def test_a_keys_calls_whose_body_never_arrives_are_bounded(tmp_path: Path) -> None:
    # With a valid key, each such call was held until its deadline (forever without one).
    # Now at most --max-waiting-calls-per-key (1024) wait, each at most
    # --body-timeout-seconds; the rest are refused on arrival.
    with serve(tmp_path, "--body-timeout-seconds", "2") as server:
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            await asyncio.sleep(0.5)
            before = server.rss()
            async with Health(server.endpoint):
                codes = await _keyless_stalled_calls(channel, 6000, server.key)
                warm = server.rss()
                with PeakRss(server) as rss:
                    for _ in range(2):
                        codes += await _keyless_stalled_calls(channel, 6000, server.key)
            timed_out = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
            refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert set(codes) <= {
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.CANCELLED,  # reset by gRPC with thousands at once
            }, set(codes)
            # At most 1,024 waited at a time (and timed out; the exact bound is checked in
            # tests/sim/test_sim_stalled_calls.py); the others were refused on arrival, or
            # reset by gRPC as CANCELLED (thousands at once); none was served.
            assert timed_out > 0 and refused > 0, (timed_out, refused)
            print(
                f"{timed_out} timed out, {refused} refused, "
                f"{codes.count(grpc.StatusCode.CANCELLED)} cancelled; server RSS "
                f"+{(warm - before) / MIB:.0f} MiB after 6,000 calls, "
                f"+{(rss.peak - warm) / MIB:.0f} MiB more at peak over 12,000 more"
            )
            # Later waves hold up to 1,024 waiting calls at their peak. Each call ended while
            # its read was pending also leaks gRPC aio's 80-byte op array, which pins heap
            # pages (grpc/grpc#43360, open): a few KiB of RSS a call, docs/security.md. The
            # bound is for the calls held; before, they were all held until their deadline.
            assert rss.peak - warm < 128 * MIB, (before, warm, rss.peak)
        async with client(server) as gw:  # the key itself is served again
            await gw.open()


# -- event queue and replay ring, in bytes -------------------------------------------------


async def test_large_writes_watched_by_10_sessions_stay_within_the_ring_bytes(
    tmp_path: Path,
) -> None:
    value = 4 * MIB
    with serve(
        tmp_path, "--max-value-bytes", str(value + 4096), "--replay-ring-bytes", str(6 * MIB)
    ) as server:
        async with client(server) as gw:
            sids = [await gw.open(f"w{i}") for i in range(10)]
            handles = [await watch(gw, sid, GALAXY_TAG) for sid in sids]
            sh, ih = handles[0]
            await gw.ok(sids[0], "write", server_handle=sh, item_handle=ih, value=string_value(10))
            await asyncio.sleep(0.5)
            before = server.rss()
            async with Health(server.endpoint):
                with PeakRss(server) as rss:
                    for i in range(6):
                        await gw.ok(
                            sids[0],
                            "write",
                            server_handle=sh,
                            item_handle=ih,
                            value=pb.MxValue(string_value=str(i) * value),
                        )
                        await asyncio.sleep(0.25)  # a scan tick apart: one event each
                    await until_read(gw, sids[3], handles[3][0], GALAXY_TAG, "5")
            after = server.rss()
            # Unbounded, 10 sessions kept all six events: 10 x 6 x 4 MiB = 240 MiB. Each ring
            # now holds at most 6 MiB, one such event: about 40 MiB for the ten, plus the value.
            assert after - before < 96 * MIB, (before, after)
            print(f"server RSS +{(rss.peak - before) / MIB:.0f} MiB at peak")
            assert rss.peak - before < 128 * MIB, (before, rss.peak)
            # The newest event is still there to drain; the older ones left the ring.
            events = (await gw.ok(sids[3], "drain_events")).drain_events.events
            big = [e for e in events if len(e.on_data_change.value.string_value) == value]
            assert [e.on_data_change.value.string_value[:1] for e in big] == ["5"]


async def test_a_subscriber_over_the_queue_bytes_is_cut_off_naming_the_flag(
    tmp_path: Path,
) -> None:
    value = 2 * MIB
    with serve(
        tmp_path,
        "--max-value-bytes", str(value + 4096),
        "--event-queue-bytes", str(4 * MIB),
        "--overflow-policy", "disconnect-subscriber",
    ) as server:  # fmt: skip
        async with client(server) as gw:
            sid = await gw.open()
            sh, ih = await watch(gw, sid, GALAXY_TAG)
            stream = gw.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
            first = asyncio.ensure_future(stream.read())
            while not first.done():  # small writes until the stream is attached and gets one
                await gw.ok(sid, "write", server_handle=sh, item_handle=ih, value=string_value(10))
                await asyncio.wait([first], timeout=0.2)
            assert (await first).worker_sequence >= 1  # then read nothing while writing
            before = server.rss()
            async with Health(server.endpoint):
                with PeakRss(server) as rss:
                    for i in range(8):
                        await gw.ok(
                            sid,
                            "write",
                            server_handle=sh,
                            item_handle=ih,
                            value=pb.MxValue(string_value=str(i) * value),
                        )
                        await asyncio.sleep(0.25)  # a scan tick apart: one event each
            fault = None
            with contextlib.suppress(grpc.aio.AioRpcError):
                while fault is None:
                    event = await stream.read()
                    assert event is not grpc.aio.EOF
                    if event.HasField("stream_fault"):
                        fault = event.stream_fault
            assert fault is not None
            assert fault.kind == pb.STREAM_FAULT_KIND_EVENT_QUEUE_OVERFLOW
            assert "--event-queue-bytes" in fault.message
            # 8 x 2 MiB were raised; the queue never held more than about 4 MiB of them.
            print(f"server RSS +{(rss.peak - before) / MIB:.0f} MiB at peak")
            assert rss.peak - before < 48 * MIB, (before, rss.peak)


# -- the item_context cache ----------------------------------------------------------------


async def test_unique_large_item_contexts_are_refused_and_do_not_fill_a_cache(
    tmp_path: Path,
) -> None:
    with serve(tmp_path) as server:
        async with client(server) as gw:
            sid = await gw.open()
            sh = await gw.register(sid)
            await asyncio.sleep(0.5)
            before = server.rss()
            async with Health(server.endpoint):
                with PeakRss(server) as rss:
                    for i in range(40):
                        reply = await gw.invoke(
                            sid,
                            "add_item2",
                            server_handle=sh,
                            item_definition="Me.Level",
                            item_context=f"{i:04d}" + "T" * (2 * MIB),
                        )
                        assert (
                            reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
                        )
                        assert "item context is 2,097,156" in reply.diagnostic_message or (
                            "item context is 2097156 characters" in reply.diagnostic_message
                        ), reply.diagnostic_message
                    # Contexts of the largest legal size, all different: the session's cache
                    # stays within --reference-cache-bytes.
                    for i in range(2000):
                        await gw.ok(
                            sid,
                            "add_item2",
                            server_handle=sh,
                            item_definition="Me.Level",
                            item_context=f"{i:05d}" + "T" * 320,
                        )
            # 40 x 2 MiB cached process-wide was +80 MiB (or more) that outlived the session.
            print(f"server RSS +{(rss.peak - before) / MIB:.0f} MiB at peak")
            assert rss.peak - before < 40 * MIB, (before, rss.peak)


# -- items per session -----------------------------------------------------------------------


async def test_items_per_session_are_capped_and_a_refused_bulk_add_creates_nothing() -> None:
    async with gateway(max_items_per_session=100) as (_, gw):
        sid = await gw.open()
        sh = await gw.register(sid)
        refs = [f"Tank01.Level{i}" for i in range(150)]
        for payload in ("add_item_bulk", "subscribe_bulk"):
            reply = await gw.invoke(sid, payload, server_handle=sh, tag_addresses=refs)
            assert reply.protocol_status.code == OVERLOADED, reply.protocol_status
            assert "--max-items-per-session" in reply.protocol_status.message
            assert not reply.HasField("bulk_subscribe")
        # Nothing was created: the whole allowance is still free.
        reply = await gw.ok(sid, "add_item_bulk", server_handle=sh, tag_addresses=refs[:100])
        assert all(r.was_successful for r in reply.bulk_subscribe.results)
        reply = await gw.invoke(sid, "add_item", server_handle=sh, item_definition="Tank01")
        assert reply.protocol_status.code == OVERLOADED
        assert "--max-items-per-session" in reply.protocol_status.message
        for _ in range(99):  # registrations are capped alike (one is already held)
            await gw.register(sid)
        reply = await gw.invoke(sid, "register", client_name="one too many")
        assert reply.protocol_status.code == OVERLOADED
        assert "registrations" in reply.protocol_status.message
        closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        assert closed.released_item_count == 100
        assert closed.released_registration_count == 100


async def test_a_buffered_batch_goes_out_before_it_outgrows_a_message() -> None:
    limit = 256 * 1024
    async with gateway(max_message_bytes=limit, max_value_bytes=64 * 1024) as (sim, gw):
        sid = await gw.open()
        sh = await gw.register(sid)
        # A buffered item whose interval never comes: without a byte bound its batch grew
        # by one sample per scan for as long as the caller liked.
        reply = await gw.ok(
            sid,
            "subscribe_bulk",
            server_handle=sh,
            tag_addresses=[BIG_TAG],
            buffered_update_interval_ms=3_600_000,
        )
        ih = reply.bulk_subscribe.results[0].item_handle
        writer = await gw.add(sid, sh, BIG_TAG)
        await gw.ok(sid, "advise", server_handle=sh, item_handle=writer)
        assert sim.plant is not None
        for i in range(8):  # 8 x 60 KB, one per scan: about four times what fits at once
            value = pb.MxValue(string_value=f"{i:02d}" + "b" * 60_000)
            await gw.ok(sid, "write", server_handle=sh, item_handle=writer, value=value)
            # The write is applied now: a tick that starts from here on samples it. The tick
            # is read after the reply, not before the call: a call late by two scans (a loaded
            # machine) let the next write replace this value before any tick saw it. The
            # clock cannot park meanwhile (the writer is advised), so ticks are real scans.
            tick = sim.plant.tick
            for _ in range(1000):  # until a whole tick ran after the write: it was sampled
                if sim.plant.tick >= tick + 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"no scan ran within 10 s of writing value {i:02d}")
        events: list[pb.MxEvent] = []
        while drained := await gw.drain(sid):  # several replies: each holds what fits
            events.extend(drained)
        batches = [
            e.on_buffered_data_change
            for e in events
            if e.HasField("on_buffered_data_change") and e.on_buffered_data_change.item_handle == ih
        ]
        assert batches, "no buffered batch went out early"
        assert all(b.ByteSize() < limit for b in batches)
        seen = [
            s.value.string_value[:2]
            for b in batches
            for s in b.samples
            if len(s.value.string_value) > 60_000
        ]
        # Every value sampled so far went out, in order, none lost, in batches that fit.
        assert len(batches) >= 2 and len(seen) >= 4
        assert seen == [f"{i:02d}" for i in range(len(seen))]


# -- nothing lost on a failed reply -------------------------------------------------------------


async def test_a_bulk_add_whose_reply_would_not_fit_creates_nothing() -> None:
    async with gateway(max_message_bytes=64 * 1024, max_value_bytes=1024) as (_, gw):
        sid = await gw.open()
        sh = await gw.register(sid)
        # Fits the request limit (about 12 bytes a row) but not the reply (about 60):
        # refused after some items were made, which are removed again.
        refs = [f"Tank01.L{i:04d}" for i in range(1500)]
        for payload in ("add_item_bulk", "subscribe_bulk"):
            reply = await gw.invoke(sid, payload, server_handle=sh, tag_addresses=refs)
            assert reply.protocol_status.code == INVALID
            assert "--max-message-bytes" in reply.protocol_status.message
            assert "nothing was created" in reply.protocol_status.message
        # Far too many rows for any reply: refused before any work.
        many = ["T"] * 20_000
        reply = await gw.invoke(sid, "add_item_bulk", server_handle=sh, tag_addresses=many)
        assert reply.protocol_status.code == INVALID
        closed = await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        assert closed.released_item_count == 0
        assert closed.released_advise_count == 0


async def test_drain_returns_what_fits_and_keeps_the_rest() -> None:
    async with gateway(max_message_bytes=256 * 1024, max_value_bytes=64 * 1024) as (sim, gw):
        sid = await gw.open()
        sh, ih = await watch(gw, sid)
        session = sim.sessions.get(sid) if sim.sessions else None
        assert session is not None
        for i in range(12):  # 12 x 60 KB OnDataChange: about three replies' worth
            value = pb.MxValue(string_value=f"{i:02d}" + "v" * 60_000)
            expected = session.events.next_seq + 2  # OnWriteComplete, then OnDataChange
            await gw.ok(sid, "write", server_handle=sh, item_handle=ih, value=value)
            for _ in range(1000):  # until the scan delivered it
                if session.events.next_seq >= expected:
                    break
                await asyncio.sleep(0.01)
        drains: list[list[pb.MxEvent]] = []
        while True:
            reply = await gw.invoke(sid, "drain_events")
            assert reply.protocol_status.code == OK
            assert reply.ByteSize() <= 256 * 1024
            if not reply.drain_events.events:
                break
            drains.append(list(reply.drain_events.events))
        assert len(drains) >= 3  # the events did not fit in one reply...
        events = [e for batch in drains for e in batch]
        sequences = [e.worker_sequence for e in events]
        assert sequences == list(range(1, session.events.next_seq))  # ...and none was lost
        written = [
            e.on_data_change.value.string_value[:2]
            for e in events
            if len(e.on_data_change.value.string_value) > 60_000
        ]
        assert written == [f"{i:02d}" for i in range(12)]


def test_an_event_too_large_for_any_reply_is_named_not_stuck() -> None:
    # With the checked limits no event outgrows a reply; this is the last line of defence,
    # so it is driven on the event log directly (a real server cannot produce one).
    log = EventLog(
        "s",
        ring_size=100,
        ring_age_s=60,
        queue_limit=100,
        policy=OverflowPolicy.DISCONNECT_SUBSCRIBER,
        multiple_subscribers=False,
        max_subscribers=1,
        on_fail_fast=lambda _: None,
    )

    def change(text: str) -> DataChange:
        return DataChange(1, 1, TagSample(text, MX_STRING, 192, 1.0, STATUS_OK))

    log.publish([change("small"), change("x" * 50_000), change("after")])
    first = [pb.MxEvent.FromString(b) for b in log.drain(0, 10_000)]
    assert [e.on_data_change.value.string_value for e in first] == ["small"]
    second = [pb.MxEvent.FromString(b) for b in log.drain(0, 10_000)]
    assert len(second) == 1 and second[0].HasField("stream_fault")
    fault = second[0].stream_fault
    assert (fault.first_missing_sequence, fault.missing_count) == (2, 1)
    assert "--max-message-bytes" in fault.message
    third = [pb.MxEvent.FromString(b) for b in log.drain(0, 10_000)]
    assert [(e.worker_sequence, e.on_data_change.value.string_value) for e in third] == [
        (3, "after")
    ]


async def test_a_megabyte_session_name_is_refused() -> None:
    async with gateway() as (sim, gw):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await gw.open("n" * (1024 * 1024))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is 256" in (info.value.details() or "")
        assert sim.sessions is not None and len(sim.sessions) == 0
        assert await gw.open("n" * 256)  # the longest name allowed


async def test_a_megabyte_acknowledgement_comment_is_refused() -> None:
    async with gateway() as (_, gw):
        guid = "6f0b3b1e-0000-4000-8000-000000000999"
        comment = "c" * (1024 * 1024)
        reply = await gw.stub.AcknowledgeAlarm(
            pb.AcknowledgeAlarmRequest(alarm_guid=guid, comment=comment), metadata=gw.md
        )
        assert reply.protocol_status.code == INVALID
        assert "comment is 1,048,576 characters long; the limit is 1024" in (
            reply.protocol_status.message
        )
        sid = await gw.open()
        reply = await gw.invoke(
            sid, "acknowledge_alarm", alarm_guid=guid, operator_user="o" * 300, comment="ok"
        )
        assert reply.protocol_status.code == INVALID
        assert "operator_user is 300 characters" in reply.protocol_status.message
