"""An ``asyncua`` OPC UA server in a bench subprocess (the peer of ``bench/opcua.py``).

``python -m bench.opcua_server --tags N`` starts an asyncua server on 127.0.0.1 (port 0, no
security, anonymous), with ``N`` Double variables ``ns=2;s=Tag{i}`` under one folder and
two control variables, prints one JSON line ``{"address": "opc.tcp://..."}`` and serves
until terminated. ``ns=2;s=ChangeCount`` (Int32, writeable) is how many of the tags the
plant changes: while it is above 0 the updater writes a new value with a fresh source
timestamp to the first ``ChangeCount`` tags, then sleeps ``--scan-ms`` (as the simulator's
scan); 0 stops it, so the server costs nothing while the other side is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import sys
from typing import Any


async def serve(args: argparse.Namespace) -> None:
    """Start the server, report its address, update tags on demand until SIGTERM."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:mxgateway:bench")
    folder = await server.nodes.objects.add_folder(ns, "Bench")
    ids = await _add_tags(server, folder.nodeid, ns, args.tags)
    control = await folder.add_variable(
        ua.NodeId("ChangeCount", ns), "ChangeCount", 0, varianttype=ua.VariantType.Int32
    )
    await control.set_writable()
    await server.start()
    assert server.bserver is not None
    address = f"opc.tcp://127.0.0.1:{server.bserver.port}/bench/"
    print(json.dumps({"address": address, "tags": args.tags, "namespace": ns}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write = server.iserver.write_attribute_value  # the server's own fast path, no service call
    double = ua.VariantType.Double
    control_id = control.nodeid

    async def updater() -> None:
        tick = 0
        while True:
            count = _read(server, control_id)
            if count <= 0:
                await asyncio.sleep(0.05)
                continue
            tick += 1
            now = dt.datetime.now(dt.timezone.utc)
            for i in range(min(count, len(ids))):
                await write(
                    ids[i],
                    ua.DataValue(ua.Variant(tick + i * 0.001, double), SourceTimestamp=now),
                )
                if i % 250 == 249:
                    await asyncio.sleep(0)  # let the server answer between slices
            await asyncio.sleep(args.scan_ms / 1000)

    task = loop.create_task(updater())
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()


async def _add_tags(server: Any, parent: Any, ns: int, count: int) -> list[Any]:
    """Add ``count`` writeable Double variables in batches (``add_variable`` one by one
    takes ~10 ms per node; one ``AddNodes`` call per 1,000 takes a fraction of that)."""
    from asyncua import ua

    rw = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask
    ids: list[Any] = []
    for start in range(0, count, 1000):
        # One folder per 1,000 tags: adding a reference scans the parent's list.
        folder = await server.get_node(parent).add_folder(ns, f"Block{start // 1000}")
        items = []
        for i in range(start, min(count, start + 1000)):
            item = ua.AddNodesItem()
            item.RequestedNewNodeId = ua.NodeId(f"Tag{i}", ns)
            item.BrowseName = ua.QualifiedName(f"Tag{i}", ns)
            item.NodeClass = ua.NodeClass.Variable
            item.ParentNodeId = folder.nodeid
            item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
            item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
            attrs = ua.VariableAttributes()
            attrs.DisplayName = ua.LocalizedText(f"Tag{i}")
            attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
            attrs.Value = ua.Variant(float(i), ua.VariantType.Double)
            attrs.ValueRank = ua.ValueRank.Scalar
            attrs.AccessLevel = rw
            attrs.UserAccessLevel = rw
            item.NodeAttributes = attrs
            items.append(item)
        for result in await server.iserver.isession.add_nodes(items):
            result.StatusCode.check()
            ids.append(result.AddedNodeId)
    return ids


def _read(server: object, node_id: object) -> int:
    """The control variable's value, read from the address space without a service call."""
    dv = server.iserver.aspace.read_attribute_value(node_id, 13)  # type: ignore[attr-defined]
    value = dv.Value.Value if dv is not None and dv.Value is not None else 0
    return int(value or 0)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.opcua_server")
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--scan-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
