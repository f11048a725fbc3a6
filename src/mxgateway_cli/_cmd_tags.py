"""Tags by name: ``read``, ``watch`` and ``set``, each in a session of its own.

The everyday job in one command: open a session, register, subscribe the tags (AddItem +
Advise), read their values from the session's event stream (replayed from the start, so the
first value MXAccess raises on Advise is never missed), and close the session on every path.
``set`` waits for the first value too: MXAccess needs the attribute's type resolved before a
write (upstream-facts.md), and the value is written with that type; then it waits for the
write's ``OnWriteComplete`` and reports the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import mxgateway
from mxgateway import describe_status, enum_name, failed_statuses
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import timestamp_to_datetime
from mxgateway_cli import _human, _plant
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CliUsageError, CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import gateway_client
from mxgateway_cli._output import message_json
from mxgateway_cli._parsing import parse_value
from mxgateway_cli._streaming import JsonStream, stream_document

__all__ = ["TAG_COMMANDS", "json_value", "tag_row"]

_DEFAULT_WAIT = 30.0
_CLIENT_NAME = "mxgw-py"

_VALUE_TYPE_OF: dict[int, str] = {
    pb.MX_DATA_TYPE_BOOLEAN: "bool",
    pb.MX_DATA_TYPE_INTEGER: "int32",
    pb.MX_DATA_TYPE_FLOAT: "float",
    pb.MX_DATA_TYPE_DOUBLE: "double",
    pb.MX_DATA_TYPE_STRING: "string",
    pb.MX_DATA_TYPE_BIG_STRING: "string",
    pb.MX_DATA_TYPE_TIME: "datetime",
    pb.MX_DATA_TYPE_ELAPSED_TIME: "elapsed",
}
"""An attribute's MXAccess type -> the ``--type`` its value text is parsed as by ``set``."""

_COLUMNS = (("tag", "Tag"), ("value", "Value"), ("type", "Type"), ("quality", "Quality"))


def json_value(value: pb.MxValue) -> Any:
    """A value as plain JSON: numbers, true/false, text, RFC 3339 times, seconds for
    elapsed times, base64 bytes, lists for arrays, null for no data. A 32-bit float keeps
    its own precision (10.214, not 10.21399974822998)."""
    which = value.WhichOneof("kind")
    if which == "float_value":
        return _json_number(float(_plant.float32_text(value.float_value)))
    if which == "array_value" and len(value.array_value.float_values):
        return [_json_number(float(_plant.float32_text(x))) for x in value.array_value.float_values]
    return _json_python(mxgateway.from_mx_value(value))


def _json_number(number: float) -> Any:
    return number if math.isfinite(number) else str(number)


def _json_python(python: object) -> Any:
    if isinstance(python, list):
        return [_json_python(x) for x in python]
    if isinstance(python, datetime):
        return python.isoformat().replace("+00:00", "Z")
    if isinstance(python, timedelta):
        return python.total_seconds()
    if isinstance(python, bytes):
        return base64.b64encode(python).decode("ascii")
    if isinstance(python, float):
        return _json_number(python)
    return python


def _problem(change: pb.OnDataChangeEvent) -> str | None:
    """The decoded failure statuses of a data change, or None when it carries a value."""
    failed = failed_statuses(change.statuses)
    return "; ".join(describe_status(s) for s in failed) if failed else None


def _is_unknown(change: pb.OnDataChangeEvent) -> bool:
    """True when the value reports a configuration error (unknown object or attribute)."""
    return any(
        s.category == pb.MX_STATUS_CATEGORY_CONFIGURATION_ERROR
        for s in failed_statuses(change.statuses)
    )


def tag_row(tag: str, event: pb.MxEvent) -> dict[str, Any]:
    """The JSON row of one value of ``tag``: ``tag, dataType, value, quality, qualityText,
    timestamp`` (+ ``error`` when the statuses report a failure)."""
    change = event.on_data_change
    row: dict[str, Any] = {
        "tag": tag,
        "dataType": _plant.data_type_name(change.value.data_type),
        "value": json_value(change.value),
        "quality": change.quality,
        "qualityText": _plant.quality_text(change.quality),
        "timestamp": change.timestamp.ToJsonString() if change.HasField("timestamp") else None,
    }
    if _is_array(change.value):
        row["dataType"] += "[]"
    problem = _problem(change)
    if problem is not None:
        row["error"] = problem
    return row


def _is_array(value: pb.MxValue) -> bool:
    return value.WhichOneof("kind") == "array_value"


def _human_row(tag: str, event: pb.MxEvent) -> dict[str, str]:
    change = event.on_data_change
    problem = _problem(change)
    type_name = _plant.data_type_name(change.value.data_type)
    return {
        "tag": tag,
        "value": _plant.value_text(change.value) if problem is None else f"({problem})",
        "type": type_name + ("[]" if _is_array(change.value) else ""),
        "quality": _plant.quality_text(change.quality),
        "time": _event_time(change),
    }


