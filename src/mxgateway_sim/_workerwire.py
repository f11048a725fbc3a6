"""The worker protocol's messages: envelopes, their checks, and the runtime calls as commands.

Both ends use it. Every envelope carries the protocol version and the session id and exactly
one body (checked by :func:`check_envelope`). A runtime method call travels as the public
``MxCommand`` of the same MXAccess call (:func:`command_for`), runs in the worker against its
runtime (:func:`run_command`), and its reply comes back as the public ``MxCommandReply``,
from which :func:`reply_result` recovers the method's result or raises its error.

Events are the hot path: the worker frames each ``MxEvent`` with a pre-built envelope head
(:meth:`EnvelopeHead.event_frames`) and the gateway recognises that head without parsing the
envelope (:meth:`EnvelopeHead.event_body`); anything else takes the generated classes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timezone
from typing import Any, Final, TypeVar

from google.protobuf.message import DecodeError

from mxgateway._version import WORKER_PROTOCOL_VERSION
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway.values import from_mx_value, timestamp_to_datetime, to_mx_value
from mxgateway_sim._domain import (
    COM_TO_PROTO,
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_INTEGER,
    MX_STRING,
    MxAccessError,
    MxStatus,
    ReadResult,
    TagSample,
    WriteRequest,
    status_and_records,
)
from mxgateway_sim._framing import LENGTH as _LENGTH
from mxgateway_sim._framing import frame
from mxgateway_sim._limits import LimitError
from mxgateway_sim._runtime import MxAccessRuntime
from mxgateway_sim._wire import (
    read_reply_bytes,
    status_to_pb,
    timestamp_bytes,
    to_timestamp,
    value_bytes,
    varint,
)

NONCE_ENV: Final = "MXGATEWAY_WORKER_NONCE"
# The session id travels in the environment too, not on the command line: every local user
# can read a process's command line, only its owner its environment. (Upstream passes
# ``--session-id``; the worker still accepts it.)
SESSION_ENV: Final = "MXGATEWAY_WORKER_SESSION_ID"
"""Environment variable carrying the launch nonce (upstream's name)."""

BODIES: Final = frozenset(
    f.name for f in wpb.WorkerEnvelope.DESCRIPTOR.oneofs_by_name["body"].fields
)
"""Names of the envelope's body members."""
NO_READ_LIMIT: Final = 1 << 62
"""A worker encodes a ReadBulk chunk whole: the gateway checks the reply's byte limit."""

BODY_TAGS: Final = {
    f.name: varint(f.number << 3 | 2)
    for f in wpb.WorkerEnvelope.DESCRIPTOR.oneofs_by_name["body"].fields
}
"""The tag of each body member (all are messages: length-delimited)."""
_COMMAND_TAG: Final = BODY_TAGS["worker_command"]
_REPLY_TAG: Final = BODY_TAGS["worker_command_reply"]


class ProtocolViolation(Exception):
    """The peer broke the worker protocol (wrong version, session, body or sequence)."""


class WorkerLost(Exception):
    """The session's worker died, stopped answering or broke the protocol: the session faulted."""


_Message = TypeVar("_Message", wpb.WorkerEnvelope, pb.MxCommand)


def _decode(cls: type[_Message], data: bytes, what: str) -> _Message:
    try:
        return cls.FromString(data)
    except DecodeError:
        raise ProtocolViolation(what) from None


def decode_envelope(data: bytes) -> wpb.WorkerEnvelope:
    """Parse one envelope.

    Raises:
        ProtocolViolation: the bytes are not a ``WorkerEnvelope``.
    """
    return _decode(wpb.WorkerEnvelope, data, "a frame that is not a WorkerEnvelope")


def decode_command(data: bytes) -> pb.MxCommand:
    """Parse a command's bytes (from :meth:`EnvelopeHead.command_body`).

    Raises:
        ProtocolViolation: the bytes are not an ``MxCommand``.
    """
    return _decode(pb.MxCommand, data, "a worker_command that is not an MxCommand")


def check_envelope(env: wpb.WorkerEnvelope, session_id: str) -> str:
    """The body's name, once the version, the session and the body are checked.

    Raises:
        ProtocolViolation: another protocol version, another session, or no (known) body.
    """
    if env.protocol_version != WORKER_PROTOCOL_VERSION:
        raise ProtocolViolation(
            f"worker protocol version {env.protocol_version}, expected {WORKER_PROTOCOL_VERSION}"
        )
    if env.session_id != session_id:
        raise ProtocolViolation("an envelope for another session")
    body = env.WhichOneof("body")
    if body is None:
        raise ProtocolViolation("an envelope without a body (or with one newer than this end)")
    return body


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` in ``data`` and the position after it.

    Raises:
        ProtocolViolation: the varint is truncated or longer than 64 bits.
    """
    value = 0
    shift = 0
    end = len(data)
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ProtocolViolation("a truncated or overlong varint")


_SMALL: Final = [bytes((i,)) for i in range(128)]
"""The one-byte varints (lengths under 128)."""
_MS_NANOS: Final = [b"\x10" + varint(ms * 1_000_000) if ms else b"" for ms in range(1000)]
"""``Timestamp.nanos`` fields of whole milliseconds (none for 0, as the generated code)."""


class _Stamp:
    """The last ``sent_at`` made by :func:`_stamp_now`, and its millisecond (an instance:
    setting a class's attributes would invalidate the type's attribute cache each time)."""

    __slots__ = ("ms", "seconds", "seconds_field", "value")

    def __init__(self) -> None:
        self.ms = -1
        self.value = b""
        self.seconds = -1
        self.seconds_field = b""


_STAMP: Final = _Stamp()


def _stamp_now() -> bytes:
    """A ``sent_at`` of now (a serialized ``Timestamp``) to the millisecond: neither end
    reads it, and from a table it costs a few operations instead of a float's split and
    a five-byte varint per frame (frames within one millisecond share it)."""
    cache = _STAMP
    ms = time.time_ns() // 1_000_000
    if ms == cache.ms:
        return cache.value
    seconds, rest = divmod(ms, 1000)
    if seconds != cache.seconds:
        cache.seconds, cache.seconds_field = seconds, b"\x08" + varint(seconds)
    cache.ms, cache.value = ms, cache.seconds_field + _MS_NANOS[rest]
    return cache.value


class EnvelopeHead:
    """Builds one session's envelopes and recognises its event frames quickly."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        probe = wpb.WorkerEnvelope(protocol_version=WORKER_PROTOCOL_VERSION, session_id=session_id)
        self.head = probe.SerializeToString()  # fields 1 and 2, as the generated code writes
        self._stamped = self.head + b"\x1a"  # field 3 (sent_at) follows
        self._event_head = self.head + b"\x92\x01"  # field 18 (worker_event), length-delimited

    def envelope(self, correlation_id: str = "", now: float | None = None, **body: Any) -> bytes:
        """A serialized envelope with one body (``worker_command=...``, ...), stamped ``now``
        (default: the current time), built with the generated classes.

        The plain reference of :meth:`frame`, which builds the same bytes directly.
        """
        env = wpb.WorkerEnvelope(
            protocol_version=WORKER_PROTOCOL_VERSION,
            session_id=self.session_id,
            correlation_id=correlation_id,
            **body,
        )
        env.sent_at.CopyFrom(to_timestamp(time.time() if now is None else now))
        return env.SerializeToString()

    def frame(self, correlation_id: str = "", now: float | None = None, **body: Any) -> bytes:
        """:meth:`envelope`, framed; the body message is serialized once, the envelope
        around it is put together from bytes (no copy of the body into a new message)."""
        ((name, message),) = body.items()
        return self.body_frame(BODY_TAGS[name], correlation_id, message.SerializeToString(), now)

    def command_frame(
        self, correlation_id: str, command: pb.MxCommand | bytes, now: float | None = None
    ) -> bytes:
        """The frame of a ``worker_command`` carrying ``command`` (or its serialized bytes:
        the hot path of a call)."""
        data = command if isinstance(command, bytes) else command.SerializeToString()
        return self._wrapped_frame(_COMMAND_TAG, correlation_id, data, now)

    def reply_frame(
        self, correlation_id: str, reply: pb.MxCommandReply | bytes, now: float | None = None
    ) -> bytes:
        """The frame of a ``worker_command_reply`` carrying ``reply`` (or its bytes)."""
        data = reply if isinstance(reply, bytes) else reply.SerializeToString()
        return self._wrapped_frame(_REPLY_TAG, correlation_id, data, now)

    def command_body(self, envelope: bytes) -> tuple[str, bytes] | None:
        """The correlation id and the ``MxCommand`` bytes of a ``worker_command`` envelope
        in the layout :meth:`command_frame` writes, or None for anything else (parse it
        with the generated classes)."""
        return self._wrapped_body(envelope, _COMMAND_TAG)

    def reply_body(self, envelope: bytes) -> tuple[str, bytes] | None:
        """The correlation id and the ``MxCommandReply`` bytes of a ``worker_command_reply``
        envelope in the layout :meth:`reply_frame` writes, or None for anything else."""
        return self._wrapped_body(envelope, _REPLY_TAG)

    def _wrapped_body(self, envelope: bytes, tag: bytes) -> tuple[str, bytes] | None:
        """What :meth:`_wrapped_frame` put in ``envelope``: exactly this session's head (so
        this protocol version), ``sent_at`` (skipped: neither end reads it), the correlation
        id, and the body ``tag`` holding only its field 1; else None (the slow path judges
        the envelope: a frame that breaks the protocol is refused there).

        This skips parsing the envelope into messages on both ends of a call: on a 2-core
        machine the code a woken process runs is cold, and the generated classes' parse
        and field accesses cost more there than these few byte comparisons. A length under
        128 (one byte: ``sent_at``'s, a correlation id's, a small body's) is read inline,
        without a call of :func:`read_varint`."""
        stamped = self._stamped
        if not envelope.startswith(stamped):
            return None
        end = len(envelope)
        try:
            pos = len(stamped)
            size = envelope[pos]
            pos = pos + 1 + size if size < 0x80 else sum(read_varint(envelope, pos))
            cid = ""
            if envelope[pos] == 0x22:
                size = envelope[pos + 1]
                if size < 0x80:
                    pos += 2
                else:
                    size, pos = read_varint(envelope, pos + 1)
                cid = envelope[pos : pos + size].decode()
                pos += size
            if not envelope.startswith(tag, pos):
                return None
            pos += len(tag)
            size = envelope[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = read_varint(envelope, pos)
            if pos + size != end or envelope[pos] != 0x0A:
                return None
            size = envelope[pos + 1]
            if size < 0x80:
                pos += 2
            else:
                size, pos = read_varint(envelope, pos + 1)
        except (IndexError, ProtocolViolation, UnicodeDecodeError):
            return None
        if pos + size != end:
            return None
        return cid, envelope[pos:]

    def _wrapped_frame(
        self, tag: bytes, correlation_id: str, data: bytes, now: float | None
    ) -> bytes:
        """:meth:`body_frame` of a body whose one field 1 is the message ``data`` (a
        ``WorkerCommand`` or ``WorkerCommandReply``), the frame's length included, joined
        once (no second copy to put the length in front)."""
        stamp = _stamp_now() if now is None else timestamp_bytes(now)
        inner = varint(len(data))
        body = 1 + len(inner) + len(data)
        outer = varint(body)
        head = self._stamped + _SMALL[len(stamp)] + stamp
        if correlation_id:
            cid = correlation_id.encode()
            head += b"\x22" + varint(len(cid)) + cid
        size = len(head) + len(tag) + len(outer) + body
        return b"".join((_LENGTH.pack(size), head, tag, outer, b"\x0a", inner, data))

    def body_frame(
        self, tag: bytes, correlation_id: str, body: bytes, now: float | None = None
    ) -> bytes:
        """A framed envelope from its body's tag and serialized body, in the generated
        code's field order: version, session, ``sent_at``, correlation id, body."""
        stamp = _stamp_now() if now is None else timestamp_bytes(now)
        parts = [self._stamped, varint(len(stamp)), stamp]
        if correlation_id:
            cid = correlation_id.encode()
            parts += (b"\x22", varint(len(cid)), cid)
        parts += (tag, varint(len(body)), body)
        return frame(b"".join(parts))

    def event_frames(self, framed_events: Sequence[bytes]) -> bytes:
        """Frames of ``worker_event`` envelopes, one per ``0x0A <len> <MxEvent>`` item.

        Such an item is exactly a serialized ``WorkerEvent`` (its field 1), so the envelope
        is the fixed head, the body's tag and length, and the item.
        """
        head = self._event_head
        parts: list[bytes] = []
        append = parts.append
        for item in framed_events:
            size_bytes = varint(len(item))
            append(frame(head + size_bytes + item))
        return b"".join(parts)

    def event_body(self, envelope: bytes) -> bytes | None:
        """The ``WorkerEvent`` bytes (``0x0A <len> <MxEvent>``) of a fast-path event envelope,
        or None when ``envelope`` is anything else (parse it with the generated classes)."""
        head = self._event_head
        if not envelope.startswith(head):
            return None
        try:
            size, pos = read_varint(envelope, len(head))
        except ProtocolViolation:
            return None
        if pos + size != len(envelope):  # not exactly one body: let the slow path judge it
            return None
        return envelope[pos:]


# -- runtime calls as MxCommands ---------------------------------------------------------


def _cmd(kind: int, member: str, body: Any) -> pb.MxCommand:
    command = pb.MxCommand(kind=kind)  # type: ignore[arg-type]
    getattr(command, member).CopyFrom(body)
    return command


def add_item_command(
    server_handle: int, item_definition: str, item_context: str, *, buffered: bool
) -> pb.MxCommand:
    """AddItem, AddItem2 (a context) or AddBufferedItem."""
    if buffered:
        return _cmd(
            pb.MX_COMMAND_KIND_ADD_BUFFERED_ITEM,
            "add_buffered_item",
            pb.AddBufferedItemCommand(
                server_handle=server_handle,
                item_definition=item_definition,
                item_context=item_context,
            ),
        )
    if item_context:
        return _cmd(
            pb.MX_COMMAND_KIND_ADD_ITEM2,
            "add_item2",
            pb.AddItem2Command(
                server_handle=server_handle,
                item_definition=item_definition,
                item_context=item_context,
            ),
        )
    return _cmd(
        pb.MX_COMMAND_KIND_ADD_ITEM,
        "add_item",
        pb.AddItemCommand(server_handle=server_handle, item_definition=item_definition),
    )


def write_command(server_handle: int, item_handle: int, request: WriteRequest) -> pb.MxCommand:
    """Write, Write2 (a timestamp), WriteSecured or WriteSecured2."""
    value = to_mx_value(request.value)
    stamp = to_timestamp(request.timestamp.timestamp()) if request.timestamp is not None else None
    if request.secured:
        if stamp is not None:
            return _cmd(
                pb.MX_COMMAND_KIND_WRITE_SECURED2,
                "write_secured2",
                pb.WriteSecured2Command(
                    server_handle=server_handle,
                    item_handle=item_handle,
                    value=value,
                    timestamp_value=stamp,
                    current_user_id=request.user_id,
                    verifier_user_id=request.verifier_user_id,
                ),
            )
        return _cmd(
            pb.MX_COMMAND_KIND_WRITE_SECURED,
            "write_secured",
            pb.WriteSecuredCommand(
                server_handle=server_handle,
                item_handle=item_handle,
                value=value,
                current_user_id=request.user_id,
                verifier_user_id=request.verifier_user_id,
            ),
        )
    if stamp is not None:
        return _cmd(
            pb.MX_COMMAND_KIND_WRITE2,
            "write2",
            pb.Write2Command(
                server_handle=server_handle,
                item_handle=item_handle,
                value=value,
                timestamp_value=stamp,
                user_id=request.user_id,
            ),
        )
    return _cmd(
        pb.MX_COMMAND_KIND_WRITE,
        "write",
        pb.WriteCommand(
            server_handle=server_handle,
            item_handle=item_handle,
            value=value,
            user_id=request.user_id,
        ),
    )


_WRITE_HEAD: Final = (
    varint(pb.MxCommand.DESCRIPTOR.fields_by_name["kind"].number << 3)
    + varint(pb.MX_COMMAND_KIND_WRITE)
    + varint(pb.MxCommand.DESCRIPTOR.fields_by_name["write"].number << 3 | 2)
)
"""A Write command up to its ``write`` member's length (fields in number order)."""
_SCALAR_TYPES: Final = {float: MX_DOUBLE, int: MX_INTEGER, bool: MX_BOOLEAN, str: MX_STRING}
"""The data type :func:`~mxgateway.values.to_mx_value` gives a Python scalar."""


def write_command_bytes(server_handle: int, item_handle: int, request: WriteRequest) -> bytes:
    """:func:`write_command`, serialized. A plain Write of a finite float, an int32, a bool
    or a string (a client's commonest write) is encoded directly, the value by the
    simulator's own encoder, without four messages to build and serialize (tests compare
    the bytes); anything else takes :func:`write_command`."""
    value = request.value
    data_type = _SCALAR_TYPES.get(type(value))
    if (
        data_type is None
        or request.secured
        or request.timestamp is not None
        or (data_type == MX_DOUBLE and value - value != 0.0)  # type: ignore[operator]
        or (data_type == MX_INTEGER and not -(2**31) <= value < 2**31)  # type: ignore[operator]
    ):
        return write_command(server_handle, item_handle, request).SerializeToString()
    mx = value_bytes(value, data_type)
    body = b"".join(
        (
            b"\x08" + varint(server_handle) if server_handle else b"",
            b"\x10" + varint(item_handle) if item_handle else b"",
            b"\x1a" + varint(len(mx)),
            mx,
            b"\x20" + varint(request.user_id) if request.user_id else b"",
        )
    )
    return _WRITE_HEAD + varint(len(body)) + body


_READ_HEAD: Final = (
    varint(pb.MxCommand.DESCRIPTOR.fields_by_name["kind"].number << 3)
    + varint(pb.MX_COMMAND_KIND_READ_BULK)
    + varint(pb.MxCommand.DESCRIPTOR.fields_by_name["read_bulk"].number << 3 | 2)
)
"""A ReadBulk command up to its ``read_bulk`` member's length."""


def read_command_bytes(server_handle: int, references: Sequence[str], timeout_ms: int) -> bytes:
    """A ReadBulk command (``simple_command`` of ``read_bulk``), serialized: encoded directly
    (the gateway's hot path; tests compare the bytes with the generated command's)."""
    try:
        parts = [b"\x08" + varint(server_handle)] if server_handle else []
        for reference in references:
            data = reference.encode()
            parts.append(b"\x12" + varint(len(data)) + data)
    except UnicodeEncodeError:  # not UTF-8: the generated classes refuse it in their words
        return simple_command(
            pb.MX_COMMAND_KIND_READ_BULK,
            "read_bulk",
            server_handle=server_handle,
            tag_addresses=list(references),
            timeout_ms=timeout_ms,
        ).SerializeToString()
    if timeout_ms:
        parts.append(b"\x18" + varint(timeout_ms))
    body = b"".join(parts)
    return _READ_HEAD + varint(len(body)) + body


def simple_command(kind: int, member: str, **fields: Any) -> pb.MxCommand:
    """Any other command: its kind, its payload member and the payload's fields."""
    command = pb.MxCommand(kind=kind)  # type: ignore[arg-type]
    getattr(command, member).SetInParent()
    for name, value in fields.items():
        field = getattr(command, member)
        if isinstance(value, list):
            getattr(field, name).extend(value)
        else:
            setattr(field, name, value)
    return command


def status_from_pb(status: pb.MxStatusProxy) -> MxStatus:
    """The COM status of a status message (the raw fields hold the COM numbers)."""
    return MxStatus(
        status.success,
        status.raw_category if status.raw_category else status.category - COM_TO_PROTO,
        status.raw_detected_by if status.raw_detected_by else status.detected_by - COM_TO_PROTO,
        status.detail,
        status.diagnostic_text,
    )


def raise_for_reply(reply: pb.MxCommandReply) -> None:
    """Raise what the worker's runtime raised, from its reply.

    Raises:
        MxAccessError: the MXAccess call failed (HRESULT, statuses).
        LimitError: a limit of the runtime refused the call.
        WorkerLost: the worker answered with any other failure (a broken worker).
    """
    code = reply.protocol_status.code
    if code == pb.PROTOCOL_STATUS_CODE_OK:
        return
    message = reply.protocol_status.message
    if code == pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE:
        raise MxAccessError(
            reply.hresult,
            reply.diagnostic_message,
            tuple(status_from_pb(s) for s in reply.statuses),
        )
    if code == pb.PROTOCOL_STATUS_CODE_OVERLOADED:
        raise LimitError(message, overloaded=True)
    if code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST:
        raise LimitError(message)
    raise WorkerLost(f"the worker failed the command: {message}")


def read_rows(reply: pb.BulkReadReply) -> list[ReadResult]:
    """ReadBulk rows as the runtime returned them in the worker."""
    rows = []
    for r in reply.results:
        statuses = tuple(status_from_pb(s) for s in r.statuses)
        sample = None
        if r.HasField("value"):
            sample = TagSample(
                from_mx_value(r.value),
                max(r.value.data_type - COM_TO_PROTO, 0),
                r.quality,
                r.timestamp.seconds + r.timestamp.nanos / 1e9,
                *status_and_records(statuses),
            )
        rows.append(ReadResult(r.tag_address, sample, r.was_cached, r.error_message, statuses))
    return rows


# -- the worker side: one command against the runtime -------------------------------------


def _write_request(p: Any, *, secured: bool, stamped: bool) -> WriteRequest:
    when = None
    if stamped and p.HasField("timestamp_value"):
        when = timestamp_to_datetime(p.timestamp_value).astimezone(timezone.utc)
    if secured:
        return WriteRequest(
            from_mx_value(p.value),
            when,
            p.current_user_id,
            p.verifier_user_id,
            secured=True,
        )
    return WriteRequest(from_mx_value(p.value), when, p.user_id)


async def _read_wire(rt: MxAccessRuntime, p: pb.ReadBulkCommand) -> bytes:
    """A ReadBulk's rows, serialized (a ``BulkReadReply``)."""
    references = list(p.tag_addresses)
    # The simulated runtime's encoded-row cache when it can answer (the same bytes).
    ready = getattr(rt, "read_wire", None)
    data = ready(p.server_handle, references, NO_READ_LIMIT) if ready is not None else None
    if data is None:
        rows = await rt.read(p.server_handle, references, p.timeout_ms / 1000.0)
        data = read_reply_bytes(rows)
    return bytes(data)


async def _dispatch(rt: MxAccessRuntime, payload: str, p: Any, r: pb.MxCommandReply) -> None:
    """Run one MXAccess call; fills the reply's result member (the commonest first)."""
    if payload == "ping":
        await rt.ping()
    elif payload == "read_bulk":
        r.bulk_read.MergeFromString(await _read_wire(rt, p))
        r.bulk_read.SetInParent()
    elif payload == "write":
        await rt.write(
            p.server_handle, p.item_handle, _write_request(p, secured=False, stamped=False)
        )
    elif payload == "register":
        r.register.server_handle = await rt.register(p.client_name)
    elif payload == "unregister":
        await rt.unregister(p.server_handle)
    elif payload == "add_item":
        r.add_item.item_handle = await rt.add_item(p.server_handle, p.item_definition)
    elif payload == "add_item2":
        r.add_item2.item_handle = await rt.add_item(
            p.server_handle, p.item_definition, p.item_context
        )
    elif payload == "add_buffered_item":
        r.add_buffered_item.item_handle = await rt.add_item(
            p.server_handle, p.item_definition, p.item_context, buffered=True
        )
    elif payload == "remove_item":
        await rt.remove_item(p.server_handle, p.item_handle)
    elif payload in ("advise", "advise_supervisory"):
        await rt.advise(p.server_handle, p.item_handle, supervisory=payload != "advise")
    elif payload == "un_advise":
        await rt.unadvise(p.server_handle, p.item_handle)
    elif payload in ("write2", "write_secured", "write_secured2"):
        request = _write_request(
            p, secured=payload.startswith("write_secured"), stamped=payload.endswith("2")
        )
        await rt.write(p.server_handle, p.item_handle, request)
    elif payload == "authenticate_user":
        r.authenticate_user.user_id = await rt.authenticate_user(
            p.server_handle, p.verify_user, p.verify_user_password
        )
    elif payload == "archestra_user_to_id":
        r.archestra_user_to_id.user_id = await rt.archestra_user_to_id(
            p.server_handle, p.user_id_guid
        )
    elif payload in ("suspend", "activate"):
        call = rt.suspend if payload == "suspend" else rt.activate
        r.statuses.append(status_to_pb(await call(p.server_handle, p.item_handle)))
    elif payload == "set_buffered_update_interval":
        await rt.set_buffered_update_interval(p.server_handle, p.update_interval_ms)
    elif payload in ("add_item_bulk", "subscribe_bulk"):
        await _create_items(rt, p, r, advise=payload == "subscribe_bulk")
    else:
        raise ValueError(f"{payload} is not a worker command")


async def _create_items(rt: MxAccessRuntime, p: Any, r: pb.MxCommandReply, *, advise: bool) -> None:
    """AddItem (then Advise) per reference of one chunk of a bulk add (the gateway composes
    the bulk command, its limits and its undo; the worker saves the round trips). A limit
    stops the chunk: the rows so far are kept and the limit is the reply's status."""
    sh = p.server_handle
    supervisory = advise and p.supervisory
    rows = r.bulk_subscribe
    rows.SetInParent()
    for ref in p.tag_addresses:
        row = rows.results.add(server_handle=sh, tag_address=ref, was_successful=True)
        try:
            row.item_handle = await rt.add_item(sh, ref)
            if advise:
                await rt.advise(sh, row.item_handle, supervisory=supervisory)
        except MxAccessError as exc:
            row.was_successful = False
            row.error_message = exc.message
            row.hresult = exc.hresult
            row.statuses.extend(status_to_pb(s) for s in exc.statuses)
        except LimitError as exc:
            del rows.results[-1]
            code = (
                pb.PROTOCOL_STATUS_CODE_OVERLOADED
                if exc.overloaded
                else pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
            )
            r.protocol_status.CopyFrom(_protocol_status(code, str(exc)))
            return


CreatedItems = tuple[list[tuple[int, MxAccessError | None]], LimitError | None]
"""A chunk's (item handle, row failure) pairs and the limit that stopped it, if any."""


def created_items(reply: pb.MxCommandReply) -> CreatedItems:
    """The rows of a worker's chunk of a bulk add, and the limit that stopped it (if any).

    Raises:
        MxAccessError, LimitError, WorkerLost: the chunk failed as a whole (see
            :func:`raise_for_reply`).
    """
    code = reply.protocol_status.code
    limit = None
    if code in (pb.PROTOCOL_STATUS_CODE_OVERLOADED, pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST):
        limit = LimitError(
            reply.protocol_status.message, overloaded=code == pb.PROTOCOL_STATUS_CODE_OVERLOADED
        )
    else:
        raise_for_reply(reply)
    out: list[tuple[int, MxAccessError | None]] = []
    for row in reply.bulk_subscribe.results:
        error = None
        if not row.was_successful:
            statuses = tuple(status_from_pb(s) for s in row.statuses)
            error = MxAccessError(row.hresult, row.error_message, statuses)
        out.append((row.item_handle, error))
    return out, limit


def _protocol_status(code: int, message: str) -> pb.ProtocolStatus:
    return pb.ProtocolStatus(code=code, message=message)  # type: ignore[arg-type]


_FAILURES: Final = (MxAccessError, LimitError, ValueError, OverflowError)
"""What a runtime call raises that its reply reports (anything else is a worker bug)."""


def _fail(reply: pb.MxCommandReply, exc: BaseException) -> None:
    """Put a failed call's outcome (one of :data:`_FAILURES`) in its reply: an MXAccess
    failure is ``MXACCESS_FAILURE`` with its HRESULT and statuses."""
    if isinstance(exc, MxAccessError):
        reply.protocol_status.CopyFrom(
            _protocol_status(
                pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE, "MXAccess reported a failure"
            )
        )
        reply.hresult = exc.hresult
        reply.diagnostic_message = exc.message
        reply.statuses.extend(status_to_pb(s) for s in exc.statuses)
    elif isinstance(exc, LimitError):
        code = (
            pb.PROTOCOL_STATUS_CODE_OVERLOADED
            if exc.overloaded
            else pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST
        )
        reply.protocol_status.CopyFrom(_protocol_status(code, str(exc)))
    else:
        reply.protocol_status.CopyFrom(
            _protocol_status(pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, str(exc))
        )


async def run_command(rt: MxAccessRuntime, command: pb.MxCommand) -> pb.MxCommandReply:
    """Run a worker command against ``rt``; every outcome is a reply, never an exception
    (an MXAccess failure is ``MXACCESS_FAILURE`` with its HRESULT and statuses)."""
    reply = pb.MxCommandReply(kind=command.kind)
    payload = command.WhichOneof("payload")
    try:
        if payload is None:
            raise ValueError("the command has no payload")
        await _dispatch(rt, payload, getattr(command, payload), reply)
    except _FAILURES as exc:
        _fail(reply, exc)
        return reply
    if not reply.HasField("protocol_status"):  # a bulk chunk stopped by a limit has its own
        status = reply.protocol_status
        status.code = pb.PROTOCOL_STATUS_CODE_OK
        status.message = "OK"
    return reply


def ok_reply(kind: int) -> bytes:
    """The serialized reply of a ``kind`` command that succeeded with no result."""
    reply = pb.MxCommandReply(kind=kind)  # type: ignore[arg-type]
    reply.protocol_status.code = pb.PROTOCOL_STATUS_CODE_OK
    reply.protocol_status.message = "OK"
    return reply.SerializeToString()


PING_REPLY: Final = ok_reply(pb.MX_COMMAND_KIND_PING)
"""A ping's reply, as :func:`run_command` serializes it."""
WRITE_REPLY: Final = ok_reply(pb.MX_COMMAND_KIND_WRITE)
"""A Write's reply (its outcome is the OnWriteComplete event)."""
READ_REPLY_HEAD: Final = ok_reply(pb.MX_COMMAND_KIND_READ_BULK) + varint(
    pb.MxCommandReply.DESCRIPTOR.fields_by_name["bulk_read"].number << 3 | 2
)
"""A ReadBulk's reply up to its rows' length and rows (fields in number order)."""
PING_COMMAND: Final = pb.MxCommand(
    kind=pb.MX_COMMAND_KIND_PING, ping=pb.PingCommand()
).SerializeToString()
"""A ping command, serialized (the gateway sends it as it is)."""


def read_reply_rows(reply: bytes) -> bytes | None:
    """The rows (a serialized ``BulkReadReply``) of a successful ReadBulk's reply in the
    layout :func:`run_command_wire` writes, or None for anything else (parse it)."""
    head = READ_REPLY_HEAD
    if not reply.startswith(head):
        return None
    try:
        size, pos = read_varint(reply, len(head))
    except ProtocolViolation:
        return None
    return reply[pos:] if pos + size == len(reply) else None


_WIRE_KINDS: Final = {
    "ping": pb.MX_COMMAND_KIND_PING,
    "write": pb.MX_COMMAND_KIND_WRITE,
    "read_bulk": pb.MX_COMMAND_KIND_READ_BULK,
}


async def run_command_wire(rt: MxAccessRuntime, command: pb.MxCommand) -> bytes:
    """:func:`run_command`'s reply, serialized. A ping, a Write or a ReadBulk that succeeds
    is answered from pre-encoded bytes around the rows (the same bytes: tests compare),
    without a reply message to build and serialize; anything else takes :func:`run_command`.
    """
    payload = command.WhichOneof("payload")
    if payload is None or _WIRE_KINDS.get(payload) != command.kind:
        return (await run_command(rt, command)).SerializeToString()
    try:
        if payload == "ping":
            await rt.ping()
            return PING_REPLY
        if payload == "write":
            p = command.write
            await rt.write(
                p.server_handle, p.item_handle, _write_request(p, secured=False, stamped=False)
            )
            return WRITE_REPLY
        data = await _read_wire(rt, command.read_bulk)
    except _FAILURES as exc:
        reply = pb.MxCommandReply(kind=command.kind)
        _fail(reply, exc)
        return reply.SerializeToString()
    return READ_REPLY_HEAD + varint(len(data)) + data


__all__ = [
    "BODY_TAGS",
    "NONCE_ENV",
    "PING_COMMAND",
    "PING_REPLY",
    "READ_REPLY_HEAD",
    "SESSION_ENV",
    "WRITE_REPLY",
    "CreatedItems",
    "EnvelopeHead",
    "ProtocolViolation",
    "WorkerLost",
    "add_item_command",
    "check_envelope",
    "created_items",
    "decode_command",
    "decode_envelope",
    "ok_reply",
    "raise_for_reply",
    "read_command_bytes",
    "read_reply_rows",
    "read_rows",
    "read_varint",
    "run_command",
    "run_command_wire",
    "simple_command",
    "status_from_pb",
    "write_command",
    "write_command_bytes",
]
