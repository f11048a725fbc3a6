"""The MXAccess COM runtime: the gateway's runtime over AVEVA's ``LMXProxyServer``.

``mxgw-gateway serve --runtime mxaccess`` (Windows with System Platform, the ``[mxaccess]``
extra) runs each session's MXAccess client through :class:`MxAccessComRuntime`: one STA
thread that pumps COM messages and runs every call, the four events mapped to the gateway's
``MxEvent`` families, HRESULTs and ``MXSTATUS_PROXY`` records kept as MXAccess reported them.
"""

from mxgateway_mxaccess._com import LMX_PROG_ID, ComPlatform, LmxEvents, LmxProxyServer
from mxgateway_mxaccess._runtime import (
    BACKEND_NAME,
    DEFAULT_READ_TIMEOUT_S,
    MxAccessComRuntime,
    mxaccess_runtime_factory,
)
from mxgateway_mxaccess._startup import ComStartError, start_problem

__all__ = [
    "BACKEND_NAME",
    "DEFAULT_READ_TIMEOUT_S",
    "LMX_PROG_ID",
    "ComPlatform",
    "ComStartError",
    "LmxEvents",
    "LmxProxyServer",
    "MxAccessComRuntime",
    "mxaccess_runtime_factory",
    "start_problem",
]
