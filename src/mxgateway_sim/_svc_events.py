"""``StreamEvents`` and ``StreamEventBatches``: a session's event log on the wire."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable

import grpc

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._events import Subscriber, SubscriberRefused
from mxgateway_sim._oplog import bind_session
from mxgateway_sim._sessions import Session, SessionState
from mxgateway_sim._svc_common import (
    _END_CODE,
    _END_KIND,
    NO_SUCH_SESSION,
    Context,
    ServicerCore,
    _frame,
)
from mxgateway_sim._wire import (
    fault_event,
    unframe,
)


class EventStreams(ServicerCore):
    """``StreamEvents`` and ``StreamEventBatches``: a session's event log on the wire."""

    async def _attach(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> tuple[Session, Subscriber]:
        session = self._find(request.session_id, await self._caller(context))
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, NO_SUCH_SESSION)
        assert session is not None
        bind_session(session.log_fields)
        if session.state is not SessionState.READY:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"the session is {session.state.name.lower()}"
            )
        after = request.after_worker_sequence if request.HasField("after_worker_sequence") else None
        try:
            sub = session.events.attach(after)
        except SubscriberRefused as exc:
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if exc.limit
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            await context.abort(code, str(exc))
        session.touch()
        return session, sub

    async def _events(
        self, request: pb.StreamEventsRequest, context: Context, *, batched: bool
    ) -> AsyncIterator[bytes]:
        session, sub = await self._attach(request, context)
        # Headers now, not with the first event: a client that must not miss an event it
        # is about to cause (a write's OnWriteComplete) waits for them to know it is
        # attached (see docs/protocol.md, "Write outcomes").
        await context.send_initial_metadata(())
        options = self.sessions.options
        max_events = options.batch_max_events if batched else 256
        linger = options.batch_linger_s if batched else 0.0
        linger_events = options.batch_linger_events
        clock = time.monotonic
        sent_at = -1e9
        budget = self.faults.open_stream() if self.faults is not None else None
        try:
            if sub.gap is not None:
                first, missing = sub.gap
                notice = fault_event(
                    session.id,
                    pb.STREAM_FAULT_KIND_REPLAY_GAP,
                    f"events {first}..{first + missing - 1} are no longer in the replay buffer",
                    first,
                    missing,
                    now=time.time(),
                ).SerializeToString()
                yield _frame(notice) if batched else notice
            while True:
                if budget is not None and budget.remaining <= 0:  # fault injection
                    if sub.end is None:
                        await budget.trip(sub, context)  # drop (raises) or stall
                        continue
                    sub.queue.clear()  # the stream ends: send nothing past the budget
                if sub.queue:
                    if linger and len(sub.queue) < linger_events and sub.end is None:
                        # Busy (a message went out less than `linger` ago): wait until
                        # `linger` after it for more events, or until enough are queued
                        # or the stream ends (each publish wakes us to check). A stream
                        # that was quiet for `linger` sends at once.
                        wait = sent_at + linger - clock()
                        if wait > 0:
                            sub.wake.clear()
                            # The timer only wakes us to look again, like a publish does.
                            timer = asyncio.get_running_loop().call_later(wait, sub.wake.set)
                            try:
                                await sub.wake.wait()
                            finally:
                                timer.cancel()
                            continue
                    sent_at = clock()
                    if budget is None:
                        items = sub.take(max_events, options.batch_max_bytes)
                    else:
                        items = sub.take(min(max_events, budget.remaining), options.batch_max_bytes)
                        budget.remaining -= len(items)
                    if batched:
                        yield b"".join(items)
                    else:
                        for item in items:
                            yield unframe(item)
                    continue
                end = sub.end
                if end is not None:
                    notice = fault_event(
                        session.id,
                        _END_KIND[end.reason],
                        end.message,
                        end.first_missing,
                        end.missing,
                        now=time.time(),
                    ).SerializeToString()
                    yield _frame(notice) if batched else notice
                    code = _END_CODE[end.reason]
                    if code is not None:
                        await context.abort(code, end.message)
                    return
                sub.wake.clear()
                await sub.wake.wait()
        finally:
            session.events.detach(sub)
            session.touch()

    def stream_handler(self, *, batched: bool) -> Callable[..., AsyncIterator[bytes]]:
        """StreamEvents (``batched=False``) or StreamEventBatches as an async generator."""
        return functools.partial(self._events, batched=batched)
