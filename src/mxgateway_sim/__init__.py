"""``mxgw-sim``: a real gRPC MXAccess Gateway with a simulated MXAccess runtime.

``GatewaySimulator`` runs the whole gateway in-process (tests, demos, benchmarks);
``mxgw-sim serve`` runs it as a program. The MXAccess side sits behind the
``MxAccessRuntime`` protocol, implemented here by ``SimulatedRuntime``.

The public names load on first use (PEP 562), so importing the package alone loads no
gRPC: the programs' entry points (:mod:`mxgateway_sim._launch`) set gRPC's settings
before it loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxgateway_sim._auth import SCOPES, ApiKeyStore, new_key
    from mxgateway_sim._builtin import InMemoryCatalog, builtin_catalog
    from mxgateway_sim._catalog import TagCatalog, TagInfo
    from mxgateway_sim._events import OverflowPolicy
    from mxgateway_sim._faults import FaultPlan, FaultPlanError, RpcFault
    from mxgateway_sim._plant import Plant
    from mxgateway_sim._runtime import EventSink, MxAccessRuntime
    from mxgateway_sim._server import GatewaySimulator, TlsMode
    from mxgateway_sim._sessions import SessionManager, SessionOptions
    from mxgateway_sim._simruntime import DEFAULT_USERS, SimulatedRuntime, SimUser

__all__ = [
    "DEFAULT_USERS",
    "SCOPES",
    "ApiKeyStore",
    "EventSink",
    "FaultPlan",
    "FaultPlanError",
    "GatewaySimulator",
    "InMemoryCatalog",
    "MxAccessRuntime",
    "OverflowPolicy",
    "Plant",
    "RpcFault",
    "SessionManager",
    "SessionOptions",
    "SimUser",
    "SimulatedRuntime",
    "TagCatalog",
    "TagInfo",
    "TlsMode",
    "builtin_catalog",
    "new_key",
]

_HOME = {
    "SCOPES": "_auth",
    "ApiKeyStore": "_auth",
    "new_key": "_auth",
    "InMemoryCatalog": "_builtin",
    "builtin_catalog": "_builtin",
    "TagCatalog": "_catalog",
    "TagInfo": "_catalog",
    "OverflowPolicy": "_events",
    "FaultPlan": "_faults",
    "FaultPlanError": "_faults",
    "RpcFault": "_faults",
    "Plant": "_plant",
    "EventSink": "_runtime",
    "MxAccessRuntime": "_runtime",
    "GatewaySimulator": "_server",
    "TlsMode": "_server",
    "SessionManager": "_sessions",
    "SessionOptions": "_sessions",
    "DEFAULT_USERS": "_simruntime",
    "SimulatedRuntime": "_simruntime",
    "SimUser": "_simruntime",
}
"""The module each public name lives in."""


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
