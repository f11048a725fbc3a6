"""``mxgw-worker``: one session's MXAccess runtime in its own process, driven by the gateway.

The gateway starts it (it is not meant to be run by hand) with ``--protocol-version`` and
the runtime to host and the launch nonce in ``MXGATEWAY_WORKER_NONCE``; the session comes
with the gateway's first frame (its envelope's ``session_id``), so a worker can be started
before its session exists (the gateway's pool) and no session id is on its command line or
in its environment (``--session-id`` and ``MXGATEWAY_WORKER_SESSION_ID`` are accepted too,
and then the hello must name that session). The gateway talks to it over its inherited
standard input and output: frames of a 4-byte little-endian length and one
``WorkerEnvelope``. Only the gateway holds the other ends of
those pipes; the nonce is checked as well (the first frame must prove it).

Sequence: GatewayHello (nonce) -> WorkerHello (nonce, pid) -> WorkerReady once the runtime
is up; then commands (each reply carries its command's ``correlation_id``), cancels,
heartbeats (answered at once) and events (``worker_sequence`` contiguous from 1). A
``WorkerShutdown``, or the end of the gateway's pipe, releases everything and exits.

Standard output is the channel, so anything printed goes to standard error instead. Exit
codes: 0 after a shutdown or the gateway leaving, 1 on a protocol violation or a runtime
that fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Coroutine, Generator, Sequence
from pathlib import Path
from typing import Any, NoReturn

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from mxgateway._incident import incident_details
from mxgateway._logsafe import get_logger
from mxgateway._version import WORKER_PROTOCOL_VERSION, __version__
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway_sim._domain import VT_DATE_ZONES, MxRuntimeEvent
from mxgateway_sim._eventloop import EVENT_LOOPS, EventLoopUnavailable
from mxgateway_sim._eventloop import run as run_event_loop
from mxgateway_sim._framing import MAX_FRAME_BYTES, FrameDecoder, FrameError
from mxgateway_sim._gcpolicy import apply_to_worker_process
from mxgateway_sim._incidents import log_unexpected
from mxgateway_sim._runtime import MxAccessRuntime
from mxgateway_sim._threadpipes import ThreadWriter, start_reader
from mxgateway_sim._wire import EventEncoder
from mxgateway_sim._workerwire import (
    NONCE_ENV,
    SESSION_ENV,
    EnvelopeHead,
    ProtocolViolation,
    check_envelope,
    decode_command,
    decode_envelope,
    run_command_wire,
)

log = get_logger("mxgateway_sim.worker")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
RUNTIMES = ("simulated", "mxaccess")
WRITE_BUFFER_LIMIT = 4 * MAX_FRAME_BYTES
"""Bytes the worker may have queued for a gateway that does not read before it gives up."""
PAUSE_BYTES = 2 * 1024 * 1024
"""Queued event bytes at which the worker stops its scan clock until the gateway catches up
(a simulated plant is paced by its reader, as it is inline; a COM runtime cannot be, and
faults the session at :data:`WRITE_BUFFER_LIMIT` instead)."""
RESUME_BYTES = 512 * 1024
TRANSPORT_HIGH = 256 * 1024
"""Bytes in the output transport above which events wait in the worker's own queue: a reply
is never behind more than this (and the pipe's buffer)."""
TRANSPORT_LOW = 64 * 1024
MAX_SESSION_ID_CHARS = 256
"""Longest session id a worker accepts (the gateway's are 40 characters)."""
READ_BYTES = 256 * 1024
"""Most bytes read from the gateway's pipe at once (asyncio's pipe transports read as much)."""
PIPE_BYTES = 1024 * 1024
"""Pipe buffer asked for on Linux (the default 64 KiB makes every 600 events a context
switch)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mxgw-worker",
        allow_abbrev=False,
        description="One session's MXAccess runtime; started by the gateway, not by hand.",
    )
    parser.add_argument(
        "--session-id",
        default="",
        help=f"the session (default: ${SESSION_ENV}, else the session the gateway's hello names)",
    )
    parser.add_argument("--protocol-version", required=True, type=int)
    parser.add_argument("--runtime", choices=RUNTIMES, default="simulated")
    parser.add_argument("--runtime-config", type=Path, metavar="PATH")
    parser.add_argument(
        "--vt-date-zone",
        choices=tuple(VT_DATE_ZONES),
        default="local",
        help="zone of MXAccess's VT_DATE wall clocks (the mxaccess runtime; default local)",
    )
    parser.add_argument("--frame-limit", type=int, default=MAX_FRAME_BYTES, metavar="BYTES")
    parser.add_argument(
        "--io",
        choices=("auto", "loop", "threads"),
        default="auto",
        help="how the channel is read and written: the event loop's pipes, or threads "
        "(auto: threads on Windows, whose inherited pipes the event loop cannot watch)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the worker's event loop (auto: uvloop where it can be imported, else asyncio; "
        "a command's round trip costs less CPU on uvloop)",
    )
    return parser


class RuntimeUnavailable(Exception):
    """The requested runtime cannot run here."""


async def make_runtime(
    kind: str, config: Path | None, date_zone: str = "local"
) -> tuple[MxAccessRuntime, Any]:
    """The runtime to host and an object to ``await .stop()`` at exit (or None).
    ``date_zone``: ``--vt-date-zone`` of the mxaccess runtime.

    Raises:
        RuntimeUnavailable: the runtime cannot be built here.
    """
    if kind == "mxaccess":
        try:
            from mxgateway_mxaccess import MxAccessComRuntime, start_problem
        except ImportError as exc:  # an install without the package
            raise RuntimeUnavailable(f"the MXAccess COM runtime is not installed: {exc}") from None
        problem = start_problem()
        if problem is not None:
            raise RuntimeUnavailable(problem)
        return MxAccessComRuntime(date_zone=VT_DATE_ZONES[date_zone]), None
    if config is None:
        raise RuntimeUnavailable("the simulated runtime needs --runtime-config")
    from mxgateway_sim._simconfig import ConfigError, build_runtime

    try:
        runtime, plant = build_runtime(config)
    except ConfigError as exc:
        raise RuntimeUnavailable(str(exc)) from None
    plant.start()
    return runtime, plant


class Worker(asyncio.Protocol):
    """The worker's side of the channel: reads frames, runs commands, sends events."""

    def __init__(
        self,
        session_id: str,
        nonce: str,
        runtime_kind: str,
        runtime_config: Path | None,
        frame_limit: int = MAX_FRAME_BYTES,
        date_zone: str = "local",
    ) -> None:
        self.session_id = session_id
        self._nonce = nonce
        self._kind = runtime_kind
        self._config = runtime_config
        self._date_zone = date_zone
        self._head = EnvelopeHead(session_id)
        self._decoder = FrameDecoder(frame_limit)
        self._encoder = EventEncoder(session_id)
        self._next_seq = 1
        self._out: asyncio.WriteTransport | None = None
        self._runtime: MxAccessRuntime | None = None
        self._plant: Any = None
        self._hello = False
        self._ready = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.exit_code = EXIT_OK
        self._stopping = False
        self._failing = False  # the output is over its limit: send nothing more
        self._failed = False
        self._paused = False  # the scan clock is stopped until the queue drains
        self._pacing: asyncio.Task[None] | None = None
        self._writable = True  # the output transport is below its high-water mark
        self._queue: deque[bytes] = deque()  # event frames waiting for room
        self._batch: list[bytes] | None = None  # frames to write once the input is handled
        self._queued = 0

    # -- the channel ----------------------------------------------------------------------

    def attach_output(self, transport: asyncio.WriteTransport) -> None:
        """Where frames to the gateway go."""
        self._out = transport

    def _send(self, data: bytes) -> None:
        """Write a control frame (a reply, a heartbeat): it goes ahead of queued events."""
        out = self._out
        if out is None or out.is_closing() or self._failing:
            return
        if self._batch is not None:
            self._batch.append(data)
            return
        out.write(data)

    def _flush(self) -> None:
        """Write what the frames just read produced (events and replies, in order) at once:
        one system call and one wake-up of the gateway instead of one per frame."""
        batch, self._batch = self._batch, None
        out = self._out
        if not batch or out is None or out.is_closing() or self._failing:
            return
        out.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def _send_events(self, data: bytes) -> None:
        """Write event frames, or queue them while the channel is full (so that replies
        are not stuck behind megabytes of events); a full queue paces the scan clock."""
        out = self._out
        if out is None or out.is_closing() or self._failing:
            return
        if self._writable and not self._queue:
            if self._batch is not None:
                self._batch.append(data)
            else:
                out.write(data)
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > WRITE_BUFFER_LIMIT:
            self._failing = True  # nothing more is sent: the gateway is not reading
            self._fail("the gateway stopped reading the worker's events")
        elif self._queued > PAUSE_BYTES and not self._paused and self._plant is not None:
            self._paused = True
            self._pacing = asyncio.get_running_loop().create_task(self._plant.stop())

    def pause_writing(self) -> None:
        """The channel's buffer is full: queue events from now on."""
        self._writable = False

    def resume_writing(self) -> None:
        """The gateway caught up: send queued events; restart a paced scan clock."""
        self._writable = True
        out = self._out
        queue = self._queue
        while queue and self._writable and out is not None and not out.is_closing():
            data = queue.popleft()
            self._queued -= len(data)
            out.write(data)  # may pause again
        if not queue:
            self._queued = 0
        if self._paused and self._queued < RESUME_BYTES and not self._stopping:
            self._paused = False
            self._spawn(self._resume_plant())

    async def _resume_plant(self) -> None:
        stopping = self._pacing
        if stopping is not None:
            await stopping
        if not self._paused and not self._stopping and self._plant is not None:
            self._plant.start()

    def _reply(self, correlation_id: str = "", **body: Any) -> None:
        self._send(self._head.frame(correlation_id, **body))

    def data_received(self, data: bytes) -> None:
        """Frames from the gateway."""
        if self._stopping:
            return
        self._batch = []
        try:
            for envelope in self._decoder.feed(data):
                self._handle(envelope)
        except (FrameError, ProtocolViolation) as exc:
            self._fail(f"protocol violation: {exc}")
        finally:
            self._flush()

    def eof_received(self) -> bool | None:
        """The gateway closed its end: release everything and exit."""
        self._spawn(self._shutdown(None, "the gateway closed the channel"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The read pipe is gone (same as an end of file)."""
        if not self._stopping:
            self._spawn(self._shutdown(None, "the gateway channel was lost"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail(self, message: str) -> None:
        """Tell the gateway (best effort) and exit with a failure."""
        if self._stopping or self._failed:
            return
        self._failed = True
        log.error("worker failed: %s", message)
        if not self._failing:
            self._reply(worker_fault=wpb.WorkerFault(message=message))
        self.exit_code = EXIT_FAILURE
        self._spawn(self._shutdown(None, message))

    # -- envelopes ------------------------------------------------------------------------

    def _bind(self, session_id: str) -> None:
        """Serve ``session_id`` from now on (at launch, or from a pooled worker's hello)."""
        self.session_id = session_id
        self._head = EnvelopeHead(session_id)
        self._encoder = EventEncoder(session_id)

    def _greet(self, env: wpb.WorkerEnvelope) -> None:
        """The first frame: the gateway's hello, proving the launch nonce. A worker started
        without a session (a pooled one) learns its session from this envelope."""
        session_id = self.session_id or env.session_id
        body = check_envelope(env, session_id)
        if body != "gateway_hello":
            raise ProtocolViolation(f"{body} before gateway_hello")
        if not hmac.compare_digest(env.gateway_hello.nonce.encode(), self._nonce.encode()):
            raise ProtocolViolation("the gateway's nonce does not match the launch nonce")
        if not self.session_id:
            if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
                raise ProtocolViolation("the gateway's hello names no valid session")
            if not session_id.isprintable():
                raise ProtocolViolation("the gateway's hello names no valid session")
            self._bind(session_id)
        self._hello = True
        self._reply(
            env.correlation_id,
            worker_hello=wpb.WorkerHello(
                nonce=self._nonce, process_id=os.getpid(), worker_version=__version__
            ),
        )
        self._spawn(self._start_runtime())

    def _handle(self, data: bytes) -> None:
        if self._ready:  # the hot path: a command in the layout the gateway writes
            wrapped = self._head.command_body(data)
            if wrapped is not None:
                self._run(*wrapped)
                return
        env = decode_envelope(data)
        if not self._hello:
            self._greet(env)
            return
        body = check_envelope(env, self.session_id)
        if body == "worker_command":
            if not self._ready:
                raise ProtocolViolation("a command before worker_ready")
            self._run(env.correlation_id, env.worker_command.command)
        elif body == "worker_heartbeat":
            self._reply(
                env.correlation_id,
                worker_heartbeat=wpb.WorkerHeartbeat(counter=env.worker_heartbeat.counter),
            )
        elif body == "worker_cancel":
            running = self._tasks.get(env.correlation_id)
            if running is not None:
                running.cancel()
        elif body == "worker_shutdown":
            self._spawn(self._shutdown(env.correlation_id, env.worker_shutdown.reason))
        elif body == "gateway_hello":
            raise ProtocolViolation("a second gateway_hello")
        else:
            raise ProtocolViolation(f"{body} is not sent by a gateway")

    async def _start_runtime(self) -> None:
        try:
            runtime, self._plant = await make_runtime(self._kind, self._config, self._date_zone)
            await runtime.start(self._publish)
        except RuntimeUnavailable as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # a bug: the session faults, its caller gets an incident id
            incident = log_unexpected(exc, "the runtime's start")
            self._fail(f"the runtime did not start: {incident_details(incident)}")
            return
        self._runtime = runtime
        self._ready = True
        info = runtime.worker_info()
        self._reply(
            worker_ready=wpb.WorkerReady(
                backend_name=info.backend_name, backend_version=info.backend_version
            )
        )

    def _run(self, correlation_id: str, command: pb.MxCommand | bytes) -> None:
        """Run a command (or its serialized bytes) now, up to its first wait."""
        if not correlation_id or correlation_id in self._tasks:
            raise ProtocolViolation("a command without a fresh correlation_id")
        if isinstance(command, bytes):
            command = decode_command(command)
        task = run_eagerly(self._command(correlation_id, command))
        if task is not None:  # it waits for something: cancellable until it replies
            self._tasks[correlation_id] = task

    async def _command(self, correlation_id: str, command: pb.MxCommand) -> None:
        assert self._runtime is not None
        reply: pb.MxCommandReply | bytes
        try:
            reply = await run_command_wire(self._runtime, command)
        except asyncio.CancelledError:
            return  # the gateway gave up on it and expects no reply
        except Exception as exc:  # a runtime bug: report it under an incident id, keep serving
            incident = log_unexpected(exc, f"a command of kind {command.kind}")
            reply = pb.MxCommandReply(kind=command.kind)
            reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_WORKER_UNAVAILABLE
            reply.protocol_status.message = incident_details(incident)
        finally:
            self._tasks.pop(correlation_id, None)
        self._send(self._head.reply_frame(correlation_id, reply))

    def _publish(self, events: Sequence[MxRuntimeEvent]) -> None:
        """The runtime's event sink: number, encode and send at once."""
        if not events or self._stopping:
            return
        framed = self._encoder.encode(events, self._next_seq, time.time())
        self._next_seq += len(framed)
        self._send_events(self._head.event_frames(framed))

    async def _shutdown(self, correlation_id: str | None, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("worker shutting down: %s", reason)
        for task in list(self._tasks.values()):
            task.cancel()
        ack = wpb.WorkerShutdownAck()
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            try:
                released = await runtime.release_all()
                ack.released_advise_count = released.advises
                ack.released_item_count = released.items
                ack.released_registration_count = released.registrations
                await runtime.close()
            except Exception:
                log.exception("releasing the runtime failed")
                self.exit_code = EXIT_FAILURE
        if self._plant is not None:
            await self._plant.stop()
        if correlation_id is not None:
            self._reply(correlation_id, worker_shutdown_ack=ack)
        if self._out is not None:
            self._out.close()
        self.done.set()


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, up to its first wait; None when it finished without one, else the
    task that goes on with it.

    Most commands of a simulated runtime never wait: they reply in the same turn of the loop
    that read them, with no task and no extra loop iteration (Python 3.12's eager tasks do
    the same).
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_go_on(_Started(coro, waiting)))


async def _go_on(started: _Started) -> None:
    await started


class _Started:
    """Awaiting it continues a coroutine that was stepped by hand and now waits on
    ``waiting`` (what it yielded): what ``await coro`` would do had it been awaited from the
    start (values, exceptions and cancellation are passed on)."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                value = yield waiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or an exception set on the future
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration:
                    return


class _PipeReader:
    """Reads the gateway's pipe into one reused buffer and hands each chunk to the worker.

    asyncio's read pipe transport reads into a new 256 KiB bytes object each time, which the
    C library serves with mmap, mremap and munmap (and page faults): three system calls and
    fresh pages per command. Here only the bytes read are copied.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol: Worker) -> None:
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._buffer = bytearray(READ_BYTES)
        self._view = memoryview(self._buffer)
        self._open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            n = os.readv(self._fd, (self._buffer,))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close()
            self._protocol.connection_lost(exc)
            return
        if n:
            self._protocol.data_received(self._view[:n].tobytes())
            return
        self.close()
        self._protocol.eof_received()
        self._protocol.connection_lost(None)

    def close(self) -> None:
        """Stop reading and close the descriptor (idempotent)."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            os.close(self._fd)


class _Output(asyncio.Protocol):
    """The write end's protocol: relays flow control to the worker (nothing is read)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def pause_writing(self) -> None:
        self.worker.pause_writing()

    def resume_writing(self) -> None:
        self.worker.resume_writing()


async def serve(args: argparse.Namespace, nonce: str, in_fd: int, out_fd: int) -> int:
    """Run the worker on the channel ``in_fd``/``out_fd`` until it is told to stop."""
    loop = asyncio.get_running_loop()
    worker = Worker(
        args.session_id,
        nonce,
        args.runtime,
        args.runtime_config,
        frame_limit=args.frame_limit,
        date_zone=args.vt_date_zone,
    )
    if args.io == "threads" or (args.io == "auto" and os.name == "nt"):
        writer = ThreadWriter(loop, out_fd, _Output(worker))
        writer.set_write_buffer_limits(high=TRANSPORT_HIGH, low=TRANSPORT_LOW)
        worker.attach_output(writer)
        start_reader(loop, in_fd, worker)
        try:
            await worker.done.wait()
        finally:
            writer.close()
            await asyncio.to_thread(writer.wait_closed, 5.0)
        return worker.exit_code
    out_transport, _ = await loop.connect_write_pipe(
        lambda: _Output(worker), os.fdopen(out_fd, "wb", 0)
    )
    out_transport.set_write_buffer_limits(high=TRANSPORT_HIGH, low=TRANSPORT_LOW)
    worker.attach_output(out_transport)
    reader = _PipeReader(loop, in_fd, worker)
    try:
        await worker.done.wait()
    finally:
        reader.close()
        out_transport.close()
        await asyncio.sleep(0)
    return worker.exit_code


def _grow_pipe(fd: int) -> None:
    """Ask for a larger pipe buffer (Linux; elsewhere, or when refused, keep the default)."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setsize is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setsize, PIPE_BYTES)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the launch arguments, take over stdin/stdout as the channel and serve."""
    args = _parser().parse_args(argv)
    if args.protocol_version != WORKER_PROTOCOL_VERSION:
        print(
            f"mxgw-worker: error: the gateway speaks worker protocol {args.protocol_version}, "
            f"this worker speaks {WORKER_PROTOCOL_VERSION}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    nonce = os.environ.pop(NONCE_ENV, "")
    if not nonce:
        print(f"mxgw-worker: error: {NONCE_ENV} is not set", file=sys.stderr)
        return EXIT_USAGE
    # Without a session id (a worker the gateway starts ahead, for its pool) the gateway's
    # hello names the session.
    args.session_id = args.session_id or os.environ.pop(SESSION_ENV, "")
    if len(args.session_id) > MAX_SESSION_ID_CHARS:
        print("mxgw-worker: error: the session id is too long", file=sys.stderr)
        return EXIT_USAGE
    if args.frame_limit < 1:
        print("mxgw-worker: error: --frame-limit must be positive", file=sys.stderr)
        return EXIT_USAGE
    # The channel is stdin/stdout: keep private copies and point fd 1 at stderr, so that
    # nothing printed by the runtime or a library can corrupt the frames.
    sys.stdout.flush()
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    _grow_pipe(out_fd)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # The gateway decides when a worker ends: a Ctrl-C meant for the gateway's terminal
    # must not kill its sessions' workers under it (the gateway shuts them down in order).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The gateway's collector policy (short walks; the event path allocates many
    # short-lived objects): mxgateway_sim._gcpolicy.
    apply_to_worker_process()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.runtime == "simulated":
        # Import the runtime now, while a pooled worker waits for its session: its hello
        # then only builds the runtime.
        import mxgateway_sim._simconfig  # noqa: F401
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return run_event_loop(serve(args, nonce, in_fd, out_fd), args.event_loop)
        except EventLoopUnavailable as exc:
            print(f"mxgw-worker: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return EXIT_OK


def run() -> None:
    """Console-script entry point (``mxgw-worker``)."""
    raise SystemExit(main())


if __name__ == "__main__":
    run()
