"""``mxgw-worker`` driven frame by frame, as the gateway drives it: handshake, commands and
their correlation ids, events and their sequence, heartbeats, shutdown, and every way a
peer can break the protocol."""

from __future__ import annotations

import asyncio
import struct
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from workerhelpers import SESSION, RawWorker, frame_of, runtime_config

from mxgateway._incident import incident_of
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway_sim import _workerwire, builtin_catalog
from mxgateway_sim._domain import WriteRequest
from mxgateway_sim._framing import FrameDecoder, FrameError, frame
from mxgateway_sim._simconfig import SimSettings, build_runtime, write_config
from mxgateway_sim._simruntime import DEFAULT_USERS
from mxgateway_sim._workerwire import (
    BODIES,
    PING_COMMAND,
    PING_REPLY,
    WRITE_REPLY,
    EnvelopeHead,
    read_command_bytes,
    read_reply_rows,
    run_command,
    run_command_wire,
    simple_command,
    write_command,
    write_command_bytes,
)
from mxgateway_sim.worker import Worker, run_eagerly
from support import wait_for


def _command(payload: str, **fields: object) -> wpb.WorkerCommand:
    kind = pb.MxCommandKind.Value("MX_COMMAND_KIND_" + payload.upper())
    return wpb.WorkerCommand(command=simple_command(kind, payload, **fields))


# -- framing -------------------------------------------------------------------------------


def test_frames_split_anywhere_are_reassembled_in_order() -> None:
    payloads = [b"a", b"b" * 300, b"c" * 70_000]
    stream = b"".join(frame(p) for p in payloads)
    for step in (1, 3, 4, 5, 1000, len(stream)):
        decoder = FrameDecoder()
        out: list[bytes] = []
        for i in range(0, len(stream), step):
            out.extend(decoder.feed(stream[i : i + step]))
        assert out == payloads
        assert decoder.buffered == 0


def test_zero_length_and_over_limit_frames_are_refused_before_their_body() -> None:
    with pytest.raises(FrameError, match="zero-length"):
        FrameDecoder().feed(struct.pack("<I", 0))
    with pytest.raises(FrameError, match="over the 1,024-byte limit"):
        FrameDecoder(1024).feed(struct.pack("<I", 1025))  # no body sent at all
    assert FrameDecoder(1024).feed(frame(b"x" * 1024)) == [b"x" * 1024]
    with pytest.raises(FrameError, match="over the 1,024-byte limit"):
        FrameDecoder(1024).feed(frame(b"x" * 1025))  # one whole frame in one read


def test_the_event_fast_path_is_the_generated_envelope() -> None:
    head = EnvelopeHead(SESSION)
    event = pb.MxEvent(session_id=SESSION, worker_sequence=7).SerializeToString()
    item = b"\x0a" + bytes([len(event)]) + event
    (envelope,) = FrameDecoder().feed(head.event_frames([item]))
    parsed = wpb.WorkerEnvelope.FromString(envelope)
    assert parsed.protocol_version == 1 and parsed.session_id == SESSION
    assert parsed.worker_event.event.worker_sequence == 7
    assert head.event_body(envelope) == item
    # Anything else is left to the generated classes.
    other = EnvelopeHead(SESSION).envelope(worker_heartbeat=wpb.WorkerHeartbeat(counter=1))
    assert head.event_body(other) is None
    assert EnvelopeHead("session-other").event_body(envelope) is None


