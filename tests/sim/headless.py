"""A real headless Chromium driven over the DevTools protocol on a pipe (no extra package).

Chromium's ``--remote-debugging-pipe`` reads NUL-terminated JSON commands from fd 3 and
writes answers and events to fd 4. A tiny launcher process puts the pipe ends on those
numbers and execs the browser (no ``preexec_fn`` in a process with gRPC threads).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_LAUNCH = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
r2, w2 = os.dup(r), os.dup(w)
os.dup2(r2, 3); os.dup2(w2, 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)  # dup2(3, 3) keeps CLOEXEC
os.execv(sys.argv[3], sys.argv[3:])
"""


def find_browser() -> str | None:
    """The Chromium to use: ``$MXGW_CHROMIUM``, else the first of :data:`BROWSER_NAMES`."""
    explicit = os.environ.get("MXGW_CHROMIUM")
    if explicit:
        return explicit
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    """What the browser saw on one page."""

    text: str
    title: str
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and failed loads (Log.entryAdded errors)."""
    scroll_width: int = 0
    viewport_width: int = 0
    inner_overflow: int = 0
    """Widest sideways overflow of an element with its own scroll bar (``.scroll``), px."""
    png: bytes = b""


class Browser:
    """One headless Chromium process; use as a context manager."""

    def __init__(self, executable: str, timeout: float = 90.0) -> None:
        self._timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="mxgw-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            executable,
            "--headless=new",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self._profile}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with it
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(to_browser_r), str(from_browser_w), *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("MXGW_BROWSER_LOG") else subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._ids = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser (politely, then by force) and remove its profile."""
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):  # already going away
                self.call("Browser.close", timeout=5)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol ------------------------------------------------------------------------

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the browser did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise EOFError("the browser closed its DevTools pipe")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one command and wait for its result (events on the way are kept)."""
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self._timeout)
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._ids:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            self.events.append(answer)

    def wait_event(self, method: str, session: str, since: int = 0) -> dict[str, Any]:
        """The first ``method`` event of ``session`` after index ``since`` of :attr:`events`."""
        deadline = time.monotonic() + self._timeout
        index = since
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            self.events.append(self._message(deadline))

    # -- what the tests use --------------------------------------------------------------

    def visit_once(self, url: str) -> PageVisit:
        """:meth:`visit`, then close this browser."""
        try:
            return self.visit(url)
        finally:
            self.close()

    def visit(
        self, url: str, *, width: int = 390, height: int = 844, scale: float = 2
    ) -> PageVisit:
        """Load ``url`` in a phone-sized viewport; return its text, errors and a screenshot
        of the whole page."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        metrics = {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": True}
        self.call("Emulation.setDeviceMetricsOverride", metrics, session=session)
        since = len(self.events)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired", session, since)

        def evaluate(expression: str) -> Any:
            answer = self.call(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
            )
            return answer["result"].get("value")

        visit = PageVisit(
            text=str(evaluate("document.body.innerText")),
            title=str(evaluate("document.title")),
            scroll_width=int(evaluate("document.documentElement.scrollWidth")),
            viewport_width=int(evaluate("window.innerWidth")),
            inner_overflow=int(
                evaluate(
                    "Math.max(0, ...[...document.querySelectorAll('.scroll')]"
                    ".map(e => e.scrollWidth - e.clientWidth))"
                )
            ),
        )
        full_height = int(evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {**metrics, "height": max(height, full_height)},
            session=session,
        )
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=session)
        visit.png = base64.b64decode(shot["data"])
        for event in self.events[since:]:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                visit.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "assert",
            ):
                visit.errors.append(json.dumps(params.get("args", []))[:500])
            elif event.get("method") == "Log.entryAdded":
                entry = params.get("entry", {})
                if entry.get("level") == "error":
                    visit.errors.append(f"{entry.get('source')}: {entry.get('text')}")
        # The target stays open: closing a headless browser's last page ends the browser.
        return visit
