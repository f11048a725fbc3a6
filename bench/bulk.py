"""Bulk vs single calls: ``read_bulk`` / ``write_bulk`` of 1, 100, 1,000, 10,000 tags.

For each size N: tags/s of one bulk call of N tags, against N single calls (a one-tag read,
a ``WRITE``). For N = 10,000 the singles are sampled (1,000 calls) and extrapolated; the
report says so. Reads are of advised tags (``was_cached`` rows, the gateway answers from its
cache). Flavours: the bare generated stub, and the client library when it has landed.
Servers: the simulator (the real figure) and the replay server (canned replies: what the
client side alone costs). ``bare_stub_prebuilt`` writes values converted to ``MxValue``
before the clock starts, with the rows built in place in the request: the floor of what
any client can do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench import _client
from bench._common import (
    METADATA,
    Report,
    aio_channel,
    load_tags,
    ratio,
    replay_server,
    rnd,
    sim_server,
)
from bench._events import SESSION_ID
from mxgateway import enum_name
from mxgateway._values import to_mx_value
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pb_grpc

SIZES = (1, 100, 1_000, 10_000)
SINGLES_SAMPLE = 1_000


@dataclass
class BulkOps:
    """One flavour's operations (all return when the reply has been checked)."""

    read_bulk: Callable[[Sequence[str]], Awaitable[int]]
    write_bulk: Callable[[Sequence[int], Sequence[object]], Awaitable[int]]
    read_one: Callable[[str], Awaitable[object]]
    write_one: Callable[[int, object], Awaitable[object]]


