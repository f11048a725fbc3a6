"""Streams on stdout: one JSON document written incrementally, or NDJSON lines.

A stream can be long (a big Galaxy, an open-ended event stream), so items are written as
they arrive and never collected: memory stays flat. The single-document form produces
exactly the bytes ``json.dumps({key: [...items], **extra}, indent=2)`` would, so output is
deterministic whichever way it was produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mxgateway_cli._output import Output, message_json

if TYPE_CHECKING:
    from google.protobuf.message import Message

__all__ = ["JsonStream", "consume", "print_stream", "stream_document"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
M = TypeVar("M", bound="Message")


def _indented(document: object, prefix: str) -> str:
    text = json.dumps(document, indent=2, ensure_ascii=False)
    return "\n".join(prefix + line for line in text.splitlines())


class JsonStream:
    """Writes ``{"<key>": [item, ...], <extra>...}`` or NDJSON, one item at a time."""

    def __init__(self, out: Output, key: str) -> None:
        self._out = out
        self._key = key
        self._count = 0
        self._open = False
        self._closed = False

    @property
    def count(self) -> int:
        """Items written so far."""
        return self._count

    def _start(self) -> None:
        if not self._open and not self._out.ndjson:
            self._out.write("{\n" + f"  {json.dumps(self._key)}: [")
        self._open = True

    def add(self, item: Mapping[str, Any]) -> None:
        """Write one item."""
        self._start()
        if self._out.ndjson:
            self._out.emit_line(item)
        else:
            separator = "," if self._count else ""
            self._out.write(separator + "\n" + _indented(item, "    "))
        self._count += 1

    def close(self, extra: Mapping[str, Any] | None = None) -> None:
        """Finish the document (idempotent); ``extra`` keys follow the list."""
        if self._closed:
            return
        self._closed = True
        if self._out.ndjson:
            return
        self._start()
        tail = "\n  ]" if self._count else "]"
        for key, value in (extra or {}).items():
            tail += ",\n" + f"  {json.dumps(key)}: " + _indented(value, "  ").lstrip()
        self._out.write(tail + "\n}\n")


@contextlib.contextmanager
def stream_document(out: Output, key: str, *, enabled: bool) -> Iterator[JsonStream]:
    """A :class:`JsonStream` (when ``enabled``: under ``--json``) that is always finished:
    at the end, and on a failure after items were written (stdout stays valid JSON; the
    error goes to stderr)."""
    writer = JsonStream(out, key)
    try:
        yield writer
    except BaseException:
        if enabled and writer.count:
            writer.close()
        raise
    if enabled:
        writer.close()


async def consume(
    stream: AsyncIterable[T],
    on_item: Callable[[T], int],
    *,
    max_items: int | None,
    timeout: float | None,
) -> bool:
    """Feed ``stream`` to ``on_item`` until ``max_items`` were counted or ``timeout`` passed.

    ``on_item`` returns how many items the element counted for (a batch counts its events).
    Returns True when the window ended by timeout. The caller owns closing ``stream``.
    """
    counted = 0

    async def _run() -> None:
        nonlocal counted
        if max_items is not None and counted >= max_items:
            return
        async for element in stream:
            counted += on_item(element)
            if max_items is not None and counted >= max_items:
                return

    if timeout is None:
        await _run()
        return False
    try:
        await asyncio.wait_for(_run(), timeout)
    except asyncio.TimeoutError:
        return True
    return False


class _Closable(AsyncIterable[T_co], Protocol[T_co]):
    """A stream of messages that ends by ``aclose()``."""

    async def aclose(self) -> None: ...


async def print_stream(
    out: Output,
    writer: JsonStream | None,
    stream: _Closable[M],
    line: Callable[[M], str],
    *,
    max_items: int | None,
    timeout: float | None,
) -> None:
    """Print the messages of ``stream`` as they arrive: into ``writer`` as protobuf-JSON
    (``--json``), else one ``line`` each for people; until ``max_items`` or ``timeout``
    (:func:`consume`). ``stream`` is closed at the end, whatever happens."""

    def on_message(message: M) -> int:
        if writer is not None:
            writer.add(message_json(message))
        else:
            out.write(line(message) + "\n")
        return 1

    try:
        await consume(stream, on_message, max_items=max_items, timeout=timeout)
    finally:
        await stream.aclose()
