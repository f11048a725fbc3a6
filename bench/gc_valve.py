"""How often the GC policy's valve would run its full collection in steady state (issue 15).

``python -m bench gc_valve [--quick] [--out-dir DIR]`` starts the simulator in a subprocess
(``bench/sim_server.py --stats-file F --gc-stats``, tenure on as in ``mxgw-sim serve``), adds
and advises 100k items in one session, streams their changes, and for a while (120 s;
``--quick`` 2k items and 10 s) keeps it busy: a ReadBulk of 1,000 tags and a WriteBulk of
100 items again and again, and every 20 calls a second session that subscribes 200 tags
and is closed. Every 15 s it asks the server (SIGUSR2) what the valve counts
(``mxgateway_sim._gcpolicy``): tracked objects, those the simulator holds alive (items,
parsed references, read rows, attribute models and samples), and the rest (``loose``). At
the end the full collection runs (SIGHUP; the valve's, a slice at a time) and reports the
cyclic garbage it found, what it walked, and its loop-thread CPU: all its steps, the walk's
and the longest other one. The valve runs the full collection only once ``loose`` grew by a quarter
of what the server holds over the fewest since the last one, so the garbage found per hour
says how rarely that is. Prints one JSON document (nothing is asserted: see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench._common import (
    JSON,
    METADATA,
    Report,
    ServerProcess,
    aio_channel,
    load_tags,
    rnd,
    sim_server,
)
from bench.loop_stall import Attacker
from bench.opcua import scan_stats
from mxgateway.generated import mxaccess_gateway_pb2 as pb

FULL = {"galaxy_objects": 5000, "items": 100_000, "seconds": 120.0}
QUICK = {"galaxy_objects": 200, "items": 2_000, "seconds": 10.0}
SAMPLE_S = 15.0
VALVE_GROWTH = 0.25  # mxgateway_sim._gcpolicy.VALVE_GROWTH (not imported: no simulator here)


async def _ask(server: ServerProcess, path: Path) -> JSON:
    """The server's stats document (SIGUSR2; ``bench.opcua.scan_stats``, which waits 2 s:
    asked again for up to a minute, the loop may be in a full collection)."""
    for _ in range(30):
        doc = await scan_stats(server, str(path))
        if doc:
            return doc
    raise RuntimeError("the server did not write its stats within a minute")


def _valve(doc: JSON) -> JSON:
    """The valve's figures from a stats document."""
    g = doc["gc"]
    tracked = g["frozen"] + g["young"]
    return {"tracked": tracked, "held": g["held"], "loose": tracked - g["held"]}