class BareGateway:
    """The generated stub, doing by hand what the library's helpers do."""

    def __init__(self, channel: grpc.aio.Channel, session_id: str = "") -> None:
        self.stub = pb_grpc.MxAccessGatewayStub(channel)
        self.session_id = session_id
        self.server_handle = 0

    async def invoke(self, cmd: pb.MxCommand) -> pb.MxCommandReply:
        """One Invoke; raises on a protocol status other than OK."""
        return await self.send(pb.MxCommandRequest(session_id=self.session_id, command=cmd))

    async def send(self, req: pb.MxCommandRequest) -> pb.MxCommandReply:
        """Send a ready request; raises on a protocol status other than OK."""
        reply: pb.MxCommandReply = await self.stub.Invoke(req, metadata=METADATA, timeout=120)
        if reply.protocol_status.code != pb.PROTOCOL_STATUS_CODE_OK:
            raise RuntimeError(
                f"{enum_name(pb.MxCommandKind, req.command.kind)}: "
                f"{enum_name(pb.ProtocolStatusCode, reply.protocol_status.code)} "
                f"{reply.protocol_status.message}"
            )
        return reply

    async def write_bulk_prebuilt(self, handles: Sequence[int], values: Sequence[object]) -> int:
        """WRITE_BULK of ready ``MxValue``s, rows built in place in the request (no copies)."""
        req = pb.MxCommandRequest(session_id=self.session_id)
        cmd = req.command
        cmd.kind = pb.MX_COMMAND_KIND_WRITE_BULK
        wb = cmd.write_bulk
        wb.server_handle = self.server_handle
        add = wb.entries.add
        for h, v in zip(handles, values, strict=True):
            add(item_handle=h).value.CopyFrom(v)  # type: ignore[arg-type]
        reply = await self.send(req)
        return sum(1 for r in reply.bulk_write.results if r.was_successful)

    async def write_one_prebuilt(self, handle: int, value: object) -> int:
        """A single WRITE of a ready ``MxValue``, built in place."""
        req = pb.MxCommandRequest(session_id=self.session_id)
        cmd = req.command
        cmd.kind = pb.MX_COMMAND_KIND_WRITE
        w = cmd.write
        w.server_handle = self.server_handle
        w.item_handle = handle
        w.value.CopyFrom(value)  # type: ignore[arg-type]
        await self.send(req)
        return 1

    async def open(self) -> None:
        """OpenSession (when no session id was given) and REGISTER."""
        if not self.session_id:
            reply = await self.stub.OpenSession(
                pb.OpenSessionRequest(client_session_name="bench"), metadata=METADATA, timeout=30
            )
            self.session_id = reply.session_id
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_REGISTER)
        cmd.register.client_name = "bench-bulk"
        self.server_handle = (await self.invoke(cmd)).register.server_handle

    async def close(self) -> None:
        """CloseSession."""
        await self.stub.CloseSession(
            pb.CloseSessionRequest(session_id=self.session_id), metadata=METADATA, timeout=30
        )

    async def subscribe(self, tags: Sequence[str]) -> list[int]:
        """SUBSCRIBE_BULK (add + advise); returns the item handles, in order."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_SUBSCRIBE_BULK)
        cmd.subscribe_bulk.server_handle = self.server_handle
        cmd.subscribe_bulk.tag_addresses.extend(tags)
        reply = await self.invoke(cmd)
        bad = [r.error_message for r in reply.bulk_subscribe.results if not r.was_successful]
        if bad:
            raise RuntimeError(f"subscribe: {len(bad)} rows failed, first: {bad[0]}")
        return [r.item_handle for r in reply.bulk_subscribe.results]

    async def read_bulk(self, tags: Sequence[str]) -> int:
        """READ_BULK; returns the number of successful rows."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK)
        cmd.read_bulk.server_handle = self.server_handle
        cmd.read_bulk.tag_addresses.extend(tags)
        reply = await self.invoke(cmd)
        return sum(1 for r in reply.bulk_read.results if r.was_successful)

    async def write_bulk(self, handles: Sequence[int], values: Sequence[object]) -> int:
        """WRITE_BULK; returns the number of successful rows."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE_BULK)
        cmd.write_bulk.server_handle = self.server_handle
        entries = cmd.write_bulk.entries
        for h, v in zip(handles, values, strict=True):
            entries.add(item_handle=h, value=to_mx_value(v))
        reply = await self.invoke(cmd)
        return sum(1 for r in reply.bulk_write.results if r.was_successful)

    async def read_one(self, tag: str) -> int:
        """A single read: READ_BULK of one tag (the protocol has no one-tag read)."""
        return await self.read_bulk((tag,))

    async def write_one(self, handle: int, value: object) -> int:
        """A single WRITE."""
        cmd = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE)
        cmd.write.server_handle = self.server_handle
        cmd.write.item_handle = handle
        cmd.write.value.CopyFrom(to_mx_value(value))
        await self.invoke(cmd)
        return 1

    def ops(self) -> BulkOps:
        """This flavour's operations."""
        return BulkOps(self.read_bulk, self.write_bulk, self.read_one, self.write_one)

    def prebuilt_ops(self) -> BulkOps:
        """Writes of values already converted to ``MxValue`` (the protocol's floor)."""
        return BulkOps(
            self.read_bulk, self.write_bulk_prebuilt, self.read_one, self.write_one_prebuilt
        )


