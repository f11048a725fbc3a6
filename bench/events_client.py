"""The client's CPU per typed event: live against the simulator, offline on captured
batches, and against the library of another checkout (A/B), in one run.

Issue 15's typed-event rows (``python -m bench opcua``) divide the bench process's CPU by
the changes ``Session.events()`` delivered while the caller read each change's value,
quality and timestamp. This benchmark measures the same thing for the client alone, and
the part of it the library's decoding owns:

- ``live``: ``Session.events(new_only=True)`` of ``tags`` advised tags of the simulator the
  opcua bench uses (``bench.opcua.keep_up_server``: 2,600 objects, 1 ms scan), reading
  ``value``, ``quality`` and ``timestamp`` of every ``DataChange``: ``time.process_time()``
  over a window after a warm-up (all of the client process's threads, gRPC's included),
  divided by the changes received. Each side is a client process of its own (a fresh
  interpreter, the same simulator), one after the other in every round, the order
  alternating between rounds; ratios are medians of the per-round ratios.
- ``replay``: the ``StreamEventBatches`` messages one subscriber of ``tags`` received
  (captured once from the same simulator, as bytes) fed to the typed path without gRPC:
  each parsed as ``Session.events()``'s deserializer parses it, then decoded and handed out
  by ``EventStream`` to an ``async for`` reading the same three fields; best of 5 passes.
  gRPC's own cost per message (about 0.3 ms here, most of it wake-ups) is not in it.
- ``grpc_bytes_only``: gRPC's own cost per message, the same subscription's messages
  received as bytes and dropped unparsed (CPU and voluntary context switches per message,
  median of ``rounds`` runs of the library's side);
- ``instructions`` (``MXGW_BENCH_CALLGRIND=1``, valgrind installed): the replay's
  instructions per change under callgrind, from the difference of two runs (``first`` and
  ``all`` messages), so start-up cancels out; repeatable under load, unlike CPU time.

``MXGW_BENCH_BASE_SRC`` naming another checkout's ``src`` folder (``git worktree add
/tmp/base <commit>``, then ``MXGW_BENCH_BASE_SRC=/tmp/base/src``) adds the side ``base``.
The load average is recorded before and after.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Only the standard library at import: the client process keeps its side's library.
from bench.read_client import _tags

FULL: dict[str, Any] = {
    "rounds": 5,
    "tags": [200, 2000],
    "warm_s": 0.6,
    "window_s": 2.0,
    "objects": 2_600,
    "capture_s": 2.0,
    "replay_messages": 60,
}
QUICK: dict[str, Any] = {
    "rounds": 1,
    "tags": [50],
    "warm_s": 0.2,
    "window_s": 0.3,
    "objects": 300,
    "capture_s": 0.3,
    "replay_messages": 5,
}
BASE_ENV = "MXGW_BENCH_BASE_SRC"
CALLGRIND_ENV = "MXGW_BENCH_CALLGRIND"
ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root: client processes run ``-m bench.events_client`` from there."""


# -- the client process (imports only the side's library) ----------------------------------


async def _session(address: str) -> Any:
    import mxgateway

    options = mxgateway.ClientOptions(
        endpoint=address, api_key=os.environ["MXGW_BENCH_KEY"], plaintext=True, timeout=60
    )
    client = await mxgateway.GatewayClient.connect(options=options)
    session = await client.open_session("bench-events-client")
    return client, session


async def _live(address: str, tags_file: str, n: int, warm: float, window: float) -> Any:
    import mxgateway

    client, session = await _session(address)
    try:
        hlmx = await session.register("bench-events-client")
        rows = await session.subscribe_bulk(hlmx, _tags(tags_file, n))
        if not all(r.was_successful for r in rows):
            raise RuntimeError("a tag could not be advised")
        stream = session.events(new_only=True)
        data_change = mxgateway.DataChange
        count = [0]

        async def consume() -> None:
            sink: Any = None
            async for ev in stream:
                if type(ev) is data_change:
                    sink = (ev.value, ev.quality, ev.timestamp)
                    count[0] += 1
            del sink

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(warm)
        c0, t0, w0 = count[0], time.process_time(), time.perf_counter()
        await asyncio.sleep(window)
        c1, t1, w1 = count[0], time.process_time(), time.perf_counter()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
    finally:
        await session.close()
        await client.close()
    changes = c1 - c0
    return {
        "module": mxgateway.__file__,
        "changes": changes,
        "changes_per_s": changes / (w1 - w0),
        "cpu_us_per_change": (t1 - t0) / changes * 1e6 if changes else None,
        "client_cpu_share": (t1 - t0) / (w1 - w0),
    }


