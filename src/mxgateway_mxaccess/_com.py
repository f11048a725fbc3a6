"""The COM surface the runtime uses, typed (pywin32 is imported lazily, on Windows only).

:class:`LmxProxyServer` is ``ILMXProxyServer5`` with the method names, parameter names and
order of the AVEVA interop assembly (``ArchestrA.MxAccess``, type library ``LMXPROXYLib``
3.2). Out parameters (``Suspend``/``Activate``'s ``MxStatus``) are return values, as pywin32's
makepy wrappers return them. :class:`LmxEvents` is what the runtime's event sink implements:
``_ILMXProxyServerEvents`` (OnDataChange, OnWriteComplete, OperationComplete) and
``_ILMXProxyServerEvents2`` (OnBufferedDataChange).

:class:`ComPlatform` is the seam between the runtime's STA thread and Windows: entering the
apartment, creating ``LMXProxy.LMXProxyServer`` with its event sink (``DispatchWithEvents``),
waiting for work or window messages, and pumping those messages (COM delivers events only
while the creating thread pumps). :class:`Win32Platform` is the real one; tests inject a fake.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "LMX_CLSID",
    "LMX_PROG_ID",
    "ComPlatform",
    "LmxEvents",
    "LmxProxyServer",
    "StatusRecord",
    "Win32Platform",
    "windows_module",
]

LMX_PROG_ID = "LMXProxy.LMXProxyServer"
"""Version-independent ProgID of the coclass (``LMXProxy.LMXProxyServer.1`` is version 1)."""
LMX_CLSID = "{C30B52F5-2CB5-4760-AF0A-3A344A7EB5DC}"


class StatusRecord(Protocol):
    """One ``MXSTATUS_PROXY`` (or ``MxStatus``) record as pywin32 hands it over."""

    success: int
    category: int
    detectedBy: int
    detail: int


class LmxProxyServer(Protocol):
    """``ILMXProxyServer5`` (ILMXProxyServer ... 5): every method the gateway contract carries."""

    def Register(self, pClientName: str) -> int: ...
    def Unregister(self, hLMXServerHandle: int) -> None: ...
    def AddItem(self, hLMXServerHandle: int, strItemDef: str) -> int: ...
    def AddItem2(
        self,
        hLMXServerHandle: int,
        strItemDef: str,
        strItemCtxt: str,
    ) -> int: ...
    def AddBufferedItem(
        self,
        hLMXServerHandle: int,
        strItemDef: str,
        strItemCtxt: str,
    ) -> int: ...
    def RemoveItem(self, hLMXServerHandle: int, hItem: int) -> None: ...
    def Advise(self, hLMXServerHandle: int, hItem: int) -> None: ...
    def AdviseSupervisory(self, hLMXServerHandle: int, hItem: int) -> None: ...
    def UnAdvise(self, hLMXServerHandle: int, hItem: int) -> None: ...
    def Write(
        self,
        hLMXServerHandle: int,
        hItem: int,
        pItemValue: object,
        UserID: int,
    ) -> None: ...
    def Write2(
        self,
        hLMXServerHandle: int,
        hItem: int,
        pItemValue: object,
        pItemTime: object,
        UserID: int,
    ) -> None: ...
    def WriteSecured(
        self,
        hLMXServerHandle: int,
        hItem: int,
        CurrentUserID: int,
        VerifierUserID: int,
        pItemValue: object,
    ) -> None: ...
    def WriteSecured2(
        self,
        hLMXServerHandle: int,
        hItem: int,
        CurrentUserID: int,
        VerifierUserID: int,
        pItemValue: object,
        pItemTime: object,
    ) -> None: ...
    def AuthenticateUser(
        self,
        hLMXServerHandle: int,
        VerifyUser: str,
        VerifyUserPsw: str,
    ) -> int: ...
    def ArchestrAUserToId(self, hLMXServerHandle: int, UserIdGuid: str) -> int: ...
    def Suspend(self, hLMXServerHandle: int, hItem: int) -> StatusRecord: ...
    def Activate(self, hLMXServerHandle: int, hItem: int) -> StatusRecord: ...
    def SetBufferedUpdateInterval(
        self,
        hLMXServerHandle: int,
        lUpdateInterval: int,
    ) -> None: ...


class LmxEvents(Protocol):
    """The event sink: ``_ILMXProxyServerEvents`` and ``_ILMXProxyServerEvents2``."""

    def OnDataChange(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pvItemValue: object,
        pwItemQuality: int,
        pftItemTimeStamp: object,
        pVars: Sequence[StatusRecord],
    ) -> None: ...
    def OnWriteComplete(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pVars: Sequence[StatusRecord],
    ) -> None: ...
    def OperationComplete(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        pVars: Sequence[StatusRecord],
    ) -> None: ...
    def OnBufferedDataChange(
        self,
        hLMXServerHandle: int,
        phItemHandle: int,
        dtDataType: int,
        pvItemValue: object,
        pwItemQuality: object,
        pftItemTimeStamp: object,
        pVars: Sequence[StatusRecord],
    ) -> None: ...


class ComPlatform(Protocol):
    """What the STA thread needs from Windows; every method runs on that one thread
    except :meth:`wake`, which any thread may call."""

    def enter_apartment(self) -> None:
        """CoInitializeEx(COINIT_APARTMENTTHREADED) on the calling thread."""
        ...

    def leave_apartment(self) -> None:
        """CoUninitialize."""
        ...

    def create_server(self, events: LmxEvents) -> LmxProxyServer:
        """Create ``LMXProxy.LMXProxyServer`` with ``events`` connected as its sink."""
        ...

    def release_server(self, server: LmxProxyServer) -> None:
        """Drop the COM object (before leaving the apartment)."""
        ...

    def make_variant(self, vt: int, value: object) -> object:
        """A VARIANT of type ``vt`` (a Windows VARTYPE) holding ``value``."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Sleep until :meth:`wake`, a window message, or the timeout."""
        ...

    def wake(self) -> None:
        """End a :meth:`wait` early (thread-safe)."""
        ...

    def pump(self) -> None:
        """Dispatch the window messages waiting (COM events are delivered here)."""
        ...


