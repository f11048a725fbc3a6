"""MxAccessComRuntime: the gateway's MXAccess runtime over AVEVA's ``LMXProxyServer``.

Each runtime owns one COM object on one STA thread (:mod:`mxgateway_mxaccess._sta`). Every
method of :class:`~mxgateway_sim._runtime.MxAccessRuntime` is one COM call (or, for
ReadBulk, the sequence upstream describes) run on that thread; a COM failure becomes an
:class:`~mxgateway_sim._domain.MxAccessError` with the HRESULT MXAccess returned. Events
arrive on the STA thread while it pumps, are converted there (VARIANTs, ``MXSTATUS_PROXY``
records) and handed to the event loop a batch at a time, in the order MXAccess raised them.

Bookkeeping of items (their reference, advise state and last value) lives on the STA thread
only, so the event handlers and the calls never race.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from mxgateway._logsafe import get_logger
from mxgateway._version import __version__
from mxgateway_mxaccess._com import ComPlatform, LmxProxyServer, StatusRecord, Win32Platform
from mxgateway_mxaccess._sta import StaThread
from mxgateway_mxaccess._startup import ComStartError, start_problem
from mxgateway_mxaccess._status import (
    com_error_to_mx,
    hresult_of,
    is_com_error,
    status_from_record,
    statuses_from_records,
)
from mxgateway_mxaccess._variant import (
    DateZone,
    from_variant,
    time_from_variant,
    time_to_variant,
    to_variant,
)
from mxgateway_sim._domain import (
    E_FAIL,
    BufferedDataChange,
    DataChange,
    MxAccessError,
    MxRuntimeEvent,
    MxStatus,
    OperationComplete,
    ReadResult,
    ReleaseCounts,
    TagSample,
    WorkerInfo,
    WriteComplete,
    WriteRequest,
    status_and_records,
)
from mxgateway_sim._plant import Plant
from mxgateway_sim._runtime import EventSink, MxAccessRuntime
from mxgateway_sim._simruntime import _read_row

__all__ = [
    "BACKEND_NAME",
    "DEFAULT_READ_TIMEOUT_S",
    "MxAccessComRuntime",
    "mxaccess_runtime_factory",
]

log = get_logger("mxgateway_mxaccess")

BACKEND_NAME: Final = "mxaccess-com"
DEFAULT_READ_TIMEOUT_S: Final = 30.0
"""ReadBulk's wait for a first OnDataChange when the request gives none (upstream's worker
default is not public; the first value takes 3-8 s on a fresh client)."""

T = TypeVar("T")
TypeHint = Callable[[str], "int | None"]
"""Reference -> the attribute's COM ``mx_data_type`` (for example from the Galaxy), or None."""


@dataclass(slots=True)
class _Item:
    """One added item, as the STA thread knows it."""

    server_handle: int
    item_handle: int
    reference: str
    hint: int | None
    advised: bool = False
    last: TagSample | None = None
    waiter: Future[TagSample] | None = field(default=None)
    """Set for ReadBulk's own items: the first OnDataChange goes here, not to the sink."""


