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
    # the transport seam (what raw calls return, and the "use the default deadline" value)
    "DEFAULT",
    "ConnectKeywords",
    "Stream",
    "Transport",
    "UseDefault",
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
    "MxGatewayInternalError",
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
    "DeployEventWatch",
    "GalaxyAttribute",
    "GalaxyHierarchyChangedError",
    "GalaxyFilters",
    "HierarchyFilters",
    "GalaxyObject",
    "GalaxyRepositoryClient",
    # values and versions
    "GATEWAY_PROTOCOL_VERSION",
    "VALUE_TYPES",
    "MxPythonValue",
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
    modules = {"generated", "values", "commands"}
    assert public - set(mxgateway.__all__) - modules == set()


def test_default_is_typed_and_distinct_from_none() -> None:
    # ``timeout=None`` means "no deadline": the default needs a value of its own, typed.
    assert mxgateway.DEFAULT is mxgateway.UseDefault.DEFAULT
    assert mxgateway.DEFAULT is not None
    assert repr(mxgateway.DEFAULT) == "DEFAULT"


def test_galaxy_names_users_catch_and_hold_are_public() -> None:
    assert issubclass(mxgateway.GalaxyHierarchyChangedError, mxgateway.MxGatewayInvalidRequestError)
    assert mxgateway.DeployEventWatch.__module__ == "mxgateway._galaxy"


def test_values_module_is_the_shared_value_table() -> None:
    from mxgateway import _values, values

    assert values.to_mx_value is mxgateway.to_mx_value is _values.to_mx_value
    assert values.from_mx_value is mxgateway.from_mx_value
    assert dict(values.TYPE_TAGS) == _values._TYPE_TAGS
    assert set(values.TYPE_TAGS) == set(values.VALUE_TYPES)
    assert values.infer_value_type(2**40) == "int64"
    assert values.array_value_type([1, 2.5]) == "double"
    for name in values.__all__:
        assert hasattr(values, name), name