def test_the_envelope_fast_paths_build_the_generated_bytes() -> None:
    """frame(), command_frame() and reply_frame() put the envelope together from bytes; they
    must produce exactly what the generated classes serialize, for every body."""
    head = EnvelopeHead(SESSION)
    command = simple_command(pb.MX_COMMAND_KIND_READ_BULK, "read_bulk", tag_addresses=["A.B"] * 3)
    reply = pb.MxCommandReply(kind=pb.MX_COMMAND_KIND_PING, hresult=-5, diagnostic_message="x")
    reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
    bodies = {
        "gateway_hello": wpb.GatewayHello(nonce="n" * 43),
        "worker_hello": wpb.WorkerHello(nonce="n", process_id=4242, worker_version="1.0"),
        "worker_ready": wpb.WorkerReady(backend_name="sim"),
        "worker_command": wpb.WorkerCommand(command=command),
        "worker_command_reply": wpb.WorkerCommandReply(reply=reply),
        "worker_cancel": wpb.WorkerCancel(reason="cancelled"),
        "worker_shutdown": wpb.WorkerShutdown(reason="bye", grace_ms=10_000),
        "worker_shutdown_ack": wpb.WorkerShutdownAck(released_item_count=300),
        "worker_event": wpb.WorkerEvent(event=pb.MxEvent(session_id=SESSION, worker_sequence=9)),
        "worker_heartbeat": wpb.WorkerHeartbeat(counter=2**40),
        "worker_fault": wpb.WorkerFault(message="m" * 300, hresult=-1),
    }
    assert set(bodies) == BODIES
    for now in (1_700_000_000.123456, 1.5, 4_102_444_800.999999):
        for cid in ("", "7", "c" * 200):
            for name, body in bodies.items():
                fast = FrameDecoder().feed(head.frame(cid, now, **{name: body}))
                assert fast == [head.envelope(cid, now, **{name: body})], (name, cid, now)
            # The hot paths, with bodies whose lengths take one and two varint bytes.
            large = simple_command(
                pb.MX_COMMAND_KIND_READ_BULK, "read_bulk", tag_addresses=["T"] * 99
            )
            for c in (command, large):
                plain = head.envelope(cid, now, worker_command=wpb.WorkerCommand(command=c))
                assert FrameDecoder().feed(head.command_frame(cid, c, now)) == [plain]
            for r in (reply, pb.MxCommandReply(diagnostic_message="d" * 300)):
                plain = head.envelope(
                    cid, now, worker_command_reply=wpb.WorkerCommandReply(reply=r)
                )
                assert FrameDecoder().feed(head.reply_frame(cid, r, now)) == [plain]
    parsed = wpb.WorkerEnvelope.FromString(FrameDecoder().feed(head.command_frame("9", command))[0])
    assert parsed.sent_at.seconds > 1_700_000_000 and parsed.worker_command.command == command


