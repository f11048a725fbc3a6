"""The error table: every gRPC and protocol code maps to a class; keys are redacted."""

from __future__ import annotations

import pickle

import grpc
import grpc.aio
import pytest

import mxgateway
from mxgateway._errors import (
    GRPC_STATUS_ERRORS,
    PROTOCOL_STATUS_ERRORS,
    MxAccessError,
    MxGatewayError,
    MxGatewayNotFoundError,
    MxGatewaySessionNotFoundError,
    check_mxaccess,
    error_from_protocol_status,
    error_from_rpc_error,
    redact,
)
from mxgateway.generated import mxaccess_gateway_pb2 as pb

KEY = "mxgw_key1_S3cretValue0123456789"


def _rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def test_every_grpc_code_is_in_the_table() -> None:
    assert set(GRPC_STATUS_ERRORS) == set(grpc.StatusCode)
    assert GRPC_STATUS_ERRORS[grpc.StatusCode.OK] is None
    for code, cls in GRPC_STATUS_ERRORS.items():
        if code is grpc.StatusCode.OK:
            continue
        assert cls is not None and issubclass(cls, MxGatewayError), code
        assert cls.__name__ in mxgateway.__all__, cls


def test_every_protocol_code_is_in_the_table() -> None:
    assert set(PROTOCOL_STATUS_ERRORS) == set(pb.ProtocolStatusCode.values())
    assert PROTOCOL_STATUS_ERRORS[pb.PROTOCOL_STATUS_CODE_OK] is None
    assert PROTOCOL_STATUS_ERRORS[pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE] is MxAccessError
    for code, cls in PROTOCOL_STATUS_ERRORS.items():
        if code != pb.PROTOCOL_STATUS_CODE_OK:
            assert cls is not None and issubclass(cls, MxGatewayError), code


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
def test_rpc_error_maps_through_the_table(code: grpc.StatusCode) -> None:
    exc = _rpc_error(code, f"details with Bearer {KEY} and {KEY}")
    err = error_from_rpc_error(exc, secrets=(KEY,), what="Invoke")
    assert type(err) is GRPC_STATUS_ERRORS[code]
    assert err.grpc_code is code
    assert code.name in str(err)
    assert "Invoke" in str(err)
    assert KEY not in str(err) and "S3cret" not in str(err)


def test_not_found_on_a_session_rpc_is_session_not_found() -> None:
    exc = _rpc_error(grpc.StatusCode.NOT_FOUND, "no such session")
    err = error_from_rpc_error(exc, session_id="session-x")
    assert type(err) is MxGatewaySessionNotFoundError
    assert isinstance(err, MxGatewayNotFoundError)
    assert err.session_id == "session-x"
    assert type(error_from_rpc_error(exc)) is MxGatewayNotFoundError


@pytest.mark.parametrize("code", sorted(pb.ProtocolStatusCode.values()))
def test_protocol_status_maps_through_the_table(code: int) -> None:
    reply = pb.MxCommandReply(
        session_id="session-1",
        kind=pb.MX_COMMAND_KIND_WRITE,
        protocol_status=pb.ProtocolStatus(code=code, message=f"msg {KEY}"),  # type: ignore[arg-type]
        hresult=-2147467259,
    )
    err = error_from_protocol_status(reply, reply.protocol_status, what="Invoke")
    expected = PROTOCOL_STATUS_ERRORS[code]
    if expected is None:
        assert err is None
        return
    assert type(err) is expected
    assert err is not None and err.reply is reply
    assert err.protocol_code == code
    assert KEY not in str(err)


def test_mxaccess_error_carries_reply_hresult_and_statuses() -> None:
    reply = pb.MxCommandReply(
        session_id="session-1",
        kind=pb.MX_COMMAND_KIND_WRITE,
        protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE),
        hresult=-2147220992,
        diagnostic_message="Write denied",
    )
    reply.statuses.add(
        success=0,
        category=pb.MX_STATUS_CATEGORY_SECURITY_ERROR,
        detected_by=pb.MX_STATUS_SOURCE_RESPONDING_LMX,
        detail=1008,
    )
    with pytest.raises(MxAccessError) as info:
        check_mxaccess(reply)
    err = info.value
    assert err.reply is reply
    assert err.hresult == -2147220992
    assert "0x80040200" in str(err)
    assert "MX_E_WriteAccessDenied" in str(err)
    assert "SECURITY_ERROR" in str(err)
    assert err.failed_statuses == (reply.statuses[0],)
    assert err.kind == "WRITE"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: setattr(r, "hresult", -1),
        lambda r: r.statuses.add(
            success=0, category=pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, detail=1007
        ),
        lambda r: r.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_SECURITY_ERROR),
        lambda r: r.statuses.add(success=1, category=77),  # newer than the bindings
    ],
    ids=["negative-hresult", "failed-status", "failure-category-with-success", "unknown-category"],
)
def test_ok_reply_with_failure_details_is_an_mxaccess_error(mutate: object) -> None:
    reply = pb.MxCommandReply(protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK))
    assert check_mxaccess(reply) is reply
    mutate(reply)  # type: ignore[operator]
    with pytest.raises(MxAccessError):
        check_mxaccess(reply)