class _Events:
    """The event sink (runs on the STA thread): COM arguments -> gateway events."""

    def __init__(self, runtime: MxAccessComRuntime) -> None:
        self._rt = runtime

    def OnDataChange(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pvItemValue: object,
        pwItemQuality: int,
        pftItemTimeStamp: object,
        pVars: Sequence[StatusRecord],
    ) -> None:
        rt = self._rt
        item = rt._items.get((hLMXServerHandle, phItemHandle))
        if item is None:
            rt._dropped += 1  # raised during teardown for an item already removed
            return
        value, data_type = from_variant(pvItemValue, item.hint, zone=rt._date_zone)
        sample = TagSample(
            value,
            data_type,
            int(pwItemQuality),
            time_from_variant(pftItemTimeStamp, rt._date_zone),
            *status_and_records(statuses_from_records(pVars)),
        )
        item.last = sample
        if item.waiter is not None:
            if not item.waiter.done():
                item.waiter.set_result(sample)
            return
        rt._pending.append(DataChange(hLMXServerHandle, phItemHandle, sample))

    def OnWriteComplete(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pVars: Sequence[StatusRecord],
    ) -> None:
        status, records = status_and_records(statuses_from_records(pVars))
        self._rt._pending.append(WriteComplete(hLMXServerHandle, phItemHandle, status, records))

    def OperationComplete(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pVars: Sequence[StatusRecord],
    ) -> None:
        status, records = status_and_records(statuses_from_records(pVars))
        self._rt._pending.append(OperationComplete(hLMXServerHandle, phItemHandle, status, records))

    def OnBufferedDataChange(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        dtDataType: int,
        pvItemValue: object,
        pwItemQuality: object,
        pftItemTimeStamp: object,
        pVars: Sequence[StatusRecord],
    ) -> None:
        rt = self._rt
        if (hLMXServerHandle, phItemHandle) not in rt._items:
            rt._dropped += 1
            return
        status, records = status_and_records(statuses_from_records(pVars))
        # Buffered events carry arrays of values, qualities and timestamps (one per sample);
        # a single sample may come as scalars.
        values = pvItemValue if isinstance(pvItemValue, (tuple, list)) else (pvItemValue,)
        qualities: Sequence[Any] | None = (
            pwItemQuality if isinstance(pwItemQuality, (tuple, list)) else None
        )
        times: Sequence[Any] | None = (
            pftItemTimeStamp if isinstance(pftItemTimeStamp, (tuple, list)) else None
        )
        samples: list[TagSample] = []
        for i, raw in enumerate(values):
            value, data_type = from_variant(raw, int(dtDataType), zone=rt._date_zone)
            quality: Any = (
                qualities[i] if qualities is not None and i < len(qualities) else pwItemQuality
            )
            stamp = times[i] if times is not None and i < len(times) else pftItemTimeStamp
            samples.append(
                TagSample(
                    value,
                    data_type,
                    int(quality),
                    time_from_variant(stamp, rt._date_zone),
                    status,
                    records,
                )
            )
        rt._pending.append(
            BufferedDataChange(
                hLMXServerHandle, phItemHandle, int(dtDataType), tuple(samples), status, records
            )
        )