async def _bytes(address: str, tags_file: str, n: int, warm: float, window: float) -> Any:
    """gRPC's share: the same subscription's ``StreamEventBatches`` messages received as
    bytes and dropped (no parse): CPU and voluntary context switches per message."""
    import resource

    import mxgateway
    from mxgateway.generated import mxaccess_gateway_pb2 as pb

    client, session = await _session(address)
    try:
        hlmx = await session.register("bench-events-client")
        await session.subscribe_bulk(hlmx, _tags(tags_file, n))
        path = f"/{pb.DESCRIPTOR.services_by_name['MxAccessGateway'].full_name}"
        open_call: Any = client.transport.channel.unary_stream
        call = open_call(
            f"{path}/StreamEventBatches",
            request_serializer=pb.StreamEventsRequest.SerializeToString,
        )(pb.StreamEventsRequest(session_id=session.session_id), metadata=client.transport.metadata)
        seen = [0, 0]

        async def consume() -> None:
            async for message in call:
                seen[0] += 1
                seen[1] += len(message)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(warm)
        c0, b0, t0 = seen[0], seen[1], time.process_time()
        s0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        await asyncio.sleep(window)
        c1, b1, t1 = seen[0], seen[1], time.process_time()
        s1 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        call.cancel()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await session.close()
        await client.close()
    messages = c1 - c0
    return {
        "module": mxgateway.__file__,
        "messages": messages,
        "bytes_per_message": (b1 - b0) / messages if messages else None,
        "cpu_us_per_message": (t1 - t0) / messages * 1e6 if messages else None,
        "context_switches_per_message": (s1 - s0) / messages if messages else None,
    }


async def _capture(address: str, tags_file: str, n: int, seconds: float) -> list[bytes]:
    client, session = await _session(address)
    try:
        hlmx = await session.register("bench-events-client")
        await session.subscribe_bulk(hlmx, _tags(tags_file, n))
        stream = client.stream_event_batches_raw(session.session_id)
        messages: list[bytes] = []
        end = 0.0
        async for batch in stream:
            messages.append(batch.SerializeToString())
            end = end or time.monotonic() + seconds
            if time.monotonic() > end:
                break
        await stream.aclose()
    finally:
        await session.close()
        await client.close()
    return messages


def _replay(capture: str, limit: int, passes: int) -> Any:
    """The captured messages through ``EventStream`` (no gRPC): best CPU of ``passes``."""
    import mxgateway
    from mxgateway._events import EventStream
    from mxgateway._eventwire import EventBatchView

    with open(capture, "rb") as fh:
        messages: list[bytes] = pickle.load(fh)[:limit]
    parse = EventBatchView.FromString

    class Feed:  # the Stream of one StreamEventBatches call, from bytes
        def __init__(self) -> None:
            self._it = iter(messages)

        async def __anext__(self) -> Any:
            for m in self._it:
                return parse(m)
            raise StopAsyncIteration

        def cancel(self) -> None:
            pass

        async def aclose(self) -> None:
            pass

    class Client:  # what EventStream asks of GatewayClient
        _batches_supported = True

        def _stream_event_view(self, session_id: str, after: Any, *, batches: bool) -> Feed:
            return Feed()

    data_change = mxgateway.DataChange

    async def one_pass() -> int:
        stream = EventStream(Client(), "s", after_worker_sequence=None)  # type: ignore[arg-type]
        n = 0
        sink: Any = None
        async for ev in stream:
            if type(ev) is data_change:
                sink = (ev.value, ev.quality, ev.timestamp)
                n += 1
        del sink
        return n

    best = float("inf")
    changes = 0
    for _ in range(passes):
        t0 = time.process_time()
        changes = asyncio.run(one_pass())
        best = min(best, time.process_time() - t0)
    return {
        "module": mxgateway.__file__,
        "changes": changes,
        "cpu_us_per_change": best / changes * 1e6 if changes else None,
    }