async def _timed(coro: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


async def measure(
    ops: BulkOps,
    tags: Sequence[str],
    handles: Sequence[int],
    all_values: Sequence[object],
    quick: bool,
    ops_to_run: tuple[str, ...] = ("read", "write"),
) -> Any:
    """Bulk vs singles for every size; returns rows per size and operation."""
    sizes = [s for s in SIZES if s <= len(tags)]
    sample_cap = 50 if quick else SINGLES_SAMPLE
    out: dict[str, Any] = {op: {} for op in ops_to_run}
    for n in sizes:
        values = all_values[:n]
        reps = 2 if quick else (5 if n >= 1000 else 10)
        k = min(n, sample_cap)
        for op in ops_to_run:
            if op == "read":

                def bulk(n: int = n, values: Sequence[object] = values) -> Awaitable[int]:
                    return ops.read_bulk(tags[:n])

                def one(i: int, values: Sequence[object] = values) -> Awaitable[object]:
                    return ops.read_one(tags[i])

            else:

                def bulk(n: int = n, values: Sequence[object] = values) -> Awaitable[int]:
                    return ops.write_bulk(handles[:n], values)

                def one(i: int, values: Sequence[object] = values) -> Awaitable[object]:
                    return ops.write_one(handles[i], values[i])

            ok = await bulk()  # checked warm-up call
            if ok != n:
                raise RuntimeError(f"{op}_bulk of {n} tags: only {ok} rows succeeded")
            bulk_t = min([await _timed(bulk()) for _ in range(reps)])
            t0 = time.perf_counter()
            for i in range(k):
                await one(i)
            single_t = (time.perf_counter() - t0) / k * n
            out[op][str(n)] = {
                "bulk_call_ms": rnd(bulk_t * 1000, 3),
                "bulk_tags_per_s": rnd(n / bulk_t, 0),
                "singles_total_ms": rnd(single_t * 1000, 1),
                "singles_tags_per_s": rnd(n / single_t, 0),
                "singles_sampled": k,
                "singles_extrapolated": k < n,
                "speedup": ratio(single_t, bulk_t),
            }
    return out


def add_targets(report: Report, results: dict[str, Any], where: str) -> None:
    """Target: 10,000 tags in one call at least 500x faster than 10,000 single calls."""
    for op in ("read", "write"):
        if op not in results:
            continue
        row = results[op].get("10000")
        sp = row.get("speedup") if row else None
        report.target(
            f"{where}: {op}_bulk of 10,000 tags vs 10,000 single calls",
            "speedup >= 500",
            sp,
            None if sp is None else sp >= 500,
        )


async def run_flavours(
    report: Report, where: str, address: str, tags: list[str], values: list[object], quick: bool
) -> None:
    """Bare stub and library against one server."""
    results: dict[str, Any] = {}
    async with aio_channel(address) as channel:
        bare = BareGateway(channel, SESSION_ID if where == "replay" else "")
        await bare.open()
        try:
            handles = await bare.subscribe(tags)
            results["bare_stub"] = await measure(bare.ops(), tags, handles, values, quick)
            # The floor: values converted beforehand, rows built in place (no copies).
            mx_values: list[object] = [to_mx_value(v) for v in values]
            results["bare_stub_prebuilt"] = await measure(
                bare.prebuilt_ops(), tags, handles, mx_values, quick, ("write",)
            )
        finally:
            if where != "replay":
                await bare.close()
    lib_ops, why = await _client.bulk_ops(address, tags)
    if lib_ops is None:
        report.skip(f"{where}: library read_bulk/write_bulk", why)
    else:
        async with lib_ops as (ops, handles):
            results["library"] = await measure(ops, tags, handles, values, quick)
    report.results[where] = results
    for flavour, r in results.items():
        add_targets(report, r, f"{where} {flavour}")


async def run_async(quick: bool) -> dict[str, Any]:
    """Replay server, then simulator; returns the JSON document."""
    report = Report("bulk", quick)
    max_n = 100 if quick else max(SIZES)
    async with replay_server(10, 10) as server:
        tags = [f"Bench{i:05d}.Value" for i in range(max_n)]
        values: list[object] = [i * 0.25 for i in range(max_n)]
        await run_flavours(report, "replay", server.address, tags, values, quick)
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        # ~4.6 writeable Boolean/Integer/Double/String scalars per synthetic object.
        objects = 300 if quick else 2_600
        sim = sim_server(galaxy_objects=objects, tags_out=tags_file)
        if sim is None:
            report.skip("simulator", "mxgateway_sim.GatewaySimulator has not landed yet")
        else:
            try:
                async with sim:
                    tags, values = load_tags(tags_file, max_n)
                    report.results["simulator_tags"] = len(tags)
                    await run_flavours(report, "simulator", sim.address, tags, values, quick)
            except Exception as exc:
                report.skip("simulator", f"{type(exc).__name__}: {exc}"[:500])
    report.notes.append(
        f"Singles are sampled ({SINGLES_SAMPLE} calls) and extrapolated for N = 10,000; "
        "bulk figures are the best of 10 (N < 1,000) or 5 calls after one checked "
        "warm-up call. A single read is READ_BULK of one tag (the protocol has no one-tag "
        "read); reads are of advised tags. Simulator tags: writeable Boolean/Integer/"
        "Double/String scalars of a synthetic galaxy, written with values of their type."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench bulk``."""
    return asyncio.run(run_async(quick))