def _event_time(change: pb.OnDataChangeEvent) -> str:
    if not change.HasField("timestamp"):
        return ""
    return _plant.time_text(timestamp_to_datetime(change.timestamp))


@dataclass
class _Tags:
    """The session of one command and its subscribed tags."""

    session: mxgateway.Session
    server_handle: int
    handles: dict[int, str]
    """item handle -> tag as given."""
    failed: dict[str, str] = field(default_factory=dict)
    """tag -> why AddItem/Advise refused it."""


@asynccontextmanager
async def _subscribed(client: mxgateway.GatewayClient, tags: Sequence[str]) -> AsyncIterator[_Tags]:
    """Open a session, register and subscribe ``tags``; the session is closed on exit."""
    session = await client.open_session(_CLIENT_NAME)
    try:
        server_handle = await session.register(_CLIENT_NAME)
        results = await session.subscribe_bulk(server_handle, list(dict.fromkeys(tags)))
        state = _Tags(session, server_handle, {})
        for result in results:
            if result.was_successful:
                state.handles[result.item_handle] = result.tag_address
            else:
                state.failed[result.tag_address] = result.error_message or "refused"
        yield state
    finally:
        await session.close()


def _check_tags(tags: Sequence[str]) -> list[str]:
    cleaned = [t.strip() for t in tags]
    for tag in cleaned:
        if not tag:
            raise CliUsageError("a tag name is empty")
    return cleaned


async def _first_values(
    state: _Tags, stream: mxgateway.EventStream, wait: float
) -> dict[str, pb.MxEvent]:
    """The first ``OnDataChange`` of every subscribed tag (within ``wait`` seconds)."""
    first: dict[str, pb.MxEvent] = {}

    async def collect() -> None:
        async for event in stream:
            if isinstance(event, mxgateway.DataChange):
                tag = state.handles.get(event.item_handle)
                if tag is not None and tag not in first:
                    first[tag] = event.raw
                    if len(first) == len(state.handles):
                        return

    try:
        await asyncio.wait_for(collect(), wait)
    except asyncio.TimeoutError:
        missing = [t for t in state.handles.values() if t not in first]
        raise CommandFailed(
            f"no value for {', '.join(missing)} within {wait:g} s; the object may not be "
            "deployed or its engine may be off scan (raise --timeout to wait longer)",
            ExitCode.TIMEOUT,
        ) from None
    return first


def _unknown_tag_error(tags: Sequence[str], why: str) -> CommandFailed:
    glob = tags[0].split(".")[0] + "*"
    return CommandFailed(
        f"unknown tag {', '.join(tags)} ({why})",
        ExitCode.NOT_FOUND,
        hint=f"check the name, e.g. with `mxgw-py galaxy-discover --tag-glob '{glob}'`",
    )


def _value_error(tag: str, why: str) -> CommandFailed:
    """A tag that exists but whose value reports a failure (e.g. an array without [])."""
    hint = None
    if "without []" in why:
        hint = f"{tag} is an array: read it whole as {tag}[] or one element as {tag}[1]"
    return CommandFailed(f"{tag} has no value ({why})", ExitCode.MXACCESS, hint=hint)


def _print_table(ctx: Context, rows: list[dict[str, str]]) -> None:
    _human.print_table(ctx.out, rows, [*_COLUMNS, ("time", "Time")] if rows else list(_COLUMNS))


async def cmd_read(ctx: Context) -> ExitCode:
    """``read TAG [TAG...]``: the current value, quality and time of each tag."""
    tags = _check_tags(ctx.args.tag)
    wait = ctx.args.timeout or _DEFAULT_WAIT
    async with gateway_client(ctx) as client, _subscribed(client, tags) as state:
        stream = state.session.events()
        try:
            first = await _first_values(state, stream, wait) if state.handles else {}
        finally:
            await stream.aclose()
    unknown = [t for t, e in first.items() if _is_unknown(e.on_data_change)]
    failing = [t for t, e in first.items() if _problem(e.on_data_change) and t not in unknown]
    rows_json = []
    rows_human = []
    for tag in dict.fromkeys(tags):
        if tag in first:
            rows_json.append(tag_row(tag, first[tag]))
            rows_human.append(_human_row(tag, first[tag]))
        else:
            refused = state.failed.get(tag, "no value")
            rows_json.append({"tag": tag, "error": refused})
            rows_human.append({"tag": tag, "value": f"({refused})"})
    if ctx.json:
        ctx.out.emit({"values": rows_json})
    else:
        _print_table(ctx, rows_human)
    bad = unknown + list(state.failed)
    if bad:
        first_bad = bad[0]
        why: str | None = (
            _problem(first[first_bad].on_data_change)
            if first_bad in first
            else state.failed[first_bad]
        )
        raise _unknown_tag_error(bad, why or "refused")
    if failing:
        raise _value_error(failing[0], _problem(first[failing[0]].on_data_change) or "")
    return ExitCode.OK


