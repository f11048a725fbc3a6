"""The public surface of ``mxgateway`` is pinned: changing it must change this test."""

from __future__ import annotations

import mxgateway

EXPECTED = {
    # client
    "ClientOptions",
    "GatewayClient",
    "RetryPolicy",
    "Secret",
    "Session",
    # recovering subscriptions
    "ItemFailure",
    "StateChange",
    "Subscription",
    "SubscriptionEvent",
    "SubscriptionState",
    "TagValue",
    # events
    "AlarmTransition",
    "BufferedDataChange",
    "BufferedValue",
    "DataChange",
    "Event",
    "EventGap",
    "EventStream",
    "OperationComplete",
    "StreamFault",
    "WriteComplete",
    # errors
    "ClientClosedError",
    "MxAccessError",
    "MxGatewayAbortedError",
    "MxGatewayAuthenticationError",
    "MxGatewayCancelledError",
    "MxGatewayError",
    "MxGatewayInvalidRequestError",
    "MxGatewayNotFoundError",
    "MxGatewayOverloadedError",
    "MxGatewayPermissionError",
    "MxGatewayProtocolError",
    "MxGatewaySessionFaultedError",
    "MxGatewaySessionNotFoundError",
    "MxGatewaySessionNotReadyError",
    "MxGatewaySessionStateError",
    "MxGatewayTimeoutError",
    "MxGatewayUnavailableError",
    "MxGatewayUnimplementedError",
    "MxGatewayWriteTimeoutError",
    # galaxy repository
    "DeployEvent",
    "GalaxyAttribute",
    "GalaxyObject",
    "GalaxyRepositoryClient",
    # values and versions
    "GATEWAY_PROTOCOL_VERSION",
    "VALUE_TYPES",
    "ValueType",
    "WORKER_PROTOCOL_VERSION",
    "__version__",
    # status rule and tolerant enum names
    "describe_status",
    "enum_name",
    "failed_statuses",
    "status_failed",
    "from_mx_value",
    "to_mx_value",
    "version_info",
}


def test_all_is_pinned() -> None:
    assert set(mxgateway.__all__) == EXPECTED
    assert len(mxgateway.__all__) == len(set(mxgateway.__all__))


def test_every_exported_name_exists() -> None:
    for name in mxgateway.__all__:
        assert hasattr(mxgateway, name), name


def test_no_private_or_generated_types_leak() -> None:
    public = {n for n in dir(mxgateway) if not n.startswith("_")}
    # Submodules are importable but not part of the curated surface.
    modules = {"generated"}
    assert public - set(mxgateway.__all__) - modules == set()