def test_successful_statuses_pass() -> None:
    reply = pb.MxCommandReply(protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK))
    reply.statuses.add(success=1, category=pb.MX_STATUS_CATEGORY_OK)
    assert check_mxaccess(reply) is reply


@pytest.mark.parametrize(
    "status",
    [
        pb.MxStatusProxy(success=0),  # proto3 defaults: says nothing, not a failure
        pb.MxStatusProxy(success=0, category=pb.MX_STATUS_CATEGORY_OK),  # raw COM number
        pb.MxStatusProxy(success=-1, category=pb.MX_STATUS_CATEGORY_OK),
        pb.MxStatusProxy(success=0, category=pb.MX_STATUS_CATEGORY_PENDING),
    ],
    ids=["defaults", "ok-success-0", "ok-success-minus-1", "pending"],
)
def test_status_decided_by_category_not_success(status: pb.MxStatusProxy) -> None:
    """Upstream: ``success`` is COM's raw number; OK, PENDING and unset are not failures."""
    reply = pb.MxCommandReply(protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_OK))
    reply.statuses.append(status)
    assert check_mxaccess(reply) is reply
    assert not mxgateway.status_failed(status)


def test_unknown_enum_numbers_are_named_not_raised() -> None:
    reply = pb.MxCommandReply(
        kind=99,  # type: ignore[arg-type]
        protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE),
        hresult=-1,
    )
    reply.statuses.add(category=42, detected_by=17, detail=5555)  # type: ignore[arg-type]
    err = MxAccessError(reply)
    assert err.kind == "UNKNOWN(99)"
    assert err.status_descriptions == (
        "UNKNOWN(42) detected by UNKNOWN(17), detail 5555 (unknown detail)",
    )
    assert "UNKNOWN(42)" in str(err)
    assert pickle.loads(pickle.dumps(err)).failed_statuses == err.failed_statuses


def test_redact_removes_keys() -> None:
    text = f"authorization: Bearer {KEY}; raw {KEY}; other mxgw_abc_def123"
    out = redact(text, ("custom-secret",))
    assert KEY not in out and "mxgw_abc_def123" not in out
    assert "Bearer <redacted>" in out
    assert redact("custom-secret here", ("custom-secret",)) == "<redacted> here"


def test_client_closed_error_is_a_runtime_error() -> None:
    assert issubclass(mxgateway.ClientClosedError, RuntimeError)
    assert issubclass(mxgateway.ClientClosedError, MxGatewayError)


def test_errors_pickle_round_trip() -> None:
    import pickle

    reply = pb.MxCommandReply(
        session_id="session-1",
        kind=pb.MX_COMMAND_KIND_WRITE,
        protocol_status=pb.ProtocolStatus(code=pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE),
        hresult=-1,
    )
    samples: list[MxGatewayError] = [
        MxAccessError(reply),
        error_from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "down"), session_id="s"),
        mxgateway.ClientClosedError("closed"),
    ]
    for err in samples:
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err)
        assert str(copy) == str(err)
        assert copy.grpc_code == err.grpc_code and copy.session_id == err.session_id
    restored = pickle.loads(pickle.dumps(samples[0]))
    assert restored.reply == reply
    assert restored.statuses == () and restored.hresult == -1


def test_rpc_error_keeps_details_and_trailers() -> None:
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("cache-sequence", "42")),
        f"stale page token (key {KEY})",
        None,
    )
    err = error_from_rpc_error(exc, secrets=(KEY,))
    assert err.details.startswith("stale page token") and KEY not in err.details
    assert ("cache-sequence", "42") in err.trailing_metadata
