"""Side by side with OPC UA (``asyncua``): the figures of issue 15, as ratios.

The nearest peer a user would pick instead of the gateway is OPC UA with ``asyncua``. Both
servers run in their own subprocesses on 127.0.0.1 in the same run: the simulator
(``bench/sim_server.py``; a busy one at a 1 ms scan on asyncio for the events and bulk
reads, one as ``mxgw-sim serve`` starts by default for the single calls) and an asyncua
server (``bench/opcua_server.py``,
Double variables changed every ``scan`` by its own fast write path). The two clients run in
this process, one after the other, in interleaved rounds (the order alternates between
rounds), and every row is the median of the per-round ratios mxgateway / asyncua with their
spread (min-max), next to its goal and met/missed.
While single calls are timed no other row's simulator ticks (asyncua's plant is stopped
then too): the busy simulator's write tag is advised only during its own calls, the advised
bulk row's tags only during the bulk rows.

Rows (the table of issue 15):

* client CPU per delivered change, typed ``Session.events()`` reading value, quality and
  timestamp, 2,000 and 200 changing tags (asyncua: a subscription whose handler reads the
  value, status code and source timestamp);
* the same through ``GatewayClient.subscribe()`` (``TagValue``: value, quality, timestamp);
* bulk read of 10,000 tags (``Session.read_bulk`` vs ``Client.read_values``), best of the
  round: from the simulator at a 1 ms scan (every tag changed since the last read), from
  one at a 1 s scan with the tags advised, and from that one without advising (like the
  asyncua side, whose variables do not change during the read);
* single-tag read median and p99 (``read_bulk`` of one tag vs ``Node.read_value``);
* ``Session.ping()`` vs asyncua's read; write one value (``Session.write`` vs
  ``Node.write_value``), median.

Also: the simulator keeping up (one subscriber of 2,000 tags at a 1 ms scan for 20 s:
changes/s, the lag of the last change received, the plant's late scans). The machine's
load average is recorded before and after the run (``load_before``/``load_after``).
The floor of a unary call is reported next to the rows (``references``, no goal): the
bare generated stub's ``Invoke`` (a request built once, a plain ``grpc.aio`` channel, no
library) reading one tag and pinging, against the same simulator as the ``_unary`` rows,
over asyncua's read; and a bare health check (``grpc_health_vs_asyncua_read_median``).
And the library's own CPU per single call on the command stream with gRPC left out
(``library_cpu_per_call_without_grpc``: the stream's call answers canned replies); and the
single calls on the stream against the busy simulator (``single_calls_busy_simulator``,
same ratios; see :data:`BUSY_SUFFIX`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import _client
from bench._common import (
    CpuClock,
    Report,
    ServerProcess,
    begin,
    cannot_run,
    load,
    load_tags,
    median,
    pct,
    rnd,
    sim_server,
)

GOALS: dict[str, float] = {
    "events_typed_2000_cpu_per_change": 0.12,
    "events_typed_200_cpu_per_change": 0.12,
    "events_subscribe_2000_cpu_per_change": 0.15,
    "bulk_read_10000": 0.05,
    "bulk_read_10000_advised": 0.05,
    "bulk_read_10000_scan_1s": 0.05,
    "read_one_median": 1.0,
    "read_one_p99": 1.0,
    "ping_vs_read_median": 1.0,
    "write_one_median": 1.0,
    "read_one_median_unary": 1.0,
    "read_one_p99_unary": 1.0,
    "ping_vs_read_median_unary": 1.0,
    "write_one_median_unary": 1.0,
}
"""Row -> the highest ratio mxgateway / asyncua that meets the goal of issue 15."""

LABELS: dict[str, str] = {
    "events_typed_2000_cpu_per_change": "client CPU per change, typed events, value+quality"
    "+timestamp read (2,000 tags)",
    "events_typed_200_cpu_per_change": "same, 200 tags",
    "events_subscribe_2000_cpu_per_change": "same through client.subscribe() (2,000 tags)",
    "bulk_read_10000": "bulk read of 10,000 tags (best of round)",
    "bulk_read_10000_advised": "same, tags advised beforehand (answered from the advise "
    "cache, simulator at a 1 s scan)",
    "bulk_read_10000_scan_1s": "same, not advised, simulator at a 1 s scan (like asyncua's "
    "variables, its values do not change during the read)",
    "read_one_median": "single-tag read, median",
    "read_one_p99": "single-tag read, p99",
    "ping_vs_read_median": "session.ping() vs asyncua read, median",
    "write_one_median": "write one value, median",
    "read_one_median_unary": "single-tag read, median (unary Invoke)",
    "read_one_p99_unary": "single-tag read, p99 (unary Invoke)",
    "ping_vs_read_median_unary": "session.ping() vs asyncua read, median (unary Invoke)",
    "write_one_median_unary": "write one value, median (unary Invoke)",
}
"""Single calls go through the command stream (``InvokeStream``, the library's default); the
``_unary`` rows are the same calls through one ``Invoke`` each
(``ClientOptions(command_stream=False)``)."""

BUSY_SUFFIX = "_busy_sim"
"""Raw and row names of the single calls measured against the busy simulator the event rows
use (asyncio loop, 1 ms scan: ``single_calls_busy_simulator`` in the results). The main
single-call rows run against a simulator as ``mxgw-sim serve`` starts it by default
(``--event-loop auto``: uvloop where installed; 200 ms scan), like the asyncua server, which
changes nothing while single calls are measured."""

REFERENCES: dict[str, tuple[str, str, str]] = {
    "bare_stub_read_median": (
        "bare generated stub Invoke, one-tag ReadBulk (request built once, plain grpc.aio "
        "channel) vs asyncua read, median",
        "bare_read",
        "ua_read",
    ),
    "bare_stub_ping_median": ("same, Ping vs asyncua read, median", "bare_ping", "ua_read"),
}
"""Reference rows (no goal): name -> (label, mxgateway figure, asyncua figure). The floor
of the ``_unary`` rows: what ``Invoke`` costs with nothing of the library around it."""

FULL = {
    "rounds": 5,
    "calls": 400,
    "warm_s": 0.6,
    "window_s": 2.0,
    "bulk": 10_000,
    "objects": 2_600,
    "keepup_s": 20.0,
}
QUICK = {
    "rounds": 1,
    "calls": 20,
    "warm_s": 0.2,
    "window_s": 0.3,
    "bulk": 200,
    "objects": 300,
    "keepup_s": 1.0,
}


def opcua_server(tags: int, scan_ms: float = 1.0) -> ServerProcess:
    """``bench/opcua_server.py`` in a subprocess."""
    argv = [sys.executable, "-m", "bench.opcua_server", "--tags", str(tags)]
    return ServerProcess([*argv, "--scan-ms", f"{scan_ms:g}"], ready_timeout=300.0)


# -- the two sides --------------------------------------------------------------------------


class Mx:
    """The mxgateway side: a library session on the simulator."""

    def __init__(self, lib: Any, tags: list[str], values: list[object]) -> None:
        self.lib = lib
        self.session = lib.session
        self.tags = tags
        self.values = values
        self.hlmx = 0
        self.write_handle = 0
        self.advised: list[int] = []
        self._health: Any = None

    async def setup(self) -> None:
        self.hlmx = await self.session.register("bench-opcua")

    async def read_one(self) -> None:
        await self.session.read_bulk(self.hlmx, (self.tags[0],))

    async def ping(self) -> None:
        await self.session.ping()

    async def bare_health(self) -> None:
        """A bare grpc.aio health check on the library's channel: the floor of a unary call
        (no key, no session, the smallest messages; it passes the server's interceptors)."""
        if self._health is None:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            stub = health_pb2_grpc.HealthStub(self.lib.client.transport.channel)
            request = health_pb2.HealthCheckRequest()
            self._health = lambda: stub.Check(request, timeout=30)
        await self._health()

    async def write_one(self) -> None:
        await self.session.write(self.hlmx, self.write_handle, self.values[0])

    async def begin_writes(self) -> None:
        rows = await self.session.subscribe_bulk(self.hlmx, self.tags[:1])
        self.write_handle = rows[0].item_handle

    async def end_writes(self) -> None:
        await self.session.unsubscribe_bulk(self.hlmx, [self.write_handle])

    async def bulk_read(self, n: int) -> int:
        rows = await self.session.read_bulk(self.hlmx, self.tags[:n])
        return sum(1 for r in rows if r.was_successful)

    async def advise(self, n: int) -> None:
        """Advise the first ``n`` tags (:meth:`unadvise` ends it)."""
        rows = await self.session.subscribe_bulk(self.hlmx, self.tags[:n])
        self.advised = [r.item_handle for r in rows if r.was_successful]

    async def unadvise(self) -> None:
        handles, self.advised = self.advised, []
        if handles:
            await self.session.unsubscribe_bulk(self.hlmx, handles)

    async def typed_events(self, n: int, counter: list[int]) -> Callable[[], Awaitable[None]]:
        """Advise ``n`` tags and consume ``Session.events()``; returns the stop function."""
        session = self.session
        rows = await session.subscribe_bulk(self.hlmx, self.tags[:n])  # fewer when quick
        handles = [r.item_handle for r in rows if r.was_successful]
        data_change = _mx().DataChange
        stream = session.events(new_only=True)

        async def consume() -> None:
            sink: Any = None
            async for ev in stream:
                if type(ev) is data_change:
                    sink = (ev.value, ev.quality, ev.timestamp)
                    counter[0] += 1
            del sink

        task = asyncio.ensure_future(consume())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()
            counter[1] += int(getattr(stream, "resume_count", 0))
            counter[2] += int(getattr(stream, "missed_events", 0))
            await session.unsubscribe_bulk(self.hlmx, handles)

        return stop

    async def subscribe(self, n: int, counter: list[int]) -> Callable[[], Awaitable[None]]:
        """``GatewayClient.subscribe()`` of ``n`` tags; returns the stop function."""
        sub = self.lib.client.subscribe(self.tags[:n], queue_size=10_000)
        sub.start()

        tag_value = _mx().TagValue

        async def consume() -> None:
            sink: Any = None
            async for tv in sub:
                if type(tv) is tag_value:
                    sink = (tv.value, tv.quality, tv.timestamp)
                    counter[0] += 1
            del sink

        task = asyncio.ensure_future(consume())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sub.aclose()

        return stop


class BareStub:
    """The generated stub's ``Invoke`` on a plain ``grpc.aio`` channel of its own (no
    options, no library), with requests built once: one-tag ReadBulk and Ping in ``mx``'s
    session (same key, so the gateway lets it act there)."""

    def __init__(self, address: str, mx: Mx) -> None:
        import grpc

        from bench._common import METADATA
        from mxgateway.generated import mxaccess_gateway_pb2 as pb
        from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

        self.channel = grpc.aio.insecure_channel(address)
        invoke = pb_grpc.MxAccessGatewayStub(self.channel).Invoke
        sid = str(mx.session.session_id)
        read = pb.MxCommandRequest(session_id=sid, client_correlation_id="bench-bare-read")
        read.command.kind = pb.MX_COMMAND_KIND_READ_BULK
        read.command.read_bulk.server_handle = mx.hlmx
        read.command.read_bulk.tag_addresses.append(mx.tags[0])
        ping = pb.MxCommandRequest(session_id=sid, client_correlation_id="bench-bare-ping")
        ping.command.kind = pb.MX_COMMAND_KIND_PING
        ping.command.ping.SetInParent()
        ok = pb.PROTOCOL_STATUS_CODE_OK

        async def call(request: Any) -> None:
            reply = await invoke(request, metadata=METADATA, timeout=30)
            if reply.protocol_status.code != ok:
                raise RuntimeError(f"bare Invoke failed: {reply.protocol_status}")

        self.read_one = lambda: call(read)
        self.ping = lambda: call(ping)

    async def close(self) -> None:
        await self.channel.close(None)


@contextlib.asynccontextmanager
async def stream_session(address: str) -> AsyncIterator[Any]:
    """A library client on the command stream (``InvokeStream``, the library's default)
    and one open session; ``_client.library_session`` gives the unary ``Invoke`` one."""
    async with _client.library_session(address, command_stream=True) as lib:
        yield lib


def _mx() -> Any:
    import mxgateway

    return mxgateway


class Ua:
    """The asyncua side: a client on the bench OPC UA server, connected afresh each round
    (asyncua drops a connection whose keep-alives starve while the other side's consumer
    holds the loop; a new connection per round keeps one drop from ending the run)."""

    def __init__(self, address: str, ns: int, tags: int) -> None:
        from asyncua import ua

        self.ua = ua
        self.address = address
        self.ns = ns
        self.tags = tags
        self.client: Any = None
        self.nodes: list[Any] = []
        self.reconnects = -1

    async def connect(self) -> None:
        """(Re)connect and look the nodes up again."""
        from asyncua import Client

        await self.close()
        ua = self.ua
        # No watchdog reads: under full load they time out and end the connection.
        client = Client(self.address, timeout=30, watchdog_intervall=3600.0)
        await client.connect()
        self.client = client
        self.reconnects += 1
        self.nodes = [client.get_node(ua.NodeId(f"Tag{i}", self.ns)) for i in range(self.tags)]
        self.control = client.get_node(ua.NodeId("ChangeCount", self.ns))
        self.node = self.nodes[0]

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def set_changing(self, n: int) -> None:
        ua = self.ua
        await self.control.write_value(ua.DataValue(ua.Variant(n, ua.VariantType.Int32)))

    async def read_one(self) -> None:
        await self.node.read_value()

    async def write_one(self) -> None:
        ua = self.ua
        await self.node.write_value(ua.DataValue(ua.Variant(0.25, ua.VariantType.Double)))

    async def bulk_read(self, n: int) -> int:
        return len(await self.client.read_values(self.nodes[:n]))

    async def events(self, n: int, counter: list[int]) -> Callable[[], Awaitable[None]]:
        """A subscription of ``n`` tags whose handler reads value, status, source time."""
        await self.connect()

        class Handler:
            sink: Any = None

            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                dv = data.monitored_item.Value
                self.sink = (val, dv.StatusCode, dv.SourceTimestamp)
                counter[0] += 1

        sub = await self.client.create_subscription(10, Handler())
        await sub.subscribe_data_change(self.nodes[:n], queuesize=1)
        await self.set_changing(n)

        async def stop() -> None:
            await self.set_changing(0)
            await sub.delete()

        return stop


# -- measurements ---------------------------------------------------------------------------


async def timed_calls(call: Callable[[], Awaitable[None]], n: int) -> list[float]:
    """``n`` sequential calls; each one's latency in µs."""
    out: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await call()
        out.append((clock() - t0) * 1e6)
    return out


async def cpu_per_change(
    start: Callable[[list[int]], Awaitable[Callable[[], Awaitable[None]]]],
    warm_s: float,
    window_s: float,
) -> dict[str, float]:
    """Start a consumer, let it warm up, then client CPU and changes over ``window_s``."""
    counter = [0, 0, 0]  # changes, stream resumes, changes the gateway reported lost
    stop = await start(counter)
    try:
        await asyncio.sleep(warm_s)
        for _ in range(100):  # a loaded machine may take longer to deliver the first ones
            if counter[0]:
                break
            await asyncio.sleep(0.05)
        c0 = counter[0]
        with CpuClock() as clock:
            await asyncio.sleep(window_s)
            changes = counter[0] - c0
    finally:
        await stop()
    return {
        "changes": changes,
        "changes_per_s": rnd(changes / clock.wall, 0),
        "cpu_us_per_change": rnd(clock.cpu / changes * 1e6, 2) if changes else float("nan"),
        "client_cpu_share": rnd(clock.cpu / clock.wall, 3),
        "resumes": counter[1],
        "lost": counter[2],
    }


def ratio_table(rows: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Per row (a name of :data:`GOALS`, maybe with a suffix): both sides' medians, the
    median ratio and its spread, goal, met/missed."""
    table: dict[str, Any] = {}
    for name, pairs in rows.items():
        ratios = [m / u for m, u in pairs if u and m == m and u == u]
        r = median(ratios) if ratios else float("nan")
        base = name.removesuffix(BUSY_SUFFIX)
        goal = GOALS[base]
        table[name] = {
            "label": LABELS[base],
            "mxgateway": rnd(median([m for m, _ in pairs]), 2),
            "asyncua": rnd(median([u for _, u in pairs]), 2),
            "ratio": rnd(r, 3),
            "ratio_min": rnd(min(ratios), 3) if ratios else None,
            "ratio_max": rnd(max(ratios), 3) if ratios else None,
            "rounds": len(ratios),
            "goal": goal,
            "met": bool(r <= goal) if ratios else None,
        }
    return table


def reference_table(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The :data:`REFERENCES` rows from the rounds' medians: both sides, the median ratio
    of the rounds and its spread (no goal)."""
    table: dict[str, Any] = {}
    for name, (label, mine, theirs) in REFERENCES.items():
        pairs = [(u[mine]["median_us"], u[theirs]["median_us"]) for u in rounds]
        ratios = [m / t for m, t in pairs if t]
        table[name] = {
            "label": label,
            "mxgateway": rnd(median([m for m, _ in pairs]), 2),
            "asyncua": rnd(median([t for _, t in pairs]), 2),
            "ratio": rnd(median(ratios), 3) if ratios else None,
            "ratio_min": rnd(min(ratios), 3) if ratios else None,
            "ratio_max": rnd(max(ratios), 3) if ratios else None,
            "rounds": len(ratios),
        }
    return table


def summarise(report: Report, rows: dict[str, list[tuple[float, float]]]) -> None:
    """The rows of :data:`GOALS`, each a target with its goal and met/missed."""
    table = ratio_table(rows)
    for name, row in table.items():
        report.target(LABELS[name], f"ratio <= {row['goal']}", row["ratio"], row["met"])
    report.results["rows"] = table


async def unary_round(
    mx: Mx,
    mx_unary: Mx,
    ua: Ua,
    calls: int,
    flip: bool,
    mx_busy: Mx | None = None,
    bare: BareStub | None = None,
) -> dict[str, dict[str, float]]:
    """One interleaved round of single calls: read, ping, write on both sides (mxgateway
    on the command stream and through unary ``Invoke``; with ``mx_busy``, on the stream to
    the busy simulator, see :data:`BUSY_SUFFIX`; with ``bare``, the bare stub's read and
    ping, see :data:`REFERENCES`)."""
    # The busy simulator's write tag is advised only while its own calls run: advised,
    # its 1 ms scan ticks (a thousand wake-ups a second) are background for every other
    # side's calls (bench readtail), as a plant writing while asyncua is measured would be.
    sides = [mx, mx_unary]
    for side in sides:
        await side.begin_writes()
    try:
        order: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("mx_read", mx.read_one),
            ("ua_read", ua.read_one),
            ("mx_read_unary", mx_unary.read_one),
            ("mx_ping", mx.ping),
            ("mx_ping_unary", mx_unary.ping),
            ("grpc_health", mx.bare_health),
            ("mx_write", mx.write_one),
            ("ua_write", ua.write_one),
            ("mx_write_unary", mx_unary.write_one),
        ]
        if bare is not None:
            order[3:3] = [("bare_read", bare.read_one)]
            order[6:6] = [("bare_ping", bare.ping)]
        if mx_busy is not None:
            order[3:3] = [("mx_read" + BUSY_SUFFIX, mx_busy.read_one)]
            order[6:6] = [("mx_ping" + BUSY_SUFFIX, mx_busy.ping)]
            order.append(("mx_write" + BUSY_SUFFIX, mx_busy.write_one))
        if flip:
            order.reverse()
        out: dict[str, dict[str, float]] = {}
        for name, call in order:
            busy = mx_busy is not None and name.endswith(BUSY_SUFFIX)
            if busy:
                assert mx_busy is not None
                await mx_busy.begin_writes()
            try:
                await timed_calls(call, max(3, calls // 20))  # warm-up
                lat = await timed_calls(call, calls)
            finally:
                if busy:
                    assert mx_busy is not None
                    await mx_busy.end_writes()
            out[name] = {"median_us": rnd(median(lat), 1), "p99_us": rnd(pct(lat, 99), 1)}
    finally:
        for side in sides:
            await side.end_writes()
    return out


class _CannedStream:
    """Stands in for the library's ``InvokeStream`` call: answers each command with a
    canned reply of its kind at once (no gRPC), so only the library's own work is timed."""

    def __init__(self, replies: dict[int, Any]) -> None:
        self.replies = replies
        self.kind = 0

    def done(self) -> bool:
        return False

    async def write(self, request: Any) -> None:
        self.kind = request.command.kind

    async def read(self) -> Any:
        return self.replies[self.kind]

    def cancel(self) -> None:
        pass


async def library_cpu(mx: Mx, quick: bool) -> dict[str, float]:
    """The library's own CPU per single call on the command stream, gRPC left out:
    ``read_one``, ``ping`` and ``write_one`` with the stream's call replaced by
    :class:`_CannedStream`. Deterministic, unlike round trips (best of 5 runs)."""
    from mxgateway.generated import mxaccess_gateway_pb2 as pb

    def ok(kind: int) -> Any:
        reply = pb.MxCommandReply(kind=kind)  # type: ignore[arg-type]
        reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
        return reply

    read = ok(pb.MX_COMMAND_KIND_READ_BULK)
    row = read.bulk_read.results.add(tag_address=mx.tags[0], was_successful=True)
    row.value.double_value = 0.25
    commands = mx.lib.client._commands
    if commands is None:
        return {}
    # The canned stream is no gRPC call, so no gRPC batch: this stream writes then reads
    # (the library's work on either path is the same) without setting off the process-wide
    # fallback for a grpcio whose batch primitives differ (mxgateway._grpcbatch).
    batch, commands._batch = commands._batch, False
    commands._answered = False  # what the next reply sets from _batch
    real, commands._call = (
        commands._call,
        _CannedStream(
            {
                pb.MX_COMMAND_KIND_READ_BULK: read,
                pb.MX_COMMAND_KIND_PING: ok(pb.MX_COMMAND_KIND_PING),
                pb.MX_COMMAND_KIND_WRITE: ok(pb.MX_COMMAND_KIND_WRITE),
            }
        ),
    )
    n = 2_000 if quick else 20_000
    out: dict[str, float] = {}
    try:
        for name, call in (("read", mx.read_one), ("ping", mx.ping), ("write", mx.write_one)):
            best = float("inf")
            for _ in range(5):
                c0 = time.process_time()
                for _ in range(n):
                    await call()
                best = min(best, (time.process_time() - c0) / n * 1e6)
            out[f"{name}_us"] = rnd(best, 2)
    finally:
        commands._call = real
        commands._batch = commands._answered = batch
    return out


def keep_up_server(
    objects: int, tags_file: str, stats_file: str, event_loop: str = "asyncio"
) -> ServerProcess | None:
    """The simulator :func:`keep_up` measures: a 1 ms scan, its tags in ``tags_file``, its
    scan counters in ``stats_file`` on SIGUSR2.

    A queue of 1,000,000 events (as issue 15 measured): a subscriber that falls behind
    shows as lag instead of being disconnected after 10,000 events (~70 ms here).
    """
    return sim_server(
        galaxy_objects=objects,
        scan_ms=1,
        tags_out=tags_file,
        event_queue_limit=1_000_000,
        extra=["--stats-file", stats_file, "--event-queue-bytes", str(128 << 20)],
        event_loop=event_loop,
    )


async def keep_up(lib: Any, tags: list[str], seconds: float, sim: ServerProcess) -> dict[str, Any]:
    """One subscriber of ``len(tags)`` tags at a 1 ms scan: changes/s and the lag at the end.

    Read with the raw batch stream (the cheapest consumer) so the figure is the
    simulator's. The lag is the wall time now minus the source timestamp of the last
    change received, at the end of the window.
    """
    session = lib.session
    hlmx = await session.register("bench-keepup")
    rows = await session.subscribe_bulk(hlmx, tags)
    handles = [r.item_handle for r in rows if r.was_successful]
    stream = lib.client.stream_event_batches_raw(session.session_id)
    count = 0
    last_ts = 0.0
    cpu0 = sim.cpu_seconds()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    lag_samples: list[float] = []
    next_sample = t0 + 1.0
    disconnected = None
    try:
        async for batch in stream:
            events = batch.events
            count += len(events)  # only OnDataChange events flow here (no writes, no alarms)
            if events:
                ts = events[-1].on_data_change.timestamp
                last_ts = ts.seconds + ts.nanos * 1e-9
            now = time.perf_counter()
            if now >= next_sample and last_ts:
                lag_samples.append(rnd(time.time() - last_ts, 3))
                next_sample += 1.0
            if now >= deadline:
                break
    except _mx().MxGatewayError as exc:  # the simulator disconnected a subscriber behind
        disconnected = f"{time.perf_counter() - t0:.2f} s: {type(exc).__name__}"
    finally:
        await stream.aclose()
        await session.unsubscribe_bulk(hlmx, handles)
    wall = time.perf_counter() - t0
    cpu1 = sim.cpu_seconds()
    return {
        "tags": len(handles),
        "seconds": rnd(wall, 2),
        "changes_per_s": rnd(count / wall, 0),
        "lag_end_s": rnd(time.time() - last_ts, 3) if last_ts else None,
        "lag_per_second_s": lag_samples,
        "disconnected": disconnected,
        "server_cpu_share": rnd((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 else None,
    }


async def scan_stats(sim: ServerProcess, path: str) -> dict[str, Any]:
    """The simulator's scan counters (``Plant.scan_stats()``), asked for with SIGUSR2."""
    import json
    import signal

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    assert sim.proc is not None
    sim.proc.send_signal(signal.SIGUSR2)
    for _ in range(100):
        await asyncio.sleep(0.02)
        with contextlib.suppress(FileNotFoundError, ValueError):
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
            doc: dict[str, Any] = json.loads(text)
            return doc
    return {}


def add_keep_up_target(report: Report, keep: dict[str, Any]) -> None:
    """Issue 15 item 2: 150,000+ changes/s, lag under 1 s at the end of the window."""
    rate, lag = keep.get("changes_per_s"), keep.get("lag_end_s")
    met = (
        keep.get("disconnected") is None
        and rate is not None
        and rate >= 150_000
        and lag is not None
        and lag < 1.0
    )
    report.target(
        "simulator keeps up: 2,000 tags at a 1 ms scan, one subscriber",
        ">= 150,000 changes/s, lag < 1 s at the end of the window, not disconnected",
        rate,
        bool(met),
    )


async def run_async(quick: bool) -> dict[str, Any]:
    """Start both servers, run the interleaved rounds, return the JSON document."""
    report, p = begin("opcua", quick, QUICK, FULL)
    if cannot_run(report, asyncua=True):
        return report.to_json()
    import logging

    import asyncua

    logging.getLogger("asyncua").setLevel(int(os.environ.get("UA_LOG", logging.ERROR)))
    report.results["asyncua"] = asyncua.__version__ if hasattr(asyncua, "__version__") else "?"
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        stats_file = os.path.join(tmp, "scan-stats.json")
        sim = keep_up_server(int(p["objects"]), tags_file, stats_file)
        if sim is None:
            report.skip("everything", "mxgateway_sim is missing")
            return report.to_json()
        n_bulk = int(p["bulk"])
        # The advised bulk read: a second simulator with a 1 s scan (10,000 advised tags at
        # a 1 ms scan would be a plant of 10 million changes a second).
        slow = sim_server(galaxy_objects=int(p["objects"]), scan_ms=1000)
        assert slow is not None
        # Single calls against a simulator as `mxgw-sim serve` starts by default: its
        # event loop (uvloop where installed) and scan; the asyncua server changes nothing
        # meanwhile either. The busy simulator above is measured too (BUSY_SUFFIX).
        plain = sim_server(galaxy_objects=int(p["objects"]), scan_ms=200, event_loop="auto")
        assert plain is not None
        report.results["single_calls_simulator"] = {
            "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            "scan_ms": 200,
        }
        async with sim, slow, plain, opcua_server(n_bulk) as opc:
            tags, values = load_tags(tags_file, max(n_bulk, 2000))
            # Doubles first: the single read/write and the changing tags are alike on both.
            report.results["simulator_tags"] = len(tags)
            async with (
                _client.library_session(sim.address) as lib,
                stream_session(sim.address) as stream_lib,
                stream_session(slow.address) as slow_lib,
                stream_session(slow.address) as slow_plain_lib,
                stream_session(plain.address) as plain_lib,
                _client.library_session(plain.address) as plain_unary_lib,
            ):
                assert lib is not None
                mx = Mx(stream_lib, tags, values)
                await mx.setup()
                assert plain_unary_lib is not None
                single = Mx(plain_lib, tags, values)
                await single.setup()
                single_unary = Mx(plain_unary_lib, tags, values)
                await single_unary.setup()
                mx_advised = Mx(slow_lib, tags, values)
                await mx_advised.setup()  # its tags are advised for the bulk rows only
                mx_slow = Mx(slow_plain_lib, tags, values)  # its own session: nothing advised
                await mx_slow.setup()
                ua_side = Ua(opc.info["address"], int(opc.info["namespace"]), n_bulk)
                bare = BareStub(plain.address, single_unary)
                try:
                    await run_rounds(
                        report, mx, single, single_unary, mx_advised, mx_slow, ua_side, p, bare
                    )
                finally:
                    await ua_side.close()
                    await bare.close()
                await mx.begin_writes()  # after the rounds: nothing measured there follows it
                try:
                    report.results["library_cpu_per_call_without_grpc"] = await library_cpu(
                        mx, quick
                    )
                finally:
                    await mx.end_writes()
                before = await scan_stats(sim, stats_file)
                report.results["keep_up"] = await keep_up(
                    lib, tags[:2000], float(p["keepup_s"]), sim
                )
                after = await scan_stats(sim, stats_file)
                keep = report.results["keep_up"]
                for key in ("scans", "late_scans", "skipped_scans"):
                    keep[key] = after.get(key, 0) - before.get(key, 0)
                keep["max_behind_ms"] = after.get("max_behind_ms")
                add_keep_up_target(report, keep)
    report.results["load_after"] = load()
    report.notes.append(
        "Ratios are mxgateway / asyncua per round (the two measured next to each other, the "
        "order alternating between rounds); 'ratio' is their median, ratio_min/max the "
        "spread. Client CPU is time.process_time() of the bench process (both clients live "
        "in it, only one is active at a time) over a window after a warm-up."
    )
    return report.to_json()


async def run_rounds(
    report: Report,
    mx: Mx,
    single: Mx,
    single_unary: Mx,
    mx_advised: Mx,
    mx_slow: Mx,
    ua_side: Ua,
    p: dict[str, float],
    bare: BareStub | None = None,
) -> None:
    """Interleaved rounds of every row (``mx``: the busy simulator's session, ``single``
    and ``single_unary``: the default simulator's, see :data:`BUSY_SUFFIX`; ``bare``:
    the reference rows, see :data:`REFERENCES`)."""
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in GOALS}
    busy_rows: dict[str, list[tuple[float, float]]] = {}
    raw: dict[str, list[Any]] = {"unary": [], "bulk": [], "events": []}
    warm, window = float(p["warm_s"]), float(p["window_s"])
    n_bulk = int(p["bulk"])
    await mx.bulk_read(n_bulk)  # warm the simulator's caches (parsed references)
    await mx_slow.bulk_read(n_bulk)
    for r in range(int(p["rounds"])):
        await ua_side.connect()
        await ua_side.bulk_read(n_bulk)  # and the server's
        flip = r % 2 == 1
        u = await unary_round(single, single_unary, ua_side, int(p["calls"]), flip, mx, bare)
        raw["unary"].append(u)
        rows["read_one_median"].append((u["mx_read"]["median_us"], u["ua_read"]["median_us"]))
        rows["read_one_p99"].append((u["mx_read"]["p99_us"], u["ua_read"]["p99_us"]))
        rows["ping_vs_read_median"].append((u["mx_ping"]["median_us"], u["ua_read"]["median_us"]))
        rows["write_one_median"].append((u["mx_write"]["median_us"], u["ua_write"]["median_us"]))
        for row, mine, theirs, stat in (
            ("read_one_median_unary", "mx_read_unary", "ua_read", "median_us"),
            ("read_one_p99_unary", "mx_read_unary", "ua_read", "p99_us"),
            ("ping_vs_read_median_unary", "mx_ping_unary", "ua_read", "median_us"),
            ("write_one_median_unary", "mx_write_unary", "ua_write", "median_us"),
        ):
            rows[row].append((u[mine][stat], u[theirs][stat]))
        for row, mine, theirs, stat in (  # the same calls against the busy simulator
            ("read_one_median", "mx_read", "ua_read", "median_us"),
            ("read_one_p99", "mx_read", "ua_read", "p99_us"),
            ("ping_vs_read_median", "mx_ping", "ua_read", "median_us"),
            ("write_one_median", "mx_write", "ua_write", "median_us"),
        ):
            busy = u[mine + BUSY_SUFFIX][stat]
            busy_rows.setdefault(row + BUSY_SUFFIX, []).append((busy, u[theirs][stat]))

        # The advised bulk row's 10,000 tags are advised for the bulk rows only: advised
        # during the single calls, their simulator's tick (10,000 changes a second, tens
        # of ms of a core) was background the single calls' tail paid for (bench readtail).
        await mx_advised.advise(n_bulk)
        await mx_advised.bulk_read(n_bulk)  # warm, as it stayed advised before
        bulk: dict[str, float] = {}
        sides = {
            "mx": mx.bulk_read,
            "ua": ua_side.bulk_read,
            "mx_advised": mx_advised.bulk_read,
            "mx_scan_1s": mx_slow.bulk_read,
        }
        for side in reversed(sides) if flip else sides:
            fn = sides[side]
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                got = await fn(n_bulk)
                best = min(best, (time.perf_counter() - t0) * 1000)
                if got != n_bulk:
                    raise RuntimeError(f"{side} bulk read returned {got} of {n_bulk} rows")
            bulk[side] = rnd(best, 2)
        await mx_advised.unadvise()
        raw["bulk"].append(bulk)
        rows["bulk_read_10000"].append((bulk["mx"], bulk["ua"]))
        rows["bulk_read_10000_advised"].append((bulk["mx_advised"], bulk["ua"]))
        rows["bulk_read_10000_scan_1s"].append((bulk["mx_scan_1s"], bulk["ua"]))

        ev: dict[str, Any] = {}
        for n in (2000, 200):
            pair = [
                ("mx", lambda c, n=n: mx.typed_events(n, c)),
                ("ua", lambda c, n=n: ua_side.events(n, c)),
            ]
            for side, start in reversed(pair) if flip else pair:
                ev[f"{side}_{n}"] = await cpu_per_change(start, warm, window)
                ev[f"{side}_{n}"]["tags"] = min(n, len(mx.tags))
            rows[f"events_typed_{n}_cpu_per_change"].append(
                (ev[f"mx_{n}"]["cpu_us_per_change"], ev[f"ua_{n}"]["cpu_us_per_change"])
            )
        ev["mx_subscribe_2000"] = await cpu_per_change(
            lambda c: mx.subscribe(2000, c), warm + 0.5, window
        )
        rows["events_subscribe_2000_cpu_per_change"].append(
            (ev["mx_subscribe_2000"]["cpu_us_per_change"], ev["ua_2000"]["cpu_us_per_change"])
        )
        raw["events"].append(ev)
        print(f"bench opcua: round {r + 1} done, load {load()}", file=sys.stderr, flush=True)
    report.results["rounds"] = raw
    report.results["single_calls_busy_simulator"] = ratio_table(busy_rows)
    floor = [u["grpc_health"]["median_us"] / u["ua_read"]["median_us"] for u in raw["unary"]]
    report.results["grpc_health_vs_asyncua_read_median"] = rnd(median(floor), 3)
    if bare is not None:
        report.results["references"] = reference_table(raw["unary"])
    report.results["asyncua_reconnects"] = ua_side.reconnects
    summarise(report, rows)


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench opcua``."""
    return asyncio.run(run_async(quick))
