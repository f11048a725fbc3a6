"""A simple simulated alarm monitor over the plant (no gRPC here).

Every deployed attribute flagged ``is_alarm`` is watched: a Boolean alarm attribute is in
alarm while it is true; a numeric one while its value is above a limit derived from its
generator (its 75th percentile over the first 200 scans). Transitions are RAISE, CLEAR and
ACKNOWLEDGE; the active set holds alarms that are active or not yet acknowledged. The
monitor starts on first use (the first alarm RPC or command).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from mxgateway.values import MxPythonValue
from mxgateway_sim._catalog import TagInfo
from mxgateway_sim._domain import (
    CAT_OPERATIONAL_ERROR,
    DETAIL_INVALID_REFERENCE,
    MX_BOOLEAN,
    QUALITY_GOOD,
    STATUS_OK,
    AlarmSnapshot,
    AlarmTransition,
    MxStatus,
    TagSample,
    failure,
)
from mxgateway_sim._plant import Plant

GALAXY_NAME = "ZB"
DETAIL_ALARM_ACKED_ALREADY = 1015

# AlarmConditionState / AlarmTransitionKind numbers (equal to the proto enums).
ACTIVE_UNACKNOWLEDGED = 1
ACTIVE_ACKNOWLEDGED = 2
INACTIVE_UNACKNOWLEDGED = 3
INACTIVE_ACKNOWLEDGED = 4
RAISE = 1
ACKNOWLEDGE = 2
CLEAR = 3
_NAMESPACE = uuid.UUID("5f1c7a52-3a55-4c52-9d8e-6d78677773ff")


Listener = Callable[[list[AlarmTransition]], None]


class _Alarm:
    __slots__ = ("acked", "active", "info", "limit", "monitor", "raises", "snapshot")

    def __init__(self, monitor: AlarmMonitor, info: TagInfo, limit: float | None) -> None:
        self.monitor = monitor
        self.info = info
        self.limit = limit
        self.active = False
        self.acked = True
        self.raises = 0
        self.snapshot: AlarmSnapshot | None = None

    def condition(self, value: MxPythonValue) -> bool:
        if self.info.mx_data_type == MX_BOOLEAN:
            return bool(value)
        if self.limit is None or isinstance(value, (bool, list)) or value is None:
            return False
        return isinstance(value, (int, float)) and value > self.limit

    def deliver(self, sample: TagSample) -> None:
        """Plant callback: evaluate the alarm condition on a new sample."""
        if sample.quality < QUALITY_GOOD:
            return
        self.monitor.evaluate(self, sample)


class AlarmMonitor:
    """Session-less alarm state for the whole simulated galaxy."""

    def __init__(self, plant: Plant) -> None:
        self._plant = plant
        self._alarms: dict[str, _Alarm] = {}
        self._by_guid: dict[str, _Alarm] = {}
        self._listeners: list[Listener] = []
        self._pending: list[AlarmTransition] = []
        self._started = False

    def start(self) -> None:
        """Watch every alarm attribute of the catalog (idempotent)."""
        if self._started:
            return
        self._started = True
        plant = self._plant
        for info in plant.catalog.all_tags():
            if not info.is_alarm or info.is_array:
                continue
            state = plant.state(info.full_tag_reference)
            if state is None:
                continue
            limit = None
            if info.mx_data_type != MX_BOOLEAN:
                values = sorted(
                    float(v)
                    for v in (state.gen(n) for n in range(200))
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                )
                limit = values[len(values) * 3 // 4] if values else None
            alarm = _Alarm(self, info, limit)
            self._alarms[info.full_tag_reference.lower()] = alarm
            plant.subscribe(state, alarm)
            alarm.deliver(state.sample)
        plant.attach(self)
        self.flush(time.time())

    def close(self) -> None:
        """Stop watching and tell listeners the feed ended (an empty list)."""
        if self._started:
            self._plant.detach(self)
        for listener in list(self._listeners):
            listener([])
        self._listeners.clear()

    def add_listener(self, listener: Listener) -> None:
        """Receive every later transition batch."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop receiving transitions."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def flush(self, now: float) -> None:
        """Plant tick hook: hand this tick's transitions to the listeners."""
        if self._pending:
            batch, self._pending = self._pending, []
            for listener in list(self._listeners):
                listener(batch)

    def needs_ticks(self) -> bool:
        """Plant hook: transitions wait for a tick's flush."""
        return bool(self._pending)

    def hand_over(self) -> None:
        """Plant hook between two slices of a long tick: hand on the transitions so far."""
        self.flush(time.time())

    def _snapshot(
        self, alarm: _Alarm, state: int, sample: TagSample, operator: str
    ) -> AlarmSnapshot:
        info = alarm.info
        previous = alarm.snapshot
        raise_time = previous.raise_time if previous else sample.timestamp
        return AlarmSnapshot(
            alarm_guid=str(
                uuid.uuid5(_NAMESPACE, f"{info.full_tag_reference.lower()}#{alarm.raises}")
            ),
            full_reference=f"{GALAXY_NAME}!{info.tag_name}.{info.attribute_name}",
            source_object=info.tag_name,
            type_name="Discrete" if info.mx_data_type == MX_BOOLEAN else "Hi",
            state=state,
            severity=500,
            raise_time=raise_time,
            last_transition_time=sample.timestamp,
            category="Process",
            description=f"{info.tag_name} {info.attribute_name} alarm",
            value=sample.value,
            limit=True if info.mx_data_type == MX_BOOLEAN else alarm.limit,
            data_type=info.mx_data_type,
            operator_user=operator,
        )

    def evaluate(self, alarm: _Alarm, sample: TagSample) -> None:
        """Raise or clear ``alarm`` for a new value."""
        condition = alarm.condition(sample.value)
        if condition and not alarm.active:
            alarm.active, alarm.acked = True, False
            alarm.raises += 1
            alarm.snapshot = None
            snap = self._snapshot(alarm, ACTIVE_UNACKNOWLEDGED, sample, "")
            self._record(alarm, snap, RAISE)
        elif not condition and alarm.active:
            alarm.active = False
            state = INACTIVE_ACKNOWLEDGED if alarm.acked else INACTIVE_UNACKNOWLEDGED
            operator = alarm.snapshot.operator_user if alarm.snapshot else ""
            self._record(alarm, self._snapshot(alarm, state, sample, operator), CLEAR)

    def _record(self, alarm: _Alarm, snap: AlarmSnapshot, kind: int, comment: str = "") -> None:
        if alarm.snapshot is not None:
            self._by_guid.pop(alarm.snapshot.alarm_guid, None)
        alarm.snapshot = snap
        if snap.state == INACTIVE_ACKNOWLEDGED:
            self._by_guid.pop(snap.alarm_guid, None)
        else:
            self._by_guid[snap.alarm_guid] = alarm
        self._pending.append(AlarmTransition(snap, kind, comment))

    def active(self, prefix: str = "") -> list[AlarmSnapshot]:
        """The active set (active or unacknowledged alarms) whose reference starts with prefix."""
        self.start()
        out = []
        for alarm in self._alarms.values():
            snap = alarm.snapshot
            if snap is None or snap.state == INACTIVE_ACKNOWLEDGED:
                continue
            if snap.full_reference.lower().startswith(prefix.lower()):
                out.append(snap)
        return sorted(out, key=lambda s: (s.raise_time, s.full_reference))

    def acknowledge(self, guid: str, reference: str, operator: str, comment: str) -> MxStatus:
        """Acknowledge by GUID or full reference; the status says what happened."""
        self.start()
        alarm = self._by_guid.get(guid.strip("{}").lower()) if guid else None
        if alarm is None and reference:
            wanted = reference.lower()
            alarm = next(
                (
                    a
                    for a in self._alarms.values()
                    if a.snapshot is not None and a.snapshot.full_reference.lower() == wanted
                ),
                None,
            )
        snap = alarm.snapshot if alarm else None
        if alarm is None or snap is None or snap.state == INACTIVE_ACKNOWLEDGED:
            return failure(
                CAT_OPERATIONAL_ERROR, DETAIL_INVALID_REFERENCE, "no such alarm in the active set"
            )
        if alarm.acked:
            return failure(
                CAT_OPERATIONAL_ERROR, DETAIL_ALARM_ACKED_ALREADY, "alarm already acknowledged"
            )
        alarm.acked = True
        state = ACTIVE_ACKNOWLEDGED if alarm.active else INACTIVE_ACKNOWLEDGED
        now = time.time()
        self._record(
            alarm,
            replace(snap, state=state, last_transition_time=now, operator_user=operator),
            ACKNOWLEDGE,
            comment,
        )
        self.flush(now)
        return STATUS_OK
