"""Commands and flags scripts use with the other clients of the same contract (upstream's
.NET, Go, Rust and Java CLIs): the bulk write family with comma-separated lists
(``--item-handles``/``--values``) and ``batch``.

Names and JSON keys are upstream's (upstream-facts.md, "Other clients' CLIs").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import io
import shlex
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import IO, Any

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli import _human
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CliUsageError, classify
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import gateway_client
from mxgateway_cli._output import Output, dumps, message_json
from mxgateway_cli._parsing import parse_aware_datetime, parse_value

__all__ = ["BATCH_END_OF_RESULT", "PARITY_COMMANDS", "bulk_entries", "print_bulk_results"]

BATCH_END_OF_RESULT = "__MXGW_BATCH_EOR__"
"""The line ``batch`` prints after each result (upstream's sentinel)."""
_READ_AHEAD = 16
"""Stdin lines ``batch`` reads ahead of the command it runs."""


def split_csv(text: str, flag: str) -> list[str]:
    """A comma-separated list (CSV quoting allowed, so a value may hold a comma)."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as exc:
        raise CliUsageError(f"{flag}: {exc}") from None
    if len(rows) != 1:
        raise CliUsageError(f"{flag} must be one line of comma-separated values")
    return rows[0]


def _handles(a: Any) -> list[int]:
    handles: list[int] = list(a.item_handle or [])
    for text in split_csv(a.item_handles, "--item-handles") if a.item_handles else []:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise CliUsageError(f"--item-handles: {text!r} is not an integer") from None
        if not -(2**31) <= value < 2**31:
            raise CliUsageError(f"--item-handles: {text!r} is out of range for a handle")
        handles.append(value)
    return handles


def bulk_entries(a: Any, command: str) -> list[tuple[int, pb.MxValue]]:
    """``(item handle, value)`` pairs of a bulk write: ``--item-handle``/``--value``
    (repeated) and ``--item-handles``/``--values`` (comma-separated) pair up by position,
    every value parsed as ``--type``."""
    handles = _handles(a)
    texts: list[str] = list(a.value or [])
    if a.values:
        texts += split_csv(a.values, "--values")
    if not handles:
        raise CliUsageError(f"{command} needs --item-handles (or --item-handle)")
    if len(handles) != len(texts):
        raise CliUsageError(
            f"{command} needs one value per item handle ({len(handles)} handles, "
            f"{len(texts)} values)"
        )
    return [(h, parse_value(a.type, t)) for h, t in zip(handles, texts, strict=True)]


def print_bulk_results(ctx: Context, results: list[pb.BulkWriteResult], title: str) -> None:
    """``{"results": [BulkWriteResult, ...]}``, or a table for people."""
    if ctx.json:
        ctx.out.emit({"results": [message_json(r) for r in results]})
        return
    _human.print_rows(
        ctx.out.console,
        [
            {
                "item": r.item_handle,
                "ok": r.was_successful,
                "hresult": r.hresult,
                "error": r.error_message,
            }
            for r in results
        ],
        [("item", "item handle"), ("ok", "ok"), ("hresult", "hresult"), ("error", "error")],
        title=title,
    )


def _when(a: Any) -> datetime:
    if a.timestamp is None:
        return datetime.now(timezone.utc)
    return parse_aware_datetime(a.timestamp, "--timestamp")


async def cmd_write2_bulk(ctx: Context) -> ExitCode:
    """``Write2Bulk``: every row with ``--timestamp`` (default now)."""
    a = ctx.args
    entries = bulk_entries(a, "write2-bulk")
    when = _when(a)
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        results = await session.write2_bulk(
            a.server_handle, [(h, v, when) for h, v in entries], user_id=a.user_id
        )
    print_bulk_results(ctx, results, "Write2Bulk")
    return ExitCode.OK


async def cmd_write_secured_bulk(ctx: Context) -> ExitCode:
    """``WriteSecuredBulk``: rows written as ``--current-user-id`` / ``--verifier-user-id``."""
    a = ctx.args
    entries = bulk_entries(a, "write-secured-bulk")
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        results = await session.write_secured_bulk(
            a.server_handle,
            entries,
            current_user_id=a.current_user_id,
            verifier_user_id=a.verifier_user_id,
        )
    print_bulk_results(ctx, results, "WriteSecuredBulk")
    return ExitCode.OK


async def cmd_write_secured2_bulk(ctx: Context) -> ExitCode:
    """``WriteSecured2Bulk``: secured rows with ``--timestamp`` (default now)."""
    a = ctx.args
    entries = bulk_entries(a, "write-secured2-bulk")
    when = _when(a)
    async with gateway_client(ctx) as client:
        session = client.attach_session(a.session_id)
        results = await session.write_secured2_bulk(
            a.server_handle,
            [(h, v, when) for h, v in entries],
            current_user_id=a.current_user_id,
            verifier_user_id=a.verifier_user_id,
        )
    print_bulk_results(ctx, results, "WriteSecured2Bulk")
    return ExitCode.OK


_CONNECTION = ("endpoint", "ca_file", "server_name_override", "timeout")


def _inherit_connection(line: Any, batch: Any) -> None:
    """A line's connection flags default to ``batch``'s own (then to MXGATEWAY_*)."""
    if not hasattr(line, "endpoint"):
        return
    for name in _CONNECTION:
        if getattr(line, name) is None:
            setattr(line, name, getattr(batch, name))
    if not (line.plaintext or line.tls):
        line.plaintext, line.tls = batch.plaintext, batch.tls
    if line.api_key is None and line.api_key_env is None:
        line.api_key, line.api_key_env = batch.api_key, batch.api_key_env


async def _run_line(ctx: Context, argv: list[str]) -> str:
    """Run one batch line in this process and loop; its JSON result, or the error object."""
    from mxgateway_cli._commands import command
    from mxgateway_cli._parser import build_parser

    captured, errors = io.StringIO(), io.StringIO()
    out = Output(captured, errors, json_mode=True)
    for secret in ctx.out.secrets:
        out.add_secret(secret)
    try:
        args = build_parser(captured).parse_args(argv)
        if args.command == "batch":
            raise CliUsageError("batch cannot run batch")
        if args.command in ("demo", "watch") or getattr(args, "ndjson", False):
            raise CliUsageError(f"{args.command} cannot run in batch")
        if hasattr(args, "json"):
            args.json = True
        _inherit_connection(args, ctx.args)
        inner = Context(args=args, out=out, env=ctx.env, stdin=None)
        await command(args.command)(inner)
    except Exception as exc:  # the loop goes on; Ctrl+C (not an Exception) ends it
        report = classify(exc, out.secrets + ctx.out.secrets)
        for secret in out.secrets:
            ctx.out.add_secret(secret)
        return dumps({"error": report.message, "type": "error"})
    for secret in out.secrets:
        ctx.out.add_secret(secret)
    return captured.getvalue() or dumps({})


async def cmd_batch(ctx: Context) -> ExitCode:
    """One command line per stdin line; after each, its JSON result (``{"error": ...,
    "type": "error"}`` when it failed) and a line ``__MXGW_BATCH_EOR__``. A failure never
    stops the loop; the run ends at end of input with exit 0."""
    async for line in _read_lines(ctx.input):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            result = dumps({"error": f"cannot split the line: {exc}", "type": "error"})
        else:
            if argv[:1] == ["mxgw-py"]:
                argv = argv[1:]
            result = await _run_line(ctx, argv)
        ctx.out.write(result + BATCH_END_OF_RESULT + "\n")
    return ExitCode.OK


async def _read_lines(stdin: IO[str]) -> AsyncIterator[str]:
    """The lines of ``stdin``, read by a daemon thread: the loop stays free, and Ctrl+C
    ends the run at once (a default-executor thread blocked in ``readline`` would hold the
    interpreter's exit until the next line)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=_READ_AHEAD)

    def reader() -> None:
        try:
            for line in iter(stdin.readline, ""):
                # Blocks while the queue is full: at most _READ_AHEAD lines read ahead.
                asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
        except (RuntimeError, ValueError, OSError, concurrent.futures.CancelledError):
            return  # the loop is gone (the run ended) or stdin was closed
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(queue.put(None), loop)

    threading.Thread(target=reader, name="mxgw-py-batch-stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


PARITY_COMMANDS = {
    "write2-bulk": cmd_write2_bulk,
    "write-secured-bulk": cmd_write_secured_bulk,
    "write-secured2-bulk": cmd_write_secured2_bulk,
    "batch": cmd_batch,
}
