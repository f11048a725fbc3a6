"""``bench-stream-events``: N sessions x M advised items, events/s and latency.

Latency is the receive time minus the event's ``worker_timestamp`` (wall clocks, so it is
meaningful when client and worker share a clock, as with ``mxgw-sim`` on the same host).
Gaps are jumps in a session's ``worker_sequence``. The JSON follows the other benchmark
commands: ``language``, ``durationMs``, counts, rates and ``latencyMs{p50,p95,p99,max,mean}``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import mxgateway
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli import _human
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CliUsageError, CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import client_options, gateway_client

__all__ = ["BENCH_COMMANDS", "latency_summary", "pick_items"]

_NUMERIC_TYPES = {1, 2, 3, 4}  # Boolean, Integer, Float, Double (COM MxDataType)
_MAX_ERRORS_LISTED = 5


def latency_summary(samples_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 (nearest rank), max and mean of ``samples_ms``; None when empty."""
    if not samples_ms:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        index = max(0, math.ceil(p / 100 * len(ordered)) - 1)
        return round(ordered[index], 3)

    return {
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


@dataclass
class _SessionStats:
    events: int = 0
    data_changes: int = 0
    messages: int = 0
    faults: int = 0
    gaps: int = 0
    missed: int = 0
    last_sequence: int | None = None
    latencies: list[float] = field(default_factory=list)

    def record(self, event: pb.MxEvent, received_at: float) -> None:
        if event.WhichOneof("body") == "stream_fault":
            self.faults += 1
            return
        self.events += 1
        if event.HasField("on_data_change"):
            self.data_changes += 1
        sequence = event.worker_sequence
        if self.last_sequence is not None and sequence > self.last_sequence + 1:
            self.gaps += 1
            self.missed += sequence - self.last_sequence - 1
        if self.last_sequence is None or sequence > self.last_sequence:
            self.last_sequence = sequence
        if event.HasField("worker_timestamp"):
            ts = event.worker_timestamp
            self.latencies.append((received_at - (ts.seconds + ts.nanos / 1e9)) * 1000.0)


async def pick_items(ctx: Context, count: int) -> list[str]:
    """``count`` scalar Boolean/numeric attribute references from the Galaxy, in walk order."""
    found: list[str] = []
    options = client_options(ctx.connection())
    async with await mxgateway.GalaxyRepositoryClient.connect(options=options) as galaxy:
        async for obj in galaxy.iter_hierarchy():
            for attr in obj.attributes:
                if attr.mx_data_type in _NUMERIC_TYPES and not attr.is_array:
                    found.append(attr.full_tag_reference)
                    if len(found) >= count:
                        return found
    if not found:
        raise CliUsageError("the Galaxy has no numeric attributes to advise; pass --item")
    return found


async def _read(
    client: mxgateway.GatewayClient,
    session_id: str,
    per_event: bool,
    stats: _SessionStats,
    errors: list[str],
) -> None:
    try:
        if per_event:
            events = client.stream_events_raw(session_id)
            async with events:
                async for event in events:
                    stats.messages += 1
                    stats.record(event, time.time())
        else:
            batches = client.stream_event_batches_raw(session_id)
            async with batches:
                async for batch in batches:
                    stats.messages += 1
                    now = time.time()
                    for event in batch.events:
                        stats.record(event, now)
    except mxgateway.MxGatewayError as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


async def cmd_bench_stream_events(ctx: Context) -> ExitCode:
    """Open sessions, advise items, stream for ``--duration-seconds``, report."""
    a = ctx.args
    errors: list[str] = []
    async with gateway_client(ctx) as client:
        items = list(a.item) if a.item else await pick_items(ctx, a.items)
        sessions: list[mxgateway.Session] = []
        tasks: list[asyncio.Task[None]] = []
        stats = [_SessionStats() for _ in range(a.sessions)]
        try:
            for index in range(a.sessions):
                session = await client.open_session(f"mxgw-py-bench-{index}")
                sessions.append(session)
                server_handle = await session.register(f"mxgw-py-bench-{index}")
                results = await session.subscribe_bulk(server_handle, items)
                failed = [r for r in results if not r.was_successful]
                if len(failed) == len(results):
                    raise CommandFailed(
                        f"no item could be advised ({failed[0].error_message})",
                        ExitCode.MXACCESS,
                    )
            started = time.perf_counter()
            for session, session_stats in zip(sessions, stats, strict=True):
                tasks.append(
                    asyncio.ensure_future(
                        _read(client, session.session_id, a.per_event, session_stats, errors)
                    )
                )
            await _window(ctx, a.duration_seconds)
            elapsed = time.perf_counter() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for session in sessions:
                await session.close()
    total = sum(s.events for s in stats)
    document: dict[str, Any] = {
        "language": "python",
        "durationMs": round(elapsed * 1000.0, 3),
        "stream": "StreamEvents" if a.per_event else "StreamEventBatches",
        "sessionCount": a.sessions,
        "itemsPerSession": len(items),
        "totalEvents": total,
        "dataChangeEvents": sum(s.data_changes for s in stats),
        "streamMessages": sum(s.messages for s in stats),
        "faultEvents": sum(s.faults for s in stats),
        "gapCount": sum(s.gaps for s in stats),
        "missedEvents": sum(s.missed for s in stats),
        "errorCount": len(errors),
        "errors": sorted(set(errors))[:_MAX_ERRORS_LISTED],
        "eventsPerSecond": round(total / elapsed, 3) if elapsed > 0 else 0.0,
        "latencyMs": latency_summary([x for s in stats for x in s.latencies]),
    }
    if ctx.json:
        ctx.out.emit(document)
    else:
        _human.print_mapping(ctx.out.console, document, title="bench-stream-events")
    return ExitCode.OK


async def _window(ctx: Context, seconds: float) -> None:
    """Wait out the measurement window, with a progress bar on a terminal."""
    if not ctx.out.stderr_is_tty:
        await asyncio.sleep(seconds)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("benchmark"),
        BarColumn(),
        TimeRemainingColumn(),
        console=ctx.out.err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("window", total=seconds)
        deadline = time.perf_counter() + seconds
        while (remaining := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(min(0.2, remaining))
            progress.update(task, completed=seconds - max(0.0, deadline - time.perf_counter()))


async def cmd_bench_read_bulk(ctx: Context) -> ExitCode:
    """``ReadBulk`` calls back to back on one session for ``--duration-seconds``; upstream's
    JSON keys. The items are advised first (``--no-advise``: not), so reads answer from
    the session's cache (``cachedReadResults``)."""
    from mxgateway_cli._cmd_parity import split_csv

    a = ctx.args
    items = list(a.item or [])
    if a.items:
        items += [t.strip() for t in split_csv(a.items, "--items")]
    latencies: list[float] = []
    calls = failed = results_total = cached = 0
    async with gateway_client(ctx) as client:
        if not items:
            items = await pick_items(ctx, a.bulk_size)
        session = await client.open_session("mxgw-py-bench-read-bulk")
        try:
            server_handle = await session.register("mxgw-py-bench-read-bulk")
            if a.advise:
                await session.subscribe_bulk(server_handle, items)
            started = time.perf_counter()
            deadline = started + a.duration_seconds
            while time.perf_counter() < deadline:
                before = time.perf_counter()
                calls += 1
                try:
                    rows = await session.read_bulk(server_handle, items, timeout_ms=a.timeout_ms)
                except mxgateway.MxGatewayError:
                    failed += 1
                    continue
                latencies.append((time.perf_counter() - before) * 1000.0)
                results_total += len(rows)
                cached += sum(1 for r in rows if r.was_cached)
            elapsed = time.perf_counter() - started
        finally:
            await session.close()
    document: dict[str, Any] = {
        "language": "python",
        "durationMs": round(elapsed * 1000.0, 3),
        "totalCalls": calls,
        "successfulCalls": calls - failed,
        "failedCalls": failed,
        "totalReadResults": results_total,
        "cachedReadResults": cached,
        "callsPerSecond": round(calls / elapsed, 3) if elapsed > 0 else 0.0,
        "latencyMs": latency_summary(latencies),
    }
    if ctx.json:
        ctx.out.emit(document)
    else:
        _human.print_mapping(ctx.out.console, document, title="bench-read-bulk")
    return ExitCode.OK


BENCH_COMMANDS = {
    "bench-stream-events": cmd_bench_stream_events,
    "bench-read-bulk": cmd_bench_read_bulk,
}