def test_frames_are_stamped_now_to_the_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame made without ``now`` carries the current time (time.time_ns) as sent_at, to
    the millisecond, exactly as the generated classes write that millisecond: frames of
    the same millisecond share it, a new millisecond or second gets its own."""
    head = EnvelopeHead(SESSION)
    clock = [0]
    monkeypatch.setattr(_workerwire.time, "time_ns", lambda: clock[0])
    reply = pb.MxCommandReply(kind=pb.MX_COMMAND_KIND_PING)
    for ns, ms in (
        (1_700_000_000_123_456_789, 1_700_000_000_123),
        (1_700_000_000_123_999_999, 1_700_000_000_123),
        (1_700_000_000_124_000_001, 1_700_000_000_124),
        (1_700_000_001_000_000_000, 1_700_000_001_000),  # nanos 0: no field, as generated
        (1_700_000_002_999_000_000, 1_700_000_002_999),
    ):
        clock[0] = ns
        now = ms / 1000
        for cid in ("", "7"):
            made = {
                "frame": head.frame(cid, worker_heartbeat=wpb.WorkerHeartbeat(counter=1)),
                "command": head.command_frame(cid, PING_COMMAND),
                "reply": head.reply_frame(cid, reply),
            }
            wanted = {
                "frame": head.envelope(cid, now, worker_heartbeat=wpb.WorkerHeartbeat(counter=1)),
                "command": head.envelope(
                    cid,
                    now,
                    worker_command=wpb.WorkerCommand(command=pb.MxCommand.FromString(PING_COMMAND)),
                ),
                "reply": head.envelope(
                    cid, now, worker_command_reply=wpb.WorkerCommandReply(reply=reply)
                ),
            }
            for name, data in made.items():
                assert FrameDecoder().feed(data) == [wanted[name]], (name, ns, cid)


async def test_run_eagerly_runs_to_the_first_wait_then_goes_on_as_a_task() -> None:
    log: list[object] = []

    async def at_once() -> None:
        log.append("done")

    assert run_eagerly(at_once()) is None
    assert log == ["done"]  # finished before run_eagerly returned

    loop = asyncio.get_running_loop()
    gates = [loop.create_future() for _ in range(3)]

    async def waits() -> None:
        log.append(await gates[0])
        try:
            await gates[1]
        except ValueError as exc:
            log.append(f"raised {exc}")
        try:
            await gates[2]
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    log.clear()
    task = run_eagerly(waits())
    assert task is not None and log == []
    gates[0].set_result("value")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gates[1].set_exception(ValueError("boom"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["value", "raised boom", "cancelled"]
    assert gates[2].cancelled()  # the cancellation reached what the coroutine waited on


# -- a real worker -------------------------------------------------------------------------


IO_AND_LOOPS = [(io, loop) for io in ("loop", "threads") for loop in ("auto", "asyncio")]
"""``mxgw-worker --io`` and ``--event-loop`` (auto: uvloop where it can be imported)."""


@pytest.mark.parametrize(("io", "loop"), IO_AND_LOOPS)
async def test_a_waiting_command_can_be_cancelled_and_others_go_on(
    tmp_path: Path, io: str, loop: str
) -> None:
    """A read of a tag not yet advised waits for its first value (here 1 s): it is run as a
    task that a cancel stops without a reply, while commands that do not wait answer at once;
    an uncancelled waiting read answers when its value comes."""
    config = tmp_path / "runtime.json"
    settings = SimSettings(scan_interval_ms=20, flaky_one_in=0, first_value_delay_s=1.0)
    write_config(config, builtin_catalog(), DEFAULT_USERS, settings)
    worker = await RawWorker.start(config, extra=("--io", io, "--event-loop", loop))
    await worker.handshake()
    worker.send("r", worker_command=_command("register", client_name="t"))
    handle = (await worker.receive_body("worker_command_reply")).worker_command_reply.reply
    sh = handle.register.server_handle
    read = _command("read_bulk", server_handle=sh, tag_addresses=["Tank01.Level"], timeout_ms=5000)
    worker.send("slow", worker_command=read)
    worker.send("gone", worker_command=read)
    worker.send("gone", worker_cancel=wpb.WorkerCancel(reason="test"))
    worker.send("p", worker_command=_command("ping"))
    order = []
    while len(order) < 2:
        env = await worker.receive_body("worker_command_reply")
        order.append(env.correlation_id)
        if env.correlation_id == "slow":
            rows = env.worker_command_reply.reply.bulk_read.results
            assert len(rows) == 1 and rows[0].HasField("value")
    assert order == ["p", "slow"]  # the ping did not wait for the reads; no reply to "gone"
    worker.send("p2", worker_command=_command("ping"))
    assert (await worker.receive_body("worker_command_reply")).correlation_id == "p2"
    code, _ = await worker.finish()
    assert code == 0


@pytest.mark.parametrize(("io", "loop"), IO_AND_LOOPS)
async def test_handshake_commands_events_heartbeat_and_shutdown(
    tmp_path: Path, io: str, loop: str
) -> None:
    extra = ("--io", io, "--event-loop", loop)
    worker = await RawWorker.start(runtime_config(tmp_path), extra=extra)
    hello = await worker.handshake()
    assert hello.worker_hello.nonce == worker.nonce
    assert hello.worker_hello.process_id == worker.proc.pid
    assert hello.session_id == SESSION and hello.protocol_version == 1

    worker.send("c1", worker_command=_command("register", client_name="t"))
    reply = (await worker.receive_body("worker_command_reply")).worker_command_reply.reply
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    handle = reply.register.server_handle
    assert handle > 0

    # Two commands in flight: each reply carries its own correlation id.
    worker.send(
        "a",
        worker_command=_command("add_item", server_handle=handle, item_definition="Tank01.Level"),
    )
    worker.send(
        "b", worker_command=_command("add_item", server_handle=handle, item_definition="bad ref!")
    )
    replies = {}
    while len(replies) < 2:
        env = await worker.receive_body("worker_command_reply")
        replies[env.correlation_id] = env.worker_command_reply.reply
    assert replies["a"].protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    assert replies["b"].protocol_status.code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE
    assert replies["b"].hresult < 0
    item = replies["a"].add_item.item_handle

    worker.send("c2", worker_command=_command("advise", server_handle=handle, item_handle=item))
    sequences = []
    while len(sequences) < 3:
        received = await worker.receive()
        assert received is not None
        env = received
        if env.WhichOneof("body") == "worker_event":
            event = env.worker_event.event
            assert event.session_id == SESSION
            assert event.on_data_change.item_handle == item
            sequences.append(event.worker_sequence)
    assert sequences == [1, 2, 3]

    worker.send(worker_heartbeat=wpb.WorkerHeartbeat(counter=42))
    beat = await worker.receive_body("worker_heartbeat")
    assert beat.worker_heartbeat.counter == 42

    worker.send("bye", worker_shutdown=wpb.WorkerShutdown(reason="test", grace_ms=1000))
    ack = await worker.receive_body("worker_shutdown_ack")
    assert ack.correlation_id == "bye"
    assert ack.worker_shutdown_ack.released_advise_count == 1
    assert ack.worker_shutdown_ack.released_item_count == 1
    assert ack.worker_shutdown_ack.released_registration_count == 1
    code, _ = await worker.finish()
    assert code == 0


async def test_a_worker_started_without_a_session_learns_it_from_the_hello(
    tmp_path: Path,
) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path), session=None)
    hello = await worker.handshake()
    assert hello.session_id == SESSION
    worker.send("c1", worker_command=_command("register", client_name="t"))
    env = await worker.receive_body("worker_command_reply")
    assert env.session_id == SESSION and env.correlation_id == "c1"
    assert env.worker_command_reply.reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK
    # From now on it serves that session only.
    worker.send_raw(EnvelopeHead("session-other").frame("c2", worker_command=_command("ping")))
    code, err = await worker.finish()
    assert code == 1 and "another session" in err


@pytest.mark.parametrize(
    ("session", "why"),
    [
        ("", "names no valid session"),
        ("x" * 300, "names no valid session"),
        ("bad\nid", "names no valid session"),
    ],
)
async def test_a_hello_naming_no_valid_session_is_refused(
    tmp_path: Path, session: str, why: str
) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path), session=None)
    worker.send_raw(EnvelopeHead(session).frame(gateway_hello=wpb.GatewayHello(nonce=worker.nonce)))
    fault = await worker.receive_body("worker_fault")
    assert why in fault.worker_fault.message
    code, _ = await worker.finish()
    assert code == 1


@pytest.mark.parametrize("io", ["loop", "threads"])
async def test_the_end_of_the_gateways_pipe_stops_the_worker(tmp_path: Path, io: str) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path), extra=("--io", io))
    await worker.handshake()
    code, _ = await worker.finish()  # closes stdin
    assert code == 0


async def test_a_wrong_nonce_is_a_fault_and_the_worker_exits(tmp_path: Path) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path))
    worker.send(gateway_hello=wpb.GatewayHello(nonce="not-the-nonce"))
    fault = await worker.receive_body("worker_fault")
    assert "nonce" in fault.worker_fault.message
    assert "not-the-nonce" not in fault.worker_fault.message
    code, err = await worker.finish()
    assert code == 1
    assert worker.nonce not in err


@pytest.mark.parametrize(
    ("envelope", "why"),
    [
        (
            wpb.WorkerEnvelope(protocol_version=2, session_id=SESSION, worker_heartbeat={}),
            "version",
        ),
        (
            wpb.WorkerEnvelope(protocol_version=1, session_id="session-x", worker_heartbeat={}),
            "another session",
        ),
        (wpb.WorkerEnvelope(protocol_version=1, session_id=SESSION), "without a body"),
        (
            wpb.WorkerEnvelope(protocol_version=1, session_id=SESSION, worker_ready={}),
            "not sent by a gateway",
        ),
    ],
)
async def test_protocol_violations_fault_the_worker(
    tmp_path: Path, envelope: wpb.WorkerEnvelope, why: str
) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path))
    await worker.handshake()
    worker.send_raw(frame_of(envelope))
    fault = await worker.receive_body("worker_fault")
    assert why in fault.worker_fault.message
    code, _ = await worker.finish()
    assert code == 1


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (struct.pack("<I", 0), "zero-length"),
        (struct.pack("<I", 64 * 1024 * 1024), "over the"),
        (frame(b"\xff\xff\xff"), "not a WorkerEnvelope"),
    ],
)
async def test_bad_frames_fault_the_worker(tmp_path: Path, data: bytes, why: str) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path))
    await worker.handshake()
    worker.send_raw(data)
    fault = await worker.receive_body("worker_fault")
    assert why in fault.worker_fault.message
    code, _ = await worker.finish()
    assert code == 1


async def test_a_command_before_the_hello_is_refused(tmp_path: Path) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path))
    worker.send("c", worker_command=_command("ping"))
    fault = await worker.receive_body("worker_fault")
    assert "before gateway_hello" in fault.worker_fault.message
    code, _ = await worker.finish()
    assert code == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.parametrize(("flag", "on_uvloop"), [((), True), (("--event-loop", "asyncio"), False)])
async def test_the_worker_runs_on_uvloop_unless_told(
    tmp_path: Path, flag: tuple[str, ...], on_uvloop: bool
) -> None:
    """uvloop (a command's round trip costs the worker less CPU) where it can be imported;
    ``--event-loop asyncio`` opts out and does not even load it."""
    pytest.importorskip("uvloop")
    worker = await RawWorker.start(runtime_config(tmp_path), extra=flag)
    await worker.handshake()
    worker.send("p", worker_command=_command("ping"))
    await worker.receive_body("worker_command_reply")
    maps = Path(f"/proc/{worker.proc.pid}/maps").read_text()  # noqa: ASYNC240 - procfs
    assert ("uvloop" in maps) == on_uvloop
    code, _ = await worker.finish()
    assert code == 0


async def test_another_protocol_version_at_launch_is_refused(tmp_path: Path) -> None:
    worker = await RawWorker.start(runtime_config(tmp_path), extra=("--protocol-version", "9"))
    code, err = await worker.finish()
    assert code == 2
    assert "worker protocol 9" in err


@pytest.mark.skipif(sys.platform == "win32", reason="MXAccess may be installed here")
async def test_the_mxaccess_runtime_is_a_clear_start_error(tmp_path: Path) -> None:
    worker = await RawWorker.start(None, extra=("--runtime", "mxaccess"))
    worker.send(gateway_hello=wpb.GatewayHello(nonce=worker.nonce))
    await worker.receive_body("worker_hello")
    fault = await worker.receive_body("worker_fault")
    assert "needs Windows" in fault.worker_fault.message
    code, _ = await worker.finish()
    assert code == 1


class _Recorder(asyncio.WriteTransport):
    """The worker's output, one entry per write() (what a pipe would get per system call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def bodies(self, index: int) -> list[wpb.WorkerEnvelope]:
        return [wpb.WorkerEnvelope.FromString(e) for e in FrameDecoder().feed(self.writes[index])]


async def test_what_one_read_produces_goes_out_in_one_write(tmp_path: Path) -> None:
    """A Write's OnWriteComplete event and its reply (and the replies of several commands
    read at once) leave the worker in one write: one system call, one wake-up of the
    gateway; the order is the order they were made in."""
    worker = Worker(SESSION, "n0nce", "simulated", runtime_config(tmp_path, 60_000))
    out = _Recorder()
    worker.attach_output(out)
    head = EnvelopeHead(SESSION)
    worker.data_received(head.frame(gateway_hello=wpb.GatewayHello(nonce="n0nce")))
    await wait_for(lambda: any(b"backend" in w or b"sim" in w for w in out.writes[1:]))
    start = len(out.writes)

    def call(*commands: tuple[str, wpb.WorkerCommand]) -> list[wpb.WorkerEnvelope]:
        before = len(out.writes)
        worker.data_received(b"".join(head.frame(cid, worker_command=c) for cid, c in commands))
        assert len(out.writes) == before + 1  # everything in one write
        return out.bodies(before)

    (reply,) = call(("r", _command("register", client_name="t")))
    sh = reply.worker_command_reply.reply.register.server_handle
    add = _command("add_item", server_handle=sh, item_definition="Tank01.Level")
    (reply,) = call(("a", add))
    item = reply.worker_command_reply.reply.add_item.item_handle
    envelopes = call(("v", _command("advise", server_handle=sh, item_handle=item)))
    assert envelopes[-1].correlation_id == "v"  # its first OnDataChange may come with it
    value = pb.MxValue(data_type=pb.MX_DATA_TYPE_DOUBLE, double_value=2.5)
    write = pb.WriteCommand(server_handle=sh, item_handle=item, value=value)
    envelopes = call(
        ("w", wpb.WorkerCommand(command=pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE, write=write))),
        ("p", _command("ping")),
    )
    kinds = [(e.WhichOneof("body"), e.correlation_id) for e in envelopes]
    assert kinds[-2:] == [("worker_command_reply", "w"), ("worker_command_reply", "p")]
    assert {k for k, _ in kinds[:-2]} == {"worker_event"}
    assert any(e.worker_event.event.HasField("on_write_complete") for e in envelopes[:-2])
    assert len(out.writes) == start + 4
    worker.data_received(head.frame("bye", worker_shutdown=wpb.WorkerShutdown(reason="t")))
    await asyncio.wait_for(worker.done.wait(), 30)


