"""The single STA thread of one MXAccess client: every COM call runs on it, and it pumps.

MXAccess delivers events as COM calls through the window-message queue of the thread that
created ``LMXProxyServer``; without a pump, Register works but no event ever fires and
writes stay pending (domain reference 7.2). So the object is created, called and released
on one thread in a single-threaded apartment, which alternates between the queued calls and
``pump()``, and sleeps in ``wait()`` (woken by a new call or a window message) when idle.
The asyncio side submits work with :meth:`StaThread.submit` and awaits the returned future.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from mxgateway_mxaccess._com import ComPlatform

__all__ = ["StaStoppedError", "StaThread"]

T = TypeVar("T")


class StaStoppedError(RuntimeError):
    """The STA thread has stopped (the runtime was closed); no COM call can run."""


class StaThread:
    """A thread in its own single-threaded apartment running calls and pumping messages."""

    def __init__(
        self,
        platform: ComPlatform,
        *,
        after_step: Callable[[], None],
        name: str = "mxaccess-sta",
        idle_s: float = 0.05,
    ) -> None:
        self._platform = platform
        self._after_step = after_step
        self._idle_s = idle_s
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._lock = threading.Lock()
        self._stopping = False
        self._init: Callable[[], None] = lambda: None
        self._final: Callable[[], None] = lambda: None
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, init: Callable[[], None], final: Callable[[], None]) -> Future[None]:
        """Start the thread; ``init`` runs first on it (create the COM object), ``final``
        last (release it), both inside the apartment."""
        self._init, self._final = init, final
        self._thread.start()
        return self._ready

    def is_current(self) -> bool:
        """True on the STA thread itself."""
        return threading.get_ident() == self._thread.ident

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` to run on the STA thread; its result or exception goes to the future."""
        future: Future[T] = Future()
        with self._lock:
            if self._stopping:
                raise StaStoppedError("the MXAccess runtime is closed")
            self._queue.append((fn, future))
        self._platform.wake()
        return future

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Run what is queued, then ``final``, leave the apartment; True once the thread
        ended within ``timeout_s`` (a COM call that hangs keeps it, and says so)."""
        with self._lock:
            self._stopping = True
        self._platform.wake()
        if self._thread.ident is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run_queued(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                fn, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up before the call started
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            else:
                future.set_result(result)
            self._after_step()

    def _run(self) -> None:
        try:
            self._platform.enter_apartment()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        try:
            try:
                self._init()
            except BaseException as exc:
                self._ready.set_exception(exc)
                return
            self._ready.set_result(None)
            while True:
                self._run_queued()
                self._platform.pump()
                self._after_step()
                with self._lock:
                    if self._stopping and not self._queue:
                        break
                    idle = not self._queue
                if idle:
                    self._platform.wait(self._idle_s)
            try:
                self._final()
            finally:
                self._after_step()
        finally:
            with self._lock:
                self._stopping = True
                left = list(self._queue)
                self._queue.clear()
            for _, future in left:
                if future.set_running_or_notify_cancel():
                    future.set_exception(StaStoppedError("the MXAccess runtime is closed"))
            self._platform.leave_apartment()
