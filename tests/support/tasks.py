"""The running tasks of the client library, for tests that nothing of it is left behind."""

from __future__ import annotations

import asyncio

__all__ = ["client_tasks"]


def client_tasks() -> set[asyncio.Task[object]]:
    """Running tasks of the client library (the simulator's own tasks excluded)."""
    out = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "/mxgateway/" in code.co_filename.replace("\\", "/"):
            out.add(task)
    return out