# -- the hot paths of a call: command and reply bodies, pre-encoded replies -------------------


def test_command_and_reply_bodies_are_read_without_the_generated_classes() -> None:
    """command_body()/reply_body() find the correlation id and the inner message of exactly
    the envelopes command_frame()/reply_frame() write (whatever sent_at says) and leave
    every other envelope (None) to the generated classes, which judge it."""
    head = EnvelopeHead(SESSION)
    command = simple_command(pb.MX_COMMAND_KIND_READ_BULK, "read_bulk", tag_addresses=["T"] * 99)
    reply = pb.MxCommandReply(kind=pb.MX_COMMAND_KIND_PING, diagnostic_message="d" * 300)
    for cid in ("", "7", "c" * 200, "é"):
        for now in (1.5, 4_102_444_800.999999):
            (envelope,) = FrameDecoder().feed(head.command_frame(cid, command, now))
            assert head.command_body(envelope) == (cid, command.SerializeToString())
            assert head.reply_body(envelope) is None
            (envelope,) = FrameDecoder().feed(head.reply_frame(cid, reply, now))
            assert head.reply_body(envelope) == (cid, reply.SerializeToString())
            assert head.command_body(envelope) is None
    envelope = head.envelope("9", worker_command=wpb.WorkerCommand(command=command))
    assert head.command_body(envelope) == ("9", command.SerializeToString())
    others = [
        # Another session, another protocol version, no sent_at, a second field in the body,
        # a body cut short or running on, a correlation id that is not UTF-8, another body.
        EnvelopeHead("session-other").envelope("9", worker_command=wpb.WorkerCommand()),
        wpb.WorkerEnvelope(
            protocol_version=2, session_id=SESSION, correlation_id="9", worker_command={}
        ).SerializeToString(),
        wpb.WorkerEnvelope(
            protocol_version=1, session_id=SESSION, correlation_id="9", worker_command={}
        ).SerializeToString(),
        head.envelope("9", worker_command=wpb.WorkerCommand(command=command, timeout_ms=5)),
        envelope[:-1],
        envelope + b"\x00",
        envelope.replace(b"\x22\x019", b"\x22\x01\xff"),
        head.envelope("9", worker_cancel=wpb.WorkerCancel(reason="x")),
    ]
    for other in others:
        assert head.command_body(other) is None, other
        assert head.reply_body(other) is None, other


