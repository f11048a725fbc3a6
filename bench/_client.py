"""The one place the benchmarks touch the client library and the simulator's API.

Everything here adapts to what has landed: when ``mxgateway.GatewayClient`` (or a method)
is missing, the adapters say so and the benchmark reports the figure as skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import mxgateway


def client_class() -> Any:
    """``mxgateway.GatewayClient`` or None."""
    return getattr(mxgateway, "GatewayClient", None)


def event_modes() -> tuple[dict[str, Callable[[Any, int], Awaitable[int]]], str]:
    """The library's event modes, or ({}, why-not)."""
    if client_class() is None:
        return {}, "mxgateway.GatewayClient has not landed yet"
    return {}, "library event modes not wired yet"


@contextlib.asynccontextmanager
async def library_session(address: str) -> AsyncIterator[Any]:
    """A library ``Session`` on ``address``, or None when the library is not there."""
    yield None


async def sim_event_source_available() -> tuple[bool, str]:
    """Whether the simulator can be driven to produce events as fast as it can."""
    return False, "mxgateway_sim has not landed yet"


async def run_against_sim(body: Callable[[Any], Awaitable[Any]], ctx_factory: Any) -> Any:
    """Run ``body`` against a simulator producing events (not available yet)."""
    raise NotImplementedError


async def bulk_ops(address: str, tags: list[str]) -> tuple[Any, str]:
    """An async context manager yielding (BulkOps, handles) for the library, or (None, why)."""
    if client_class() is None:
        return None, "mxgateway.GatewayClient has not landed yet"
    return None, "library bulk not wired yet"


def sim_bulk_args(n: int) -> list[str]:
    """Extra ``mxgw-sim serve`` arguments giving a namespace of at least ``n`` tags."""
    return []


async def sim_tags(sim: Any, n: int) -> list[str]:
    """``n`` tag references the simulator knows (writeable doubles preferred)."""
    raise NotImplementedError("simulator tag listing not wired yet")


async def capacity_ladder(quick: bool) -> dict[str, Any]:
    """The capacity ladder against the simulator (not available yet)."""
    raise NotImplementedError
