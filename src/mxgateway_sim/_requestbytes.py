"""A large ReadBulk's own request bytes, kept for its handler: a poller's repeat is known by
the bytes it came in, without serialising the parsed command again.

gRPC hands the servicer parsed messages (the method's deserializer). ``Invoke`` and
``InvokeStream`` parse with :data:`parse_command`: as ``MxCommandRequest.FromString`` does,
and for a ReadBulk request of :data:`KEEP_FROM_BYTES` or more it also keeps (request,
bytes) in a context variable of the call's task, where the handler reads its messages.
:func:`read_bulk_bytes` gives the ReadBulk payload's own wire bytes when the payload is that
request's and appears in it once (a payload sent in parts, which the parser merges, is not
one slice: None, and the caller serialises it). Equal bytes always parse to equal commands,
so the bytes can stand for the command (``SimulatedRuntime.read_memo``).

A poller sends the same payload again and again (each request with its own correlation
id): a payload equal to one of the last :data:`RECENT` given is answered with that very
bytes object, found by comparing it in place (no copy), so the session's memo finds the
call by a hash Python kept with it, not by hashing ~400 kB again (the process keeps those
payloads, at most :data:`RECENT_BYTES` of them beyond the newest).

Nor is its request parsed again (a 10,000-tag request's parse checks 10,000 strings): the
parser keeps the last :data:`RECENT` large ReadBulk requests it parsed (as bounded), and a
request of the same session and command bytes as one of them (fields 1 and 3, compared in
place; no other field but the correlation id) is answered with that parse, its correlation
id set to the new one's. Calls share it: the servicer only reads the commands it is given,
and never their correlation id. Several are kept because a client may read a long list in
several requests that come in turn (``mxgateway`` pipelines a large read in two halves).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TypeVar

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._workerwire import ProtocolViolation, read_varint

__all__ = ["KEEP_FROM_BYTES", "forget_request_bytes", "parse_command", "read_bulk_bytes"]

KEEP_FROM_BYTES = 16 * 1024
"""Requests smaller than this are not kept (serialising their payload costs little)."""

_SESSION = pb.MxCommandRequest.DESCRIPTOR.fields_by_name["session_id"].number
_CORRELATION = pb.MxCommandRequest.DESCRIPTOR.fields_by_name["client_correlation_id"].number
_COMMAND = pb.MxCommandRequest.DESCRIPTOR.fields_by_name["command"].number
_REQUEST_FIELDS = frozenset({_SESSION, _CORRELATION, _COMMAND})
_READ_BULK = pb.MxCommand.DESCRIPTOR.fields_by_name["read_bulk"].number
_T = TypeVar("_T")
_KEPT: ContextVar[tuple[pb.MxCommandRequest, bytes] | None] = ContextVar(
    "mxgw_read_bulk_bytes", default=None
)


RECENT = 4
"""Large ReadBulk requests (and payloads) kept for their repeats (see the module)."""
RECENT_BYTES = 8 << 20
"""Bytes of the kept requests (and of the kept payloads) beyond the newest, at most."""


class _RecentPayloads:
    """The payloads :func:`read_bulk_bytes` gave last, the newest first (see the module)."""

    items: list[bytes] = []


def _keep(items: list[_T], item: _T, size: Callable[[_T], int]) -> None:
    """Put ``item`` first in ``items`` and drop the oldest past :data:`RECENT` entries or
    :data:`RECENT_BYTES` beyond the newest."""
    items.insert(0, item)
    del items[RECENT:]
    total = 0
    for i, kept in enumerate(items[1:], 1):
        total += size(kept)
        if total > RECENT_BYTES:
            del items[i:]
            break


class _Parsed:
    """A large ReadBulk request parsed: the message, its session's and command's bytes."""

    __slots__ = ("command", "request", "session")

    def __init__(self, request: pb.MxCommandRequest, session: bytes, command: bytes) -> None:
        self.request = request
        self.session = session
        self.command = command

    def size(self) -> int:
        """The bytes it keeps (its command's twice: as bytes and as the parse)."""
        return len(self.session) + 2 * len(self.command)


class _CommandParser:
    """``Invoke``'s deserializer (see the module)."""

    __name__ = "MxCommandRequest"  # the tolerant deserializer names the type in its errors

    def __init__(self) -> None:
        self.recent: list[_Parsed] = []
        """The last large ReadBulk requests parsed, the newest first (see the module)."""

    def parse(self, data: bytes) -> pb.MxCommandRequest:
        if len(data) < KEEP_FROM_BYTES:
            return pb.MxCommandRequest.FromString(data)
        spans = _request_spans(data)
        if spans is not None:
            for last in self.recent:
                request = _repeat(last, data, *spans)
                if request is not None:
                    _KEPT.set((request, data))
                    return request
        request = pb.MxCommandRequest.FromString(data)
        if request.command.WhichOneof("payload") == "read_bulk":
            _KEPT.set((request, data))
            if spans is not None:
                (s0, s1), _, (c0, c1) = spans
                parsed = _Parsed(request, data[s0:s1], data[c0:c1])
                _keep(self.recent, parsed, _Parsed.size)
        return request


def _repeat(
    last: _Parsed,
    data: bytes,
    session: tuple[int, int],
    correlation: tuple[int, int] | None,
    command: tuple[int, int],
) -> pb.MxCommandRequest | None:
    """``last``'s request, with the correlation id of ``data`` (whose fields are at these
    places), when ``data`` has its session and command; None otherwise (or when the new
    correlation id is not UTF-8: the parse reports that)."""
    (c0, c1), (s0, s1) = command, session
    if not (
        c1 - c0 == len(last.command)
        and s1 - s0 == len(last.session)
        and data.startswith(last.command, c0)
        and data.startswith(last.session, s0)
    ):
        return None
    try:
        text = "" if correlation is None else data[correlation[0] : correlation[1]].decode()
    except UnicodeDecodeError:
        return None
    request = last.request
    request.client_correlation_id = text
    return request


def _request_spans(
    data: bytes,
) -> tuple[tuple[int, int], tuple[int, int] | None, tuple[int, int]] | None:
    """Where the session id, the correlation id (None: absent) and the command of request
    ``data`` are, when it holds the session id and the command once each, the correlation
    id at most once and no other field; None otherwise."""
    found: dict[int, tuple[int, int]] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            key, pos = read_varint(data, pos)
            number = key >> 3
            if key & 7 != 2 or number in found or number not in _REQUEST_FIELDS:
                return None
            size, pos = read_varint(data, pos)
            found[number] = (pos, pos + size)
            pos += size
    except ProtocolViolation:
        return None
    if pos != end or _SESSION not in found or _COMMAND not in found:
        return None
    return found[_SESSION], found.get(_CORRELATION), found[_COMMAND]


parse_command = _CommandParser().parse
"""``MxCommandRequest.FromString``, keeping a large ReadBulk request's bytes (see the
module)."""


def read_bulk_bytes(payload: pb.ReadBulkCommand) -> bytes | None:
    """The wire bytes ``payload`` came in, if its request was kept (and forgotten now), else
    None."""
    kept = _KEPT.get()
    if kept is None:
        return None
    _KEPT.set(None)
    request, data = kept
    if request.command.read_bulk is not payload:
        return None
    try:
        command = _only_field(data, 0, len(data), _COMMAND)
        if command is None:
            return None
        found = _only_field(data, command[0], command[1], _READ_BULK)
    except ProtocolViolation:
        return None
    if found is None:
        return None
    start, end = found
    recent = _RecentPayloads.items
    for last in recent:
        if end - start == len(last) and data.startswith(last, start):
            return last  # the same bytes: their hash is kept with them
    piece = data[start:end]
    _keep(recent, piece, len)
    return piece


def forget_request_bytes() -> None:
    """Drop a kept request its handler did not take (a command refused before it, a runtime
    that does not remember reads): ``InvokeStream``'s task would otherwise hold the request
    and its bytes until its next large ReadBulk. A look and no allocation when none is kept."""
    if _KEPT.get() is not None:
        _KEPT.set(None)


def _only_field(data: bytes, pos: int, end: int, number: int) -> tuple[int, int] | None:
    """(start, end) of the length-delimited field ``number`` in ``data[pos:end]`` when it is
    there exactly once; None otherwise, or when a field is of a kind not walked here."""
    found: tuple[int, int] | None = None
    while pos < end:
        key, pos = read_varint(data, pos)
        kind = key & 7
        if kind == 0:
            _, pos = read_varint(data, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        elif kind == 2:
            size, pos = read_varint(data, pos)
            if key >> 3 == number:
                if found is not None:  # twice: the parser merged them
                    return None
                found = (pos, pos + size)
            pos += size
        else:  # groups: not walked
            return None
    if pos != end:
        return None
    return found