def windows_module(name: str) -> Any:
    """Import a Windows-only module (pywin32's, ``winreg``) untyped: they exist only there."""
    return importlib.import_module(name)


class Win32Platform:
    """:class:`ComPlatform` over pywin32 (``pythoncom``, ``win32event``, ``win32com.client``)."""

    def __init__(self, prog_id: str = LMX_PROG_ID) -> None:
        self._prog_id = prog_id
        self._pythoncom = windows_module("pythoncom")
        self._win32event = windows_module("win32event")
        self._client = windows_module("win32com.client")
        self._wake_handle: Any = self._win32event.CreateEvent(None, False, False, None)

    def enter_apartment(self) -> None:
        """CoInitializeEx(COINIT_APARTMENTTHREADED)."""
        self._pythoncom.CoInitializeEx(self._pythoncom.COINIT_APARTMENTTHREADED)

    def leave_apartment(self) -> None:
        """CoUninitialize."""
        self._pythoncom.CoUninitialize()

    def create_server(self, events: LmxEvents) -> LmxProxyServer:
        """``DispatchWithEvents``: makepy names the handlers as genpy's MakeEventMethodName
        does (an event already starting with "On" keeps its name, others get "On")."""
        sink = events

        class _Events:
            def OnDataChange(self, *args: Any) -> None:
                sink.OnDataChange(*args)

            def OnWriteComplete(self, *args: Any) -> None:
                sink.OnWriteComplete(*args)

            def OnOperationComplete(self, *args: Any) -> None:
                sink.OperationComplete(*args)

            def OnBufferedDataChange(self, *args: Any) -> None:
                sink.OnBufferedDataChange(*args)

        server: LmxProxyServer = self._client.DispatchWithEvents(self._prog_id, _Events)
        return server

    def release_server(self, server: LmxProxyServer) -> None:
        """Disconnect the event sink; the last reference releases the object."""
        close = getattr(server, "close", None)
        if callable(close):
            close()

    def make_variant(self, vt: int, value: object) -> object:
        """``win32com.client.VARIANT(vt, value)``."""
        return self._client.VARIANT(vt, value)

    def wait(self, timeout_s: float) -> None:
        """MsgWaitForMultipleObjects on the wake event and the thread's message queue."""
        ev = self._win32event
        ev.MsgWaitForMultipleObjects(
            [self._wake_handle], False, max(0, int(timeout_s * 1000)), ev.QS_ALLINPUT
        )

    def wake(self) -> None:
        """SetEvent on the wake event."""
        self._win32event.SetEvent(self._wake_handle)

    def pump(self) -> None:
        """PumpWaitingMessages."""
        self._pythoncom.PumpWaitingMessages()
