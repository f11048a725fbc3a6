"""Why the MXAccess COM runtime cannot start here, in one clear sentence (or None).

MXAccess exists only on Windows, needs pywin32, and ``LmxProxy.dll`` is a 32-bit in-process
COM server (registered under ``Wow6432Node``): a 64-bit interpreter gets
``REGDB_E_CLASSNOTREG``. The registry tells which view holds the class, so the error can say
"use a 32-bit Python" instead of "class not registered".
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Literal

from mxgateway_mxaccess._com import LMX_CLSID, windows_module

__all__ = ["ComStartError", "Registration", "registration_of_lmx", "start_problem"]

Registration = Literal["native", "32-bit only", "none"]
"""Where ``LMXProxyServer``'s CLSID is registered, seen from this interpreter."""

INSTALL_HINT = 'install the extra: pip install "mxaccess-gateway-client[mxaccess]"'


class ComStartError(RuntimeError):
    """The MXAccess COM runtime cannot start on this machine or interpreter."""


def registration_of_lmx() -> Registration:
    """Look the CLSID up in this interpreter's registry view, then in the 32-bit view."""
    winreg = windows_module("winreg")
    key = rf"CLSID\{LMX_CLSID}\InprocServer32"

    def present(flags: int) -> bool:
        try:
            winreg.CloseKey(
                winreg.OpenKey(winreg.HKEY_CLASSES_ROOT, key, 0, winreg.KEY_READ | flags)
            )
        except OSError:
            return False
        return True

    if present(0):
        return "native"
    if present(winreg.KEY_WOW64_32KEY):
        return "32-bit only"
    return "none"


def _pywin32_present() -> bool:
    try:
        windows_module("pythoncom")
        windows_module("win32com.client")
    except ImportError:
        return False
    return True


def start_problem(
    *,
    platform: str = sys.platform,
    pointer_bits: int = struct.calcsize("P") * 8,
    pywin32_present: Callable[[], bool] = _pywin32_present,
    registration: Callable[[], Registration] = registration_of_lmx,
) -> str | None:
    """The reason the runtime cannot start here, or None when it can try."""
    if platform != "win32":
        return (
            f"the mxaccess runtime needs Windows with AVEVA System Platform (MXAccess is a "
            f"Windows COM server); this is {platform}: use --runtime simulated here"
        )
    if not pywin32_present():
        return f"the mxaccess runtime needs pywin32, which is not installed: {INSTALL_HINT}"
    where = registration()
    if where == "none":
        return (
            "MXAccess is not installed on this node (LMXProxy.LMXProxyServer, CLSID "
            f"{LMX_CLSID}, is not registered): install System Platform's MXAccess runtime"
        )
    if where == "32-bit only" and pointer_bits != 32:
        return (
            "MXAccess (LmxProxy.dll) is a 32-bit in-process COM server and this Python is "
            f"{pointer_bits}-bit: run the gateway (or its workers) with a 32-bit (x86) Python"
        )
    return None
