"""Alarms, session-less as upstream: ``stream-alarms`` and ``acknowledge-alarm``."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from mxgateway import describe_status, enum_name, status_failed
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import timestamp_to_datetime
from mxgateway_cli import _plant
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import gateway_client
from mxgateway_cli._output import message_json
from mxgateway_cli._streaming import print_stream, stream_document

__all__ = ["ALARM_COMMANDS", "alarm_line"]


def _when(ts: Timestamp) -> str:
    if not (ts.seconds or ts.nanos):
        return ""
    return _plant.time_text(timestamp_to_datetime(ts))


def alarm_line(message: pb.AlarmFeedMessage) -> str:
    """One readable line per feed message."""
    which = message.WhichOneof("payload")
    if which == "active_alarm":
        a = message.active_alarm
        state = enum_name(pb.AlarmConditionState, a.state)
        return (
            f"{_when(a.last_transition_time)}  ACTIVE {a.alarm_full_reference}  {state}  "
            f"severity={a.raw_severity}  {a.description}".rstrip()
        )
    if which == "snapshot_complete":
        count = message.snapshot_complete.active_alarm_count
        return f"-- {count} active alarm(s); changes follow --"
    if which == "transition":
        t = message.transition
        kind = enum_name(pb.AlarmTransitionKind, t.transition_kind)
        state = enum_name(pb.AlarmConditionState, t.state)
        who = f"  by {t.operator_user}" if t.operator_user else ""
        return (
            f"{_when(t.transition_time)}  {kind} {t.alarm_full_reference}  {state}  "
            f"severity={t.raw_severity}{who}"
        )
    return "(unknown alarm feed message)"


async def cmd_stream_alarms(ctx: Context) -> ExitCode:
    """``StreamAlarms``: the active set, then changes, until ``--max-messages`` or
    ``--timeout`` (exit 0) or Ctrl+C."""
    a = ctx.args
    with stream_document(ctx.out, "messages", enabled=ctx.json) as writer:
        async with gateway_client(ctx, window=True) as client:
            await print_stream(
                ctx.out,
                writer if ctx.json else None,
                client.stream_alarms_raw(a.filter_prefix or ""),
                alarm_line,
                max_items=a.max_messages,
                timeout=a.timeout,
            )
    return ExitCode.OK


async def cmd_acknowledge_alarm(ctx: Context) -> ExitCode:
    """``AcknowledgeAlarm`` by full reference (no session needed)."""
    a = ctx.args
    async with gateway_client(ctx) as client:
        reply = await client.acknowledge_alarm_raw(
            reference=a.reference, comment=a.comment or "", operator=a.operator or ""
        )
    refused = reply.hresult < 0 or (reply.HasField("status") and status_failed(reply.status))
    if ctx.json:
        ctx.out.emit(message_json(reply))
    elif not refused:
        ctx.out.write(f"acknowledged {a.reference}\n")
    if refused:
        why = (
            describe_status(reply.status)
            if reply.HasField("status")
            else reply.protocol_status.message
        )
        raise CommandFailed(
            f"AcknowledgeAlarm {a.reference} failed (HRESULT 0x{reply.hresult & 0xFFFFFFFF:08X}): "
            f"{why}",
            ExitCode.MXACCESS,
        )
    return ExitCode.OK


ALARM_COMMANDS = {"stream-alarms": cmd_stream_alarms, "acknowledge-alarm": cmd_acknowledge_alarm}