class MxAccessComRuntime:
    """:class:`~mxgateway_sim._runtime.MxAccessRuntime` over ``LMXProxy.LMXProxyServer``.

    Args:
        platform: The COM platform; None means Windows through pywin32, after
            :func:`~mxgateway_mxaccess._startup.start_problem` found nothing in the way.
        type_hint: The expected MX data type of a reference (Float vs Double, FILETIME Time).
        date_zone: The zone of VT_DATE wall clocks (timestamps, Time values, Write2 times):
            None, the default, is this host's local zone (MXAccess runs on it);
            ``timezone.utc`` for a node whose MXAccess reports UTC
            (:mod:`mxgateway_mxaccess._variant` has the rule and its sources).
        idle_s: How long the STA thread sleeps between pumps when nothing happens.
        close_timeout_s: How long :meth:`close` waits for the teardown calls, and then for
            the thread, before giving up on a COM call that never returns.
    """

    def __init__(
        self,
        platform: ComPlatform | None = None,
        *,
        type_hint: TypeHint | None = None,
        date_zone: DateZone = None,
        idle_s: float = 0.05,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._platform = platform
        self._type_hint = type_hint
        self._date_zone = date_zone
        self._idle_s = idle_s
        self._close_timeout_s = close_timeout_s
        self._sta: StaThread | None = None
        self._server: LmxProxyServer | None = None
        self._sink: EventSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # STA-thread state:
        self._items: dict[tuple[int, int], _Item] = {}
        self._registrations: set[int] = set()
        self._pending: list[MxRuntimeEvent] = []
        self._dropped = 0
        self._events = _Events(self)

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        """Start the STA thread and create ``LMXProxyServer`` on it.

        Raises:
            ComStartError: Not Windows, no pywin32, MXAccess not installed, a 64-bit
                interpreter for a 32-bit COM server, or the COM object cannot be created.
        """
        platform = self._platform
        if platform is None:
            problem = start_problem()
            if problem is not None:
                raise ComStartError(problem)
            platform = self._platform = Win32Platform()
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        sta = self._sta = StaThread(platform, after_step=self._flush, idle_s=self._idle_s)

        def init() -> None:
            self._server = platform.create_server(self._events)

        def final() -> None:
            server, self._server = self._server, None
            if server is not None:
                platform.release_server(server)

        try:
            await asyncio.wrap_future(sta.start(init, final))
        except Exception as exc:
            await asyncio.to_thread(sta.stop)
            if is_com_error(exc):
                hresult, message = hresult_of(exc)
                raise ComStartError(
                    f"cannot create LMXProxy.LMXProxyServer "
                    f"(HRESULT 0x{hresult & 0xFFFFFFFF:08X}): {message}"
                ) from None
            raise

    async def close(self) -> None:
        """Release everything still held, then stop the STA thread (no event afterwards)."""
        sta = self._sta
        if sta is None:
            return
        try:
            await asyncio.wait_for(self.release_all(), self._close_timeout_s)
        except asyncio.TimeoutError:  # wait_for's: not the built-in TimeoutError on 3.10
            log.warning("MXAccess teardown did not finish: a COM call is still running")
        except Exception:  # the thread may already be gone; stopping is what matters
            log.debug("release before close failed", exc_info=True)
        self._sink = None
        self._sta = None
        if not await asyncio.to_thread(sta.stop, self._close_timeout_s):
            log.warning("the MXAccess STA thread did not stop: a COM call is still running")

    def _flush(self) -> None:
        """(STA thread) hand the events collected so far to the event loop."""
        if not self._pending or self._loop is None:
            return
        batch, self._pending = self._pending, []
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[MxRuntimeEvent]) -> None:
        sink = self._sink
        if sink is not None:
            sink(batch)

    async def _call(self, call: str, fn: Callable[[LmxProxyServer], T]) -> T:
        """Run ``fn(server)`` on the STA thread; COM errors become MxAccessError."""
        sta = self._sta
        if sta is None:
            raise MxAccessError(E_FAIL, f"{call}: the MXAccess runtime is not running")

        def run() -> T:
            server = self._server
            if server is None:
                raise MxAccessError(E_FAIL, f"{call}: the MXAccess COM object is gone")
            try:
                return fn(server)
            except Exception as exc:
                if is_com_error(exc):
                    raise com_error_to_mx(exc, call) from None
                raise

        return await asyncio.wrap_future(sta.submit(run))

    # -- registrations and items ---------------------------------------------------------

    async def register(self, client_name: str) -> int:
        """Register(pClientName) -> hLMX (a handle <= 0 is a failure, as LmxOpcUa treats it)."""

        def run(s: LmxProxyServer) -> int:
            handle = int(s.Register(client_name))
            if handle <= 0:
                raise MxAccessError(E_FAIL, f"Register returned server handle {handle}")
            self._registrations.add(handle)
            return handle

        return await self._call("Register", run)

    async def unregister(self, server_handle: int) -> None:
        """Unregister(hLMX); MXAccess drops the registration's items with it."""

        def run(s: LmxProxyServer) -> None:
            s.Unregister(server_handle)
            self._registrations.discard(server_handle)
            for key in [k for k in self._items if k[0] == server_handle]:
                del self._items[key]

        await self._call("Unregister", run)

    def _hint(self, reference: str) -> int | None:
        return self._type_hint(reference) if self._type_hint is not None else None

    async def add_item(
        self,
        server_handle: int,
        item_definition: str,
        item_context: str = "",
        *,
        buffered: bool = False,
    ) -> int:
        """AddBufferedItem when buffered, AddItem2 with a context, else AddItem."""
        hint = self._hint(item_definition)

        def run(s: LmxProxyServer) -> int:
            if buffered:
                handle = s.AddBufferedItem(server_handle, item_definition, item_context)
            elif item_context:
                handle = s.AddItem2(server_handle, item_definition, item_context)
            else:
                handle = s.AddItem(server_handle, item_definition)
            handle = int(handle)
            self._items[(server_handle, handle)] = _Item(
                server_handle, handle, item_definition, hint
            )
            return handle

        call = "AddBufferedItem" if buffered else "AddItem2" if item_context else "AddItem"
        return await self._call(call, run)

    async def remove_item(self, server_handle: int, item_handle: int) -> None:
        """RemoveItem(hLMX, hItem)."""

        def run(s: LmxProxyServer) -> None:
            s.RemoveItem(server_handle, item_handle)
            self._items.pop((server_handle, item_handle), None)

        await self._call("RemoveItem", run)

    async def advise(self, server_handle: int, item_handle: int, *, supervisory: bool) -> None:
        """Advise or AdviseSupervisory; the first OnDataChange follows (seconds later)."""

        def run(s: LmxProxyServer) -> None:
            if supervisory:
                s.AdviseSupervisory(server_handle, item_handle)
            else:
                s.Advise(server_handle, item_handle)
            item = self._items.get((server_handle, item_handle))
            if item is not None:
                item.advised = True

        await self._call("AdviseSupervisory" if supervisory else "Advise", run)

    async def unadvise(self, server_handle: int, item_handle: int) -> None:
        """UnAdvise(hLMX, hItem)."""

        def run(s: LmxProxyServer) -> None:
            s.UnAdvise(server_handle, item_handle)
            item = self._items.get((server_handle, item_handle))
            if item is not None:
                item.advised = False
                item.last = None

        await self._call("UnAdvise", run)

    async def suspend(self, server_handle: int, item_handle: int) -> MxStatus:
        """Suspend(hLMX, hItem, out MxStatus)."""
        return await self._call(
            "Suspend", lambda s: status_from_record(s.Suspend(server_handle, item_handle))
        )

    async def activate(self, server_handle: int, item_handle: int) -> MxStatus:
        """Activate(hLMX, hItem, out MxStatus)."""
        return await self._call(
            "Activate", lambda s: status_from_record(s.Activate(server_handle, item_handle))
        )

    async def set_buffered_update_interval(self, server_handle: int, interval_ms: int) -> None:
        """SetBufferedUpdateInterval(hLMX, lUpdateInterval)."""
        await self._call(
            "SetBufferedUpdateInterval",
            lambda s: s.SetBufferedUpdateInterval(server_handle, interval_ms),
        )

    # -- writes and security -------------------------------------------------------------

    async def write(self, server_handle: int, item_handle: int, request: WriteRequest) -> None:
        """Write, Write2, WriteSecured or WriteSecured2 (by the request's timestamp and
        security); the reply is OK once MXAccess took it, the outcome is an OnWriteComplete.

        Note the COM argument orders: ``Write*`` put ``UserID`` last, ``WriteSecured*`` put
        both user ids before the value.
        """
        platform = self._platform
        assert platform is not None
        zone = self._date_zone

        def run(s: LmxProxyServer) -> None:
            value = to_variant(request.value, platform.make_variant, zone=zone)
            stamp = (
                time_to_variant(request.timestamp, platform.make_variant, zone=zone)
                if request.timestamp is not None
                else None
            )
            if request.secured:
                current, verifier = request.user_id, request.verifier_user_id
                if stamp is None:
                    s.WriteSecured(server_handle, item_handle, current, verifier, value)
                else:
                    s.WriteSecured2(server_handle, item_handle, current, verifier, value, stamp)
            elif stamp is None:
                s.Write(server_handle, item_handle, value, request.user_id)
            else:
                s.Write2(server_handle, item_handle, value, stamp, request.user_id)

        call = ("WriteSecured" if request.secured else "Write") + (
            "2" if request.timestamp is not None else ""
        )
        await self._call(call, run)

    async def authenticate_user(self, server_handle: int, user: str, password: str) -> int:
        """AuthenticateUser -> user id (0 = failure; any credentials pass on a Free-Access
        galaxy)."""
        return await self._call(
            "AuthenticateUser", lambda s: int(s.AuthenticateUser(server_handle, user, password))
        )

    async def archestra_user_to_id(self, server_handle: int, user_guid: str) -> int:
        """ArchestrAUserToId -> user id."""
        return await self._call(
            "ArchestrAUserToId", lambda s: int(s.ArchestrAUserToId(server_handle, user_guid))
        )

    # -- reads ---------------------------------------------------------------------------

    async def read(
        self, server_handle: int, references: Sequence[str], timeout_s: float
    ) -> list[ReadResult]:
        """ReadBulk as upstream: a reference already added and advised in this session
        answers from its last OnDataChange (``was_cached``); any other is read one at a
        time with AddItem -> Advise -> wait for the first OnDataChange (up to ``timeout_s``)
        -> UnAdvise -> RemoveItem. Rows never raise; a failure is the row's error."""
        timeout = timeout_s if timeout_s > 0 else DEFAULT_READ_TIMEOUT_S
        rows: list[ReadResult] = []
        for reference in references:
            try:
                rows.append(await self._read_one(server_handle, reference, timeout))
            except MxAccessError as exc:
                rows.append(ReadResult(reference, None, False, exc.message))
        return rows

    def _cached(self, reference: str) -> TagSample | None:
        """(STA thread) the last value of ``reference`` if an item of this session (any
        registration) advises it."""
        key = reference.casefold()
        for item in self._items.values():
            if (
                item.advised
                and item.waiter is None
                and item.last is not None
                and item.reference.casefold() == key
            ):
                return item.last
        return None

    async def _read_one(self, server_handle: int, reference: str, timeout: float) -> ReadResult:
        cached = await self._call("ReadBulk", lambda s: self._cached(reference))
        if cached is not None:
            return _read_row(reference, cached, cached=True)
        waiter: Future[TagSample] = Future()
        hint = self._hint(reference)

        def add(s: LmxProxyServer) -> int:
            handle = int(s.AddItem(server_handle, reference))
            self._items[(server_handle, handle)] = _Item(
                server_handle, handle, reference, hint, advised=True, waiter=waiter
            )
            s.Advise(server_handle, handle)
            return handle

        handle = await self._call("AddItem", add)
        try:
            try:
                sample = await asyncio.wait_for(asyncio.wrap_future(waiter), timeout)
            except asyncio.TimeoutError:
                return ReadResult(
                    reference, None, False, f"no OnDataChange within {timeout:g} s of Advise"
                )
            return _read_row(reference, sample, cached=False)
        finally:

            def remove(s: LmxProxyServer) -> None:
                self._items.pop((server_handle, handle), None)
                s.UnAdvise(server_handle, handle)
                s.RemoveItem(server_handle, handle)

            await self._call("RemoveItem", remove)

    # -- control -------------------------------------------------------------------------

    async def ping(self) -> None:
        """A no-op on the STA thread: it answers only while the thread runs and pumps."""
        await self._call("ping", lambda s: None)

    def worker_info(self) -> WorkerInfo:
        """This process, the COM backend."""
        return WorkerInfo(
            BACKEND_NAME,
            1,
            os.getpid(),
            f"mxgateway {__version__} over LMXProxy.LMXProxyServer (pywin32)",
        )

    async def release_all(self) -> ReleaseCounts:
        """UnAdvise all, RemoveItem all, Unregister all (the documented teardown order);
        a call that fails is logged and the teardown goes on."""

        def run(s: LmxProxyServer) -> ReleaseCounts:
            advises = items = registrations = 0
            held = list(self._items.values())
            for item in held:
                if item.advised and _quietly(
                    "UnAdvise", s.UnAdvise, item.server_handle, item.item_handle
                ):
                    advises += 1
            for item in held:
                if _quietly("RemoveItem", s.RemoveItem, item.server_handle, item.item_handle):
                    items += 1
            for handle in sorted(self._registrations):
                if _quietly("Unregister", s.Unregister, handle):
                    registrations += 1
            self._items.clear()
            self._registrations.clear()
            return ReleaseCounts(advises, items, registrations)

        return await self._call("release", run)


def _quietly(call: str, fn: Callable[..., Any], *args: int) -> bool:
    try:
        fn(*args)
    except Exception as exc:
        if not is_com_error(exc):
            raise
        log.info("%s during teardown failed: %s", call, com_error_to_mx(exc, call).message)
        return False
    return True


def mxaccess_runtime_factory(
    platform_factory: Callable[[], ComPlatform] | None = None,
    *,
    date_zone: DateZone = None,
) -> Callable[[Plant], MxAccessRuntime]:
    """A ``runtime_factory`` for the gateway server: one COM runtime per session (the
    simulated plant is not used). Fails fast when the runtime cannot start here.

    Raises:
        ComStartError: When ``platform_factory`` is None and this machine cannot run it.
    """
    if platform_factory is None:
        problem = start_problem()
        if problem is not None:
            raise ComStartError(problem)

    def make(_plant: Plant) -> MxAccessRuntime:
        platform = platform_factory() if platform_factory is not None else None
        return MxAccessComRuntime(platform, date_zone=date_zone)

    return make


def _conforms(runtime: MxAccessComRuntime) -> MxAccessRuntime:
    """Static check (mypy): the COM runtime implements the MxAccessRuntime protocol."""
    return runtime
