"""A fake ``LMXProxyServer`` that follows the documented COM interface, for Linux tests.

What it reproduces (domain reference 1-2, upstream facts):

* the ``ILMXProxyServer5`` method names, parameter names and order (``Write*`` put ``UserID``
  last, ``WriteSecured*`` put both user ids before the value), ``Suspend``/``Activate``
  returning their ``MxStatus`` out parameter as pywin32's makepy wrappers do;
* apartment rules: every call must come from the thread that created the object (else
  ``RPC_E_WRONG_THREAD``), and events are raised only while that thread pumps;
* the four events with their COM signatures, ``pVars`` as a tuple of ``MXSTATUS_PROXY``
  records; the first ``OnDataChange`` only ``first_value_delay_s`` after Advise (3-8 s on a
  real node), later ones on change;
* errors as pywin32 raises them: ``com_error`` with ``DISP_E_EXCEPTION`` and the server's
  HRESULT and message in ``excepinfo`` (``E_INVALIDARG`` for bad handles and malformed
  references, as a plain E_INVALIDARG for a write before the type resolved, which .NET
  shows as "Value does not fall within the expected range"); an unknown reference gets a
  handle and fails in its OnDataChange (4/12).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any

DISP_E_EXCEPTION = -2147352567
E_INVALIDARG = -2147024809
RPC_E_WRONG_THREAD = -2147417842
REGDB_E_CLASSNOTREG = -2147221164
NOT_IN_RANGE = "Value does not fall within the expected range."


class FakeComError(Exception):
    """Shaped like ``pywintypes.com_error``: (hresult, strerror, excepinfo, argerror)."""

    def __init__(
        self, hresult: int, strerror: str, excepinfo: tuple[Any, ...] | None = None
    ) -> None:
        super().__init__(hresult, strerror, excepinfo, None)
        self.hresult = hresult
        self.strerror = strerror
        self.excepinfo = excepinfo
        self.argerror = None


def server_error(scode: int, description: str) -> FakeComError:
    """A server-side failure as it comes through IDispatch."""
    return FakeComError(
        DISP_E_EXCEPTION,
        "Exception occurred.",
        (0, "ArchestrA.MxAccess", description, None, 0, scode),
    )


@dataclass
class Record:
    """One MXSTATUS_PROXY record (``success`` non-zero on success)."""

    success: int
    category: int
    detectedBy: int
    detail: int


OK = Record(1, 0, 1, 0)


class PyWinDateTime(datetime):
    """What pywin32 hands over for a VT_DATE: a ``pywintypes.datetime`` labelled UTC whose
    fields are the DATE's wall clock, unconverted (pywin32's PyTime.cpp)."""


PyWinDateTime.__module__ = "pywintypes"


def vt_date(instant: datetime, node_zone: tzinfo) -> PyWinDateTime:
    """``instant`` as a node in ``node_zone`` reports it through pywin32: its wall clock
    there, labelled UTC."""
    wall = instant.astimezone(node_zone)
    return PyWinDateTime(*wall.timetuple()[:6], wall.microsecond, tzinfo=timezone.utc)


@dataclass
class Variant:
    """What ``make_variant`` builds: the VARTYPE and the value."""

    vt: int
    value: object


@dataclass
class Tag:
    value: object
    quality: int = 192
    security: int = 1  # MxSecurityClassification: 1 Operate, 2 SecuredWrite, 6 ViewOnly


def default_tags() -> dict[str, Tag]:
    return {
        "tank01.level": Tag(42.5),
        "tank01.setpoint": Tag(10),
        "tank01.name": Tag("North tank"),
        "pump01.running": Tag(True),
        "tank01.temps[]": Tag((20.5, 21.0, 21.5)),
        "tank01.lastmaint": Tag(datetime(2026, 1, 5, 6, 0, tzinfo=timezone.utc)),
        "tank01.securesp": Tag(5, security=2),
        "tank01.readonly": Tag(1, security=6),
        "tank01.failedsensor": Tag(float("nan"), quality=0),
    }


USERS = {"operator": ("operator", 101), "verifier": ("verifier", 102)}
GUIDS = {"{6f0b3b1e-0000-4000-8000-000000000101}": 101}


@dataclass
class _Item:
    ref: str
    buffered: bool = False
    advised: bool = False
    supervisory: bool = False
    resolved: bool = False
    suspended: bool = False
    buffer: list[tuple[object, int, datetime]] = field(default_factory=list)


class FakeLmxProxyServer:
    """``LMXProxy.LMXProxyServer`` with its event sink connected."""

    def __init__(self, platform: FakePlatform, events: Any) -> None:
        self._platform = platform
        self._events = events
        self._owner = threading.get_ident()
        self.tags = default_tags()
        self.records: dict[str, tuple[Record, ...]] = {}
        self.stamps: list[datetime] = []
        """The instants of the VT_DATE timestamps raised (with a node zone)."""
        """Reference (lower case) -> the ``pVars`` its events carry instead of the one record
        the fake would compute (MXAccess hands an array; real code must keep all of it)."""
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.call_threads: set[int] = set()
        self.event_threads: set[int] = set()
        self._next_server = 1
        self._servers: dict[int, dict[int, _Item]] = {}
        self._next_item: dict[int, int] = {}
        self._intervals: dict[int, int] = {}
        self._queue: list[tuple[float, Callable[[], None]]] = []
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------

    def _enter(self, name: str, *args: Any) -> None:
        me = threading.get_ident()
        self.call_threads.add(me)
        if me != self._owner:
            raise FakeComError(
                RPC_E_WRONG_THREAD,
                "The application called an interface that was marshalled for a different thread.",
            )
        self.calls.append((name, args))

    def _items(self, h: int) -> dict[int, _Item]:
        items = self._servers.get(h)
        if items is None:
            raise server_error(E_INVALIDARG, f"The parameter is incorrect. (hLMX {h})")
        return items

    def _item(self, h: int, item: int) -> _Item:
        found = self._items(h).get(item)
        if found is None:
            raise server_error(E_INVALIDARG, f"The parameter is incorrect. (hItem {item})")
        return found

    def _post(self, delay_s: float, fire: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append((time.monotonic() + delay_s, fire))
        self._platform.wake()

    def next_due(self) -> float | None:
        with self._lock:
            return min((due for due, _ in self._queue), default=None)

    def deliver_due(self) -> None:
        """Raise the events that are due (only ever called from the pump)."""
        now = time.monotonic()
        with self._lock:
            due = [e for e in self._queue if e[0] <= now]
            self._queue = [e for e in self._queue if e[0] > now]
        due.sort(key=lambda e: e[0])
        for _, fire in due:
            self.event_threads.add(threading.get_ident())
            fire()

    def _data_change(self, h: int, handle: int, item: _Item) -> None:
        tag = self.tags.get(item.ref.lower())
        stamp = self._stamp()
        if tag is None:
            item.resolved = False
            self._events.OnDataChange(h, handle, None, 4, stamp, (Record(0, 4, 1, 12),))
            return
        item.resolved = True
        if item.suspended:
            return
        records = self.records.get(item.ref.lower(), (OK,))
        if item.buffered:
            values = tuple(v for v, _, _ in item.buffer) or (tag.value,)
            qualities = tuple(q for _, q, _ in item.buffer) or (tag.quality,)
            stamps = tuple(t for _, _, t in item.buffer) or (stamp,)
            item.buffer.clear()
            dtype = 2 if isinstance(tag.value, int) and not isinstance(tag.value, bool) else 4
            self._events.OnBufferedDataChange(h, handle, dtype, values, qualities, stamps, records)
            return
        self._events.OnDataChange(h, handle, tag.value, tag.quality, stamp, records)

    def _stamp(self) -> datetime:
        """An event's ``pftItemTimeStamp``: with a node zone, a VT_DATE as pywin32 gives it
        (the instant is kept in ``stamps``); without, an aware UTC datetime."""
        now = datetime.now(timezone.utc)
        zone = self._platform.node_zone
        if zone is None:
            return now
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # a DATE keeps ms
        self.stamps.append(now)
        return vt_date(now, zone)

    # -- test hooks ----------------------------------------------------------------------

    def change(self, ref: str, value: object) -> None:
        """The plant changes a value: advised items hear of it at once, buffered ones at
        their registration's update interval."""
        tag = self.tags[ref.lower()]
        tag.value = value
        for h, items in self._servers.items():
            for handle, item in items.items():
                if item.advised and item.ref.lower() == ref.lower():
                    if item.buffered:
                        item.buffer.append((value, tag.quality, self._stamp()))
                        delay = self._intervals.get(h, 1000) / 1000.0
                    else:
                        delay = 0.0
                    self._post(
                        delay,
                        lambda h=h, handle=handle, item=item: (  # type: ignore[misc]
                            self._data_change(h, handle, item) if item.advised else None
                        ),
                    )

    def operation_complete(self, h: int, handle: int, records: tuple[Record, ...] = (OK,)) -> None:
        self._post(0.0, lambda: self._events.OperationComplete(h, handle, records))

    # -- ILMXProxyServer -----------------------------------------------------------------

    def Register(self, pClientName: str) -> int:
        self._enter("Register", pClientName)
        if self._platform.hang_register is not None:  # a COM call that does not return
            self._platform.hang_register.wait(30)
        h = self._next_server
        self._next_server += 1
        self._servers[h] = {}
        self._next_item[h] = 1
        return h

    def Unregister(self, hLMXServerHandle: int) -> None:
        self._enter("Unregister", hLMXServerHandle)
        self._items(hLMXServerHandle)
        del self._servers[hLMXServerHandle]

    def _add(self, h: int, ref: str, buffered: bool) -> int:
        items = self._items(h)
        if not ref.strip() or len(ref) > 329:
            raise server_error(E_INVALIDARG, "The parameter is incorrect. (strItemDef)")
        handle = self._next_item[h]
        self._next_item[h] += 1
        items[handle] = _Item(ref, buffered)
        return handle

    def AddItem(self, hLMXServerHandle: int, strItemDef: str) -> int:
        self._enter("AddItem", hLMXServerHandle, strItemDef)
        return self._add(hLMXServerHandle, strItemDef, False)

    def AddItem2(self, hLMXServerHandle: int, strItemDef: str, strItemCtxt: str) -> int:
        self._enter("AddItem2", hLMXServerHandle, strItemDef, strItemCtxt)
        ref = strItemDef
        if ref.lower().startswith("me."):
            ref = f"{strItemCtxt}.{ref[3:]}"
        return self._add(hLMXServerHandle, ref, False)

    def AddBufferedItem(self, hLMXServerHandle: int, strItemDef: str, strItemCtxt: str) -> int:
        self._enter("AddBufferedItem", hLMXServerHandle, strItemDef, strItemCtxt)
        return self._add(hLMXServerHandle, strItemDef, True)

    def RemoveItem(self, hLMXServerHandle: int, hItem: int) -> None:
        self._enter("RemoveItem", hLMXServerHandle, hItem)
        self._item(hLMXServerHandle, hItem)
        del self._servers[hLMXServerHandle][hItem]

    def _advise(self, h: int, handle: int, supervisory: bool) -> None:
        item = self._item(h, handle)
        if item.advised:
            return
        item.advised, item.supervisory = True, supervisory
        self._post(
            self._platform.first_value_delay_s,
            lambda: self._data_change(h, handle, item) if item.advised else None,
        )

    def Advise(self, hLMXServerHandle: int, hItem: int) -> None:
        self._enter("Advise", hLMXServerHandle, hItem)
        self._advise(hLMXServerHandle, hItem, False)

    def AdviseSupervisory(self, hLMXServerHandle: int, hItem: int) -> None:
        self._enter("AdviseSupervisory", hLMXServerHandle, hItem)
        self._advise(hLMXServerHandle, hItem, True)

    def UnAdvise(self, hLMXServerHandle: int, hItem: int) -> None:
        self._enter("UnAdvise", hLMXServerHandle, hItem)
        item = self._item(hLMXServerHandle, hItem)
        item.advised = item.resolved = False

    def _write(
        self, h: int, handle: int, value: object, secured: bool, users: tuple[int, ...]
    ) -> None:
        item = self._item(h, handle)
        if not item.advised or not item.resolved:
            # A native server's plain E_INVALIDARG (no IErrorInfo): pywin32 shows the system
            # text; .NET interop shows it as "Value does not fall within the expected range".
            raise FakeComError(E_INVALIDARG, "The parameter is incorrect.")
        if not isinstance(value, Variant):
            raise server_error(E_INVALIDARG, "pItemValue is not a VARIANT")
        tag = self.tags[item.ref.lower()]
        status = OK
        if tag.security == 6:
            status = Record(0, 5, 5, 1007)  # OperationalError / NotWriteable
        elif tag.security == 2 and not secured and not item.supervisory:
            status = Record(0, 6, 1, 1012)  # SecurityError / SecuredWrite
        elif secured and users[0] not in {u for _, u in USERS.values()}:
            status = Record(0, 6, 1, 1016)
        records = self.records.get(item.ref.lower(), (status,))
        if all(r.success for r in records):
            self.change(item.ref, value.value)
        self._post(0.0, lambda: self._events.OnWriteComplete(h, handle, records))

    def Write(self, hLMXServerHandle: int, hItem: int, pItemValue: object, UserID: int) -> None:
        self._enter("Write", hLMXServerHandle, hItem, pItemValue, UserID)
        self._write(hLMXServerHandle, hItem, pItemValue, False, (UserID,))

    def Write2(
        self, hLMXServerHandle: int, hItem: int, pItemValue: object, pItemTime: object, UserID: int
    ) -> None:
        self._enter("Write2", hLMXServerHandle, hItem, pItemValue, pItemTime, UserID)
        self._write(hLMXServerHandle, hItem, pItemValue, False, (UserID,))

    def WriteSecured(
        self,
        hLMXServerHandle: int,
        hItem: int,
        CurrentUserID: int,
        VerifierUserID: int,
        pItemValue: object,
    ) -> None:
        self._enter(
            "WriteSecured", hLMXServerHandle, hItem, CurrentUserID, VerifierUserID, pItemValue
        )
        self._write(hLMXServerHandle, hItem, pItemValue, True, (CurrentUserID, VerifierUserID))

    def WriteSecured2(
        self,
        hLMXServerHandle: int,
        hItem: int,
        CurrentUserID: int,
        VerifierUserID: int,
        pItemValue: object,
        pItemTime: object,
    ) -> None:
        self._enter(
            "WriteSecured2",
            hLMXServerHandle,
            hItem,
            CurrentUserID,
            VerifierUserID,
            pItemValue,
            pItemTime,
        )
        self._write(hLMXServerHandle, hItem, pItemValue, True, (CurrentUserID, VerifierUserID))

    def AuthenticateUser(self, hLMXServerHandle: int, VerifyUser: str, VerifyUserPsw: str) -> int:
        self._enter("AuthenticateUser", hLMXServerHandle, VerifyUser, "<password>")
        self._items(hLMXServerHandle)
        found = USERS.get(VerifyUser.rsplit("\\", 1)[-1].lower())
        return found[1] if found and found[0] == VerifyUserPsw else 0

    def ArchestrAUserToId(self, hLMXServerHandle: int, UserIdGuid: str) -> int:
        self._enter("ArchestrAUserToId", hLMXServerHandle, UserIdGuid)
        self._items(hLMXServerHandle)
        return GUIDS.get(UserIdGuid.lower(), 0)

    def Suspend(self, hLMXServerHandle: int, hItem: int) -> Record:
        self._enter("Suspend", hLMXServerHandle, hItem)
        self._item(hLMXServerHandle, hItem).suspended = True
        return OK

    def Activate(self, hLMXServerHandle: int, hItem: int) -> Record:
        self._enter("Activate", hLMXServerHandle, hItem)
        item = self._item(hLMXServerHandle, hItem)
        if item.suspended:
            item.suspended = False
            if item.advised and item.resolved:
                self._post(0.0, lambda: self._data_change(hLMXServerHandle, hItem, item))
        return OK

    def SetBufferedUpdateInterval(self, hLMXServerHandle: int, lUpdateInterval: int) -> None:
        self._enter("SetBufferedUpdateInterval", hLMXServerHandle, lUpdateInterval)
        self._items(hLMXServerHandle)
        if lUpdateInterval < 0:
            raise server_error(E_INVALIDARG, "The parameter is incorrect. (lUpdateInterval)")
        self._intervals[hLMXServerHandle] = lUpdateInterval


