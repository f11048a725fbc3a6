"""The MXAccess runtime seam: one instance per gateway session (upstream: the session's worker).

The gateway's servicers and session manager talk to a session's MXAccess only through
:class:`MxAccessRuntime`. The simulator implements it with
:class:`~mxgateway_sim._simruntime.SimulatedRuntime`; a COM-backed runtime (an x86 worker
process on Windows) can implement the same methods without any change above this line.

Failures are raised as :class:`~mxgateway_sim._domain.MxAccessError` (HRESULT + statuses),
the way the COM interop raises them. Events (OnDataChange, OnWriteComplete, ...) are pushed to
the :data:`EventSink` given to :meth:`MxAccessRuntime.start`, in the order MXAccess raised
them, a list at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from mxgateway_sim._domain import (
    MxRuntimeEvent,
    MxStatus,
    ReadResult,
    ReleaseCounts,
    WorkerInfo,
    WriteRequest,
)

EventSink = Callable[[Sequence[MxRuntimeEvent]], None]
"""Receives a runtime's events in order; called on the event loop, must not block."""


class MxAccessRuntime(Protocol):
    """One MXAccess client (LMXProxyServer) owned by one gateway session."""

    async def start(self, sink: EventSink) -> None:
        """Bring the runtime up; events go to ``sink`` from now on."""
        ...

    async def register(self, client_name: str) -> int:
        """Register(pClientName) -> hLMX."""
        ...

    async def unregister(self, server_handle: int) -> None:
        """Unregister(hLMX); releases the registration's items."""
        ...

    async def add_item(
        self,
        server_handle: int,
        item_definition: str,
        item_context: str = "",
        *,
        buffered: bool = False,
    ) -> int:
        """AddItem / AddItem2 / AddBufferedItem -> hItem."""
        ...

    async def remove_item(self, server_handle: int, item_handle: int) -> None:
        """RemoveItem(hLMX, hItem)."""
        ...

    async def advise(self, server_handle: int, item_handle: int, *, supervisory: bool) -> None:
        """Advise / AdviseSupervisory: the first OnDataChange carries the current value."""
        ...

    async def unadvise(self, server_handle: int, item_handle: int) -> None:
        """UnAdvise(hLMX, hItem)."""
        ...

    async def write(self, server_handle: int, item_handle: int, request: WriteRequest) -> None:
        """Write / Write2 / WriteSecured / WriteSecured2; completion is an OnWriteComplete."""
        ...

    async def authenticate_user(self, server_handle: int, user: str, password: str) -> int:
        """AuthenticateUser -> user id (0 = failure)."""
        ...

    async def archestra_user_to_id(self, server_handle: int, user_guid: str) -> int:
        """ArchestrAUserToId -> user id (0 = unknown)."""
        ...

    async def suspend(self, server_handle: int, item_handle: int) -> MxStatus:
        """Suspend(hLMX, hItem, out status)."""
        ...

    async def activate(self, server_handle: int, item_handle: int) -> MxStatus:
        """Activate(hLMX, hItem, out status)."""
        ...

    async def set_buffered_update_interval(self, server_handle: int, interval_ms: int) -> None:
        """SetBufferedUpdateInterval(hLMX, lUpdateInterval)."""
        ...

    async def read(
        self, server_handle: int, references: Sequence[str], timeout_s: float
    ) -> list[ReadResult]:
        """ReadBulk: cached value when advised in this session, else add/advise/wait/remove."""
        ...

    async def ping(self) -> None:
        """Liveness check of the worker."""
        ...

    def worker_info(self) -> WorkerInfo:
        """Backend name, versions and process id."""
        ...

    async def release_all(self) -> ReleaseCounts:
        """UnAdvise, RemoveItem and Unregister everything still held (teardown order)."""
        ...

    async def close(self) -> None:
        """Stop the runtime; no event is raised afterwards."""
        ...
