"""The least a grpc.aio server can do for ``Invoke``: answer every call with one canned reply.

``python -m bench.floor_server`` serves ``mxaccess_gateway.v1.MxAccessGateway/Invoke`` on
127.0.0.1 (plaintext, no key, no interceptor, no body gate: a unary handler that returns
bytes encoded once), on uvloop where installed and with the gRPC core setting of the
simulator's server processes, prints one JSON line ``{"address": ...}`` and serves until
terminated. ``bench unary_floor`` calls it with the bare stub: the floor of a unary call
with grpc.aio on both ends, which no gateway written on grpc.aio can go below.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mxgateway_sim._grpcenv import apply_server_experiments

apply_server_experiments()  # as the simulator's processes do: before gRPC loads

import grpc  # noqa: E402
from grpc import aio  # noqa: E402

from mxgateway.generated import mxaccess_gateway_pb2 as pb  # noqa: E402

REPLY = pb.MxCommandReply(
    session_id="session-floor",
    correlation_id="gateway-correlation-ping-1",
    kind=pb.MX_COMMAND_KIND_PING,
    protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK, message="OK"),
).SerializeToString()


async def invoke(request: Any, context: Any) -> bytes:
    """Every command is answered OK, with the same bytes."""
    return REPLY


async def serve() -> None:
    server = aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        invoke,
        request_deserializer=pb.MxCommandRequest.FromString,
        response_serializer=bytes,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                pb.DESCRIPTOR.services_by_name["MxAccessGateway"].full_name, {"Invoke": handler}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"address": f"127.0.0.1:{port}"}), flush=True)
    await server.wait_for_termination()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