def test_a_writes_command_bytes_are_the_generated_command() -> None:
    """write_command_bytes() encodes a plain Write of a common scalar itself; its bytes are
    exactly write_command()'s serialized, for edge values, handles and user ids, and every
    other Write (other values, a timestamp, secured) goes through write_command()."""
    values: list[object] = [
        1.5,
        0.0,
        -0.0,
        -2.5e-300,
        1e308,
        float("nan"),
        float("inf"),
        float("-inf"),
        0,
        1,
        -1,
        2**31 - 1,
        -(2**31),
        2**31,
        -(2**31) - 1,
        2**40,
        True,
        False,
        "",
        "abc",
        "é" * 200,
        None,
        b"\x00",
        [1, 2],
        [1.5],
        datetime(2026, 1, 2, tzinfo=timezone.utc),
        timedelta(seconds=3),
    ]
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for value in values:
        requests = [
            WriteRequest(value),
            WriteRequest(value, user_id=7),
            WriteRequest(value, stamp, 3),
            WriteRequest(value, None, 3, 4, secured=True),
        ]
        for request in requests:
            for sh, ih in ((0, 0), (5, 7), (-1, 2**31 - 1)):
                try:
                    wanted = write_command(sh, ih, request).SerializeToString()
                except ValueError:
                    with pytest.raises(ValueError):
                        write_command_bytes(sh, ih, request)
                    continue
                assert write_command_bytes(sh, ih, request) == wanted, (value, request, sh)


