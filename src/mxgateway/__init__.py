"""Async Python client for the MXAccess Gateway (AVEVA System Platform over gRPC)."""

from mxgateway._values import VALUE_TYPES, ValueType, from_mx_value, to_mx_value
from mxgateway._version import (
    GATEWAY_PROTOCOL_VERSION,
    WORKER_PROTOCOL_VERSION,
    __version__,
    version_info,
)

__all__ = [
    "GATEWAY_PROTOCOL_VERSION",
    "VALUE_TYPES",
    "WORKER_PROTOCOL_VERSION",
    "ValueType",
    "__version__",
    "from_mx_value",
    "to_mx_value",
    "version_info",
]
