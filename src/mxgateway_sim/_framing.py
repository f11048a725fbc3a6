"""Worker-channel framing: a 4-byte little-endian length, then one serialized ``WorkerEnvelope``.

Both ends of the gateway-worker channel use it (upstream's rule, gateway-contract.md section
4): a zero-length frame and a frame over the limit (16 MiB by default) are protocol
violations, refused as soon as their length is read, before any of the body is buffered.
"""

from __future__ import annotations

import struct
from typing import Final

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""Largest envelope a frame may carry (upstream's default limit)."""
HEADER_BYTES: Final = 4

LENGTH: Final = struct.Struct("<I")
"""A frame's length prefix."""
_LENGTH = LENGTH


class FrameError(Exception):
    """The peer sent a frame that breaks the framing rules (the channel cannot be trusted)."""


def frame(envelope: bytes) -> bytes:
    """One frame carrying ``envelope`` (already serialized)."""
    return _LENGTH.pack(len(envelope)) + envelope


class FrameDecoder:
    """Splits a byte stream into envelopes; keeps a partial frame until the rest arrives.

    A large frame that arrives in many reads is collected as a list of chunks and joined
    once, so assembling it costs its size, not its size times the number of reads.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        if limit < 1:
            raise ValueError("the frame limit must be positive")
        self.limit = limit
        self._parts: list[bytes] = []
        self._have = 0
        self._need = HEADER_BYTES  # bytes needed before the buffered data can be parsed

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return self._have

    def feed(self, data: bytes) -> list[bytes]:
        """The complete envelopes in ``data`` (plus what was held back), in order.

        Raises:
            FrameError: a frame's length is zero or over the limit.
        """
        if not data:
            return []
        if not self._parts and len(data) > HEADER_BYTES:
            # The common case, a command or a reply read whole: exactly one frame.
            (size,) = _LENGTH.unpack_from(data)
            if size == len(data) - HEADER_BYTES and size <= self.limit:
                return [data[HEADER_BYTES:]]
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts.clear()
        else:
            buf = data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        limit = self.limit
        unpack = _LENGTH.unpack_from
        need = HEADER_BYTES
        while end - pos >= HEADER_BYTES:
            (size,) = unpack(buf, pos)
            if size == 0:
                raise FrameError("a zero-length frame")
            if size > limit:
                raise FrameError(f"a {size:,}-byte frame, over the {limit:,}-byte limit")
            stop = pos + HEADER_BYTES + size
            if stop > end:
                need = HEADER_BYTES + size
                break
            out.append(buf[pos + HEADER_BYTES : stop])
            pos = stop
        rest = buf[pos:] if pos else buf
        if rest:
            self._parts.append(rest)
        self._have = len(rest)
        self._need = need
        return out
