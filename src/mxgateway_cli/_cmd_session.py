"""Session, item, write, event and bulk commands (``open-session`` ... ``smoke``).

Single MXAccess commands print the whole ``MxCommandReply`` as protobuf-JSON (handles,
HRESULT, statuses and the typed result), after the library's MXAccess check: a failed
command raises ``MxAccessError`` and exits with the MXACCESS code. A session opened by
``open-session`` belongs to the gateway, not to this process: later commands attach to it
by ``--session-id`` from any process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mxgateway import describe_status, enum_name, failed_statuses
from mxgateway.commands import command_spec
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli import _human, _plant
from mxgateway_cli._cmd_parity import bulk_entries, print_bulk_results, split_csv
from mxgateway_cli._commands import Command
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CliUsageError, CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import gateway_client
from mxgateway_cli._output import message_json
from mxgateway_cli._parsing import parse_aware_datetime, parse_value
from mxgateway_cli._streaming import consume, print_stream, stream_document

__all__ = ["SESSION_COMMANDS", "event_line"]


def _show(ctx: Context, document: dict[str, Any], title: str | None = None) -> None:
    if ctx.json:
        ctx.out.emit(document)
    else:
        _human.print_mapping(ctx.out.console, document, title=title)


_RESULT_WORDS = {
    "register": ("server handle", "server_handle"),
    "add_item": ("item handle", "item_handle"),
    "add_item2": ("item handle", "item_handle"),
    "add_buffered_item": ("item handle", "item_handle"),
    "authenticate_user": ("user id", "user_id"),
    "archestra_user_to_id": ("user id", "user_id"),
}
"""Typed result -> (words, field) of the one value a person needs from it."""


def reply_line(reply: pb.MxCommandReply) -> str:
    """A reply in one line for people: ``REGISTER: server handle 1``, ``ADVISE: OK``, plus
    any status that is not plain OK in words (``--json`` has every field)."""
    text = enum_name(pb.MxCommandKind, reply.kind) + ": "
    which = reply.WhichOneof("result")
    words = _RESULT_WORDS.get(which or "")
    if which is not None and words is not None:
        text += f"{words[0]} {getattr(getattr(reply, which), words[1])}"
    else:
        text += "OK"
    notes = [
        describe_status(s)
        for s in reply.statuses
        if s.category not in (pb.MX_STATUS_CATEGORY_OK, pb.MX_STATUS_CATEGORY_UNSPECIFIED)
    ]
    return text + "".join(f" [{note}]" for note in notes)


async def _invoke(ctx: Context, command: pb.MxCommand) -> ExitCode:
    """Run one command on ``--session-id`` and print its reply (one line for people)."""
    async with gateway_client(ctx) as client:
        session = client.attach_session(ctx.args.session_id)
        reply = await session.invoke(command)
    return _print_reply(ctx, reply, reply_line(reply))


def _print_reply(ctx: Context, reply: Message, line: str) -> ExitCode:
    """Print ``reply`` as protobuf-JSON under ``--json``, else ``line`` for people."""
    if ctx.json:
        ctx.out.emit(message_json(reply))
    else:
        ctx.out.write(line + "\n")
    return ExitCode.OK


async def _write(ctx: Context, command: pb.MxCommand) -> ExitCode:
    """Run a write; unless ``--no-wait``, wait for its OnWriteComplete and add it to the
    printed reply (``writeComplete``, ``succeeded``). A refused write (a failure status
    in the completion) exits MXACCESS, like a failed call."""
    a = ctx.args
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        reply, done = await session._invoke_write(
            command, a.server_handle, a.item_handle, wait=a.wait, wait_timeout=a.wait_timeout
        )
    document = message_json(reply)
    if done is not None:
        document["writeComplete"] = message_json(done.raw)
        document["succeeded"] = done.succeeded
    _show(ctx, document, title=enum_name(pb.MxCommandKind, reply.kind, short=False))
    return ExitCode.OK


def _ts_message(value: datetime) -> Any:
    from mxgateway.values import datetime_to_timestamp

    return datetime_to_timestamp(value)


async def cmd_open_session(ctx: Context) -> ExitCode:
    """``OpenSession``: prints the reply (``sessionId`` first)."""
    async with gateway_client(ctx) as client:
        # The raw form does not tie the session to this client, so it outlives the process.
        reply = await client.open_session_raw(ctx.args.client_name)
    return _print_reply(ctx, reply, reply.session_id)


async def cmd_close_session(ctx: Context) -> ExitCode:
    """``CloseSession``: prints the released counts and final state."""
    async with gateway_client(ctx) as client:
        reply = await client.close_session(ctx.args.session_id)
    return _print_reply(
        ctx,
        reply,
        f"closed {reply.session_id} ({enum_name(pb.SessionState, reply.final_state)}): "
        f"released {reply.released_advise_count} advise(s), {reply.released_item_count} "
        f"item(s), {reply.released_registration_count} registration(s)",
    )


def _args_command(
    kind: pb.MxCommandKind.ValueType, payload: Callable[..., Any], **fields: str
) -> Command:
    """The command of ``kind`` whose payload is made of arguments alone (``Register``,
    ``AddItem``, ``Advise``, ...): ``payload`` builds it from ``fields`` (payload field ->
    ``ctx.args`` name); the command table names its ``MxCommand`` member."""
    spec = command_spec(kind)
    assert spec is not None, kind
    member = spec.payload

    async def run(ctx: Context) -> ExitCode:
        a = ctx.args
        values = {field: getattr(a, arg) for field, arg in fields.items()}
        return await _invoke(ctx, pb.MxCommand(kind=kind, **{member: payload(**values)}))

    return run


_HANDLES = {"server_handle": "server_handle", "item_handle": "item_handle"}
"""The payload fields of the item commands: ``--server-handle`` and ``--item-handle``."""


async def cmd_write(ctx: Context) -> ExitCode:
    """``Write``: the value is parsed per ``--type`` before anything is sent."""
    a = ctx.args
    value = parse_value(a.type, a.value)
    return await _write(
        ctx,
        pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE,
            write=pb.WriteCommand(
                server_handle=a.server_handle,
                item_handle=a.item_handle,
                value=value,
                user_id=a.user_id,
            ),
        ),
    )


async def cmd_write2(ctx: Context) -> ExitCode:
    """``Write2``: value plus timestamp (``--timestamp``, default now)."""
    a = ctx.args
    value = parse_value(a.type, a.value)
    when = (
        parse_aware_datetime(a.timestamp, "--timestamp")
        if a.timestamp is not None
        else datetime.now(timezone.utc)
    )
    return await _write(
        ctx,
        pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE2,
            write2=pb.Write2Command(
                server_handle=a.server_handle,
                item_handle=a.item_handle,
                value=value,
                timestamp_value=_ts_message(when),
                user_id=a.user_id,
            ),
        ),
    )


async def cmd_write_secured(ctx: Context) -> ExitCode:
    """``WriteSecured``: operator and verifier ids from ``authenticate-user``."""
    a = ctx.args
    value = parse_value(a.type, a.value)
    verifier = a.verifier_user_id if a.verifier_user_id is not None else a.current_user_id
    return await _write(
        ctx,
        pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_WRITE_SECURED,
            write_secured=pb.WriteSecuredCommand(
                server_handle=a.server_handle,
                item_handle=a.item_handle,
                current_user_id=a.current_user_id,
                verifier_user_id=verifier,
                value=value,
            ),
        ),
    )


async def cmd_authenticate_user(ctx: Context) -> ExitCode:
    """``AuthenticateUser``: the password comes from an environment variable only."""
    a = ctx.args
    password = ctx.secret_from_env("--password-env", a.password_env)
    return await _invoke(
        ctx,
        pb.MxCommand(
            kind=pb.MX_COMMAND_KIND_AUTHENTICATE_USER,
            authenticate_user=pb.AuthenticateUserCommand(
                server_handle=a.server_handle, verify_user=a.user, verify_user_password=password
            ),
        ),
    )


async def cmd_read_bulk(ctx: Context) -> ExitCode:
    """``ReadBulk``: one row per reference (``--item`` repeated, then ``--items`` CSV), in
    order."""
    a = ctx.args
    items: list[str] = list(a.item or [])
    if a.items:
        items += [t.strip() for t in split_csv(a.items, "--items")]
    if not items:
        raise CliUsageError("read-bulk needs --items (or --item)")
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        results = await session.read_bulk(a.server_handle, items, timeout_ms=a.read_timeout_ms)
    rows = [message_json(r) for r in results]
    if ctx.json:
        ctx.out.emit({"results": rows})
    else:
        _human.print_rows(
            ctx.out.console,
            [_read_row(r) for r in results],
            [
                ("tag", "tag"),
                ("ok", "ok"),
                ("value", "value"),
                ("quality", "quality"),
                ("cached", "cached"),
                ("error", "error"),
            ],
            title="ReadBulk",
        )
    return ExitCode.OK


def _read_row(result: pb.BulkReadResult) -> dict[str, Any]:
    return {
        "tag": result.tag_address,
        "ok": result.was_successful,
        "value": _plant.value_text(result.value) if result.HasField("value") else "",
        "quality": _plant.quality_text(result.quality) if result.was_successful else "",
        "cached": result.was_cached,
        "error": result.error_message,
    }


async def cmd_write_bulk(ctx: Context) -> ExitCode:
    """``WriteBulk``: item handles and values pair up by position (``--item-handle`` /
    ``--value`` repeated, or ``--item-handles`` / ``--values`` comma-separated)."""
    a = ctx.args
    entries = bulk_entries(a, "write-bulk")
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        results = await session.write_bulk(a.server_handle, entries, user_id=a.user_id)
    print_bulk_results(ctx, results, "WriteBulk")
    return ExitCode.OK


def event_line(event: pb.MxEvent, tags: Mapping[int, str] | None = None) -> str:
    """One readable line per event (sequence, family, handles, the tag name when ``tags``
    (item handle -> name) knows it, value, quality in words)."""
    family = enum_name(pb.MxEventFamily, event.family)
    body = event.WhichOneof("body")
    head = f"#{event.worker_sequence} {family}"
    if body == "on_data_change":
        dc = event.on_data_change
        tag = (tags or {}).get(dc.item_handle)
        return (
            f"{head} server={dc.server_handle} item={dc.item_handle}"
            + (f" tag={tag}" if tag else "")
            + f" value={_plant.value_text(dc.value)}"
            f" quality={_plant.quality_text(dc.quality)} ({dc.quality})"
        )
    if body in ("on_write_complete", "operation_complete"):
        done = getattr(event, body)
        failed = failed_statuses(done.statuses)
        tag = (tags or {}).get(done.item_handle)
        text = f"{head} server={done.server_handle} item={done.item_handle}"
        text += (f" tag={tag}" if tag else "") + f" ok={not failed}"
        return text + "".join(f" [{describe_status(s)}]" for s in failed)
    if body == "stream_fault":
        fault = event.stream_fault
        kind = enum_name(pb.StreamFaultKind, fault.kind)
        return f"{head} {kind} {fault.message}".rstrip()
    return head


async def cmd_stream_events(ctx: Context) -> ExitCode:
    """``StreamEvents``: print events until ``--max-events`` or ``--timeout`` (exit 0)."""
    a = ctx.args
    if a.max_events is None and a.timeout is None and ctx.json and not ctx.out.ndjson:
        ctx.out.info("mxgw-py: streaming until interrupted; the document ends on Ctrl+C")
    # The document is finished on a failure too (stdout stays valid JSON; the error goes
    # to stderr).
    with stream_document(ctx.out, "events", enabled=ctx.json) as writer:
        async with gateway_client(ctx, window=True) as client:
            session = client.attach_session(a.session_id)
            # As Session.events(): from the oldest retained event unless told otherwise,
            # so the value an earlier `advise` raised is not missed.
            after = a.after_sequence if a.after_sequence is not None else 0
            await print_stream(
                ctx.out,
                writer if ctx.json else None,
                session.events_raw(None if a.new_only else after),
                event_line,
                max_items=a.max_events,
                timeout=a.timeout,
            )
    return ExitCode.OK


async def cmd_smoke(ctx: Context) -> ExitCode:
    """Open, register, add, advise, read a bounded number of events, close in ``finally``."""
    a = ctx.args
    timeout = a.timeout or 30.0
    events: list[dict[str, Any]] = []
    async with gateway_client(ctx) as client:
        opened = await client.open_session_raw(a.client_name)
        session = client.attach_session(opened.session_id)
        close_reply: pb.CloseSessionReply | None = None
        try:
            server_handle = await session.register(a.client_name)
            item_handle = await session.add_item(server_handle, a.item)
            await session.advise(server_handle, item_handle)
            # Replay from the start of the session: the first value may precede the stream.
            stream = session.events_raw(0)

            def on_event(event: pb.MxEvent) -> int:
                events.append(message_json(event))
                if not ctx.json:
                    ctx.out.write(event_line(event, {item_handle: a.item}) + "\n")
                return 1 if event.WhichOneof("body") != "stream_fault" else 0

            try:
                await consume(stream, on_event, max_items=a.max_events, timeout=timeout)
            finally:
                await stream.aclose()
        finally:
            close_reply = await session.close()
    received = sum(1 for e in events if "streamFault" not in e)
    document: dict[str, Any] = {
        "sessionId": opened.session_id,
        "serverHandle": server_handle,
        "itemHandle": item_handle,
        "item": a.item,
        "eventCount": received,
        "events": events,
        "closeSession": message_json(close_reply) if close_reply is not None else None,
    }
    if ctx.json:
        ctx.out.emit(document)
    else:
        ctx.out.write(
            f"smoke: session {opened.session_id} server={server_handle} item={item_handle} "
            f"events={received} closed\n"
        )
    _check_first_value(a.item, events)
    if received < a.max_events:
        raise CommandFailed(
            f"smoke: only {received} of {a.max_events} event(s) for {a.item} within {timeout}s",
            ExitCode.TIMEOUT,
        )
    return ExitCode.OK


def _check_first_value(item: str, events: list[dict[str, Any]]) -> None:
    """Fail ``smoke`` when the item's first value reports a failure status (an unknown
    object is a Bad value with a configuration error, not a missing event)."""
    first = next((e["onDataChange"] for e in events if "onDataChange" in e), None)
    if first is None:
        return
    change = pb.OnDataChangeEvent()
    json_format.ParseDict(first, change)
    failed = failed_statuses(change.statuses)
    if not failed:
        return
    config = any(s.category == pb.MX_STATUS_CATEGORY_CONFIGURATION_ERROR for s in failed)
    raise CommandFailed(
        f"smoke: the first value of {item} is Bad (quality {change.quality}): "
        + "; ".join(describe_status(s) for s in failed),
        ExitCode.NOT_FOUND if config else ExitCode.MXACCESS,
    )


SESSION_COMMANDS = {
    "open-session": cmd_open_session,
    "close-session": cmd_close_session,
    "register": _args_command(
        pb.MX_COMMAND_KIND_REGISTER, pb.RegisterCommand, client_name="client_name"
    ),
    "unregister": _args_command(
        pb.MX_COMMAND_KIND_UNREGISTER, pb.UnregisterCommand, server_handle="server_handle"
    ),
    "add-item": _args_command(
        pb.MX_COMMAND_KIND_ADD_ITEM,
        pb.AddItemCommand,
        server_handle="server_handle",
        item_definition="item",
    ),
    "remove-item": _args_command(pb.MX_COMMAND_KIND_REMOVE_ITEM, pb.RemoveItemCommand, **_HANDLES),
    "advise": _args_command(pb.MX_COMMAND_KIND_ADVISE, pb.AdviseCommand, **_HANDLES),
    "advise-supervisory": _args_command(
        pb.MX_COMMAND_KIND_ADVISE_SUPERVISORY, pb.AdviseSupervisoryCommand, **_HANDLES
    ),
    "unadvise": _args_command(pb.MX_COMMAND_KIND_UN_ADVISE, pb.UnAdviseCommand, **_HANDLES),
    "write": cmd_write,
    "write2": cmd_write2,
    "write-secured": cmd_write_secured,
    "authenticate-user": cmd_authenticate_user,
    "stream-events": cmd_stream_events,
    "read-bulk": cmd_read_bulk,
    "write-bulk": cmd_write_bulk,
    "smoke": cmd_smoke,
}
