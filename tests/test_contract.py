"""The contract: every fixture round-trips, and every contract element has a fixture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from fixtureio import FIXTURES
from mxgateway.generated import galaxy_repository_pb2 as gpb
from mxgateway.generated import mxaccess_gateway_pb2 as pb
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
    ]
    batches = service.methods_by_name["StreamEventBatches"]
    assert batches.input_type is service.methods_by_name["StreamEvents"].input_type
    assert batches.server_streaming
