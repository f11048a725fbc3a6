"""Peak memory and throughput of ``iter_hierarchy`` vs ``discover_hierarchy`` (issue 5).

``python bench/galaxy_memory.py [--objects 50000] [--page-size 500] [--quick]`` (or
``run(quick=...)`` from ``python -m bench``) starts the simulator's Galaxy service with a
synthetic galaxy in a server subprocess, then walks the whole hierarchy, with attributes,
from a fresh client subprocess per mode, so that every process-wide peak is that mode's own:

- ``iter_hierarchy``: the library's lazy async generator, objects not retained;
- ``discover_hierarchy``: the library's all-pages list, retained until the end;
- ``raw_stub``: the generated stub paging by hand, pages not retained (reference).

Each mode is run twice: once plain (objects/s, peak RSS from ``ru_maxrss`` and the RSS
before the walk) and once under ``tracemalloc`` (peak traced Python allocations; slower,
so its time is not reported). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("iter_hierarchy", "discover_hierarchy", "raw_stub")


def _rss_now() -> int:
    """Current resident set size in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _rss_peak() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ----- server subprocess -------------------------------------------------------------------


async def _serve(db: Path, objects: int) -> None:
    import grpc

    from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
    from mxgateway_sim.galaxy import GalaxyService

    t0 = time.perf_counter()
    svc = await GalaxyService.open(db, objects=objects, poll_interval=60.0)
    load_s = time.perf_counter() - t0
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    )
    gr_grpc.add_GalaxyRepositoryServicer_to_server(svc.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    info = {
        "port": port,
        "load_s": load_s,
        "objects": svc.snapshot.object_count,
        "attributes": svc.snapshot.attribute_count,
        "server_rss_bytes": _rss_now(),
    }
    print(json.dumps(info), flush=True)
    # Run until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)
    await svc.close()


# ----- client subprocess -------------------------------------------------------------------


async def _walk(mode: str, endpoint: str, page_size: int, trace: bool) -> dict[str, Any]:
    from mxgateway import GalaxyRepositoryClient
    from mxgateway.generated import galaxy_repository_pb2 as gr
    from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc

    objects = attributes = 0
    async with await GalaxyRepositoryClient.connect(endpoint=endpoint, plaintext=True) as galaxy:
        await galaxy.test_connection()  # channel up, imports done: the baseline
        rss_before = _rss_now()
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        if mode == "iter_hierarchy":
            async for obj in galaxy.iter_hierarchy(page_size=page_size):
                objects += 1
                attributes += len(obj.attributes)
        elif mode == "discover_hierarchy":
            result = await galaxy.discover_hierarchy(page_size=page_size)
            for obj in result:
                objects += 1
                attributes += len(obj.attributes)
        else:
            async with _raw_channel(endpoint) as channel:
                stub = gr_grpc.GalaxyRepositoryStub(channel)
                token = ""
                while True:
                    reply = await stub.DiscoverHierarchy(
                        gr.DiscoverHierarchyRequest(page_size=page_size, page_token=token)
                    )
                    for obj in reply.objects:
                        objects += 1
                        attributes += len(obj.attributes)
                    token = reply.next_page_token
                    del reply
                    if not token:
                        break
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = {"objects": objects, "attributes": attributes}
        if trace:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out["tracemalloc_peak_bytes"] = peak
        else:
            out.update(
                seconds=seconds,
                objects_per_s=objects / seconds if seconds else None,
                rss_before_bytes=rss_before,
                rss_peak_bytes=_rss_peak(),
                rss_peak_growth_bytes=max(0, _rss_peak() - rss_before),
            )
        if mode == "discover_hierarchy":
            del result
    return out


class _raw_channel:
    def __init__(self, endpoint: str) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(endpoint)

    async def __aenter__(self) -> Any:
        return self.channel

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close(None)


# ----- orchestration -----------------------------------------------------------------------


def _child(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client {args} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool = False, objects: int | None = None, page_size: int = 500) -> dict[str, Any]:
    """Start the server, measure every mode, return the JSON-able result."""
    n = objects or (2000 if quick else 50_000)
    with tempfile.TemporaryDirectory(prefix="mxgw-galaxy-bench-") as tmp:
        db = Path(tmp) / "galaxy.db"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
        server = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(db), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("the Galaxy server subprocess did not start")
            info = json.loads(line)
            endpoint = f"127.0.0.1:{info['port']}"
            modes: dict[str, Any] = {}
            for mode in MODES:
                plain = _child(["--client", mode, endpoint, str(page_size)])
                traced = _child(["--client", mode, endpoint, str(page_size), "--trace"])
                plain["tracemalloc_peak_bytes"] = traced["tracemalloc_peak_bytes"]
                modes[mode] = plain
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    it, disc = modes["iter_hierarchy"], modes["discover_hierarchy"]
    return {
        "benchmark": "galaxy_memory",
        "quick": quick,
        "objects": info["objects"],
        "attributes": info["attributes"],
        "page_size": page_size,
        "server": {"load_s": round(info["load_s"], 3), "rss_bytes": info["server_rss_bytes"]},
        "modes": modes,
        "tracemalloc_peak_ratio_discover_over_iter": (
            disc["tracemalloc_peak_bytes"] / it["tracemalloc_peak_bytes"]
            if it["tracemalloc_peak_bytes"]
            else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: the orchestrator by default; ``--serve``/``--client`` in subprocesses."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        asyncio.run(_serve(Path(argv[1]), int(argv[2])))
        return 0
    if argv[:1] == ["--client"]:
        mode, endpoint, page_size = argv[1], argv[2], int(argv[3])
        result = asyncio.run(_walk(mode, endpoint, page_size, "--trace" in argv))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=None, help="default 50000 (2000 quick)")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.objects, args.page_size), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