def test_a_reads_command_bytes_are_the_generated_command() -> None:
    """read_command_bytes() encodes a ReadBulk command itself; its bytes are exactly the
    generated command's serialized (no, one, many, long and non-ASCII references; edge
    handles and timeouts), and a reference that is not UTF-8 is refused as the generated
    classes refuse it."""
    reference_lists: list[list[str]] = [
        [],
        ["Tank01.Level"],
        ["é" * 100, "T" * 200, ""],
        [f"Obj{i}.Attr" for i in range(300)],
    ]
    for references in reference_lists:
        for sh in (0, 5, -1, 2**31 - 1):
            for timeout_ms in (0, 1, 5_000, 2**31 - 1):
                wanted = simple_command(
                    pb.MX_COMMAND_KIND_READ_BULK,
                    "read_bulk",
                    server_handle=sh,
                    tag_addresses=references,
                    timeout_ms=timeout_ms,
                ).SerializeToString()
                assert read_command_bytes(sh, references, timeout_ms) == wanted
    with pytest.raises(ValueError):
        simple_command(pb.MX_COMMAND_KIND_READ_BULK, "read_bulk", tag_addresses=["\ud800"])
    with pytest.raises(ValueError):
        read_command_bytes(1, ["\ud800"], 5)


async def test_pre_encoded_replies_are_the_generated_replies(tmp_path: Path) -> None:
    """run_command_wire() answers a ping, a Write and a ReadBulk from pre-encoded bytes; they
    are exactly run_command()'s serialized replies, failures included, and the gateway's
    read_reply_rows() finds the same rows in them that the generated classes do."""
    runtime, plant = build_runtime(runtime_config(tmp_path, 3_600_000))
    plant.start()
    try:
        await runtime.start(lambda events: None)
        h = await runtime.register("t")
        item = await runtime.add_item(h, "Tank01.Level")
        await runtime.advise(h, item, supervisory=False)
        value = pb.MxValue(data_type=pb.MX_DATA_TYPE_DOUBLE, double_value=2.5)
        commands = [
            pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()),
            pb.MxCommand(
                kind=pb.MX_COMMAND_KIND_WRITE,
                write=pb.WriteCommand(server_handle=h, item_handle=item, value=value),
            ),
            pb.MxCommand(  # an MXAccess failure: no such item
                kind=pb.MX_COMMAND_KIND_WRITE,
                write=pb.WriteCommand(server_handle=h, item_handle=9999, value=value),
            ),
            pb.MxCommand(kind=pb.MX_COMMAND_KIND_WRITE, ping=pb.PingCommand()),  # kind != payload
        ]
        for refs, handle in (
            (["Tank01.Level"], h),  # advised: the encoded-row cache
            (["Pump01.Speed", "No.Such", "bad ref!"], h),  # read in the runtime
            (["Tank01.Level"], 999),  # an unknown server handle
            ([], h),  # no rows at all
        ):
            read = pb.ReadBulkCommand(server_handle=handle, tag_addresses=refs, timeout_ms=500)
            commands.append(pb.MxCommand(kind=pb.MX_COMMAND_KIND_READ_BULK, read_bulk=read))
        for command in commands:
            wire = await run_command_wire(runtime, command)
            plain = await run_command(runtime, command)
            assert wire == plain.SerializeToString(), command
            rows = read_reply_rows(wire)
            if command.HasField("read_bulk") and plain.protocol_status.code == 1:
                assert rows == plain.bulk_read.SerializeToString()
            else:
                assert rows is None
        assert await run_command_wire(runtime, commands[0]) == PING_REPLY
        assert await run_command_wire(runtime, commands[1]) == WRITE_REPLY
        assert pb.MxCommand.FromString(PING_COMMAND) == commands[0]
    finally:
        await runtime.close()
        await plant.stop()


