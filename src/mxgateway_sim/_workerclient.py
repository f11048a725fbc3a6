"""The gateway's side of a session's worker process (``--session-isolation process``).

:class:`WorkerRuntime` is an :class:`~mxgateway_sim._runtime.MxAccessRuntime` whose calls run
in an ``mxgw-worker`` process started for the session: each call travels as the public
``MxCommand`` in a ``WorkerEnvelope`` and waits for the reply with its ``correlation_id``.
The worker's events arrive already encoded; they are checked (``worker_sequence``
contiguous), renumbered only when the session's log has events the worker did not make
(alarm transitions) and handed to the session's event log without being decoded.

A worker that exits, stops answering heartbeats, or breaks the protocol faults its own
session (``SESSION_FAULTED``; the calls waiting on it fail with :class:`WorkerLost`) and
is killed and reaped; no other session notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from mxgateway._logsafe import get_logger
from mxgateway._version import WORKER_PROTOCOL_VERSION
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway_sim._domain import (
    MxStatus,
    ReadResult,
    ReleaseCounts,
    WorkerInfo,
    WriteRequest,
)
from mxgateway_sim._framing import MAX_FRAME_BYTES, FrameDecoder, FrameError
from mxgateway_sim._runtime import EventSink
from mxgateway_sim._spawn import WorkerProcess, start_worker_process
from mxgateway_sim._wire import check_read_reply, varint
from mxgateway_sim._workerwire import (
    NONCE_ENV,
    PING_COMMAND,
    PING_REPLY,
    WRITE_REPLY,
    CreatedItems,
    EnvelopeHead,
    ProtocolViolation,
    WorkerLost,
    add_item_command,
    check_envelope,
    created_items,
    decode_envelope,
    raise_for_reply,
    read_command_bytes,
    read_reply_rows,
    read_rows,
    read_varint,
    simple_command,
    status_from_pb,
    write_command_bytes,
)

if TYPE_CHECKING:
    from mxgateway_sim._sessions import Session

log = get_logger("mxgateway_sim.workers")


class WorkerStartError(Exception):
    """The session's worker could not be started (OpenSession fails, nothing is left over)."""


DEFAULT_WORKER_POOL = 2
"""Workers started ahead, waiting for a session (``--worker-pool``): a new session gets one
at once instead of waiting for a Python process to start and import its runtime."""
MAX_WORKER_POOL = 16
"""Most workers kept waiting (each is an idle process)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the gateway runs and watches its workers (defaults are upstream's, but the pool)."""

    runtime: str = "simulated"
    """Runtime the worker hosts (``mxgw-worker --runtime``)."""
    heartbeat_s: float = 5.0
    heartbeat_grace_s: float = 15.0
    """A worker silent for this long (no frame at all) is faulted and killed."""
    startup_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    frame_limit: int = MAX_FRAME_BYTES
    command: tuple[str, ...] = (sys.executable, "-m", "mxgateway_sim.worker")
    """How to start ``mxgw-worker`` (the same interpreter by default)."""
    private_env: tuple[str, ...] = ()
    """Environment variables the workers never see (the gateway's keys, connection strings);
    every ``MXGATEWAY_*`` variable is withheld too, except the worker's nonce."""
    pool_size: int = DEFAULT_WORKER_POOL
    """Workers started ahead of their sessions (0 = start each with its session)."""

    def __post_init__(self) -> None:
        if not 0 <= self.pool_size <= MAX_WORKER_POOL:
            raise ValueError(f"the worker pool holds 0 to {MAX_WORKER_POOL} workers")


def worker_environment(settings: WorkerSettings, nonce: str) -> dict[str, str]:
    """The gateway's environment without its secrets, plus the launch nonce (the session id
    goes in the first frame: a pooled worker is started before its session exists, and a
    command line or environment can be read by others)."""
    private = set(settings.private_env)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in private and not name.upper().startswith("MXGATEWAY_")
    }
    env[NONCE_ENV] = nonce
    return env


def _read_command(server_handle: int, references: Sequence[str], timeout_s: float) -> bytes:
    return read_command_bytes(server_handle, references, max(1, int(timeout_s * 1000)))


