"""Starting a session's worker process from the gateway, without fork handlers, on any loop.

A gateway is full of gRPC's threads. A child started with ``fork()`` runs every fork
handler registered in the gateway (gRPC's among them) in a copy of that process before it
reaches ``exec``; uvloop starts children that way, and gRPC's handlers aborted some workers
(SIGABRT/SIGSEGV). So on POSIX the gateway starts its workers itself, with
:class:`subprocess.Popen`, which on Linux uses ``vfork()``: the child borrows the parent's
memory until its ``exec`` and no ``pthread_atfork`` or ``os.register_at_fork`` handler runs
(checked on glibc 2.36 / CPython 3.11 with gRPC 1.85, with and without
``GRPC_ENABLE_FORK_SUPPORT``; tests/worker/test_worker_event_loop.py). The child keeps
only its stdin and stdout (the channel) and stderr (``close_fds``: no listening socket, no
other worker's pipe) and gets its own session (a Ctrl-C at the gateway's terminal is not
its). The gateway reads the worker's stdout into one reused buffer (the event loop's pipe
transports read into a new 256 KiB object each time), writes its stdin through a write
pipe transport, and watches its exit through a pidfd (Linux; elsewhere a thread waits for
it): the same code on asyncio and uvloop.

On Windows the event loop's own ``subprocess_exec`` starts it (the proactor's overlapped
pipes; there is no fork there).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import cast

__all__ = ["READ_BYTES", "WorkerProcess", "start_worker_process"]

READ_BYTES = 256 * 1024
"""Most bytes read from a worker's stdout at once (as much as asyncio's pipe transports)."""


class WorkerProcess(abc.ABC):
    """A started worker process: the gateway's ends of its stdin and stdout, and its exit.

    What the worker writes goes to ``on_data`` as it arrives; ``on_exit`` is called once,
    after the process ended and what it wrote before was delivered.
    """

    pid: int

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None:
        """The exit status once the process was reaped (negative: killed by that signal)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the worker's stdin (dropped once it is closed)."""

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """End the worker's input once what is queued is written (its end of file)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the process now, unless it has ended (SIGKILL; TerminateProcess)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the pipes; a process still running is killed (and reaped when it ends)."""


async def start_worker_process(
    args: Sequence[str],
    env: dict[str, str],
    on_data: Callable[[bytes], None],
    on_exit: Callable[[], None],
) -> WorkerProcess:
    """Start ``args`` with ``env`` and its stdin and stdout as the channel (stderr is the
    gateway's).

    Raises:
        OSError: the process could not be started.
    """
    if os.name == "posix":
        return await _PipeProcess.start(args, env, on_data, on_exit)
    transport, _ = await asyncio.get_running_loop().subprocess_exec(  # pragma: no cover
        lambda: _Channel(on_data, on_exit),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        env=env,
    )
    return _LoopProcess(transport)  # pragma: no cover - Windows


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _PipeProcess(WorkerProcess):
    """POSIX: a ``vfork()``-started child, its pipes watched by the event loop itself."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        stdout_fd: int,
        on_data: Callable[[bytes], None],
        on_exit: Callable[[], None],
    ) -> None:
        self.pid = popen.pid
        self._loop = loop
        self._popen = popen
        self._fd = stdout_fd
        self._on_data = on_data
        self._on_exit = on_exit
        self._buffer = bytearray(READ_BYTES)
        self._view = memoryview(self._buffer)
        self._stdin: asyncio.WriteTransport | None = None
        self._reading = False
        self._pidfd = -1
        self._ended = False

    @classmethod
    async def start(
        cls,
        args: Sequence[str],
        env: dict[str, str],
        on_data: Callable[[bytes], None],
        on_exit: Callable[[], None],
    ) -> _PipeProcess:
        loop = asyncio.get_running_loop()
        in_read, in_write = os.pipe()  # not inheritable: the child gets them as 0 and 1 only
        out_read, out_write = os.pipe()
        try:
            # Returns once the child has exec'd (vfork), as the loop's subprocess_exec does.
            popen = subprocess.Popen(  # noqa: ASYNC220
                list(args),
                stdin=in_read,
                stdout=out_write,
                stderr=None,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except BaseException:
            _close_fds(in_read, in_write, out_read, out_write)
            raise
        _close_fds(in_read, out_write)
        stdin = os.fdopen(in_write, "wb", buffering=0)
        self = cls(loop, popen, out_read, on_data, on_exit)
        self._watch_exit()  # from here on the child is reaped whatever happens
        os.set_blocking(out_read, False)
        self._reading = True
        loop.add_reader(out_read, self._readable)
        try:
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, stdin)
        except BaseException:
            stdin.close()
            self.close()
            raise
        self._stdin = transport  # (uvloop's is its own class, not a WriteTransport subclass)
        return self

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux 5.3+: a thread waits for the exit
            threading.Thread(target=self._wait, name="mxgw-worker-wait", daemon=True).start()
            return
        self._loop.add_reader(self._pidfd, self._exited)

    def _wait(self) -> None:
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._exited)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _readable(self) -> None:
        if not self._read():
            self._stop_reading()

    def _read(self) -> int:
        """Read what the worker wrote and hand it on: the bytes read, 0 at the end of the
        pipe (or an error), -1 when nothing is waiting."""
        try:
            n = os.readv(self._fd, (self._buffer,))
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError:
            return 0
        if n:
            self._on_data(self._view[:n].tobytes())
        return n

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if self._fd >= 0:
            _close_fds(self._fd)
            self._fd = -1

    def _exited(self) -> None:
        """The process ended: reap it, deliver what it wrote before, then say so."""
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            _close_fds(self._pidfd)
            self._pidfd = -1
        self._popen.poll()
        if self._ended:
            return
        self._ended = True
        while self._reading and self._read() > 0:  # its last replies and events
            pass  # (a callback may close the pipe: the loop ends)
        self._stop_reading()
        self._on_exit()

    def write(self, data: bytes) -> None:
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    def close_stdin(self) -> None:
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def kill(self) -> None:
        # Only this object reaps the child, so until it has, the pid is still this process
        # (a zombie at worst), never a reused one.
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        self.close_stdin()
        self._stop_reading()
        if self._popen.poll() is None:
            self.kill()  # the exit watcher reaps it


class _LoopProcess(WorkerProcess):  # pragma: no cover - Windows
    """Windows: the event loop's ``subprocess_exec`` (the proactor's pipes)."""

    def __init__(self, transport: asyncio.SubprocessTransport) -> None:
        self._transport = transport
        self.pid = transport.get_pid()
        self._stdin = cast("asyncio.WriteTransport", transport.get_pipe_transport(0))

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode()

    def write(self, data: bytes) -> None:
        if not self._stdin.is_closing():
            self._stdin.write(data)

    def close_stdin(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()

    def kill(self) -> None:
        if self._transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self._transport.kill()

    def close(self) -> None:
        self._transport.close()


class _Channel(asyncio.SubprocessProtocol):  # pragma: no cover - Windows
    """Routes a loop-started worker's stdout and exit to the callbacks."""

    def __init__(self, on_data: Callable[[bytes], None], on_exit: Callable[[], None]) -> None:
        self._on_data = on_data
        self._on_exit = on_exit

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._on_data(data)

    def process_exited(self) -> None:
        self._on_exit()
