"""Command requests sent as bytes encoded ahead: a large ``read_bulk`` of the same tags.

A 10,000-tag ``ReadBulk`` carries some 330 kB of references, and an application that
polls reads the same list again and again: building that command and encoding it anew
each time is work the client can skip. A session keeps the encoded command of its last
large read (:class:`ReadMemo`); a read of the same tags with the same handle and timeout
splices those bytes after the new request's own session and correlation ids
(:class:`EncodedRequest`), and the command stream writes them as they are
(:func:`serialize`). On unary ``Invoke`` (the fallback) the request is parsed back into
the generated message and sent as any other.

The bytes are exactly what ``MxCommandRequest.SerializeToString()`` gives for the same
request: fields in number order (session id 1, correlation id 2, command 3), the command
encoded by protobuf itself. The tests compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["EncodedRequest", "ReadMemo", "as_message", "serialize"]

_COMMAND_TAG = bytes([pb.MxCommandRequest.DESCRIPTOR.fields_by_name["command"].number << 3 | 2])
"""The key of ``MxCommandRequest.command`` (a length-delimited field)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class EncodedRequest:
    """An ``MxCommandRequest`` as its wire bytes; the message is parsed from them only
    when a path needs it (the unary fallback, an error that inspects the request)."""

    __slots__ = ("_message", "kind", "session_id", "wire")

    def __init__(self, session_id: str, kind: int, wire: bytes) -> None:
        self.session_id = session_id
        self.kind = kind
        self.wire = wire
        self._message: pb.MxCommandRequest | None = None

    @property
    def message(self) -> pb.MxCommandRequest:
        """The request as the generated message (parsed once, on first use)."""
        if self._message is None:
            self._message = pb.MxCommandRequest.FromString(self.wire)
        return self._message


def as_message(request: pb.MxCommandRequest | EncodedRequest) -> pb.MxCommandRequest:
    """``request`` as the generated message."""
    return request.message if isinstance(request, EncodedRequest) else request


def serialize(request: pb.MxCommandRequest | EncodedRequest) -> bytes:
    """The request serializer of the command stream: an encoded request as it is."""
    if isinstance(request, EncodedRequest):
        return request.wire
    return request.SerializeToString()


class ReadMemo:
    """One large ``ReadBulk``, encoded as the commands it is sent in, and what it was
    built from.

    ``tags`` is the caller's list as it was (a copy) and holds only ``str`` itself: equal
    lists of plain strings are the same references, so a read that :meth:`matches` sends
    exactly the commands it would have built. ``commands``: the encoded ``MxCommand`` of
    each request the read is sent in (the tags in order, a slice each: several when the
    read is pipelined, see ``Session.read_bulk``).
    """

    __slots__ = ("_fields", "server_handle", "tags", "timeout_ms")

    def __init__(
        self, server_handle: int, tags: list[str], timeout_ms: int, commands: Sequence[bytes]
    ) -> None:
        self.server_handle = server_handle
        self.tags = tags
        self.timeout_ms = timeout_ms
        self._fields = [_COMMAND_TAG + _varint(len(c)) + c for c in commands]

    def matches(self, server_handle: int, tags: list[str], timeout_ms: int) -> bool:
        """True when a read of these arguments is this command (``tags``: plain strings)."""
        return (
            server_handle == self.server_handle
            and timeout_ms == self.timeout_ms
            and tags == self.tags
        )

    def requests(self, session_id: str, correlation_id: Callable[[], str]) -> list[EncodedRequest]:
        """The requests of session ``session_id`` that carry these commands, in order, each
        with the next id of ``correlation_id()``."""
        kind = pb.MX_COMMAND_KIND_READ_BULK
        return [
            EncodedRequest(
                session_id,
                kind,
                pb.MxCommandRequest(
                    session_id=session_id, client_correlation_id=correlation_id()
                ).SerializeToString()
                + field,
            )
            for field in self._fields
        ]
