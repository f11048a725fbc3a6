"""The rule that decides whether an ``MxStatusProxy`` reports a failure, and its text.

Upstream, ``MxStatusProxy.success`` mirrors the numeric ``success`` member of COM's
``MXSTATUS_PROXY``: it is not a boolean, and clients branch on ``category``. OK and PENDING
are not failures, and neither is a record whose category is unset (a proto3 default
``success == 0`` with no category says nothing). Every other category, including one newer
than these bindings, is a failure. Library, CLI and simulator all use this one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mxgateway._enums import enum_name
from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "NON_FAILURE_CATEGORIES",
    "describe_status",
    "failed_statuses",
    "status_failed",
]

NON_FAILURE_CATEGORIES: Final = frozenset(
    {
        pb.MX_STATUS_CATEGORY_UNSPECIFIED,
        pb.MX_STATUS_CATEGORY_OK,
        pb.MX_STATUS_CATEGORY_PENDING,
    }
)
"""``MxStatusCategory`` numbers that do not make a status a failure (proto numbering)."""

# MxStatusDetail names (MXAccess's detail codes) for readable messages.
_DETAIL_NAMES: Final[dict[int, str]] = {
    0: "MX_S_Success",
    1: "MX_E_RequestTimedOut",
    2: "MX_E_PlatformCommunicationError",
    3: "MX_E_InvalidPlatformId",
    4: "MX_E_InvalidEngineId",
    5: "MX_E_EngineCommunicationError",
    6: "MX_E_InvalidReference",
    7: "MX_E_NoGalaxyRepository",
    8: "MX_E_InvalidObjectId",
    9: "MX_E_ObjectSignatureMismatch",
    10: "MX_E_AttributeSignatureMismatch",
    11: "MX_E_ResolvingAttribute",
    12: "MX_E_ResolvingObject",
    13: "MX_E_WrongDataType",
    14: "MX_E_WrongNumberOfDimensions",
    15: "MX_E_InvalidIndex",
    16: "MX_E_IndexOutOfOrder",
    17: "MX_E_DimensionDoesNotExist",
    18: "MX_E_ConversionNotSupported",
    19: "MX_E_UnableToConvertString",
    20: "MX_E_Overflow",
    21: "MX_E_NmxVersionMismatch",
    22: "MX_E_NmxInvalidCommand",
    23: "MX_E_LmxVersionMismatch",
    24: "MX_E_LmxInvalidCommand",
    25: "MX_E_GalaxyRepositoryBusy",
    26: "MX_E_EngineOverloaded",
    1000: "MX_E_InvalidPrimitiveId",
    1001: "MX_E_InvalidAttributeId",
    1002: "MX_E_InvalidPropertyId",
    1003: "MX_E_IndexOutOfRange",
    1004: "MX_E_DataOutOfRange",
    1005: "MX_E_IncorrectDataType",
    1006: "MX_E_NotReadable",
    1007: "MX_E_NotWriteable",
    1008: "MX_E_WriteAccessDenied",
    1009: "MX_E_UnknownError",
    1010: "MX_E_ObjectInitializing",
    1011: "MX_E_EngineInitializing",
    1012: "MX_E_SecuredWrite",
    1013: "MX_E_VerifiedWrite",
    1014: "MX_E_NoAlarmAckPrivilege",
    1015: "MX_E_AlarmAckedAlready",
    1016: "MX_E_UserNotHavingAccessRights",
    1017: "MX_E_VerifierNotHavingVerifyRights",
    8000: "MX_E_AutomationObjectSpecificError",
}


def status_failed(status: pb.MxStatusProxy) -> bool:
    """True when ``status`` reports a failure: its category is set and is not OK or PENDING."""
    return status.category not in NON_FAILURE_CATEGORIES


def failed_statuses(statuses: Iterable[pb.MxStatusProxy]) -> tuple[pb.MxStatusProxy, ...]:
    """The records of ``statuses`` that are failures (see :func:`status_failed`)."""
    return tuple(s for s in statuses if status_failed(s))


def describe_status(status: pb.MxStatusProxy) -> str:
    """One-line description of an ``MxStatusProxy`` (category, source, detail name).

    Numbers newer than the bindings are shown as ``UNKNOWN(<n>)``, never an error.
    """
    category = enum_name(pb.MxStatusCategory, status.category)
    source = enum_name(pb.MxStatusSource, status.detected_by)
    detail = _DETAIL_NAMES.get(status.detail, "unknown detail")
    text = f"{category} detected by {source}, detail {status.detail} ({detail})"
    if status.diagnostic_text:
        text += f": {status.diagnostic_text}"
    return text
