"""COM failures and ``MXSTATUS_PROXY`` records -> the gateway's domain objects.

A failed COM call surfaces in pywin32 as ``pywintypes.com_error`` (``hresult``,
``strerror``, ``excepinfo``, ``argerror``). Through ``IDispatch`` a server's own error comes as
``DISP_E_EXCEPTION`` with the real HRESULT in ``excepinfo[5]`` (``scode``) and the .NET message
(for example "Value does not fall within the expected range") in ``excepinfo[2]``; the
runtime reports that HRESULT and message as an :class:`~mxgateway_sim._domain.MxAccessError`,
which the gateway turns into a normal ``MXACCESS_FAILURE`` reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mxgateway_mxaccess._com import StatusRecord
from mxgateway_sim._domain import STATUS_OK, MxAccessError, MxStatus

__all__ = [
    "DISP_E_EXCEPTION",
    "E_ACCESSDENIED",
    "E_INVALIDARG",
    "REGDB_E_CLASSNOTREG",
    "RPC_E_WRONG_THREAD",
    "com_error_to_mx",
    "hresult_of",
    "is_com_error",
    "status_from_record",
    "statuses_from_records",
]

DISP_E_EXCEPTION: Final = -2147352567  # 0x80020009
REGDB_E_CLASSNOTREG: Final = -2147221164  # 0x80040154
E_ACCESSDENIED: Final = -2147024891  # 0x80070005
RPC_E_WRONG_THREAD: Final = -2147417842  # 0x8001010E
E_INVALIDARG: Final = -2147024809  # 0x80070057

# What a bare HRESULT means for an MXAccess caller (domain reference 1.4), added to the
# message when the server gave none of its own.
_HINTS: dict[int, str] = {
    REGDB_E_CLASSNOTREG: (
        "LMXProxy.LMXProxyServer is not registered for this process: MXAccess is not "
        "installed, or this is a 64-bit interpreter and MXAccess is a 32-bit COM server"
    ),
    E_ACCESSDENIED: (
        "access denied: the MXAccess_Runtime license may be unavailable or expired, or the "
        "item definition is invalid"
    ),
    RPC_E_WRONG_THREAD: "the call was made outside the thread that created the COM object",
    E_INVALIDARG: (
        "an unknown handle, a malformed reference, or a write before the item's first "
        'OnDataChange resolved its type (.NET callers see this as "Value does not fall '
        'within the expected range")'
    ),
}


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def is_com_error(exc: BaseException) -> bool:
    """True for ``pywintypes.com_error`` (and anything shaped like it: an int ``hresult``)."""
    return isinstance(getattr(exc, "hresult", None), int)


def hresult_of(exc: BaseException) -> tuple[int, str]:
    """The HRESULT (signed 32-bit) and message a COM exception carries.

    ``DISP_E_EXCEPTION`` is unwrapped to the server's own ``scode`` and description.
    """
    hresult = _signed32(int(getattr(exc, "hresult", 0)))
    message = str(getattr(exc, "strerror", "") or "")
    excepinfo = getattr(exc, "excepinfo", None)
    if hresult == DISP_E_EXCEPTION and isinstance(excepinfo, Sequence) and len(excepinfo) >= 6:
        description = excepinfo[2]
        scode = excepinfo[5]
        if isinstance(scode, int) and scode:
            hresult = _signed32(scode)
        if isinstance(description, str) and description:
            message = description
    hint = _HINTS.get(hresult)
    if hint and hint not in message:
        message = f"{message}: {hint}" if message else hint
    return hresult, message or f"COM call failed with HRESULT 0x{hresult & 0xFFFFFFFF:08X}"


def com_error_to_mx(exc: BaseException, call: str) -> MxAccessError:
    """An :class:`MxAccessError` for a failed COM call named ``call``."""
    hresult, message = hresult_of(exc)
    return MxAccessError(hresult, f"{call}: {message}")


def status_from_record(record: StatusRecord | None) -> MxStatus:
    """One ``MXSTATUS_PROXY`` -> :class:`MxStatus` (COM values kept as they are)."""
    if record is None:
        return STATUS_OK
    return MxStatus(
        int(record.success),
        int(record.category),
        int(record.detectedBy),
        int(record.detail),
    )


def statuses_from_records(records: object) -> tuple[MxStatus, ...]:
    """``pVars`` (a SAFEARRAY of records: a tuple in pywin32, or one record) -> statuses."""
    if records is None:
        return ()
    if isinstance(records, (list, tuple)):
        return tuple(status_from_record(r) for r in records)
    return (status_from_record(records),)  # type: ignore[arg-type]
