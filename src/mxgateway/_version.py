"""Package and protocol versions (the package version is read from here by the build)."""

from __future__ import annotations

import google.protobuf
import grpc

from mxgateway.generated import mxaccess_gateway_pb2 as _gateway_pb
from mxgateway.generated import mxaccess_worker_pb2 as _worker_pb

__version__ = "0.1.0"

GATEWAY_PROTOCOL_VERSION: int = _gateway_pb.GATEWAY_PROTOCOL_VERSION_CURRENT
"""Gateway protocol version declared by the bundled ``mxaccess_gateway.proto``."""

WORKER_PROTOCOL_VERSION: int = _worker_pb.WORKER_PROTOCOL_VERSION_CURRENT
"""Worker protocol version declared by the bundled ``mxaccess_worker.proto``."""


def version_info() -> dict[str, str | int]:
    """Versions of this package, the contract it speaks and the gRPC stack under it."""
    return {
        "package": __version__,
        "gatewayProtocolVersion": GATEWAY_PROTOCOL_VERSION,
        "workerProtocolVersion": WORKER_PROTOCOL_VERSION,
        # The modules' own versions: the same as the distributions', without loading
        # importlib.metadata (about a tenth of `import mxgateway`, for `mxgw-py version`).
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
    }