async def _run(sizes: dict[str, Any], tmp: Path, report: Report) -> None:
    tags_file, stats_file = tmp / "tags.txt", tmp / "stats.json"
    server = sim_server(
        galaxy_objects=sizes["galaxy_objects"],
        scan_ms=200,
        tags_out=str(tags_file),
        extra=["--stats-file", str(stats_file), "--gc-stats"],
    )
    if server is None:
        report.skip("all", "the simulator is not installed")
        return
    async with server, aio_channel(server.address) as channel:
        tags, _ = load_tags(str(tags_file), 1 << 30)
        n = sizes["items"]
        refs = (tags * (n // len(tags) + 1))[:n]
        a = Attacker(channel)
        await a.open()
        reply = await a.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADD_ITEM_BULK,
                add_item_bulk=pb.AddItemBulkCommand(
                    server_handle=a.server_handle, tag_addresses=refs
                ),
            )
        )
        handles = [r.item_handle for r in reply.bulk_subscribe.results if r.item_handle]
        del reply
        await a.invoke(
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_ADVISE_ITEM_BULK,
                advise_item_bulk=pb.AdviseItemBulkCommand(
                    server_handle=a.server_handle, item_handles=handles
                ),
            )
        )
        events = 0
        stream_end: list[str] = []

        async def consume() -> None:
            nonlocal events
            stream = a.stub.StreamEventBatches(
                pb.StreamEventsRequest(session_id=a.session_id), metadata=METADATA
            )
            try:
                async for batch in stream:
                    events += len(batch.events)
            except grpc.aio.AioRpcError as exc:  # e.g. fell behind under load: reported
                stream_end.append(f"{exc.code().name}: {(exc.details() or '')[:120]}")

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(3.0)
        start = _valve(await _ask(server, stats_file))
        samples: list[JSON] = []
        calls = sessions = 0
        t0 = time.monotonic()
        next_sample = t0 + SAMPLE_S
        while time.monotonic() - t0 < sizes["seconds"]:
            i = calls // 2
            chunk = tags[i % max(1, len(tags) // 1000) * 1000 :][:1000]
            await a.invoke(
                pb.MxCommand(
                    kind=pb.MX_COMMAND_KIND_READ_BULK,
                    read_bulk=pb.ReadBulkCommand(
                        server_handle=a.server_handle, tag_addresses=chunk
                    ),
                )
            )
            write = pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE_BULK)
            write.write_bulk.server_handle = a.server_handle
            at = i * 100 % max(1, len(handles) - 100)
            for h in handles[at : at + 100]:
                write.write_bulk.entries.add(item_handle=h).value.double_value = i * 0.5
            await a.invoke(write)
            calls += 2
            if calls % 20 == 0:
                b = Attacker(channel)
                await b.open()
                await b.invoke(
                    pb.MxCommand(
                        kind=pb.MX_COMMAND_KIND_SUBSCRIBE_BULK,
                        subscribe_bulk=pb.SubscribeBulkCommand(
                            server_handle=b.server_handle, tag_addresses=tags[:200]
                        ),
                    )
                )
                await asyncio.sleep(0.3)
                await b.close()
                sessions += 1
            await asyncio.sleep(0.05)
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_S
                v = _valve(await _ask(server, stats_file))
                samples.append({"t_s": rnd(time.monotonic() - t0, 1), **v})
        elapsed = time.monotonic() - t0
        end = _valve(await _ask(server, stats_file))
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)  # while the session still streams
        await asyncio.sleep(1.0)
        after = await _ask(server, stats_file)
        full = after["gc"]["last_full_collection"] or {}
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer
        await a.close()
    found = full.get("found")
    threshold = VALVE_GROWTH * start["tracked"]
    per_hour = None if found is None else found * 3600 / elapsed
    report.results.update(
        {
            "sizes": sizes,
            "items": len(handles),
            "busy_s": rnd(elapsed, 1),
            "calls": calls,
            "sessions_opened_and_closed": sessions,
            "events_streamed": events,
            "event_stream_ended": stream_end[0] if stream_end else None,
            "start": start,
            "samples": samples,
            "end": end,
            "full_collection": full,
            "garbage_per_hour": None if per_hour is None else round(per_hour),
            "valve_growth_objects": round(threshold),
            "hours_until_the_valve_collects": (
                None if not per_hour else rnd(threshold / per_hour, 1)
            ),
        }
    )
    report.target(
        "loop CPU of the full collection when it runs (100k items), all its steps",
        "reported (the valve runs it only after this much garbage built up)",
        full.get("cpu_ms"),
        None,
    )
    longest = full.get("longest_step_ms")
    report.target(
        "the full collection's longest step (how long it held the loop at once)",
        "about 50 ms",
        longest,
        None if longest is None else longest < 50,
    )
    report.notes.append(
        "loose = tracked - held: what the valve watches; it grows with live queues and "
        "caches (bounded) as well as garbage. full_collection.found is the cyclic garbage "
        "frozen objects held after the busy period (a full collection frees it)."
    )


def run(quick: bool = False) -> JSON:
    """Entry point for ``python -m bench gc_valve``."""
    report = Report("gc_valve", quick)
    report.results["load_before"] = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="mxgw-gcvalve-") as tmp:
        asyncio.run(_run(QUICK if quick else FULL, Path(tmp), report))
    report.results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return report.to_json()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
