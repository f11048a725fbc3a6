"""``mxgw-sim``: a real gRPC MXAccess Gateway with a simulated MXAccess runtime.

``GatewaySimulator`` runs the whole gateway in-process (tests, demos, benchmarks);
``mxgw-sim serve`` runs it as a program. The MXAccess side sits behind the
``MxAccessRuntime`` protocol, implemented here by ``SimulatedRuntime``.
"""

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
