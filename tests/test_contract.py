"""The contract: every fixture round-trips, and every contract element has a fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from fixtureio import FIXTURES, UPSTREAM, upstream_document, upstream_reply
from mxgateway import GatewayClient, MxAccessError, from_mx_value, status_failed, to_mx_value
from mxgateway._errors import check_mxaccess
from mxgateway.generated import galaxy_repository_pb2 as gpb
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as pbg
from mxgateway.generated import mxaccess_worker_pb2 as wpb

# Message type of each fixture file, by path pattern.
_TYPES: list[tuple[str, type[Message]]] = [
    ("commands/*.request.json", pb.MxCommandRequest),
    ("replies/*.reply.json", pb.MxCommandReply),
    ("events/event-batch.json", pb.MxEventBatch),
    ("worker/*.envelope.json", wpb.WorkerEnvelope),
    ("sessions/open-session.request.json", pb.OpenSessionRequest),
    ("sessions/open-session.reply.json", pb.OpenSessionReply),
    ("sessions/close-session.request.json", pb.CloseSessionRequest),
    ("sessions/close-session.reply.json", pb.CloseSessionReply),
    ("sessions/stream-events.request.json", pb.StreamEventsRequest),
    ("galaxy/test-connection.request.json", gpb.TestConnectionRequest),
    ("galaxy/test-connection.reply.json", gpb.TestConnectionReply),
    ("galaxy/get-last-deploy-time.request.json", gpb.GetLastDeployTimeRequest),
    ("galaxy/get-last-deploy-time.reply.json", gpb.GetLastDeployTimeReply),
    ("galaxy/discover-hierarchy.request.json", gpb.DiscoverHierarchyRequest),
    ("galaxy/discover-hierarchy.reply.json", gpb.DiscoverHierarchyReply),
    ("galaxy/watch-deploy-events.request.json", gpb.WatchDeployEventsRequest),
    ("galaxy/deploy-event.json", gpb.DeployEvent),
    ("galaxy/browse-children.request.json", gpb.BrowseChildrenRequest),
    ("galaxy/browse-children.reply.json", gpb.BrowseChildrenReply),
]


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _message_fixtures() -> list[tuple[Path, type[Message]]]:
    found = []
    for pattern, cls in _TYPES:
        paths = sorted(FIXTURES.glob(pattern))
        assert paths, f"no fixture matches {pattern}"
        found.extend((p, cls) for p in paths)
    # Documents that hold lists of messages.
    return found


def _list_fixtures() -> list[tuple[Path, str, type[Message]]]:
    return [
        (FIXTURES / "events" / "session-event-stream.json", "events", pb.MxEvent),
        (FIXTURES / "statuses" / "protocol-statuses.json", "statuses", pb.ProtocolStatus),
        (FIXTURES / "statuses" / "mx-statuses.json", "statuses", pb.MxStatusProxy),
    ]


def _roundtrip(doc: dict[str, Any], cls: type[Message]) -> Message:
    msg = json_format.ParseDict(doc, cls())  # unknown fields raise
    wire = msg.SerializeToString(deterministic=True)
    again = cls.FromString(wire)
    assert again == msg
    assert json_format.MessageToDict(again) == doc, "JSON -> binary -> JSON lost something"
    return again


ALL_FILES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.json"))


def test_every_fixture_file_is_checked() -> None:
    checked = {p.relative_to(FIXTURES).as_posix() for p, _ in _message_fixtures()}
    checked |= {p.relative_to(FIXTURES).as_posix() for p, _, _ in _list_fixtures()}
    checked.add("values/value-conversion-cases.json")  # tests/test_values.py
    checked |= {f"upstream/{name}" for name in UPSTREAM_FILES}  # the upstream tests below
    assert set(ALL_FILES) == checked


@pytest.mark.parametrize(
    ("path", "cls"),
    _message_fixtures(),
    ids=[p.relative_to(FIXTURES).as_posix() for p, _ in _message_fixtures()],
)
def test_fixture_round_trips(path: Path, cls: type[Message]) -> None:
    _roundtrip(_load(path), cls)


@pytest.mark.parametrize(("path", "key", "cls"), _list_fixtures(), ids=lambda v: str(v))
def test_list_fixture_round_trips(path: Path, key: str, cls: type[Message]) -> None:
    items = _load(path)[key]
    assert items
    for item in items:
        _roundtrip(item, cls)


def _commands() -> list[pb.MxCommandRequest]:
    return [
        json_format.ParseDict(_load(p), pb.MxCommandRequest())
        for p in sorted(FIXTURES.glob("commands/*.request.json"))
    ]


def test_one_command_fixture_per_kind_with_matching_payload() -> None:
    kinds = []
    for request in _commands():
        payload = request.command.WhichOneof("payload")
        assert payload is not None
        kind = pb.MxCommandKind.Name(request.command.kind)
        assert kind == "MX_COMMAND_KIND_" + payload.upper(), (kind, payload)
        kinds.append(request.command.kind)
    every = [v.number for v in pb.MxCommandKind.DESCRIPTOR.values if v.number != 0]
    assert sorted(kinds) == sorted(every)


def test_every_command_kind_has_a_payload_member() -> None:
    payloads = {f.name.upper() for f in pb.MxCommand.DESCRIPTOR.oneofs_by_name["payload"].fields}
    kinds = {v.name.removeprefix("MX_COMMAND_KIND_") for v in pb.MxCommandKind.DESCRIPTOR.values}
    assert kinds - {"UNSPECIFIED"} == payloads


def test_event_stream_covers_every_family_with_contiguous_sequence() -> None:
    events = [
        json_format.ParseDict(e, pb.MxEvent())
        for e in _load(FIXTURES / "events" / "session-event-stream.json")["events"]
    ]
    assert [e.worker_sequence for e in events] == list(range(1, len(events) + 1))
    families = {e.family for e in events}
    assert families == {v.number for v in pb.MxEventFamily.DESCRIPTOR.values if v.number}
    for event in events:
        body = event.WhichOneof("body")
        assert pb.MxEventFamily.Name(event.family) == "MX_EVENT_FAMILY_" + str(body).upper()


@pytest.mark.parametrize(
    ("enum", "path", "field"),
    [
        (pb.ProtocolStatusCode, "statuses/protocol-statuses.json", "code"),
        (pb.MxStatusCategory, "statuses/mx-statuses.json", "category"),
        (pb.MxStatusSource, "statuses/mx-statuses.json", "detectedBy"),
    ],
)
def test_every_status_enum_value_has_a_fixture(enum: Any, path: str, field: str) -> None:
    seen = {item.get(field) for item in _load(FIXTURES / path)["statuses"]}
    names = {v.name for v in enum.DESCRIPTOR.values if v.number != 0}
    assert names <= seen


def test_raw_status_fields_carry_com_values() -> None:
    for item in _load(FIXTURES / "statuses" / "mx-statuses.json")["statuses"]:
        status = json_format.ParseDict(item, pb.MxStatusProxy())
        assert status.raw_category == status.category - 2
        assert status.raw_detected_by == status.detected_by - 2


def test_every_galaxy_rpc_has_request_and_reply_fixtures() -> None:
    service = gpb.DESCRIPTOR.services_by_name["GalaxyRepository"]
    names = {p.name for p in FIXTURES.glob("galaxy/*.json")}
    for method in service.methods:
        stem = "".join("-" + c.lower() if c.isupper() else c for c in method.name).lstrip("-")
        assert f"{stem}.request.json" in names, method.name
    assert {m.name for m in service.methods} == {
        "TestConnection",
        "GetLastDeployTime",
        "DiscoverHierarchy",
        "WatchDeployEvents",
        "BrowseChildren",
    }


def test_confirmed_upstream_numbers() -> None:
    # The few field numbers the public gateway is known to use.
    assert pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE == 9
    assert pb.MX_EVENT_FAMILY_ON_ALARM_TRANSITION == 5
    assert pb.MxEvent.DESCRIPTOR.fields_by_name["on_alarm_transition"].number == 24
    assert gpb.TestConnectionReply.DESCRIPTOR.fields_by_name["ok"].number == 1
    attr = gpb.GalaxyAttribute.DESCRIPTOR.fields_by_name
    assert (attr["is_historized"].number, attr["is_alarm"].number) == (10, 11)
    envelope = wpb.WorkerEnvelope.DESCRIPTOR.fields_by_name
    assert envelope["correlation_id"].number == 4
    assert envelope["worker_event"].number == 18
    browse = gpb.BrowseChildrenRequest.DESCRIPTOR.fields_by_name
    assert [browse[n].number for n in ("parent_gobject_id", "historized_only")] == [1, 11]


def test_opaque_bytes_are_raw_value_as_upstream() -> None:
    # Upstream's name for MxValue's opaque-bytes member (upstream-facts "Values and
    # statuses"); it was record_value here, with the same number, so binary peers agree.
    fields = pb.MxValue.DESCRIPTOR.fields_by_name
    assert (fields["raw_value"].number, fields["raw_value"].json_name) == (14, "rawValue")
    assert "record_value" not in fields
    opaque = b"\x00\x01\x02\xff"
    received = json_format.Parse('{"rawValue": "AAEC/w=="}', pb.MxValue())
    assert from_mx_value(received) == opaque  # passed through, never interpreted
    assert to_mx_value(opaque).raw_value == opaque


# ----- upstream's own fixtures (fixtures/upstream) ----------------------------------------

UPSTREAM_FILES = ("register.ok.reply.json", "write.mxaccess-failure.reply.json")


def _subset(expected: Any, actual: Any, where: str = "") -> None:
    """Every member of ``expected`` is in ``actual`` with the same value (recursively)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} lost"
            _subset(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _subset(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_upstream_fixtures_are_the_documented_set() -> None:
    assert sorted(p.name for p in UPSTREAM.glob("*.json")) == sorted(UPSTREAM_FILES)
    readme = (UPSTREAM / "README.md").read_text(encoding="utf-8")
    for name in UPSTREAM_FILES:
        assert f"`{name}`" in readme, name
        # Our own fixtures never take an upstream fixture's name.
        assert [p.parent.name for p in FIXTURES.rglob(name)] == ["upstream"], name


@pytest.mark.parametrize("name", UPSTREAM_FILES)
def test_upstream_fixture_reads_with_our_bindings_without_loss(name: str) -> None:
    doc = upstream_document(name)
    reply = upstream_reply(name)  # strict: a member our bindings do not know raises
    again = pb.MxCommandReply.FromString(reply.SerializeToString(deterministic=True))
    assert again == reply
    printed = json_format.MessageToDict(again, always_print_fields_with_no_presence=True)
    _subset(doc, printed)  # JSON -> binary -> JSON keeps every upstream member and value


def test_upstream_register_ok_decodes_as_a_success() -> None:
    reply = upstream_reply("register.ok.reply.json")
    assert reply.register.server_handle == 12
    assert reply.return_value.int32_value == 12
    assert reply.return_value.variant_type == pb.VT_I4
    (status,) = reply.statuses
    assert status.category == pb.MX_STATUS_CATEGORY_OK and not status_failed(status)
    assert check_mxaccess(reply) is reply  # no protocol_status: judged by hresult/statuses


def test_upstream_write_failure_decodes_as_an_mxaccess_failure() -> None:
    reply = upstream_reply("write.mxaccess-failure.reply.json")
    assert reply.return_value.is_null
    assert reply.return_value.data_type == pb.MX_DATA_TYPE_NO_DATA
    assert [(s.category, s.detected_by, s.detail) for s in reply.statuses] == [
        (pb.MX_STATUS_CATEGORY_SECURITY_ERROR, pb.MX_STATUS_SOURCE_RESPONDING_LMX, 321),
        (pb.MX_STATUS_CATEGORY_OPERATIONAL_ERROR, pb.MX_STATUS_SOURCE_RESPONDING_NMX, 902),
    ]
    assert all(status_failed(s) for s in reply.statuses)
    with pytest.raises(MxAccessError) as info:
        check_mxaccess(reply)
    assert info.value.reply is reply


class _UpstreamReplies(pbg.MxAccessGatewayServicer):
    """A gateway whose Invoke answers with upstream's fixture for the command's kind (a
    real server cannot be made to send upstream's exact replies)."""

    async def Invoke(self, request: pb.MxCommandRequest, context: Any) -> pb.MxCommandReply:
        kind = request.command.WhichOneof("payload")
        name = "register.ok" if kind == "register" else "write.mxaccess-failure"
        return upstream_reply(f"{name}.reply.json")


async def test_the_library_reads_upstream_replies_over_grpc() -> None:
    server = grpc.aio.server()
    pbg.add_MxAccessGatewayServicer_to_server(_UpstreamReplies(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await GatewayClient.connect(
            endpoint=f"127.0.0.1:{port}", api_key="mxgw_contract_upstreamFixtures01", plaintext=True
        ) as client:
            session = client.attach_session("session-" + "0" * 32)
            assert await session.register("contract") == 12
            write = pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_WRITE,
                write=pb.WriteCommand(server_handle=12, item_handle=1, user_id=0),
            )
            raw = await session.invoke_raw(write)  # MXAccess failures stay in the reply
            assert len(raw.statuses) == 2
            with pytest.raises(MxAccessError) as info:
                await session.invoke(write)
            assert [s.detail for s in info.value.reply.statuses] == [321, 902]
    finally:
        await server.stop(None)


def test_gateway_service_declares_all_rpcs() -> None:
    service = pb.DESCRIPTOR.services_by_name["MxAccessGateway"]
    assert [m.name for m in service.methods] == [
        "OpenSession",
        "CloseSession",
        "Invoke",
        "StreamEvents",
        "AcknowledgeAlarm",
        "StreamAlarms",
        "QueryActiveAlarms",
        "StreamEventBatches",
        "InvokeStream",
    ]
    batches = service.methods_by_name["StreamEventBatches"]
    assert batches.input_type is service.methods_by_name["StreamEvents"].input_type
    assert batches.server_streaming
    commands = service.methods_by_name["InvokeStream"]  # our addition: Invoke on a stream
    invoke = service.methods_by_name["Invoke"]
    assert commands.input_type is invoke.input_type
    assert commands.output_type is invoke.output_type
    assert commands.client_streaming and commands.server_streaming