class WorkerRuntime:
    """One session's MXAccess runtime, hosted by an ``mxgw-worker`` process."""

    def __init__(self, settings: WorkerSettings, runtime_config: Path | None = None) -> None:
        self.settings = settings
        self._config = runtime_config
        self._session: Session | None = None
        self._session_id = ""
        self._head: EnvelopeHead | None = None
        self._event_prefix = b""
        self._decoder = FrameDecoder(settings.frame_limit)
        self._proc: WorkerProcess | None = None
        self._nonce = ""
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        """Calls waiting for their reply (its serialized ``MxCommandReply``)."""
        self._ids = itertools.count(1)
        self._hello: wpb.WorkerHello | None = None
        self._ready: asyncio.Future[wpb.WorkerReady] | None = None
        self._ack: asyncio.Future[wpb.WorkerShutdownAck] | None = None
        self._gone: asyncio.Event = asyncio.Event()
        self._info = WorkerInfo("mxgw-worker", WORKER_PROTOCOL_VERSION, 0, "")
        self._lost: str | None = None
        self._closing = False
        self._started = False
        self._next_worker_seq = 1
        self._last_heard = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self.pid = 0

    def __repr__(self) -> str:
        return f"WorkerRuntime(pid={self.pid}, lost={self._lost is not None})"

    def bind_session(self, session: Session) -> None:
        """Called by the session manager before :meth:`start`: whose worker this is."""
        self._session = session
        self._session_id = session.id
        self._head = EnvelopeHead(session.id)
        sid = session.id.encode()
        self._event_prefix = b"\x0a" + varint(len(sid)) + sid + b"\x10"

    # -- life cycle ---------------------------------------------------------------------

    async def launch(self) -> None:
        """Start the worker process; it waits, knowing no session, for its hello (sent by
        :meth:`start`). The pool launches workers ahead; otherwise :meth:`start` does.

        Raises:
            WorkerStartError: the process could not be started.
        """
        if self._proc is not None:
            return
        settings = self.settings
        self._nonce = secrets.token_urlsafe(32)
        args = [
            *settings.command,
            "--protocol-version",
            str(WORKER_PROTOCOL_VERSION),
            "--runtime",
            settings.runtime,
            "--frame-limit",
            str(settings.frame_limit),
        ]
        if self._config is not None:
            args += ["--runtime-config", str(self._config)]
        try:
            self._proc = await start_worker_process(
                args, worker_environment(settings, self._nonce), self._received, self._exited
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start the worker: {exc}") from None
        self.pid = self._proc.pid

    @property
    def config(self) -> Path | None:
        """The runtime configuration the worker was (or will be) started with."""
        return self._config

    def idle(self) -> bool:
        """Launched, alive and not yet given a session (a pooled worker ready to hand out)."""
        proc = self._proc
        return (
            proc is not None
            and proc.returncode is None
            and self._session is None
            and self._lost is None
            and not self._closing
        )

    async def start(self, sink: EventSink) -> None:
        """Start the worker (unless the pool did), send the hello naming the session and
        proving the nonce, wait for WorkerReady.

        ``sink`` is not used: the worker's events are already encoded and go to the
        session's event log as they are (see :meth:`bind_session`).

        Raises:
            WorkerStartError: the worker did not start, answer or get ready in time.
        """
        if self._session is None:
            raise WorkerStartError("the worker runtime was not bound to a session")
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        if self._lost is not None:  # a pooled worker that died meanwhile
            await self._abandon(self._lost)
            raise WorkerStartError(self._lost)
        await self.launch()
        self._last_heard = time.monotonic()
        head = self._head
        assert head is not None
        self._write(head.frame(gateway_hello=wpb.GatewayHello(nonce=self._nonce)))
        try:
            ready = await asyncio.wait_for(asyncio.shield(self._ready), settings.startup_timeout_s)
        except asyncio.TimeoutError:
            await self._abandon(f"the worker was not ready within {settings.startup_timeout_s:g} s")
            raise WorkerStartError(
                f"the worker was not ready within {settings.startup_timeout_s:g} s"
            ) from None
        except WorkerLost as exc:
            await self._abandon(str(exc))
            raise WorkerStartError(str(exc)) from None
        except BaseException:
            await self._abandon("the session open was cancelled")
            raise
        if self._lost is not None:  # it broke the protocol right after WorkerReady
            why = self._lost
            await self._abandon(why)
            raise WorkerStartError(why)
        hello = self._hello
        assert hello is not None
        self._info = WorkerInfo(
            ready.backend_name or "mxgw-worker",
            WORKER_PROTOCOL_VERSION,
            hello.process_id,
            ready.backend_version or hello.worker_version,
        )
        self._started = True
        self._watchdog = loop.create_task(self._watch(), name="mxgw-worker-heartbeat")
        log.debug("worker %d ready for session %s", self.pid, self._session_id)

    async def _abandon(self, why: str) -> None:
        """Kill and reap a worker that never became ready."""
        self._lose(why, fault=False)
        await self._reap()

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._gone.wait(), self.settings.shutdown_timeout_s)
        proc.close()

    async def _watch(self) -> None:
        """Heartbeats: send one every interval; a worker silent past the grace is lost."""
        settings = self.settings
        counter = itertools.count(1)
        while self._lost is None and not self._closing:
            await asyncio.sleep(settings.heartbeat_s)
            if self._lost is not None or self._closing:
                return
            silent = time.monotonic() - self._last_heard
            if silent > settings.heartbeat_grace_s:
                self._lose(f"the worker stopped answering heartbeats ({silent:.1f} s silent)")
                await self._reap()
                return
            head = self._head
            assert head is not None
            self._write(head.frame(worker_heartbeat=wpb.WorkerHeartbeat(counter=next(counter))))

    def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is not None:
            proc.write(data)

    def _lose(self, why: str, *, fault: bool = True) -> None:
        """The worker is gone or unusable: fail the waiting calls, fault the session."""
        if self._lost is not None:
            return
        self._lost = why
        error = WorkerLost(why)
        waiting: list[asyncio.Future[Any]] = [*self._pending.values()]
        waiting += [f for f in (self._ready, self._ack) if f is not None]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # retrieved: nobody may be waiting any more
        self._pending.clear()
        if self._proc is not None:
            self._proc.kill()
        if fault and self._started and not self._closing and self._session is not None:
            log.warning(
                "a session's worker (pid %d) was lost: %s",
                self.pid,
                why,
                extra=self._session.log_fields,
            )
            self._session.fault(f"the session's worker was lost: {why}", cause="worker_lost")

    def _exited(self) -> None:
        code = self._proc.returncode if self._proc is not None else None
        self._gone.set()
        if not self._closing:
            self._lose(f"the worker process exited (code {code})")
        if self._proc is not None and (self._closing or self._lost is not None):
            self._proc.close()

    # -- frames from the worker ----------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self._last_heard = time.monotonic()
        if self._lost is not None:
            return
        if self._session is None:  # a pooled worker speaks only once it has its hello
            self._lose("the worker spoke before it was given a session", fault=False)
            return
        try:
            envelopes = self._decoder.feed(data)
            batch: list[bytes] = []
            head = self._head
            greeted = self._hello is not None
            for envelope in envelopes:
                body = head.event_body(envelope) if head is not None else None
                if body is not None:
                    batch.append(body)
                    continue
                if batch:
                    self._events(batch)
                    batch = []
                # A reply in the layout the worker writes skips the generated classes.
                wrapped = head.reply_body(envelope) if greeted and head is not None else None
                if wrapped is not None:
                    self._reply(*wrapped)
                else:
                    self._envelope(envelope)
                    greeted = self._hello is not None
            if batch:
                self._events(batch)
        except (FrameError, ProtocolViolation) as exc:
            self._lose(f"protocol violation: {exc}")

    def _events(self, bodies: list[bytes]) -> None:
        """Check, renumber if needed, and publish a run of worker events."""
        session = self._session
        assert session is not None
        log_ = session.events
        seq = log_.next_seq
        prefix = self._event_prefix
        expected = self._next_worker_seq
        out = bodies
        for index, body in enumerate(bodies):
            # body = 0x0A <len> <MxEvent>; the MxEvent starts with its session id, then
            # worker_sequence (field order of the generated code and of EventEncoder).
            _, start = read_varint(body, 1)
            if not body.startswith(prefix, start):
                raise ProtocolViolation("an event of another session, or in an unknown layout")
            worker_seq, j = read_varint(body, start + len(prefix))
            if worker_seq != expected:
                raise ProtocolViolation(
                    f"worker_sequence {worker_seq} where {expected} was due (events lost)"
                )
            expected += 1
            wanted = seq + index
            if wanted != worker_seq:  # the log has events the worker did not make
                if out is bodies:
                    out = list(bodies)
                inner = prefix + varint(wanted) + body[j:]
                out[index] = b"\x0a" + varint(len(inner)) + inner
        self._next_worker_seq = expected
        log_.publish_framed(out)

    def _envelope(self, data: bytes) -> None:
        env = decode_envelope(data)
        body = check_envelope(env, self._session_id)
        if self._hello is None:
            if body == "worker_fault":
                raise ProtocolViolation(f"the worker failed: {env.worker_fault.message}")
            if body != "worker_hello":
                raise ProtocolViolation(f"{body} before worker_hello")
            if env.worker_hello.nonce != self._nonce:
                raise ProtocolViolation("the worker's nonce does not match")
            self._hello = env.worker_hello
            return
        if body == "worker_command_reply":
            self._reply(env.correlation_id, env.worker_command_reply.reply.SerializeToString())
        elif body == "worker_event":
            event = env.worker_event.event.SerializeToString()
            self._events([b"\x0a" + varint(len(event)) + event])
        elif body == "worker_heartbeat":
            pass  # heard: _received noted the time
        elif body == "worker_ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(env.worker_ready)
        elif body == "worker_shutdown_ack":
            if self._ack is not None and not self._ack.done():
                self._ack.set_result(env.worker_shutdown_ack)
        elif body == "worker_fault":
            self._lose(f"the worker reported a fault: {env.worker_fault.message}")
        else:
            raise ProtocolViolation(f"{body} is not sent by a worker")

    def _reply(self, correlation_id: str, reply: bytes) -> None:
        fut = self._pending.pop(correlation_id, None)
        if fut is not None and not fut.done():  # else cancelled meanwhile: dropped
            fut.set_result(reply)

    # -- calls ---------------------------------------------------------------------------

    async def _call(
        self, command: pb.MxCommand | bytes, *, check: bool = True
    ) -> pb.MxCommandReply:
        reply = self._parse(await self._call_wire(command))
        if check:
            raise_for_reply(reply)
        return reply

    def _parse(self, data: bytes) -> pb.MxCommandReply:
        """A reply's bytes as a message; bytes that are not one break the protocol."""
        try:
            return pb.MxCommandReply.FromString(data)
        except DecodeError:
            why = "protocol violation: a worker_command_reply that is not an MxCommandReply"
            self._lose(why)
            raise WorkerLost(why) from None

    async def _call_wire(self, command: pb.MxCommand | bytes) -> bytes:
        """Send a command (or its bytes) and wait for its reply's bytes."""
        if self._lost is not None:
            raise WorkerLost(self._lost)
        if self._closing:
            raise WorkerLost("the worker is shutting down")
        head = self._head
        assert head is not None
        cid = str(next(self._ids))
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        self._write(head.command_frame(cid, command))
        try:
            reply = await fut
        except asyncio.CancelledError:
            if self._pending.pop(cid, None) is not None and self._lost is None:
                self._write(head.frame(cid, worker_cancel=wpb.WorkerCancel(reason="cancelled")))
            raise
        return reply

    async def register(self, client_name: str) -> int:
        """Register(pClientName) -> hLMX."""
        reply = await self._call(
            simple_command(pb.MX_COMMAND_KIND_REGISTER, "register", client_name=client_name)
        )
        return reply.register.server_handle

    async def unregister(self, server_handle: int) -> None:
        """Unregister(hLMX)."""
        await self._call(
            simple_command(pb.MX_COMMAND_KIND_UNREGISTER, "unregister", server_handle=server_handle)
        )

    async def add_item(
        self,
        server_handle: int,
        item_definition: str,
        item_context: str = "",
        *,
        buffered: bool = False,
    ) -> int:
        """AddItem / AddItem2 / AddBufferedItem -> hItem."""
        reply = await self._call(
            add_item_command(server_handle, item_definition, item_context, buffered=buffered)
        )
        result = reply.WhichOneof("result")
        return int(getattr(reply, result).item_handle) if result is not None else 0

    async def create_items(
        self, server_handle: int, references: Sequence[str], *, advise: bool, supervisory: bool
    ) -> CreatedItems:
        """AddItem (and Advise) a chunk of references in one round trip (the bulk commands
        use it: ``_commands.ItemBatch``).

        A call cancelled while the worker runs it still waits for the reply (the chunk
        runs to its end in the worker), removes what it created, then is cancelled: a
        stopped bulk add leaves nothing behind, as inline.
        """
        command = simple_command(
            pb.MX_COMMAND_KIND_SUBSCRIBE_BULK if advise else pb.MX_COMMAND_KIND_ADD_ITEM_BULK,
            "subscribe_bulk" if advise else "add_item_bulk",
            server_handle=server_handle,
            tag_addresses=list(references),
        )
        if advise and supervisory:
            command.subscribe_bulk.supervisory = True
        pending = asyncio.ensure_future(self._call(command, check=False))
        try:
            reply = await asyncio.shield(pending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                late = await asyncio.wait_for(pending, self.settings.shutdown_timeout_s)
                made, _ = created_items(late)
                for handle, _ in reversed(made):
                    if handle:
                        with contextlib.suppress(Exception):
                            if advise:
                                await self.unadvise(server_handle, handle)
                            await self.remove_item(server_handle, handle)
            raise
        made, limit = created_items(reply)
        if len(made) > len(references) or (limit is None and len(made) != len(references)):
            why = f"protocol violation: {len(made)} rows for {len(references)} references"
            self._lose(why)
            raise WorkerLost(why)
        return made, limit

    async def remove_item(self, server_handle: int, item_handle: int) -> None:
        """RemoveItem(hLMX, hItem)."""
        await self._call(
            simple_command(
                pb.MX_COMMAND_KIND_REMOVE_ITEM,
                "remove_item",
                server_handle=server_handle,
                item_handle=item_handle,
            )
        )

    async def advise(self, server_handle: int, item_handle: int, *, supervisory: bool) -> None:
        """Advise / AdviseSupervisory."""
        kind, member = (
            (pb.MX_COMMAND_KIND_ADVISE_SUPERVISORY, "advise_supervisory")
            if supervisory
            else (pb.MX_COMMAND_KIND_ADVISE, "advise")
        )
        await self._call(
            simple_command(kind, member, server_handle=server_handle, item_handle=item_handle)
        )

    async def unadvise(self, server_handle: int, item_handle: int) -> None:
        """UnAdvise(hLMX, hItem)."""
        await self._call(
            simple_command(
                pb.MX_COMMAND_KIND_UN_ADVISE,
                "un_advise",
                server_handle=server_handle,
                item_handle=item_handle,
            )
        )

    async def write(self, server_handle: int, item_handle: int, request: WriteRequest) -> None:
        """The Write family; the outcome is the worker's OnWriteComplete event."""
        data = await self._call_wire(write_command_bytes(server_handle, item_handle, request))
        if data != WRITE_REPLY:  # another member of the family, or a failure
            raise_for_reply(self._parse(data))

    async def authenticate_user(self, server_handle: int, user: str, password: str) -> int:
        """AuthenticateUser -> user id."""
        reply = await self._call(
            simple_command(
                pb.MX_COMMAND_KIND_AUTHENTICATE_USER,
                "authenticate_user",
                server_handle=server_handle,
                verify_user=user,
                verify_user_password=password,
            )
        )
        return reply.authenticate_user.user_id

    async def archestra_user_to_id(self, server_handle: int, user_guid: str) -> int:
        """ArchestrAUserToId -> user id."""
        reply = await self._call(
            simple_command(
                pb.MX_COMMAND_KIND_ARCHESTRA_USER_TO_ID,
                "archestra_user_to_id",
                server_handle=server_handle,
                user_id_guid=user_guid,
            )
        )
        return reply.archestra_user_to_id.user_id

    async def _status_call(self, kind: int, member: str, sh: int, ih: int) -> MxStatus:
        reply = await self._call(simple_command(kind, member, server_handle=sh, item_handle=ih))
        if not reply.statuses:
            raise WorkerLost(f"the worker's {member} reply has no status")
        return status_from_pb(reply.statuses[0])

    async def suspend(self, server_handle: int, item_handle: int) -> MxStatus:
        """Suspend(hLMX, hItem, out status)."""
        return await self._status_call(
            pb.MX_COMMAND_KIND_SUSPEND, "suspend", server_handle, item_handle
        )

    async def activate(self, server_handle: int, item_handle: int) -> MxStatus:
        """Activate(hLMX, hItem, out status)."""
        return await self._status_call(
            pb.MX_COMMAND_KIND_ACTIVATE, "activate", server_handle, item_handle
        )

    async def set_buffered_update_interval(self, server_handle: int, interval_ms: int) -> None:
        """SetBufferedUpdateInterval(hLMX, lUpdateInterval)."""
        await self._call(
            simple_command(
                pb.MX_COMMAND_KIND_SET_BUFFERED_UPDATE_INTERVAL,
                "set_buffered_update_interval",
                server_handle=server_handle,
                update_interval_ms=interval_ms,
            )
        )

    async def read(
        self, server_handle: int, references: Sequence[str], timeout_s: float
    ) -> list[ReadResult]:
        """ReadBulk in the worker."""
        reply = await self._call(_read_command(server_handle, references, timeout_s))
        return read_rows(reply.bulk_read)

    async def read_bytes(
        self,
        server_handle: int,
        references: Sequence[str],
        timeout_s: float,
        max_bytes: int | None = None,
        already: int = 0,
    ) -> bytes:
        """ReadBulk in the worker, its rows as the worker encoded them (with the same
        ``read_reply_bytes`` the gateway would use on :meth:`read`'s rows; the ReadBulk
        handler takes this instead, without decoding and encoding every row again).

        Raises:
            LimitError: the rows, after ``already`` bytes of the reply, exceed ``max_bytes``.
        """
        data = await self._call_wire(_read_command(server_handle, references, timeout_s))
        rows = read_reply_rows(data)
        if rows is None:  # a failure (or a layout of another writer)
            reply = self._parse(data)
            raise_for_reply(reply)
            rows = reply.bulk_read.SerializeToString()
        check_read_reply(already + len(rows), max_bytes)
        return rows

    async def ping(self) -> None:
        """A round trip through the worker."""
        data = await self._call_wire(PING_COMMAND)
        if data != PING_REPLY:
            raise_for_reply(self._parse(data))

    def worker_info(self) -> WorkerInfo:
        """Backend, versions and the worker's process id (from its hello and ready)."""
        return self._info

    async def release_all(self) -> ReleaseCounts:
        """Shut the worker down: it releases everything and reports the counts.

        A worker already lost releases nothing (its MXAccess client died with it).
        """
        if self._lost is not None or self._closing or self._head is None:
            return ReleaseCounts()
        self._closing = True
        self._ack = asyncio.get_running_loop().create_future()
        settings = self.settings
        self._write(
            self._head.frame(
                "shutdown",
                worker_shutdown=wpb.WorkerShutdown(
                    reason="the session is closing",
                    grace_ms=int(settings.shutdown_timeout_s * 1000),
                ),
            )
        )
        try:
            ack = await asyncio.wait_for(asyncio.shield(self._ack), settings.shutdown_timeout_s)
        except asyncio.CancelledError:  # a bounded gateway stop gave up on it
            self.abort()
            raise
        except (asyncio.TimeoutError, WorkerLost):
            log.warning("a worker (pid %d) did not acknowledge its shutdown", self.pid)
            return ReleaseCounts()
        return ReleaseCounts(
            ack.released_advise_count, ack.released_item_count, ack.released_registration_count
        )

    def crash(self, why: str) -> None:
        """Fault injection (``sim.fault_session()``): the worker dies now, killed, as in a
        real crash; the caller has faulted the session already (with its own message)."""
        self._lose(why, fault=False)

    def abort(self) -> None:
        """Kill the worker now, without waiting (a bounded gateway stop gave up on it; the
        event loop's child watcher reaps it)."""
        self._closing = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
        if self._proc is not None:
            self._proc.kill()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerLost("the worker was stopped"))
                fut.exception()
        self._pending.clear()

    async def close(self) -> None:
        """Wait for the worker to exit (killing it after the shutdown timeout) and reap it;
        cancelled, it kills the worker at once."""
        try:
            await self._close()
        except asyncio.CancelledError:
            self.abort()
            raise

    async def _close(self) -> None:
        self._closing = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        proc = self._proc
        if proc is None:
            return
        proc.close_stdin()  # end of file: a worker not yet shut down exits too
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._gone.wait(), self.settings.shutdown_timeout_s)
        await self._reap()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerLost("the worker was shut down"))
                fut.exception()
        self._pending.clear()
