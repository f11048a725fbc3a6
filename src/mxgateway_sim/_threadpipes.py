"""The worker's channel over blocking reads and writes in threads (Windows).

On Windows a child's inherited stdin/stdout are anonymous pipes opened without overlapped
I/O, which the proactor event loop cannot watch; a reader thread and a writer thread carry
the bytes instead, and hand them to the event loop. The writer keeps asyncio's flow-control
contract (``pause_writing`` above the high-water mark, ``resume_writing`` below the low
one), so the worker behaves the same on every OS. ``mxgw-worker --io threads`` uses it on
any OS (the tests run it on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from typing import Any


class ThreadWriter(asyncio.WriteTransport):
    """A write transport over a blocking file descriptor, written by one thread."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.BaseProtocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._fd = fd
        self._protocol = protocol
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="mxgw-worker-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._pump()
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _pump(self) -> None:
        while (data := self._queue.get()) is not None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:  # the gateway is gone: the reader sees the end of its input
                self._closing = True
                return
            with self._lock:
                self._size -= len(data)
                resume = self._paused and self._size <= self._low
                if resume:
                    self._paused = False
            if resume:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(self._protocol.resume_writing)

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if self._closing or not data:
            return
        with self._lock:
            self._size += len(data)
            pause = not self._paused and self._size > self._high
            if pause:
                self._paused = True
        self._queue.put(bytes(data))
        if pause:
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Write what is queued, then stop (the descriptor is closed by the thread's end)."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)

    def wait_closed(self, timeout: float) -> None:
        """Block until the queued bytes are written (or ``timeout`` seconds)."""
        self._thread.join(timeout)


def start_reader(
    loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.Protocol
) -> threading.Thread:
    """A thread that reads ``fd`` and hands each chunk, then the end, to ``protocol`` on
    the event loop."""

    def run() -> None:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            try:
                if not data:
                    loop.call_soon_threadsafe(protocol.eof_received)
                    return
                loop.call_soon_threadsafe(protocol.data_received, data)
            except RuntimeError:  # the loop closed: the worker is exiting
                return

    thread = threading.Thread(target=run, name="mxgw-worker-reader", daemon=True)
    thread.start()
    return thread