def _incident(message: str) -> str:
    """The incident id a worker's message carries (fails the test if it has none)."""
    found = incident_of(message)
    assert found is not None, message
    return found


async def test_a_runtime_that_fails_to_start_faults_with_an_incident_id(tmp_path: Path) -> None:
    # A runtime that raises an unexpected error while it starts (here: a scan interval the
    # plant refuses, which only a gateway bug writes) faults the session. The gateway's
    # caller sees the fault's message: an incident id, never the error's own text, which
    # the worker's log keeps under that id.
    path = tmp_path / "runtime.json"
    write_config(path, builtin_catalog(), DEFAULT_USERS, SimSettings(scan_interval_ms=-5))
    worker = await RawWorker.start(path)
    worker.send(gateway_hello=wpb.GatewayHello(nonce=worker.nonce))
    fault = await worker.receive_body("worker_fault")
    message = fault.worker_fault.message
    incident = _incident(message)
    assert "must be positive" not in message and "ValueError" not in message
    code, err = await worker.finish()
    assert code == 1
    assert f"incident {incident}" in err and "must be positive" in err


async def test_a_runtime_bug_in_a_command_is_answered_with_an_incident_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A command whose runtime call raises an unexpected error is answered
    # WORKER_UNAVAILABLE with an incident id, and the worker keeps serving; the error's
    # type and text stay in the worker's log, under that id.
    worker = Worker(SESSION, "n0nce", "simulated", runtime_config(tmp_path, 60_000))
    out = _Recorder()
    worker.attach_output(out)
    head = EnvelopeHead(SESSION)
    worker.data_received(head.frame(gateway_hello=wpb.GatewayHello(nonce="n0nce")))
    await wait_for(lambda: worker._runtime is not None)
    healthy = worker._runtime.ping

    async def broken() -> None:
        raise RuntimeError("cannot open /srv/plant/secret.mdf")

    worker._runtime.ping = broken  # type: ignore[method-assign]

    replies: list[pb.MxCommandReply] = []
    for cid in ("p1", "p2"):
        before = len(out.writes)
        worker.data_received(head.frame(cid, worker_command=_command("ping")))
        await wait_for(lambda: len(out.writes) > before)  # noqa: B023
        (env,) = out.bodies(before)
        assert env.correlation_id == cid
        replies.append(env.worker_command_reply.reply)
        worker._runtime.ping = healthy  # type: ignore[method-assign]
    status = replies[0].protocol_status
    assert status.code == pb.PROTOCOL_STATUS_CODE_WORKER_UNAVAILABLE
    incident = _incident(status.message)
    assert "secret" not in status.message and "RuntimeError" not in status.message
    assert replies[1].protocol_status.code == pb.PROTOCOL_STATUS_CODE_OK  # still serving
    logged = [r for r in caplog.records if f"incident {incident}" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "secret.mdf" in str(logged[0].exc_info[1])
    worker.data_received(head.frame("bye", worker_shutdown=wpb.WorkerShutdown(reason="t")))
    await asyncio.wait_for(worker.done.wait(), 30)
