"""The ``Invoke`` command handlers of the gateway servicer, one per payload member."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.values import to_mx_value
from mxgateway_sim import _commands as bulk
from mxgateway_sim._commands import ReplyBudget
from mxgateway_sim._domain import (
    WriteRequest,
)
from mxgateway_sim._limits import (
    REPLY_OVERHEAD_BYTES,
    too_large,
)
from mxgateway_sim._requestbytes import read_bulk_bytes
from mxgateway_sim._sessions import Session
from mxgateway_sim._slicing import CHUNK_ROWS, Slicer, chunks
from mxgateway_sim._svc_common import (
    READ_CHUNK_ROWS,
    ServicerCore,
    _BadRequest,
    _Converted,
    _EncodedRows,
    _reply_field,
    _subscribe_rows_bytes,
    _ts,
    _write_request,
)
from mxgateway_sim._wire import (
    read_reply_bytes,
    status_to_pb,
    varint,
    write_reply_bytes,
)

_BULK_READ_FIELD = _reply_field("bulk_read")
"""The tag of ``MxCommandReply.bulk_read`` (made once: a single read pays for every step)."""


class CommandHandlers(ServicerCore):
    """The ``Invoke`` command handlers of the gateway servicer, one per payload member."""

    def _room(self) -> int:
        """Bytes a reply's rows or events may take (the message limit minus the rest)."""
        return self.sessions.options.max_message_bytes - REPLY_OVERHEAD_BYTES

    def _budget(self) -> ReplyBudget:
        return ReplyBudget(self._room())

    def _subscribe_reply(self) -> _EncodedRows:
        """Rows of a bulk add or subscribe (their budget is charged in _commands)."""
        return _EncodedRows("bulk_subscribe", _subscribe_rows_bytes, self._room(), "")

    def _handle_rows(self) -> _EncodedRows:
        """Rows of a bulk call on existing handles (such a call is refused up front when
        even minimal rows would not fit; past the room the rows are counted, not kept)."""
        return _EncodedRows(
            "bulk_subscribe",
            _subscribe_rows_bytes,
            self._room(),
            "the command ran but its rows cannot be returned; send fewer handles per call",
        )

    async def _register(self, s: Session, p: pb.RegisterCommand, r: pb.MxCommandReply) -> None:
        handle = await s.runtime.register(p.client_name)
        r.register.server_handle = handle
        r.return_value.CopyFrom(to_mx_value(handle))

    async def _unregister(self, s: Session, p: pb.UnregisterCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.unregister(p.server_handle)

    async def _add(
        self,
        s: Session,
        sh: int,
        ref: str,
        ctx: str,
        buffered: bool,
        out: pb.AddItemReply,
        r: pb.MxCommandReply,
    ) -> None:
        handle = await s.runtime.add_item(sh, ref, ctx, buffered=buffered)
        out.item_handle = handle
        r.return_value.CopyFrom(to_mx_value(handle))

    async def _add_item(self, s: Session, p: pb.AddItemCommand, r: pb.MxCommandReply) -> None:
        await self._add(s, p.server_handle, p.item_definition, "", False, r.add_item, r)

    async def _add_item2(self, s: Session, p: pb.AddItem2Command, r: pb.MxCommandReply) -> None:
        await self._add(
            s, p.server_handle, p.item_definition, p.item_context, False, r.add_item2, r
        )

    async def _add_buffered_item(
        self, s: Session, p: pb.AddBufferedItemCommand, r: pb.MxCommandReply
    ) -> None:
        await self._add(
            s, p.server_handle, p.item_definition, p.item_context, True, r.add_buffered_item, r
        )

    async def _remove_item(self, s: Session, p: pb.RemoveItemCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.remove_item(p.server_handle, p.item_handle)

    async def _advise(self, s: Session, p: pb.AdviseCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.advise(p.server_handle, p.item_handle, supervisory=False)

    async def _advise_supervisory(
        self, s: Session, p: pb.AdviseSupervisoryCommand, r: pb.MxCommandReply
    ) -> None:
        await s.runtime.advise(p.server_handle, p.item_handle, supervisory=True)

    async def _unadvise(self, s: Session, p: pb.UnAdviseCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.unadvise(p.server_handle, p.item_handle)

    @staticmethod
    async def _write_one(s: Session, sh: int, ih: int, request: WriteRequest) -> None:
        """A single Write*: its OnWriteComplete is published after the reply is handed to
        gRPC (the runtime's ``defer_events``, where it has one), not before it."""
        runtime = s.runtime
        defer = getattr(runtime, "defer_events", None)
        if defer is not None:
            defer()
        await runtime.write(sh, ih, request)

    async def _write(self, s: Session, p: pb.WriteCommand, r: pb.MxCommandReply) -> None:
        request = _write_request(p.value, user=p.user_id)
        await self._write_one(s, p.server_handle, p.item_handle, request)

    async def _write2(self, s: Session, p: pb.Write2Command, r: pb.MxCommandReply) -> None:
        request = _write_request(p.value, ts=_ts(p), user=p.user_id)
        await self._write_one(s, p.server_handle, p.item_handle, request)

    async def _write_secured(
        self, s: Session, p: pb.WriteSecuredCommand, r: pb.MxCommandReply
    ) -> None:
        request = _write_request(
            p.value, user=p.current_user_id, verifier=p.verifier_user_id, secured=True
        )
        await self._write_one(s, p.server_handle, p.item_handle, request)

    async def _write_secured2(
        self, s: Session, p: pb.WriteSecured2Command, r: pb.MxCommandReply
    ) -> None:
        request = _write_request(
            p.value, ts=_ts(p), user=p.current_user_id, verifier=p.verifier_user_id, secured=True
        )
        await self._write_one(s, p.server_handle, p.item_handle, request)

    async def _authenticate_user(
        self, s: Session, p: pb.AuthenticateUserCommand, r: pb.MxCommandReply
    ) -> None:
        user_id = await s.runtime.authenticate_user(
            p.server_handle, p.verify_user, p.verify_user_password
        )
        r.authenticate_user.user_id = user_id
        r.return_value.CopyFrom(to_mx_value(user_id))

    async def _archestra_user_to_id(
        self, s: Session, p: pb.ArchestrAUserToIdCommand, r: pb.MxCommandReply
    ) -> None:
        user_id = await s.runtime.archestra_user_to_id(p.server_handle, p.user_id_guid)
        r.archestra_user_to_id.user_id = user_id
        r.return_value.CopyFrom(to_mx_value(user_id))

    async def _suspend(self, s: Session, p: pb.SuspendCommand, r: pb.MxCommandReply) -> None:
        status = await s.runtime.suspend(p.server_handle, p.item_handle)
        r.statuses.append(status_to_pb(status))

    async def _activate(self, s: Session, p: pb.ActivateCommand, r: pb.MxCommandReply) -> None:
        status = await s.runtime.activate(p.server_handle, p.item_handle)
        r.statuses.append(status_to_pb(status))

    async def _set_buffered_update_interval(
        self, s: Session, p: pb.SetBufferedUpdateIntervalCommand, r: pb.MxCommandReply
    ) -> None:
        await s.runtime.set_buffered_update_interval(p.server_handle, p.update_interval_ms)

    async def _add_item_bulk(
        self, s: Session, p: pb.AddItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        out = self._subscribe_reply()
        await bulk.add_items(s.runtime, p.server_handle, p.tag_addresses, out, self._budget())
        return out.field()

    async def _advise_item_bulk(
        self, s: Session, p: pb.AdviseItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.advise_items(
            s.runtime, p.server_handle, p.item_handles, out, supervisory=p.supervisory
        )
        return out.field()

    async def _remove_item_bulk(
        self, s: Session, p: pb.RemoveItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.remove_items(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _unadvise_item_bulk(
        self, s: Session, p: pb.UnAdviseItemBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.unadvise_items(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _subscribe_bulk(
        self, s: Session, p: pb.SubscribeBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        if p.buffered_update_interval_ms < 0:
            raise _BadRequest("buffered_update_interval_ms cannot be negative")
        out = self._subscribe_reply()
        await bulk.subscribe(
            s.runtime,
            p.server_handle,
            p.tag_addresses,
            out,
            buffered_interval_ms=p.buffered_update_interval_ms,
            supervisory=p.supervisory,
            budget=self._budget(),
        )
        return out.field()

    async def _unsubscribe_bulk(
        self, s: Session, p: pb.UnsubscribeBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        self._budget().precheck(len(p.item_handles))
        out = self._handle_rows()
        await bulk.unsubscribe(s.runtime, p.server_handle, p.item_handles, out)
        return out.field()

    async def _write_rows(
        self, s: Session, sh: int, entries: Sequence[Any], convert: Callable[[Any], WriteRequest]
    ) -> bytes:
        """The Write*Bulk family. Every entry is checked and converted first (a value over
        ``--max-value-bytes`` or out of range fails the whole command before anything is
        written), then converted again chunk by chunk as it is written, both passes in
        slices: 100k converted requests are never held at once (each is an object the
        garbage collector would walk)."""
        self._budget().precheck(len(entries))
        limit = self.sessions.options.max_value_bytes
        slicer = Slicer()
        for start in range(0, len(entries), CHUNK_ROWS):
            for index, entry in enumerate(entries[start : start + CHUNK_ROWS], start):
                size = entry.value.ByteSize()
                if size > limit:
                    raise too_large(f"the value of entry {index}", size, limit, "--max-value-bytes")
                convert(entry)
            await slicer.checkpoint()
        requests = _Converted(entries, convert)
        out = _EncodedRows(
            "bulk_write",
            write_reply_bytes,
            self._room(),
            "the writes ran (their OnWriteComplete events "
            "report each outcome); send fewer entries per call",
        )
        await bulk.write_items(s.runtime, sh, requests, out)
        return out.field()

    async def _write_bulk(self, s: Session, p: pb.WriteBulkCommand, r: pb.MxCommandReply) -> bytes:
        return await self._write_rows(
            s, p.server_handle, p.entries, lambda e: _write_request(e.value, user=e.user_id)
        )

    async def _write2_bulk(
        self, s: Session, p: pb.Write2BulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(e.value, ts=_ts(e), user=e.user_id),
        )

    async def _write_secured_bulk(
        self, s: Session, p: pb.WriteSecuredBulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(
                e.value, user=e.current_user_id, verifier=e.verifier_user_id, secured=True
            ),
        )

    async def _write_secured2_bulk(
        self, s: Session, p: pb.WriteSecured2BulkCommand, r: pb.MxCommandReply
    ) -> bytes:
        return await self._write_rows(
            s,
            p.server_handle,
            p.entries,
            lambda e: _write_request(
                e.value,
                ts=_ts(e),
                user=e.current_user_id,
                verifier=e.verifier_user_id,
                secured=True,
            ),
        )

    async def _read_bulk(
        self, s: Session, p: pb.ReadBulkCommand, r: pb.MxCommandReply
    ) -> bytes | list[bytes]:
        timeout_ms = p.timeout_ms  # each field read of a message costs a lookup
        if timeout_ms < 0:
            raise _BadRequest("timeout_ms cannot be negative")
        timeout_s = (timeout_ms or 5000) / 1000.0
        sh = p.server_handle
        runtime = s.runtime
        # A chunk of tags at a time: each chunk's rows are encoded and dropped at once, and
        # the read stops as soon as the reply no longer fits (reads change nothing).
        room = self._room()
        parts: list[bytes] = []
        size = 0
        tags = p.tag_addresses
        # A call of one chunk (a single read, most calls) is not sliced: it has no pause
        # to give the loop before its reply, only the machinery for 10,000 rows to pay.
        slicer = Slicer() if len(tags) > READ_CHUNK_ROWS else None
        # The simulated runtime encodes rows itself from its per-session row cache (the
        # same bytes, see SimulatedRuntime.read_wire); other runtimes return ReadResults.
        ready = getattr(runtime, "read_wire", None)
        # A repeat of the session's last ReadBulk answers the rows it remembers, in order,
        # without decoding or looking up the references (SimulatedRuntime.read_memo).
        recall = getattr(runtime, "read_memo", None)
        # Known by the bytes it came in (a large one), else serialised again.
        memo = recall(read_bulk_bytes(p) or p.SerializeToString()) if recall is not None else None
        kept = memo.rows if memo is not None else None
        # A worker's runtime hands over the rows its worker encoded (WorkerRuntime.read_bytes).
        remote = getattr(runtime, "read_bytes", None)
        pieces = (
            kept
            if kept is not None
            else chunks(tags, READ_CHUNK_ROWS)
            if slicer is not None
            else (tags,)
        )
        done = 0  # rows read so far
        for i, chunk in enumerate(pieces):
            if kept is not None:
                assert ready is not None  # the runtime that remembers rows encodes them
                count = len(chunk)
                data = ready(sh, None, room, size, memo=memo, rows=chunk, part=i)
                if data is None:  # the generic path, with the references
                    chunk = tags[done : done + count]
                done += count
            elif ready is not None:
                data = ready(sh, chunk, room, size, memo=memo)
            else:
                data = None
            if data is None and remote is not None:
                data = await remote(sh, chunk, timeout_s, room, size)
            if data is None:
                rows = await runtime.read(sh, chunk, timeout_s)
                data = read_reply_bytes(rows, room, already=size)
            parts.append(data)
            size += len(data)
            if slicer is not None:
                await slicer.checkpoint()
        if memo is not None:
            memo.done()
        if len(parts) == 1:
            return _BULK_READ_FIELD + varint(size) + parts[0]
        return [_BULK_READ_FIELD, varint(size), *parts]  # joined once, with the reply's head

    async def _ping(self, s: Session, p: pb.PingCommand, r: pb.MxCommandReply) -> None:
        await s.runtime.ping()

    async def _get_session_state(
        self, s: Session, p: pb.GetSessionStateCommand, r: pb.MxCommandReply
    ) -> None:
        r.session_state.state = int(s.state)  # type: ignore[assignment]

    async def _get_worker_info(
        self, s: Session, p: pb.GetWorkerInfoCommand, r: pb.MxCommandReply
    ) -> None:
        info = s.runtime.worker_info()
        r.worker_info.backend_name = info.backend_name
        r.worker_info.worker_protocol_version = info.worker_protocol_version
        r.worker_info.process_id = info.process_id
        r.worker_info.backend_version = info.backend_version

    async def _drain_events(
        self, s: Session, p: pb.DrainEventsCommand, r: pb.MxCommandReply
    ) -> None:
        if p.max_events < 0:
            raise _BadRequest("max_events cannot be negative")
        for data in s.events.drain(p.max_events, self._room()):
            r.drain_events.events.add().MergeFromString(data)
        r.drain_events.SetInParent()

    async def _shutdown_worker(
        self, s: Session, p: pb.ShutdownWorkerCommand, r: pb.MxCommandReply
    ) -> None:
        # Reply first, then close: the session ends right after this command.
        task = asyncio.get_running_loop().create_task(self._close_later(s.id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_later(self, session_id: str) -> None:
        await asyncio.sleep(0)
        await self.sessions.close(session_id, message="the worker was shut down")
