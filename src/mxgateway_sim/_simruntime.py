"""SimulatedRuntime: an MXAccess (LMXProxyServer) client per session, over the shared Plant.

Semantics follow the domain reference: handles are small sequential integers (server handles
per runtime, item handles per session), malformed references fail AddItem with E_INVALIDARG,
well-formed but unknown references get a handle and report a configuration error through
their single OnDataChange; writes need an advised, resolved item, answer OK once accepted and
report their outcome (success or failure) only through OnWriteComplete, as upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mxgateway._version import __version__
from mxgateway.values import MxPythonValue
from mxgateway_sim._coerce import ConversionError, coerce
from mxgateway_sim._domain import (
    CAT_COMMUNICATION_ERROR,
    CAT_CONFIGURATION_ERROR,
    CAT_OPERATIONAL_ERROR,
    CAT_SECURITY_ERROR,
    DETAIL_INDEX_OUT_OF_RANGE,
    DETAIL_NOT_WRITEABLE,
    DETAIL_RESOLVING_ATTRIBUTE,
    DETAIL_RESOLVING_OBJECT,
    DETAIL_SECURED_WRITE,
    DETAIL_USER_NOT_HAVING_ACCESS_RIGHTS,
    DETAIL_VERIFIED_WRITE,
    DETAIL_VERIFIER_NOT_HAVING_VERIFY_RIGHTS,
    MX_NO_DATA,
    QUALITY_BAD_CONFIG_ERROR,
    QUALITY_GOOD,
    SRC_REQUESTING_LMX,
    SRC_RESPONDING_AUTOMATION_OBJECT,
    STATUS_OK,
    BufferedDataChange,
    DataChange,
    MxRuntimeEvent,
    MxStatus,
    ReadResult,
    ReleaseCounts,
    TagSample,
    WorkerInfo,
    WriteComplete,
    WriteRequest,
    failure,
    invalid_arg,
)
from mxgateway_sim._limits import (
    DEFAULT_MAX_ITEMS_PER_SESSION,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_READ_CACHE_BYTES,
    DEFAULT_REFERENCE_CACHE_BYTES,
    LimitError,
)
from mxgateway_sim._plant import BatchFunction, Plant, TagState
from mxgateway_sim._readplan import plan_rows
from mxgateway_sim._readrows import ReadMemo, ReadRow, ReadRowCache, fresh_rows
from mxgateway_sim._references import (
    ParsedReference,
    ReferenceCache,
    ReferenceSyntaxError,
    parse_reference,
)
from mxgateway_sim._runtime import EventSink, MxAccessRuntime
from mxgateway_sim._slicing import Slicer, chunks
from mxgateway_sim._wire import (
    check_read_reply,
    good_read_row,
    good_row_tail,
    read_reply_bytes,
    reference_field,
)

WRITEABLE_CATEGORIES = frozenset({-1, 4, 5, 6, 7, 8, 9, 10, 11, 14})
"""MxAttributeCategory values a client may write at run time (Writeable_*, SystemWriteable)."""
DEFAULT_BUFFERED_INTERVAL_MS = 1000
BACKEND_NAME = "mxgw-sim"
PLAN_MIN_ROWS = 16
"""Rows a chunk of a remembered ReadBulk needs before it is read by a plan: a plan's
bookkeeping (its key, its groups' checks) costs more than it saves on a few rows, such as
a one-tag read repeated by a poller, which is read row by row."""
_NOT_IN_RANGE = "Value does not fall within the expected range"
"""The message of MXAccess's ArgumentException for a write it cannot take (upstream)."""


@dataclass(frozen=True, slots=True)
class SimUser:
    """A user of the simulated galaxy's security (AuthenticateUser / ArchestrAUserToId)."""

    name: str
    password: str
    user_id: int
    guid: str
    can_verify: bool

    def __repr__(self) -> str:  # never show the password
        return f"SimUser(name={self.name!r}, user_id={self.user_id}, can_verify={self.can_verify})"


DEFAULT_USERS: tuple[SimUser, ...] = (
    SimUser("operator", "operator", 101, "6f0b3b1e-0000-4000-8000-000000000101", False),
    SimUser("verifier", "verifier", 102, "6f0b3b1e-0000-4000-8000-000000000102", True),
    SimUser("engineer", "engineer", 103, "6f0b3b1e-0000-4000-8000-000000000103", True),
)


def element_of(sample: TagSample, index: int) -> TagSample:
    """The sample of element ``index`` (1-based) of an array sample."""
    value = sample.value
    element = value[index - 1] if isinstance(value, list) and index <= len(value) else None
    return TagSample(element, sample.data_type, sample.quality, sample.timestamp, sample.status)


class Item:
    """An added item: its reference, what it resolved to, and its advise state."""

    __slots__ = (
        "advised",
        "buffer",
        "buffer_bytes",
        "buffered",
        "error",
        "first_value",
        "index",
        "item_handle",
        "key",
        "last",
        "next_flush",
        "out",
        "plain",
        "runtime",
        "server_handle",
        "state",
        "supervisory",
        "suspended",
    )

    def __init__(
        self,
        runtime: SimulatedRuntime,
        server_handle: int,
        item_handle: int,
        ref: ParsedReference,
        state: TagState | None,
        error: MxStatus | None,
        buffered: bool,
    ) -> None:
        self.runtime = runtime
        self.server_handle = server_handle
        self.item_handle = item_handle
        # The two parts of the reference an item needs, not the reference object: one
        # object less per item for the garbage collector to walk.
        self.key = ref.key
        """Case-insensitive identity of what the item reads (``ParsedReference.key``)."""
        self.index = ref.index
        """1-based array element the item reads, or None (``ParsedReference.index``)."""
        self.first_value: asyncio.TimerHandle | None = None
        """Pending first OnDataChange of an advise (``first_value_delay_s``)."""
        self.state = state
        self.error = error
        self.buffered = buffered
        self.advised = False
        self.supervisory = False
        self.suspended = False
        # Only buffered items have a buffer: one object less per item for the garbage
        # collector to walk (a session can hold 100k items).
        self.buffer: list[TagSample] | None = [] if buffered else None
        self.buffer_bytes = 0  # estimated, see _approx_bytes
        self.next_flush = 0.0
        self.last: TagSample | None = None
        self.plain = not buffered and ref.index is None
        self.out = runtime.pending

    def deliver(self, sample: TagSample) -> None:
        """Queue an OnDataChange (or a buffered sample) for this item; called per tick."""
        if self.suspended:
            return
        if self.plain:  # the hot path: a scalar or whole-array item, not buffered
            self.last = sample
            self.out.append(DataChange(self.server_handle, self.item_handle, sample))
            return
        if self.index is not None:
            sample = element_of(sample, self.index)
        self.last = sample
        if self.buffer is not None:
            self.buffer.append(sample)
            self.buffer_bytes += _approx_bytes(sample.value)
            runtime = self.runtime
            if self.buffer_bytes > runtime.max_batch_bytes:
                self.next_flush = 0.0  # a batch must fit in one message: send it this tick
            if self.next_flush < runtime.next_due:
                runtime.next_due = self.next_flush
        else:
            self.out.append(DataChange(self.server_handle, self.item_handle, sample))


class SimulatedRuntime:
    """:class:`~mxgateway_sim._runtime.MxAccessRuntime` over the simulated :class:`Plant`."""

    def __init__(
        self,
        plant: Plant,
        users: Sequence[SimUser] = DEFAULT_USERS,
        *,
        max_items: int = DEFAULT_MAX_ITEMS_PER_SESSION,
        reference_cache_bytes: int = DEFAULT_REFERENCE_CACHE_BYTES,
        read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES,
        first_value_delay_s: float = 0.0,
        max_batch_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if not 0 <= first_value_delay_s < float("inf"):
            raise ValueError("first_value_delay_s must be >= 0")
        self._plant = plant
        # Upstream the first OnDataChange arrives 3-8 s after Advise on a fresh client.
        self._first_value_delay = first_value_delay_s
        self._max_items = max_items
        self.max_batch_bytes = max_batch_bytes
        """Estimated value bytes after which a buffered item's batch goes out early."""
        self._references = ReferenceCache(reference_cache_bytes)
        self._read_rows = ReadRowCache(read_cache_bytes) if read_cache_bytes > 0 else None
        self._users_by_name = {u.name.lower(): u for u in users}
        self._users_by_id = {u.user_id: u for u in users}
        self._users_by_guid = {u.guid.lower(): u for u in users}
        self._sink: EventSink | None = None
        self._registrations: dict[int, int] = {}  # hLMX -> buffered update interval (ms)
        self._items: dict[int, Item] = {}
        # Advised items by reference key, in advise order (the first one answers cached
        # reads): the one item (the common case: no container for the garbage collector
        # to walk), or a dict as an ordered set of two or more (O(1) advise/unadvise
        # however many items; turned into nothing but None once empty).
        self._advised_by_key: dict[str, Item | dict[Item, None]] = {}
        self._advised_generation = 0
        """Changes with every change of ``_advised_by_key`` (read rows keep its answer)."""
        self._buffered: dict[Item, None] = {}
        self._next_server_handle = 1
        self._next_item_handle = 1
        self._holding = 0
        self.pending: list[MxRuntimeEvent] = []
        # Earliest next_flush of a buffered item holding samples (inf: none): flushes before
        # it skip the buffered items, so a write or an advise costs the same with 100k of them.
        self.next_due = math.inf

    @property
    def item_count(self) -> int:
        """Items the session holds (the status page shows it)."""
        return len(self._items)

    def tracked_objects(self) -> int:
        """Tracked objects the session holds alive for its items and reads (each item,
        remembered parsed reference and cached read row; the caches are bounded in bytes):
        live, not garbage, for the GC policy's valve (``mxgateway_sim._gcpolicy``)."""
        rows = 0 if self._read_rows is None else len(self._read_rows)
        return len(self._items) + len(self._references) + rows

    def held_objects(self) -> list[object]:
        """What :meth:`tracked_objects` counts, the objects themselves, and the containers
        that hold them (a snapshot): a sliced full collection does not walk them
        (``mxgateway_sim._gcpolicy``)."""
        objects: list[object] = [self._items, self._advised_by_key, *self._items.values()]
        objects += self._references.held_objects()
        if self._read_rows is not None:
            objects += self._read_rows.held_objects()
        return objects

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, sink: EventSink) -> None:
        """Attach to the plant's scan clock."""
        self._sink = sink
        self._plant.attach(self)

    async def close(self) -> None:
        """Detach from the plant; nothing is raised afterwards."""
        await self.release_all()
        self._plant.detach(self)
        self._sink = None

    def flush(self, now: float) -> None:
        """Hand this tick's events (and due buffered batches) to the sink."""
        if self._buffered:
            self._collect_buffered(now)
        self.hand_over()

    def needs_ticks(self) -> bool:
        """True while buffered items may hold samples a later tick's flush sends."""
        return bool(self._buffered)

    def hand_over(self) -> None:
        """Hand the events queued so far to the sink (a plant tick between two slices);
        buffered batches wait for the tick's :meth:`flush`."""
        if self.pending:
            batch = list(self.pending)
            self.pending.clear()  # the same list object: items append to it directly
            if self._sink is not None:
                self._sink(batch)

    def _collect_buffered(self, now: float) -> None:
        """Queue an OnBufferedDataChange for every buffered item whose interval is up."""
        if now < self.next_due:
            return
        events = self.pending
        due = math.inf
        for item in self._buffered:
            if item.buffer and now < item.next_flush:
                due = min(due, item.next_flush)
            elif item.buffer:
                samples = tuple(item.buffer)
                item.buffer.clear()
                item.buffer_bytes = 0
                interval = self._registrations.get(item.server_handle, 0)
                item.next_flush = now + interval / 1000.0
                events.append(
                    BufferedDataChange(
                        item.server_handle, item.item_handle, samples[0].data_type, samples
                    )
                )
        self.next_due = due

    def _emit(self, event: MxRuntimeEvent) -> None:
        self.pending.append(event)
        if self._holding:
            # Inside hold_events(): the events (and any buffered batch due now, in the
            # place flush() would have put it) wait for the one flush at the end.
            if self._buffered:
                self._collect_buffered(time.time())
            return
        self.flush(time.time())

    @contextlib.contextmanager
    def hold_events(self) -> Iterator[None]:
        """Publish the events raised inside the block in one list, when it ends.

        The bulk commands use it: a 10,000-entry WRITE_BULK raises 10,000 OnWriteComplete
        events, and handing them to the sink one by one costs more than the writes. Order
        and sequence numbers are exactly those of one flush per event; a flush from the
        scan clock inside the block (only possible if the block awaits) still publishes
        everything pending, in order.
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self.flush(time.time())

    def defer_events(self) -> None:
        """Hold the events raised from now on until the event loop's next turn, then
        publish them with whatever else is pending, in order (as :meth:`hold_events`).

        The servicer calls it before a single Write*: encoding and publishing the write's
        OnWriteComplete costs more than the write itself, and deferred, it runs once the
        command's reply is on its way instead of before it. The next command on the
        connection arrives in a later turn, so it finds the event published.
        """
        self._holding += 1
        asyncio.get_running_loop().call_soon(self._release_deferred)

    def _release_deferred(self) -> None:
        self._holding -= 1
        if not self._holding:
            self.flush(time.time())

    # -- registrations and items ---------------------------------------------------------

    def _check_server(self, server_handle: int) -> None:
        if server_handle not in self._registrations:
            raise invalid_arg(f"unknown server handle {server_handle}")

    def _item(self, server_handle: int, item_handle: int) -> Item:
        self._check_server(server_handle)
        item = self._items.get(item_handle)
        if item is None or item.server_handle != server_handle:
            raise invalid_arg(
                f"unknown item handle {item_handle} for server handle {server_handle}"
            )
        return item

    async def register(self, client_name: str) -> int:
        """Register -> hLMX (1, 2, ...)."""
        if len(self._registrations) >= self._max_items:
            raise LimitError(
                f"the session holds {len(self._registrations):,} registrations, the limit "
                "(--max-items-per-session); unregister some first",
                overloaded=True,
            )
        handle = self._next_server_handle
        self._next_server_handle += 1
        self._registrations[handle] = DEFAULT_BUFFERED_INTERVAL_MS
        return handle

    async def unregister(self, server_handle: int) -> None:
        """Unregister, removing the registration's items first (in slices: a stop between
        two slices leaves the registration with the items not yet removed)."""
        self._check_server(server_handle)
        items = [i for i in self._items.values() if i.server_handle == server_handle]
        slicer = Slicer()
        for chunk in chunks(items):
            for item in chunk:
                if self._items.get(item.item_handle) is item:
                    self._remove(item)
            await slicer.checkpoint()
        self._registrations.pop(server_handle, None)

    def _resolve(self, ref: ParsedReference) -> tuple[TagState | None, MxStatus | None]:
        state = self._plant.state(ref.path)
        if state is None and ref.path.lower().endswith(".value"):
            state = self._plant.state(ref.path[: -len(".value")])
        if state is None:
            obj = ref.path.split(".", 1)[0]
            if self._plant.object_exists(obj):
                return None, failure(
                    CAT_CONFIGURATION_ERROR,
                    DETAIL_RESOLVING_ATTRIBUTE,
                    "unknown attribute",
                )
            return None, failure(CAT_CONFIGURATION_ERROR, DETAIL_RESOLVING_OBJECT, "unknown object")
        info = state.info
        if info.is_array:
            if ref.dimensions == 0:
                # Observed on a real galaxy: a bare array reference fails with 3/1003.
                return None, failure(
                    CAT_COMMUNICATION_ERROR,
                    DETAIL_INDEX_OUT_OF_RANGE,
                    "array attribute referenced without [] or [N]",
                )
            size = max(info.array_dimension, 1)
            if ref.dimensions > 1 or (ref.index is not None and not 1 <= ref.index <= size):
                return None, failure(
                    CAT_CONFIGURATION_ERROR, DETAIL_INDEX_OUT_OF_RANGE, "array index out of range"
                )
        elif ref.dimensions:
            return None, failure(
                CAT_CONFIGURATION_ERROR, DETAIL_INDEX_OUT_OF_RANGE, "attribute is not an array"
            )
        return state, None

    async def add_item(
        self,
        server_handle: int,
        item_definition: str,
        item_context: str = "",
        *,
        buffered: bool = False,
    ) -> int:
        """AddItem/AddItem2/AddBufferedItem: syntax is checked now, existence on Advise."""
        self._check_server(server_handle)
        if len(self._items) >= self._max_items:
            raise LimitError(
                f"the session holds {len(self._items):,} items, the limit "
                "(--max-items-per-session); remove some first",
                overloaded=True,
            )
        try:
            ref = self._references.parse(item_definition, item_context)
        except ReferenceSyntaxError as exc:
            raise invalid_arg(str(exc)) from None
        state, error = self._resolve(ref)
        handle = self._next_item_handle
        self._next_item_handle += 1
        self._items[handle] = Item(self, server_handle, handle, ref, state, error, buffered)
        return handle

    async def remove_item(self, server_handle: int, item_handle: int) -> None:
        """RemoveItem (an advised item is unadvised first)."""
        self._remove(self._item(server_handle, item_handle))

    def _remove(self, item: Item) -> None:
        self._unadvise(item)
        del self._items[item.item_handle]

    async def advise(self, server_handle: int, item_handle: int, *, supervisory: bool) -> None:
        """Advise/AdviseSupervisory; a second advise of the same item is a no-op."""
        item = self._item(server_handle, item_handle)
        if item.advised:
            return
        item.advised = True
        item.supervisory = supervisory
        if self._first_value_delay > 0:
            # Like MXAccess: the item is advised now, its first OnDataChange comes later.
            item.first_value = asyncio.get_running_loop().call_later(
                self._first_value_delay, self._first_value, item
            )
            return
        self._first_value(item)

    def _first_value(self, item: Item) -> None:
        """Start delivering an advised item's values, the current one first."""
        item.first_value = None
        if not item.advised:
            return
        server_handle, item_handle = item.server_handle, item.item_handle
        if item.state is None:
            status = item.error or failure(CAT_CONFIGURATION_ERROR, DETAIL_RESOLVING_OBJECT, "")
            sample = TagSample(None, MX_NO_DATA, QUALITY_BAD_CONFIG_ERROR, time.time(), status)
            item.last = sample
            self._emit(DataChange(server_handle, item_handle, sample))
            return
        same = self._advised_by_key.get(item.key)
        if same is None:
            self._advised_by_key[item.key] = item
        elif isinstance(same, dict):
            same[item] = None
        elif same is not item:
            self._advised_by_key[item.key] = {same: None, item: None}
        self._advised_generation += 1
        self._plant.subscribe(item.state, item)
        if item.buffered:
            interval = self._registrations[server_handle]
            item.next_flush = time.time() + interval / 1000.0
            self._buffered[item] = None
        item.deliver(item.state.sample)
        self.flush(time.time())

    def _first_advised(self, key: str) -> Item | None:
        """The item that answers cached reads of ``key``: the first advised, if any."""
        same = self._advised_by_key.get(key)
        if isinstance(same, dict):
            return next(iter(same), None)
        return same

    async def unadvise(self, server_handle: int, item_handle: int) -> None:
        """UnAdvise; unadvising an item that is not advised is a no-op."""
        self._unadvise(self._item(server_handle, item_handle))

    def _unadvise(self, item: Item) -> None:
        if not item.advised:
            return
        item.advised = False
        item.suspended = False
        if item.first_value is not None:  # advised, first value not yet delivered
            item.first_value.cancel()
            item.first_value = None
            return
        if item.state is not None:
            self._plant.unsubscribe(item.state, item)
            same = self._advised_by_key.get(item.key)
            if same is not None:
                self._advised_generation += 1
                if same is item:
                    del self._advised_by_key[item.key]
                elif isinstance(same, dict):
                    same.pop(item, None)
                    if not same:
                        del self._advised_by_key[item.key]
        if item.buffer is not None and item in self._buffered:
            del self._buffered[item]
            item.buffer.clear()

    async def suspend(self, server_handle: int, item_handle: int) -> MxStatus:
        """Pause an item's updates without removing it."""
        item = self._item(server_handle, item_handle)
        item.suspended = True
        return STATUS_OK

    async def activate(self, server_handle: int, item_handle: int) -> MxStatus:
        """Resume a suspended item; it gets the current value at once."""
        item = self._item(server_handle, item_handle)
        if item.suspended:
            item.suspended = False
            if item.advised and item.state is not None and item.first_value is None:
                item.deliver(item.state.sample)
                self.flush(time.time())
        return STATUS_OK

    async def set_buffered_update_interval(self, server_handle: int, interval_ms: int) -> None:
        """Interval of OnBufferedDataChange deliveries for the registration's buffered items."""
        self._check_server(server_handle)
        if interval_ms < 0:
            raise invalid_arg("the buffered update interval cannot be negative")
        self._registrations[server_handle] = interval_ms

    # -- writes and security -------------------------------------------------------------

    async def authenticate_user(self, server_handle: int, user: str, password: str) -> int:
        """User id of a known user with the right password, else 0."""
        self._check_server(server_handle)
        name = user.rsplit("\\", 1)[-1].lower()
        found = self._users_by_name.get(name)
        if found is None or found.password != password:
            return 0
        return found.user_id

    async def archestra_user_to_id(self, server_handle: int, user_guid: str) -> int:
        """User id of the user with this GUID, else 0."""
        self._check_server(server_handle)
        found = self._users_by_guid.get(user_guid.strip("{}").lower())
        return found.user_id if found else 0

    def _security(self, item: Item, request: WriteRequest) -> MxStatus | None:
        assert item.state is not None
        info = item.state.info
        classification = info.security_classification
        if classification == 6 or info.mx_attribute_category not in WRITEABLE_CATEGORIES:
            return failure(
                CAT_OPERATIONAL_ERROR,
                DETAIL_NOT_WRITEABLE,
                "attribute is not writeable",
                SRC_RESPONDING_AUTOMATION_OBJECT,
            )
        if not request.secured:
            if classification == 2 and not item.supervisory:
                return failure(CAT_SECURITY_ERROR, DETAIL_SECURED_WRITE, "SecuredWrite attribute")
            if classification == 3 and not item.supervisory:
                return failure(CAT_SECURITY_ERROR, DETAIL_VERIFIED_WRITE, "VerifiedWrite attribute")
            return None
        if request.user_id not in self._users_by_id:
            return failure(
                CAT_SECURITY_ERROR,
                DETAIL_USER_NOT_HAVING_ACCESS_RIGHTS,
                "current user is not authenticated",
            )
        if classification == 3:
            verifier = self._users_by_id.get(request.verifier_user_id)
            if verifier is None or request.verifier_user_id == request.user_id:
                return failure(
                    CAT_SECURITY_ERROR,
                    DETAIL_VERIFIED_WRITE,
                    "VerifiedWrite needs a second, different authenticated user",
                )
            if not verifier.can_verify:
                return failure(
                    CAT_SECURITY_ERROR,
                    DETAIL_VERIFIER_NOT_HAVING_VERIFY_RIGHTS,
                    "verifier lacks verify rights",
                )
        return None

    def _target_value(self, item: Item, value: MxPythonValue) -> MxPythonValue:
        assert item.state is not None
        info = item.state.info
        index = item.index
        if index is None:
            coerced = coerce(value, info.mx_data_type, array=info.is_array)
            current = item.state.sample.value
            if (
                isinstance(coerced, list)
                and isinstance(current, list)
                and len(coerced) != len(current)
            ):
                raise ConversionError(
                    1004, f"the array has {len(current)} elements, not {len(coerced)}"
                )
            return coerced
        element = coerce(value, info.mx_data_type, array=False)
        current_list = item.state.sample.value
        updated: list[object] = list(current_list) if isinstance(current_list, list) else []
        updated[index - 1] = element
        return updated  # type: ignore[return-value]

    async def write(self, server_handle: int, item_handle: int, request: WriteRequest) -> None:
        """Any Write variant, as upstream: accepted writes return OK, the outcome comes later.

        Only argument errors fail synchronously (E_INVALIDARG, as the COM call throws): an
        unknown handle, an item that is not advised, or one whose type never resolved
        (MXAccess needs the first OnDataChange before a write). Everything else, success or
        a security, conversion or operational failure, is reported only by the
        OnWriteComplete the write raises.
        """
        item = self._item(server_handle, item_handle)
        if not item.advised:
            raise invalid_arg(f"{_NOT_IN_RANGE}: advise the item before writing")
        if item.state is None:
            raise invalid_arg(f"{_NOT_IN_RANGE}: the item's attribute type did not resolve")
        value: MxPythonValue = None
        status = self._security(item, request)
        if status is None:
            try:
                value = self._target_value(item, request.value)
            except ConversionError as exc:
                status = failure(CAT_OPERATIONAL_ERROR, exc.detail, str(exc), SRC_REQUESTING_LMX)
        if status is None:
            ts = request.timestamp.timestamp() if request.timestamp is not None else None
            self._plant.write(item.state, value, ts)
        self._emit(WriteComplete(server_handle, item_handle, status or STATUS_OK))

    # -- reads ---------------------------------------------------------------------------

    async def read(
        self, server_handle: int, references: Sequence[str], timeout_s: float
    ) -> list[ReadResult]:
        """ReadBulk: the plant always has a current value, so a row waits only for the
        first-value delay (an uncached row advises underneath, as upstream)."""
        if server_handle not in self._registrations:
            return [
                ReadResult(r, None, False, f"unknown server handle {server_handle}")
                for r in references
            ]
        results: list[ReadResult | None] = []
        fresh: list[tuple[int, str, ParsedReference, TagState]] = []
        parse = self._references.parse
        for reference in references:
            try:
                ref = parse(reference)
            except ReferenceSyntaxError as exc:
                results.append(ReadResult(reference, None, False, str(exc)))
                continue
            advised = self._first_advised(ref.key)
            if advised is not None and advised.last is not None:
                results.append(_read_row(reference, advised.last, cached=True))
                continue
            state, error = self._resolve(ref)
            if state is None:
                status = error or failure(CAT_CONFIGURATION_ERROR, DETAIL_RESOLVING_OBJECT, "")
                results.append(ReadResult(reference, None, False, status.text, (status,)))
                continue
            fresh.append((len(results), reference, ref, state))
            results.append(None)
        delay = self._first_value_delay
        late = 0 < timeout_s < delay
        if fresh and delay > 0:
            # One wait for the whole call (the rows' advises run side by side here); a
            # timeout shorter than the delay leaves the uncached rows without a value.
            await asyncio.sleep(min(delay, timeout_s) if late else delay)
        for index, reference, ref, state in fresh:
            if late:
                text = f"no OnDataChange within {timeout_s:g} s (first value after {delay:g} s)"
                results[index] = ReadResult(reference, None, False, text)
                continue
            sample = self._plant.current(state)
            if ref.index is not None:
                sample = element_of(sample, ref.index)
            results[index] = _read_row(reference, sample, cached=False)
        return [r for r in results if r is not None]

    def read_memo(self, command: bytes) -> ReadMemo | None:
        """The session's remembered rows for a ReadBulk (``command``: its payload
        serialized), or what the call collects to be remembered; None: no row cache."""
        cache = self._read_rows
        if cache is None:
            return None
        cache.check_epoch(self._plant.resolve_epoch())
        return ReadMemo(cache, command)

    def read_wire(
        self,
        server_handle: int,
        references: Sequence[str] | None,
        max_bytes: int,
        already: int = 0,
        *,
        memo: ReadMemo | None = None,
        rows: list[ReadRow] | None = None,
        part: int | None = None,
    ) -> bytes | None:
        """ReadBulk rows already encoded (``results`` entries of ``BulkReadReply``), through
        the session's :class:`~mxgateway_sim._readrows.ReadRowCache`; None when the call
        must take :meth:`read` (the cache is off, the server handle is unknown, or rows
        would wait for a first-value delay).

        Every row is exactly what :meth:`read` and ``read_reply_bytes`` give for it
        (tests/sim/test_sim_read_rows.py compares them): a reference advised in this session
        answers its item's last value (``was_cached``), any other the plant's current
        value; only the parse, the resolution and the encoding of an unchanged row are
        reused. The value of an attribute only its model drives (nobody advises it, no
        write pins it, not flaky: most of a poller's tags) is computed here as
        :meth:`Plant.current` would, the costly generators many at a time
        (``Plant.BATCHED``), and its row spliced from the reference's constant part, the
        value's bytes and the tail every row of the call shares (``fresh_wire``;
        tests/sim/test_sim_bulk_fast_paths.py compares both). No await: the caller slices
        the call. ``max_bytes`` and ``already`` as for
        ``read_reply_bytes``: the size is checked before the rows are joined, and once the
        rows encoded for this call alone pass it the call returns None (the generic path
        then refuses the reply, sharing each sample's encoded value instead of copying it).
        ``memo``: the call's :meth:`read_memo`; ``rows``: a chunk of its remembered rows,
        read instead of ``references`` (looked up again if one was dropped since);
        ``part``: which chunk of them (its rows are then read by the chunk's
        :class:`~mxgateway_sim._readplan.ReadPlan` where they can be).

        Raises:
            LimitError: the reply would be larger than ``max_bytes``.
        """
        cache = self._read_rows
        if cache is None or self._first_value_delay > 0 or server_handle not in self._registrations:
            if memo is not None:
                memo.spoiled = True
            return None
        plant = self._plant
        cache.check_epoch(plant.resolve_epoch())
        generation = self._advised_generation
        if rows is None or memo is None or not memo.valid:
            texts = references if rows is None else [row.text for row in rows]
            assert texts is not None
            rows = self._read_rows_of(cache, texts, generation, memo)
            part = None
        now = time.time()  # the time of the rows this call computes
        tick = plant.tick
        room = max_bytes - already
        out: Sequence[bytes] | None = None
        if part is not None and len(rows) >= PLAN_MIN_ROWS:
            # A chunk of the remembered call: by its plan, where it has one.
            planned, out = self._planned(cache, part, rows, generation, tick, now, room, memo)
            if planned and out is None:
                return None  # spoiled
        if out is None:
            out = self._row_wires(cache, rows, generation, tick, now, room, memo)
            if out is None:
                return None  # spoiled
        made = sum(map(len, out))
        if made > room:
            return self._spoil(memo)
        check_read_reply(already + made, max_bytes)
        return b"".join(out)

    def _row_wires(
        self,
        cache: ReadRowCache,
        rows: Sequence[ReadRow],
        generation: int,
        tick: int,
        now: float,
        room: int,
        memo: ReadMemo | None,
    ) -> list[bytes] | None:
        """:meth:`read_wire`'s rows, row by row (those computed at ``tick``, ``now``); None
        once the rows encoded for the call pass ``room`` (``memo`` spoiled: the generic
        path refuses the reply)."""
        first_advised = self._first_advised
        current = self._plant.current
        # Rows of attributes only their model drives, computed after the loop (_fresh_rows).
        later: dict[BatchFunction | None, tuple[list[int], list[ReadRow]]] = {}
        # Bytes of the rows encoded by this call: past the room left, the call stops and
        # the generic path refuses the reply (with its message) without copies of the rows.
        made = 0
        out: list[bytes] = []
        append = out.append
        for row in rows:
            if row.generation != generation:
                # The item that answers cached reads of this reference (the first advised).
                row.item = first_advised(row.key)
                row.generation = generation
            item = row.item
            if item is not None:
                sample = item.last
                if sample is not None:
                    if sample is not row.sample or not row.cached:
                        self._encode_read_row(row.text, row, sample, True)
                        made += len(row.wire)
                        if made > room:
                            return self._spoil(memo)
                    append(row.wire)
                    continue
            state = row.state
            if state is None:  # did not resolve (or parse): its failure row
                if row.sample is not None:  # the row last answered an advised item
                    row.sample = None
                    assert row.failed is not None
                    cache.set_wire(row.text, row, self._failure_row(row.text, row.failed))
                append(row.wire)
                continue
            if not row.plain or state.subs or state.dirty or state.override_ts is not None:
                sample = current(state, now)
                index = row.index
                if index is not None:
                    sample = element_of(sample, index)
            else:
                # Plant.current of an attribute that only its model drives (nobody advises
                # it, no write pins it, not flaky, read whole: ReadRow.plain):
                # TagState.changed_since and compute for that case, inline.
                m = state.computed_at
                period = state.period
                if 0 <= m <= tick and (m == tick or not period or tick // period == m // period):
                    sample = state.sample
                else:
                    # Computed after the loop, with the other rows of its generator.
                    batch = row.batch
                    group = later.get(batch)
                    if group is None:
                        later[batch] = group = ([], [])
                    group[0].append(len(out))
                    group[1].append(row)
                    append(b"")
                    continue
            if sample is not row.sample or row.cached:
                if sample.status is STATUS_OK:
                    # _encode_read_row's common case inline (a row read from a changing
                    # plant is encoded anew on every read).
                    wire = good_read_row(row.field, sample, False)
                    row.sample = sample
                    row.cached = False
                    if len(wire) == len(row.wire):
                        row.wire = wire
                    else:
                        cache.set_wire(row.text, row, wire)
                else:
                    self._encode_read_row(row.text, row, sample, False)
                made += len(row.wire)
                if made > room:
                    return self._spoil(memo)
            append(row.wire)
        if later:
            made += self._fresh_rows(later, out, tick, now)
            if made > room:
                return self._spoil(memo)
        return out

    def _planned(
        self,
        cache: ReadRowCache,
        part: int,
        rows: list[ReadRow],
        generation: int,
        tick: int,
        now: float,
        room: int,
        memo: ReadMemo | None,
    ) -> tuple[bool, Sequence[bytes] | None]:
        """(planned, rows): the rows of the memo's chunk ``part`` by its plan (made when
        missing or out of date); planned False: the chunk is read row by row; rows None:
        they passed ``room`` (``memo`` spoiled)."""
        call = None if memo is None else memo.call
        if call is None:
            return False, None
        key = (self._plant.pins, generation)
        known, plan = cache.plan(call, part, key)
        if not known:
            first_advised = self._first_advised
            for row in rows:
                if row.generation != generation:
                    row.item = first_advised(row.key)
                    row.generation = generation
            for shared in call.shared.values():  # the chunk's groups of its last plan
                shared.leave(part)
            plan = plan_rows(rows, key, call.shared, part)
            plan = cache.keep_plan(call, part, key, plan, plan.cost)
            if plan is None:  # not kept: its groups compute nothing
                for shared in call.shared.values():
                    shared.leave(part)
        if plan is None:
            return False, None

        def loose(some: Sequence[ReadRow]) -> list[bytes] | None:
            return self._row_wires(cache, some, generation, tick, now, room, memo)

        out: Sequence[bytes] | None
        planned, out = plan.read(tick, now, good_row_tail(QUALITY_GOOD, now), loose)
        return planned, out

    @staticmethod
    def _fresh_rows(
        later: dict[BatchFunction | None, tuple[list[int], list[ReadRow]]],
        out: list[bytes],
        tick: int,
        now: float,
    ) -> int:
        """Compute the values of ``later``'s rows (attributes only their model drives, by
        how their generator computes many: ``Plant.BATCHED``, None: one at a time) for
        ``tick`` at ``now``, keep them as the attributes' samples (``TagState.compute``)
        and put their encoded rows at their positions in ``out`` (``fresh_rows``); the bytes
        they added."""
        positions: list[int] = []
        rows: list[ReadRow] = []
        values: list[MxPythonValue] = []
        for batch, (where, group) in later.items():
            args = [row.state.gen_args for row in group]  # type: ignore[union-attr]
            if batch is None:
                functions = [row.state.gen_function for row in group]  # type: ignore[union-attr]
                values += [f(p, tick) for f, p in zip(functions, args, strict=True)]
            else:
                values += batch(args, tick)
            positions += where
            rows += group
        return fresh_rows(rows, values, positions, out, tick, now)

    def _read_rows_of(
        self,
        cache: ReadRowCache,
        references: Sequence[str],
        generation: int,
        memo: ReadMemo | None,
    ) -> list[ReadRow]:
        """The cache's row of each reference (made and kept when missing; a malformed one
        gets a row for this call only), collected into ``memo``."""
        get = cache.rows.get
        rows: list[ReadRow] = []
        append = rows.append
        for text in references:
            row = get(text)
            if row is None:
                try:
                    ref = parse_reference(text)
                except ReferenceSyntaxError as exc:  # malformed: its row, not kept
                    wire = read_reply_bytes([ReadResult(text, None, False, str(exc))])
                    row = ReadRow.malformed(text, wire, generation)
                    if memo is not None:
                        memo.spoiled = True
                else:
                    row = self._new_read_row(text, ref)
                    cache.add(text, row, ref)
            append(row)
        if memo is not None:
            memo.collected.append(rows)
        return rows

    @staticmethod
    def _spoil(memo: ReadMemo | None) -> None:
        """A chunk leaves for the generic path: the call is not remembered."""
        if memo is not None:
            memo.spoiled = True

    def _new_read_row(self, text: str, ref: ParsedReference) -> ReadRow:
        """A reference's cache entry."""
        state, _ = self._resolve(ref)
        wire = self._failure_row(text, ref) if state is None else b""
        return ReadRow(text, ref, reference_field(text), state, wire)

    def _failure_row(self, text: str, ref: ParsedReference) -> bytes:
        """The encoded row of a reference that does not resolve (as :meth:`read`)."""
        _, error = self._resolve(ref)
        status = error or failure(CAT_CONFIGURATION_ERROR, DETAIL_RESOLVING_OBJECT, "")
        return read_reply_bytes([ReadResult(text, None, False, status.text, (status,))])

    def _encode_read_row(self, text: str, row: ReadRow, sample: TagSample, cached: bool) -> None:
        if sample.status.ok:
            wire = good_read_row(row.field, sample, cached)
        else:
            wire = read_reply_bytes([_read_row(text, sample, cached=cached)])
        row.sample = sample
        row.cached = cached
        assert self._read_rows is not None
        self._read_rows.set_wire(text, row, wire)

    # -- control -------------------------------------------------------------------------

    async def ping(self) -> None:
        """The simulated worker is always alive."""

    def worker_info(self) -> WorkerInfo:
        """In-process simulated worker."""
        return WorkerInfo(BACKEND_NAME, 1, 0, f"mxgw-sim {__version__} (simulated MXAccess)")

    async def release_all(self) -> ReleaseCounts:
        """UnAdvise all, RemoveItem all, Unregister all; returns the counts.

        The registrations go first, so every call still running on this runtime fails from
        then on, and the items are unadvised in slices (a session of 100k items closes
        without holding the loop).
        """
        registrations = len(self._registrations)
        self._registrations.clear()
        advises = 0
        items = len(self._items)
        slicer = Slicer()
        # By handle, so each item is freed in its own slice (100k items freed at once are
        # tens of ms).
        for chunk in chunks(list(self._items)):
            for handle in chunk:
                item = self._items.pop(handle, None)
                if item is not None and item.advised:
                    self._unadvise(item)
                    advises += 1
            await slicer.checkpoint()
        self._items.clear()
        self._advised_by_key.clear()
        self._advised_generation += 1
        self._buffered.clear()
        self.pending.clear()
        self._references.clear()
        if self._read_rows is not None:
            self._read_rows.clear()
        return ReleaseCounts(advises, items, registrations)


def _approx_bytes(value: object) -> int:
    """A cheap upper bound of the bytes a sample takes on the wire (a character of a string
    is at most 4 bytes of UTF-8; a number, a quality and a timestamp fit in 16)."""
    if isinstance(value, str):
        return 4 * len(value) + 16
    if isinstance(value, list):
        if value and isinstance(value[0], str):
            return sum(4 * len(v) + 16 for v in value if isinstance(v, str)) + 16
        return 16 * len(value) + 16
    return 16


def _read_row(reference: str, sample: TagSample, *, cached: bool) -> ReadResult:
    status = sample.status
    return ReadResult(
        reference,
        sample,
        cached,
        "" if status.ok else status.text or "read failed",
        sample.statuses,
    )


def _conforms(runtime: SimulatedRuntime) -> MxAccessRuntime:
    """Static check (mypy): SimulatedRuntime implements the MxAccessRuntime protocol."""
    return runtime