class FakePlatform:
    """The ComPlatform for tests: a threading.Event for the wait, the fake's queue for
    the window messages."""

    def __init__(
        self,
        *,
        first_value_delay_s: float = 0.05,
        node_zone: tzinfo | None = None,
        pumping: bool = True,
        create_error: BaseException | None = None,
    ) -> None:
        self.first_value_delay_s = first_value_delay_s
        self.node_zone = node_zone
        """The zone of the node's VT_DATE timestamps (None: aware UTC datetimes instead)."""
        self.pumping = pumping
        self.create_error = create_error
        self.hang_register: threading.Event | None = None
        self.server: FakeLmxProxyServer | None = None
        self.apartment_thread: int | None = None
        self.apartment_left = False
        self.released = False
        self._wake = threading.Event()

    def enter_apartment(self) -> None:
        self.apartment_thread = threading.get_ident()

    def leave_apartment(self) -> None:
        assert threading.get_ident() == self.apartment_thread
        self.apartment_left = True

    def create_server(self, events: Any) -> FakeLmxProxyServer:
        assert threading.get_ident() == self.apartment_thread
        if self.create_error is not None:
            raise self.create_error
        self.server = FakeLmxProxyServer(self, events)
        return self.server

    def release_server(self, server: Any) -> None:
        assert threading.get_ident() == self.apartment_thread
        self.released = True

    def make_variant(self, vt: int, value: object) -> Variant:
        return Variant(vt, value)

    def wait(self, timeout_s: float) -> None:
        due = self.server.next_due() if self.server is not None and self.pumping else None
        if due is not None:
            timeout_s = max(0.0, min(timeout_s, due - time.monotonic()))
        self._wake.wait(timeout_s)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def pump(self) -> None:
        assert threading.get_ident() == self.apartment_thread
        if self.pumping and self.server is not None:
            self.server.deliver_due()
