"""Domain objects shared by the gateway layer and any MXAccess runtime (no gRPC, no protobuf).

Statuses, categories and sources carry the **COM** values MXAccess uses (category 6 is
``MxCategorySecurityError``); the wire layer adds the proto offset. Values are plain Python
values in the :mod:`mxgateway.values` table, tagged with the COM ``MxDataType``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Final

from mxgateway._status import NON_FAILURE_CATEGORIES
from mxgateway.values import MxPythonValue

COM_TO_PROTO: Final = 2
"""Proto enum number = COM value + 2 (categories, sources, data types)."""

VT_DATE_ZONES: Final[dict[str, tzinfo | None]] = {"local": None, "utc": timezone.utc}
"""``--vt-date-zone`` (``mxgw-gateway serve``, ``mxgw-worker``) -> the zone the real
MXAccess's VT_DATE wall clocks are read and written in (None: this host's local zone;
``mxgateway_mxaccess._variant`` has the rule)."""

# ---------------------------------------------------------------------------------------
# COM enums (only the values the simulator uses)
# ---------------------------------------------------------------------------------------

CAT_OK: Final = 0
CAT_PENDING: Final = 1
CAT_WARNING: Final = 2
CAT_COMMUNICATION_ERROR: Final = 3
CAT_CONFIGURATION_ERROR: Final = 4
CAT_OPERATIONAL_ERROR: Final = 5
CAT_SECURITY_ERROR: Final = 6
CAT_SOFTWARE_ERROR: Final = 7

SRC_REQUESTING_LMX: Final = 0
SRC_RESPONDING_LMX: Final = 1
SRC_REQUESTING_NMX: Final = 2
SRC_RESPONDING_NMX: Final = 3
SRC_RESPONDING_AUTOMATION_OBJECT: Final = 5

# MxStatusDetail codes.
DETAIL_SUCCESS: Final = 0
DETAIL_REQUEST_TIMED_OUT: Final = 1
DETAIL_PLATFORM_COMMUNICATION_ERROR: Final = 2
DETAIL_INVALID_REFERENCE: Final = 6
DETAIL_RESOLVING_ATTRIBUTE: Final = 11
DETAIL_RESOLVING_OBJECT: Final = 12
DETAIL_WRONG_DATA_TYPE: Final = 13
DETAIL_CONVERSION_NOT_SUPPORTED: Final = 18
DETAIL_UNABLE_TO_CONVERT_STRING: Final = 19
DETAIL_OVERFLOW: Final = 20
DETAIL_INDEX_OUT_OF_RANGE: Final = 1003
DETAIL_DATA_OUT_OF_RANGE: Final = 1004
DETAIL_INCORRECT_DATA_TYPE: Final = 1005
DETAIL_NOT_WRITEABLE: Final = 1007
DETAIL_WRITE_ACCESS_DENIED: Final = 1008
DETAIL_SECURED_WRITE: Final = 1012
DETAIL_VERIFIED_WRITE: Final = 1013
DETAIL_USER_NOT_HAVING_ACCESS_RIGHTS: Final = 1016
DETAIL_VERIFIER_NOT_HAVING_VERIFY_RIGHTS: Final = 1017

# COM MxDataType.
MX_NO_DATA: Final = 0
MX_BOOLEAN: Final = 1
MX_INTEGER: Final = 2
MX_FLOAT: Final = 3
MX_DOUBLE: Final = 4
MX_STRING: Final = 5
MX_TIME: Final = 6
MX_ELAPSED_TIME: Final = 7
MX_REFERENCE: Final = 8
MX_STATUS: Final = 9
MX_ENUM: Final = 10
MX_SECURITY_CLASSIFICATION_ENUM: Final = 11
MX_DATA_QUALITY: Final = 12
MX_QUALIFIED_ENUM: Final = 13
MX_QUALIFIED_STRUCT: Final = 14
MX_INTERNATIONALIZED_STRING: Final = 15
MX_BIG_STRING: Final = 16

# OPC-style qualities.
QUALITY_GOOD: Final = 192
QUALITY_BAD: Final = 0
QUALITY_BAD_CONFIG_ERROR: Final = 4
QUALITY_BAD_COMM_FAILURE: Final = 24
QUALITY_UNCERTAIN: Final = 64
QUALITY_UNCERTAIN_LAST_USABLE: Final = 68

# HRESULTs as signed 32-bit integers (what the wire's int32 carries).
S_OK: Final = 0
E_INVALIDARG: Final = -2147024809  # 0x80070057
E_FAIL: Final = -2147467259  # 0x80004005
E_MX_OPERATION_FAILED: Final = -2147220992  # 0x80040200, the contract fixture's failure HRESULT


@dataclass(frozen=True, slots=True)
class MxStatus:
    """One MXSTATUS_PROXY record (COM values)."""

    success: int
    category: int
    detected_by: int
    detail: int
    text: str = ""

    @property
    def ok(self) -> bool:
        """True unless the category is a failure (the library's table: OK and PENDING are
        not; ``success`` is COM's raw number and decides nothing)."""
        return self.category + COM_TO_PROTO in NON_FAILURE_CATEGORIES


STATUS_OK: Final = MxStatus(1, CAT_OK, SRC_RESPONDING_LMX, DETAIL_SUCCESS)


def lead_status(records: tuple[MxStatus, ...]) -> MxStatus:
    """The record of an event's ``status[]`` that decides for the gateway (a read row's
    error, a sample's ``ok``): the first failure, else the first record, else OK. The
    records themselves all go on the wire (upstream: an array never collapses into one
    success flag; clients decide by each record's category)."""
    for record in records:
        if not record.ok:
            return record
    return records[0] if records else STATUS_OK


def status_and_records(
    records: tuple[MxStatus, ...],
) -> tuple[MxStatus, tuple[MxStatus, ...] | None]:
    """``(status, records)`` for an event built from ``records``: ``records`` is None when
    it is exactly ``(status,)`` (the common case, which costs nothing more)."""
    status = lead_status(records)
    return status, (None if len(records) == 1 and records[0] is status else records)


def failure(category: int, detail: int, text: str, source: int = SRC_RESPONDING_LMX) -> MxStatus:
    """A failed MXSTATUS_PROXY record."""
    return MxStatus(0, category, source, detail, text)


class MxAccessError(Exception):
    """An MXAccess call failed: the COM HRESULT and the statuses MXAccess reported.

    Runtimes raise this the way the COM interop raises a ``COMException``; the gateway
    turns it into a normal reply with ``MXACCESS_FAILURE``.
    """

    def __init__(self, hresult: int, message: str, statuses: tuple[MxStatus, ...] = ()) -> None:
        super().__init__(message)
        self.hresult = hresult
        self.message = message
        self.statuses = statuses


def invalid_arg(message: str) -> MxAccessError:
    """The E_INVALIDARG failure MXAccess raises for bad handles and malformed references."""
    return MxAccessError(E_INVALIDARG, message)


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------


class TagSample:
    """One value/quality/timestamp of an attribute, shared by every item that watches it.

    ``wire`` and ``read_wire`` are opaque cache slots for the gateway's encoder (the sample
    as an OnDataChange body and as a ReadBulk row): a sample delivered to many items, or read
    many times, is encoded once. A sample is never changed after it is made.

    ``status`` decides for the gateway (:func:`lead_status`); ``records`` are every
    ``MXSTATUS_PROXY`` of the event as MXAccess gave them when they are not just
    ``(status,)`` (None: just that one); :attr:`statuses` is what goes on the wire.
    """

    __slots__ = (
        "data_type",
        "quality",
        "read_wire",
        "records",
        "status",
        "timestamp",
        "value",
        "wire",
    )

    def __init__(
        self,
        value: MxPythonValue,
        data_type: int,
        quality: int,
        timestamp: float,
        status: MxStatus = STATUS_OK,
        records: tuple[MxStatus, ...] | None = None,
    ) -> None:
        self.value = value
        self.data_type = data_type
        self.quality = quality
        self.timestamp = timestamp  # seconds since the Unix epoch, UTC
        self.status = status
        self.records = records
        self.wire: bytes | None = None
        self.read_wire: bytes | None = None

    @property
    def statuses(self) -> tuple[MxStatus, ...]:
        """Every status record of the sample, in MXAccess's order."""
        records = self.records
        return (self.status,) if records is None else records

    def __repr__(self) -> str:
        return (
            f"TagSample(value={self.value!r}, data_type={self.data_type}, "
            f"quality={self.quality}, timestamp={self.timestamp})"
        )


class DataChange:
    """OnDataChange(hLMX, hItem, value, quality, timestamp, status[])."""

    __slots__ = ("item_handle", "sample", "server_handle")

    def __init__(self, server_handle: int, item_handle: int, sample: TagSample) -> None:
        self.server_handle = server_handle
        self.item_handle = item_handle
        self.sample = sample


class _Statuses:
    """``statuses`` of an event with a deciding ``status`` and optional ``records`` (as
    :class:`TagSample`)."""

    __slots__ = ()
    status: MxStatus
    records: tuple[MxStatus, ...] | None

    @property
    def statuses(self) -> tuple[MxStatus, ...]:
        """Every status record of the event, in MXAccess's order."""
        records = self.records
        return (self.status,) if records is None else records


@dataclass(frozen=True, slots=True)
class WriteComplete(_Statuses):
    """OnWriteComplete(hLMX, hItem, status[])."""

    server_handle: int
    item_handle: int
    status: MxStatus
    records: tuple[MxStatus, ...] | None = None


@dataclass(frozen=True, slots=True)
class OperationComplete(_Statuses):
    """OperationComplete(hLMX, hItem, status[])."""

    server_handle: int
    item_handle: int
    status: MxStatus
    records: tuple[MxStatus, ...] | None = None


@dataclass(frozen=True, slots=True)
class BufferedDataChange(_Statuses):
    """OnBufferedDataChange(hLMX, hItem, dataType, values, qualities, timestamps, status[])."""

    server_handle: int
    item_handle: int
    data_type: int
    samples: tuple[TagSample, ...]
    status: MxStatus = STATUS_OK
    records: tuple[MxStatus, ...] | None = None


@dataclass(frozen=True, slots=True)
class AlarmSnapshot:
    """One alarm of the active set (and the state carried by a transition)."""

    alarm_guid: str
    full_reference: str
    source_object: str
    type_name: str
    state: int
    severity: int
    raise_time: float
    last_transition_time: float
    category: str
    description: str
    value: MxPythonValue
    limit: MxPythonValue
    data_type: int
    operator_user: str = ""


@dataclass(frozen=True, slots=True)
class AlarmTransition:
    """One change of an alarm (the body of ``OnAlarmTransitionEvent``)."""

    alarm: AlarmSnapshot
    kind: int
    comment: str = ""


MxRuntimeEvent = (
    DataChange | WriteComplete | OperationComplete | BufferedDataChange | AlarmTransition
)
"""Everything a runtime (or the alarm monitor) can report through an event sink."""


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One row of ReadBulk, before it goes on the wire."""

    reference: str
    sample: TagSample | None
    was_cached: bool
    error: str = ""
    statuses: tuple[MxStatus, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the row delivered a good OnDataChange."""
        return self.sample is not None and not self.error


@dataclass(frozen=True, slots=True)
class ReleaseCounts:
    """What a teardown released (UnAdvise, RemoveItem, Unregister calls)."""

    advises: int = 0
    items: int = 0
    registrations: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """GetWorkerInfo answer."""

    backend_name: str
    worker_protocol_version: int
    process_id: int
    backend_version: str


@dataclass(slots=True)
class WriteRequest:
    """Arguments shared by the Write family (user ids are 0 when unused)."""

    value: MxPythonValue
    timestamp: datetime | None = None
    user_id: int = 0
    verifier_user_id: int = 0
    secured: bool = False