def client_main(argv: list[str]) -> None:
    """``python -m bench.events_client live|capture|replay ...`` (one JSON line)."""
    mode = argv[0]
    if mode in ("live", "bytes"):
        measure = _live if mode == "live" else _bytes
        result = asyncio.run(
            measure(argv[1], argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
        )
    elif mode == "capture":
        messages = asyncio.run(_capture(argv[1], argv[2], int(argv[3]), float(argv[4])))
        with open(argv[5], "wb") as fh:
            pickle.dump(messages, fh)
        result = {"messages": len(messages), "bytes": sum(map(len, messages))}
    else:
        result = _replay(argv[1], int(argv[2]), int(argv[3]))
    print(json.dumps(result))


# -- the run ------------------------------------------------------------------------------


def _side_env(src: str, key: str) -> dict[str, str]:
    env = dict(os.environ, MXGW_BENCH_KEY=key)
    # The side's library first; bench itself is not imported by the client process.
    env["PYTHONPATH"] = os.pathsep.join([src, str(ROOT)])
    return env


def _run_client(src: str, key: str, args: list[str], prefix: list[str] | None = None) -> Any:
    argv = [*(prefix or []), sys.executable, "-m", "bench.events_client", *args]
    proc = subprocess.run(
        argv, env=_side_env(src, key), cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _instructions(src: str, key: str, capture: str, first: int, last: int) -> Any:
    """Instructions per change of the replay under callgrind (``last`` less ``first``
    messages, one pass each)."""
    counts = []
    for limit in (first, last):
        with tempfile.TemporaryDirectory(prefix="mxgw-cg-") as tmp:
            out = os.path.join(tmp, "cg.out")
            prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            result = _run_client(src, key, ["replay", capture, str(limit), "1"], prefix)
            with open(out, encoding="utf-8", errors="replace") as fh:
                total = next(int(line.split()[1]) for line in fh if line.startswith("summary:"))
        counts.append((result["changes"], total))
    (n1, i1), (n2, i2) = counts
    return {"instructions_per_change": round((i2 - i1) / (n2 - n1)), "changes": n2 - n1}


async def run_async(quick: bool) -> dict[str, Any]:
    from bench._common import API_KEY, Report, begin, cannot_run, load, rnd
    from bench.opcua import keep_up_server

    report: Report
    report, p = begin("eventsclient", quick, QUICK, FULL)
    if cannot_run(report, simulator=True):
        return report.to_json()
    sides = {"library": str(ROOT / "src")}
    base = os.environ.get(BASE_ENV)
    if base:
        sides["base"] = base
    rounds = int(p["rounds"])
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        sim = keep_up_server(int(p["objects"]), tags_file, os.path.join(tmp, "stats.json"))
        assert sim is not None
        async with sim:
            for n in p["tags"]:
                live: dict[str, list[Any]] = {s: [] for s in sides}
                for r in range(rounds):
                    order = list(sides) if r % 2 == 0 else list(reversed(sides))
                    for side in order:
                        args = [sim.address, tags_file, str(n), str(p["warm_s"])]
                        live[side].append(
                            await asyncio.to_thread(
                                _run_client,
                                sides[side],
                                API_KEY,
                                ["live", *args, str(p["window_s"])],
                            )
                        )
                grpc_only = [
                    await asyncio.to_thread(
                        _run_client,
                        sides["library"],
                        API_KEY,
                        [
                            "bytes",
                            sim.address,
                            tags_file,
                            str(n),
                            str(p["warm_s"]),
                            str(p["window_s"]),
                        ],
                    )
                    for _ in range(rounds)
                ]
                capture = os.path.join(tmp, f"capture-{n}.pickle")
                captured = await asyncio.to_thread(
                    _run_client,
                    sides["library"],
                    API_KEY,
                    ["capture", sim.address, tags_file, str(n), str(p["capture_s"]), capture],
                )
                replay: dict[str, list[Any]] = {s: [] for s in sides}
                limit = str(p["replay_messages"])
                for r in range(rounds):
                    order = list(sides) if r % 2 == 0 else list(reversed(sides))
                    for side in order:
                        replay[side].append(
                            _run_client(sides[side], API_KEY, ["replay", capture, limit, "5"])
                        )
                entry: dict[str, Any] = {"captured": captured}
                entry["grpc_bytes_only"] = {
                    key: rnd(statistics.median(d[key] for d in grpc_only), 2)
                    for key in (
                        "cpu_us_per_message",
                        "bytes_per_message",
                        "context_switches_per_message",
                    )
                }
                for side in sides:
                    cpu = [d["cpu_us_per_change"] for d in live[side]]
                    entry[side] = {
                        "module": live[side][0]["module"],
                        "live_cpu_us_per_change": rnd(statistics.median(cpu), 3),
                        "live_cpu_us_per_change_all": [rnd(c, 3) for c in cpu],
                        "live_changes_per_s": rnd(
                            statistics.median(d["changes_per_s"] for d in live[side]), 0
                        ),
                        "replay_cpu_us_per_change": rnd(
                            statistics.median(d["cpu_us_per_change"] for d in replay[side]), 3
                        ),
                        "replay_changes": replay[side][0]["changes"],
                    }
                if "base" in sides:
                    for kind, rows in (("live", live), ("replay", replay)):
                        ratios = [
                            a["cpu_us_per_change"] / b["cpu_us_per_change"]
                            for a, b in zip(rows["library"], rows["base"], strict=True)
                        ]
                        entry[f"{kind}_ratio_library_to_base"] = rnd(statistics.median(ratios), 3)
                        entry[f"{kind}_ratios"] = [rnd(x, 3) for x in ratios]
                if os.environ.get(CALLGRIND_ENV) and shutil.which("valgrind"):
                    first = max(1, int(p["replay_messages"]) // 3)
                    for side in sides:
                        entry[side]["instructions"] = _instructions(
                            sides[side], API_KEY, capture, first, int(p["replay_messages"])
                        )
                    if "base" in sides:
                        entry["instructions_ratio_library_to_base"] = rnd(
                            entry["library"]["instructions"]["instructions_per_change"]
                            / entry["base"]["instructions"]["instructions_per_change"],
                            3,
                        )
                report.results[f"tags_{n}"] = entry
    report.results["load_after"] = load()
    report.notes.append(
        "live: client process CPU (all threads) per change received while reading value, "
        "quality and timestamp; replay: the same loop on captured batches without gRPC; "
        "instructions: callgrind on the replay (MXGW_BENCH_CALLGRIND=1)."
    )
    return report.to_json()


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point for ``python -m bench eventsclient``."""
    return asyncio.run(run_async(quick))


if __name__ == "__main__":
    client_main(sys.argv[1:])