async def cmd_watch(ctx: Context) -> ExitCode:
    """``watch TAG [TAG...]``: every change (the current values first) until Ctrl+C,
    ``--max-events`` or ``--duration``."""
    a = ctx.args
    tags = _check_tags(a.tag)
    count = 0

    async def pump(state: _Tags, stream: mxgateway.EventStream, writer: JsonStream) -> None:
        nonlocal count
        async for event in stream:
            if not isinstance(event, mxgateway.DataChange):
                if isinstance(event, mxgateway.EventGap) and not ctx.json:
                    ctx.out.write(f"-- {event.missing_count} change(s) lost --\n")
                continue
            tag = state.handles.get(event.item_handle)
            if tag is None:
                continue
            if ctx.json:
                row = tag_row(tag, event.raw)
                row["workerSequence"] = event.worker_sequence
                writer.add(row)
            else:
                ctx.out.write(_watch_line(tag, event.raw) + "\n")
            count += 1
            if a.max_events is not None and count >= a.max_events:
                return

    with stream_document(ctx.out, "events", enabled=ctx.json) as writer:
        async with gateway_client(ctx) as client, _subscribed(client, tags) as state:
            if state.failed:
                tag, why = next(iter(state.failed.items()))
                raise _unknown_tag_error([tag], why)
            stream = state.session.events()
            try:
                if a.duration is None:
                    await pump(state, stream, writer)
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(pump(state, stream, writer), a.duration)
            finally:
                await stream.aclose()
    return ExitCode.OK


def _watch_line(tag: str, event: pb.MxEvent) -> str:
    row = _human_row(tag, event)
    quality = row["quality"]
    return f"{row['time']}  {tag} = {row['value']}  {quality}"


async def cmd_set(ctx: Context) -> ExitCode:
    """``set TAG VALUE``: write ``VALUE`` with the attribute's own type and report the
    write's outcome (its ``OnWriteComplete``)."""
    a = ctx.args
    (tag,) = _check_tags([a.tag])
    wait = a.timeout or _DEFAULT_WAIT
    async with gateway_client(ctx) as client, _subscribed(client, [tag]) as state:
        if state.failed:
            raise _unknown_tag_error([tag], state.failed[tag])
        stream = state.session.events()
        try:
            first = (await _first_values(state, stream, wait))[tag]
            change = first.on_data_change
            if _is_unknown(change):
                raise _unknown_tag_error([tag], _problem(change) or "configuration error")
            problem = _problem(change)
            if problem is not None:
                raise _value_error(tag, problem)
            value_type = a.type or _type_of(tag, change.value)
            value = parse_value(value_type, a.value)
            item_handle = next(iter(state.handles))
            done = await state.session.write(
                state.server_handle,
                item_handle,
                value,
                user_id=a.user_id,
                wait=True,
                wait_timeout=a.wait_timeout,
            )
        finally:
            await stream.aclose()
    assert done is not None
    data_type = _plant.data_type_name(value.data_type)
    if ctx.json:
        ctx.out.emit(
            {
                "tag": tag,
                "dataType": data_type,
                "previousValue": json_value(change.value),
                "value": json_value(value),
                "succeeded": done.succeeded,
                "writeComplete": message_json(done.raw),
            }
        )
    else:
        ctx.out.write(
            f"{tag} = {_plant.value_text(value)} ({data_type}), was "
            f"{_plant.value_text(change.value)}: written, OnWriteComplete "
            f"{_outcome_words(done)}\n"
        )
    return ExitCode.OK


def _outcome_words(done: mxgateway.WriteComplete) -> str:
    statuses = done.statuses
    if not statuses:
        return "OK"
    return ", ".join(enum_name(pb.MxStatusCategory, s.category) for s in statuses)


def _type_of(tag: str, value: pb.MxValue) -> str:
    """The ``--type`` of a value of this attribute, from its first value."""
    name = _plant.data_type_name(value.data_type)
    if _is_array(value):
        raise CliUsageError(
            f"{tag} is an array attribute ({name}[]); set one element, e.g. {tag}[1]"
        )
    value_type = _VALUE_TYPE_OF.get(value.data_type)
    if value_type is None:
        raise CliUsageError(
            f"{tag} is a {name} attribute, which `set` cannot write from text; "
            "give --type, or use `mxgw-py write`"
        )
    return value_type


TAG_COMMANDS = {"read": cmd_read, "watch": cmd_watch, "set": cmd_set}
