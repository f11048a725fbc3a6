"""Alarms: ``StreamAlarms``, ``AcknowledgeAlarm``, ``QueryActiveAlarms`` and the alarm commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._domain import (
    E_MX_OPERATION_FAILED,
    AlarmTransition,
    MxAccessError,
)
from mxgateway_sim._sessions import Session
from mxgateway_sim._svc_common import (
    ALARM_FEED_QUEUE,
    Context,
    ServicerCore,
    _ack_text_problem,
    _BadRequest,
    _status,
    _valid_guid,
)
from mxgateway_sim._wire import (
    alarm_snapshot_to_pb,
    alarm_transition_to_pb,
    status_to_pb,
)


class AlarmService(ServicerCore):
    """Alarms: ``StreamAlarms``, ``AcknowledgeAlarm``, ``QueryActiveAlarms``, alarm commands."""

    async def _subscribe_alarms(
        self, s: Session, p: pb.SubscribeAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        prefix = p.subscription_expression.lower()
        log_ = s.events
        session_id = s.id
        monitor = self.alarms

        def listener(batch: list[AlarmTransition]) -> None:
            if log_.closed is not None:  # the session is gone
                monitor.remove_listener(listener)
                self._alarm_listeners.pop(session_id, None)
                return
            wanted = [t for t in batch if t.alarm.full_reference.lower().startswith(prefix)]
            if wanted:
                log_.publish(wanted)

        await self._unsubscribe_alarms(s, pb.UnsubscribeAlarmsCommand(), r)
        self.alarms.start()
        self.alarms.add_listener(listener)
        self._alarm_listeners[s.id] = listener

    async def _unsubscribe_alarms(
        self, s: Session, p: pb.UnsubscribeAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        listener = self._alarm_listeners.pop(s.id, None)
        if listener is not None:
            self.alarms.remove_listener(listener)

    async def _acknowledge_alarm(
        self, s: Session, p: pb.AcknowledgeAlarmCommand, r: pb.MxCommandReply
    ) -> None:
        if not _valid_guid(p.alarm_guid):
            raise _BadRequest("alarm_guid is not a GUID")
        problem = _ack_text_problem(p.operator_user, p.comment)
        if problem:
            raise _BadRequest(problem)
        status = self.alarms.acknowledge(p.alarm_guid, "", p.operator_user, p.comment)
        if not status.ok:
            raise MxAccessError(E_MX_OPERATION_FAILED, status.text, (status,))
        r.acknowledge_alarm.native_status = 0
        r.statuses.append(status_to_pb(status))

    async def _query_active_alarms(
        self, s: Session, p: pb.QueryActiveAlarmsCommand, r: pb.MxCommandReply
    ) -> None:
        snapshots = self.alarms.active(p.alarm_filter_prefix)
        r.query_active_alarms.snapshots.extend(alarm_snapshot_to_pb(a) for a in snapshots)
        r.query_active_alarms.SetInParent()

    async def AcknowledgeAlarm(
        self, request: pb.AcknowledgeAlarmRequest, context: Context
    ) -> pb.AcknowledgeAlarmReply:
        reply = pb.AcknowledgeAlarmReply(
            session_id=request.session_id,
            correlation_id=f"gateway-correlation-acknowledge_alarm-{next(self._correlation)}",
        )
        if not (request.alarm_guid or request.alarm_full_reference) or (
            request.alarm_guid and not _valid_guid(request.alarm_guid)
        ):
            reply.protocol_status.CopyFrom(
                _status(
                    pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST,
                    "give alarm_guid (a GUID) or alarm_full_reference",
                )
            )
            return reply
        problem = _ack_text_problem(request.operator_user, request.comment)
        if problem:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST, problem)
            )
            return reply
        status = self.alarms.acknowledge(
            request.alarm_guid, request.alarm_full_reference, request.operator_user, request.comment
        )
        reply.status.CopyFrom(status_to_pb(status))
        if status.ok:
            reply.protocol_status.CopyFrom(_status(pb.PROTOCOL_STATUS_CODE_OK, "OK"))
        else:
            reply.protocol_status.CopyFrom(
                _status(pb.PROTOCOL_STATUS_CODE_MXACCESS_FAILURE, status.text)
            )
            reply.hresult = E_MX_OPERATION_FAILED
        return reply

    async def StreamAlarms(
        self, request: pb.StreamAlarmsRequest, context: Context
    ) -> AsyncIterator[pb.AlarmFeedMessage]:
        prefix = request.alarm_filter_prefix.lower()
        queue: asyncio.Queue[list[AlarmTransition] | None] = asyncio.Queue(ALARM_FEED_QUEUE)

        def end() -> None:
            while queue.full():  # make room for the end marker
                queue.get_nowait()
            queue.put_nowait(None)

        def listener(batch: list[AlarmTransition]) -> None:
            if not batch:  # the monitor closed (shutdown)
                end()
                return
            wanted = [t for t in batch if t.alarm.full_reference.lower().startswith(prefix)]
            if not wanted:
                return
            if queue.full():  # a subscriber this slow is disconnected, never silently thinned
                self.alarms.remove_listener(listener)
                end()
                return
            queue.put_nowait(wanted)

        active = self.alarms.active(request.alarm_filter_prefix)
        self.alarms.add_listener(listener)
        try:
            for snapshot in active:
                yield pb.AlarmFeedMessage(active_alarm=alarm_snapshot_to_pb(snapshot))
            yield pb.AlarmFeedMessage(
                snapshot_complete=pb.AlarmSnapshotComplete(active_alarm_count=len(active))
            )
            while True:
                batch = await queue.get()
                if batch is None:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "the alarm feed ended (shutdown or overflow)"
                    )
                    return
                for transition in batch:
                    yield pb.AlarmFeedMessage(transition=alarm_transition_to_pb(transition))
        finally:
            self.alarms.remove_listener(listener)

    async def QueryActiveAlarms(
        self, request: pb.QueryActiveAlarmsRequest, context: Context
    ) -> AsyncIterator[pb.ActiveAlarmSnapshot]:
        for snapshot in self.alarms.active(request.alarm_filter_prefix):
            yield alarm_snapshot_to_pb(snapshot)
