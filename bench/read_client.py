"""The client's CPU for a 10,000-tag ``read_bulk``: the library, the floor under it, and
the library of another checkout (A/B), in one run.

Issue 15's bulk-read row reads 10,000 tags nobody advised from a simulator at a 1 ms
scan. ``python -m bench readcpu`` splits that read's CPU between the two processes; this
benchmark looks at the client's share only, against two floors measured the same way:

- ``library``: ``Session.read_bulk(hlmx, tags)`` (command stream, default options);
- ``bare_stub``: the generated classes on the same RPC (``InvokeStream``) with a request
  built once; each reply parsed into ``MxCommandReply`` and its rows listed (the collector
  paused, as the library does). ``read_bulk`` returns those rows, the generated
  ``BulkReadResult`` messages, so this is the least any caller of the public API pays;
- ``bare_bytes``: the same call with bytes in and out: gRPC's own cost, no protobuf;
- ``base`` (when ``MXGW_BENCH_BASE_SRC`` names another checkout's ``src`` folder): the
  library of that checkout, e.g. the commit before a change
  (``git worktree add /tmp/base <commit>``, then ``MXGW_BENCH_BASE_SRC=/tmp/base/src``).

Each side runs in its own client process (a fresh interpreter; the same simulator), one
after the other in every round, the order alternating between rounds; a side's figure is
the median over its reads of ``time.process_time()`` around one call (all of the client
process's threads, gRPC's included) and of ``time.thread_time()`` (the calling thread).
Each read is followed by a 5 ms pause, as in ``readcpu``. Ratios are medians of the
per-round ratios. The load average is recorded before and after.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL = {"rounds": 5, "reads": 40, "tags": 10_000, "objects": 2_600}
QUICK = {"rounds": 1, "reads": 5, "tags": 1_000, "objects": 300}
PAUSE_S = 0.005
GOAL_MS = 3.5
"""Issue 15's aim for the library's client CPU per 10,000-tag read (this session's brief)."""
BASE_ENV = "MXGW_BENCH_BASE_SRC"
SIDES = ("library", "bare_stub", "bare_bytes")
ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root: client processes run ``-m bench.read_client`` from there."""


# -- the client process -------------------------------------------------------------------


async def _client(side: str, address: str, tags_file: str, n_tags: int, reads: int) -> Any:
    import mxgateway
    from mxgateway.generated import mxaccess_gateway_pb2 as pb

    tags = _tags(tags_file, n_tags)
    options = mxgateway.ClientOptions(
        endpoint=address, api_key=os.environ["MXGW_BENCH_KEY"], plaintext=True, timeout=60
    )
    async with (
        await mxgateway.GatewayClient.connect(options=options) as client,
        await client.open_session("bench-read-client") as session,
    ):
        hlmx = await session.register("bench-read-client")
        channel = client.transport.channel
        path = f"/{pb.DESCRIPTOR.services_by_name['MxAccessGateway'].full_name}/InvokeStream"
        request = pb.MxCommandRequest(session_id=session.session_id, client_correlation_id="b")
        request.command.kind = pb.MX_COMMAND_KIND_READ_BULK
        request.command.read_bulk.server_handle = hlmx
        request.command.read_bulk.tag_addresses.extend(tags)
        call: Any = None
        open_call: Any = channel.stream_stream  # typed stubs want arguments grpc.aio defaults
        if side == "bare_stub":
            call = open_call(
                path,
                request_serializer=pb.MxCommandRequest.SerializeToString,
                response_deserializer=pb.MxCommandReply.FromString,
            )(metadata=client.transport.metadata)

            async def read() -> Any:
                await call.write(request)
                reply = await call.read()
                gc.disable()
                try:
                    return reply.bulk_read.results[:]
                finally:
                    gc.enable()

        elif side == "bare_bytes":
            call = open_call(path)(metadata=client.transport.metadata)
            wire = request.SerializeToString()

            async def read() -> Any:
                await call.write(wire)
                return await call.read()

        else:

            async def read() -> Any:
                return await session.read_bulk(hlmx, tags)

        rows = None
        for _ in range(3):  # the simulator parses, resolves and remembers the call's rows
            rows = await read()
        cpu: list[float] = []
        thread: list[float] = []
        for _ in range(reads):
            c0, t0 = time.process_time(), time.thread_time()
            rows = await read()  # the previous rows are dropped here, as a poller's are
            cpu.append(time.process_time() - c0)
            thread.append(time.thread_time() - t0)
            await asyncio.sleep(PAUSE_S)
        if side != "bare_bytes" and (rows is None or len(rows) != len(tags)):
            raise RuntimeError("a read did not answer every tag")
        if call is not None:
            await call.done_writing()
    return {
        "module": mxgateway.__file__,
        "cpu_ms": statistics.median(cpu) * 1e3,
        "thread_ms": statistics.median(thread) * 1e3,
    }


def _tags(path: str, n: int) -> list[str]:
    """The first ``n`` references of a ``--tags-out`` file (as ``bench._common.load_tags``;
    the client process imports nothing of bench's, so ``base`` runs another library)."""
    tags: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            ref = line.rstrip("\n").partition("\t")[0]
            if ref:
                tags.append(ref)
            if len(tags) >= n:
                break
    return tags


# -- the run ------------------------------------------------------------------------------


def _side_run(
    side: str, src: str | None, address: str, tags_file: str, p: dict[str, Any]
) -> dict[str, Any]:
    from bench._common import API_KEY

    env = dict(os.environ, MXGW_BENCH_KEY=API_KEY)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [sys.executable, "-m", "bench.read_client", "--child"]
    argv += ["library" if side == "base" else side, address, tags_file, str(p["tags"])]
    argv.append(str(p["reads"]))
    done = subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side}: {done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["package"] = str(Path(out.pop("module")).resolve().parent)
    if src is not None and not out["package"].startswith(str(Path(src).resolve())):
        raise RuntimeError(f"{side} ran {out['package']}, not the library in {src}")
    return out


def _commit(folder: str) -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "-C", folder, "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or None
        )
    except OSError:
        return None


async def _measure(p: dict[str, Any], base: str | None) -> dict[str, Any]:
    from bench.opcua import keep_up_server

    sides: list[tuple[str, str | None]] = [(s, None) for s in SIDES]
    if base is not None:
        sides.append(("base", base))
    series: dict[str, dict[str, list[float]]] = {s: {"cpu": [], "thread": []} for s, _ in sides}
    packages: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mxgw-bench-") as tmp:
        tags_file = os.path.join(tmp, "tags.txt")
        sim = keep_up_server(int(p["objects"]), tags_file, os.path.join(tmp, "stats.json"))
        assert sim is not None
        async with sim:
            for r in range(int(p["rounds"])):
                for side, src in sides if r % 2 == 0 else sides[::-1]:
                    got = await asyncio.to_thread(_side_run, side, src, sim.address, tags_file, p)
                    series[side]["cpu"].append(got["cpu_ms"])
                    series[side]["thread"].append(got["thread_ms"])
                    packages[side] = got["package"]
    from bench._common import rnd

    out: dict[str, Any] = {}
    for side, s in series.items():
        out[side] = {
            "client_cpu_ms": rnd(statistics.median(s["cpu"]), 3),
            "client_cpu_ms_range": [rnd(min(s["cpu"]), 3), rnd(max(s["cpu"]), 3)],
            "calling_thread_ms": rnd(statistics.median(s["thread"]), 3),
            "package": packages[side],
            "commit": _commit(packages[side]),
        }

    def ratio(a: str, b: str) -> float:
        pairs = zip(series[a]["cpu"], series[b]["cpu"], strict=True)
        return rnd(statistics.median(x / y for x, y in pairs), 3)

    out["library_vs_bare_stub"] = ratio("library", "bare_stub")
    out["library_minus_bare_stub_ms"] = rnd(
        out["library"]["client_cpu_ms"] - out["bare_stub"]["client_cpu_ms"], 3
    )
    if base is not None:
        out["library_vs_base"] = ratio("library", "base")
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Entry point used by ``python -m bench readclient``."""
    from bench._common import begin, cannot_run, load

    report, p = begin("readclient", quick, QUICK, FULL)
    base = os.environ.get(BASE_ENV) or None
    if cannot_run(report, simulator=True):
        return report.to_json()
    report.results["read"] = asyncio.run(_measure(p, base))
    report.results["load_after"] = load()
    if base is None:
        report.skip("base", f"{BASE_ENV} is not set: no other checkout to compare with")
    if not quick:
        measured = report.results["read"]["library"]["client_cpu_ms"]
        report.target(
            "client CPU per 10,000-tag read_bulk", f"<= {GOAL_MS} ms", measured, measured <= GOAL_MS
        )
    report.notes.append(
        "Each side in its own client process against one simulator (1 ms scan, nothing "
        "advised), sides interleaved, order alternating per round; figures are medians of "
        "the per-round medians of time.process_time() (whole client process) and "
        "time.thread_time() (calling thread) around one call."
    )
    return report.to_json()


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    side_, address_, tags_file_, n_, reads_ = sys.argv[2:7]
    print(json.dumps(asyncio.run(_client(side_, address_, tags_file_, int(n_), int(reads_)))))
