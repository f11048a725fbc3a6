"""Every command kind appears everywhere it must, as :data:`mxgateway.commands.COMMANDS` says.

The table is the one place a command kind is described; these tests fail when a kind is
added to the contract without a row, or a row names a library helper, CLI command, server
handler, scope or fixture that does not exist (the checklist is in CONTRIBUTING.md).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest
from google.protobuf import json_format

import mxgateway
from mxgateway._retry import IDEMPOTENT_COMMAND_KINDS, is_idempotent
from mxgateway.commands import ADMIN_SCOPE, COMMANDS, command_spec, scope_for_command
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli._commands import COMMAND_MODULES
from mxgateway_sim import SCOPES
from mxgateway_sim import _servicer as servicer_module
from mxgateway_sim._auth import COMMAND_SCOPES

ROOT = Path(__file__).resolve().parents[1]
KNOWN_KINDS = sorted(set(pb.MxCommandKind.values()) - {pb.MX_COMMAND_KIND_UNSPECIFIED})
ROWS = [COMMANDS[k] for k in sorted(COMMANDS)]


def _oneof_members(message: type, oneof: str) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.oneofs_by_name[oneof].fields}  # type: ignore[attr-defined]


def test_every_kind_of_the_contract_has_exactly_one_row() -> None:
    assert sorted(COMMANDS) == KNOWN_KINDS
    for kind, spec in COMMANDS.items():
        assert spec.kind == kind
        assert command_spec(kind) is spec
    assert command_spec(pb.MX_COMMAND_KIND_UNSPECIFIED) is None


def test_payload_and_reply_members_exist_in_the_contract() -> None:
    payloads = _oneof_members(pb.MxCommand, "payload")
    results = _oneof_members(pb.MxCommandReply, "result")
    assert {spec.payload for spec in ROWS} == payloads  # one payload per kind, none left over
    assert len({spec.payload for spec in ROWS}) == len(ROWS)
    for spec in ROWS:
        assert spec.reply is None or spec.reply in results, spec
    assert {spec.reply for spec in ROWS} - {None} == results


def test_scopes_agree_and_fail_closed() -> None:
    assert set(COMMAND_SCOPES) == set(pb.MxCommandKind.values())
    for spec in ROWS:
        assert spec.scope in SCOPES, spec
        assert COMMAND_SCOPES[spec.kind] == spec.scope == scope_for_command(spec.kind)
    newer = max(pb.MxCommandKind.values()) + 1
    assert scope_for_command(newer) == ADMIN_SCOPE


def test_only_reads_are_retried() -> None:
    assert {spec.kind for spec in ROWS if spec.idempotent} == IDEMPOTENT_COMMAND_KINDS
    for spec in ROWS:
        request = pb.MxCommandRequest(command=pb.MxCommand(kind=spec.kind))
        assert is_idempotent(request) is spec.idempotent
        if spec.idempotent:
            assert spec.scope in ("invoke:read", "events:read"), spec
    newer = max(pb.MxCommandKind.values()) + 1
    assert not is_idempotent(pb.MxCommandRequest(command=pb.MxCommand(kind=newer)))


@pytest.mark.parametrize("spec", [s for s in ROWS if s.session_method], ids=lambda s: s.name)
def test_session_helper_issues_the_kind_and_reads_the_reply(spec: object) -> None:
    assert isinstance(spec, type(ROWS[0]))
    method = getattr(mxgateway.Session, spec.session_method or "")
    source = inspect.getsource(method)
    assert f"MX_COMMAND_KIND_{spec.name}" in source
    if spec.reply is not None:
        # Read by the method or by the private helper it hands the command to.
        helpers = re.findall(r"self\.(_[a-z_]+)\(", source)
        sources = [source, *(inspect.getsource(getattr(mxgateway.Session, h)) for h in helpers)]
        assert any(f'"{spec.reply}"' in s for s in sources), spec


def test_no_session_helper_is_missing_from_the_table() -> None:
    listed = {spec.session_method for spec in ROWS}
    for name, member in vars(mxgateway.Session).items():
        if name.startswith("_") or not callable(member):
            continue
        source = inspect.getsource(member)
        issued = [spec for spec in ROWS if f"MX_COMMAND_KIND_{spec.name}," in source]
        if issued:
            assert name in listed, (name, [s.name for s in issued])


def test_cli_commands_exist() -> None:
    for spec in ROWS:
        if spec.cli is not None:
            assert spec.cli in COMMAND_MODULES, spec


def _server_handlers() -> set[str]:
    """The keys of ``GatewayServicer._handlers`` (read from the source: building a servicer
    needs a whole session manager)."""
    tree = ast.parse(inspect.getsource(servicer_module))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Attribute)
            and node.target.attr == "_handlers"
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value
                for k in node.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
    raise AssertionError("GatewayServicer._handlers not found")


def test_server_handles_every_payload() -> None:
    assert _server_handlers() == {spec.payload for spec in ROWS}
    assert {spec.kind: spec.payload for spec in ROWS} == servicer_module.PAYLOAD_OF_KIND


@pytest.mark.parametrize("spec", ROWS, ids=lambda s: s.name)
def test_every_kind_has_a_request_fixture(spec: object) -> None:
    assert isinstance(spec, type(ROWS[0]))
    path = ROOT / "fixtures" / "commands" / f"{spec.payload.replace('_', '-')}.request.json"
    request = json_format.Parse(path.read_text(encoding="utf-8"), pb.MxCommandRequest())
    assert request.command.kind == spec.kind
    assert request.command.WhichOneof("payload") == spec.payload
    assert json.loads(path.read_text(encoding="utf-8"))["command"]["kind"].endswith(spec.name)
