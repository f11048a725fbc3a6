"""Fault injection: a :class:`FaultPlan` that makes the simulated gateway misbehave on purpose.

The plan is a frozen, validated description (loadable from JSON for ``mxgw-sim serve
--faults FILE``); :class:`FaultInjector` is its run-time state (per-method call counters,
stream counters, per-session command counters) and applies it to every gateway and Galaxy
RPC in one place (:meth:`FaultInjector.wrap_rpc`, asked by the server's ``AuthInterceptor``). The
event-stream faults (drop, stall) are applied by the event stream loop through
:meth:`FaultInjector.open_stream`.

Everything is deterministic under ``seed``: whether the k-th call of a method fails depends
only on (seed, method, k), never on timing or on other methods' calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import types
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._auth import current_principal, refusal
from mxgateway_sim._sessions import SessionState

if TYPE_CHECKING:
    from mxgateway_sim._events import Subscriber
    from mxgateway_sim._sessions import SessionManager

_GATEWAY_SERVICE = "mxaccess_gateway.v1.MxAccessGateway"
_GALAXY_SERVICE = "galaxy_repository.v1.GalaxyRepository"
GATEWAY_METHODS: frozenset[str] = frozenset(
    m.name for m in pb.DESCRIPTOR.services_by_name["MxAccessGateway"].methods
)
GALAXY_METHODS: frozenset[str] = frozenset(
    m.name for m in gr.DESCRIPTOR.services_by_name["GalaxyRepository"].methods
)
DEFAULT_FLAKY_ONE_IN = 8
WORKER_CRASH_MESSAGE = "the session's worker process exited unexpectedly (simulated crash)"


class FaultPlanError(ValueError):
    """A fault plan (or its JSON file) is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class RpcFault:
    """Faults of one RPC method: a delay before it runs and a fraction failed UNAVAILABLE."""

    delay_s: float = 0.0
    unavailable_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not self.delay_s >= 0.0:
            raise FaultPlanError(f"delay_s must be >= 0, not {self.delay_s!r}")
        if not 0.0 <= self.unavailable_fraction <= 1.0:
            raise FaultPlanError(
                f"unavailable_fraction must be within 0..1, not {self.unavailable_fraction!r}"
            )


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise FaultPlanError(f"{name} must be a non-negative integer or null, not {value!r}")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to break, and how; the default plan breaks nothing but simulated quality.

    Attributes:
        seed: Seed of every random decision (which calls fail).
        rpc: Per-method faults by method name (``"Invoke"``, ``"TestConnection"``, ...;
            ``"*"`` = every gateway and Galaxy method without an entry of its own).
        stream_drop_after_events: An event stream ends with gRPC UNAVAILABLE after sending
            this many events (None: never).
        stream_stall_after_events: An event stream goes silent after this many events: no
            data and no close until the session ends, the server stops, or its bounded queue
            overflows (None: never).
        stream_fault_count: How many event streams (in the order they open) get the drop or
            stall; None = every stream.
        galaxy_delay_s: Extra delay of every GalaxyRepository RPC (a slow database).
        galaxy_probe_timeout_s: How long TestConnection waits for a slow database before it
            answers ``ok = false``.
        test_connection_fails: TestConnection answers ``ok = false`` (database unreachable).
        worker_crash_after_commands: A session's worker "crashes" on its N-th Invoke: the
            session is FAULTED (that command and later ones answer SESSION_FAULTED, streams
            get a SESSION_FAULTED notice). None: never.
        quality_flaky_one_in: One moving attribute in N has simulated quality faults
            (Uncertain / Bad CommFailure windows); 0 = none. Fixed when the server starts.
    """

    seed: int = 0
    rpc: Mapping[str, RpcFault] = field(default_factory=dict)
    stream_drop_after_events: int | None = None
    stream_stall_after_events: int | None = None
    stream_fault_count: int | None = None
    galaxy_delay_s: float = 0.0
    galaxy_probe_timeout_s: float = 5.0
    test_connection_fails: bool = False
    worker_crash_after_commands: int | None = None
    quality_flaky_one_in: int = DEFAULT_FLAKY_ONE_IN

    def __post_init__(self) -> None:
        known = GATEWAY_METHODS | GALAXY_METHODS | {"*"}
        for name, fault in self.rpc.items():
            if name not in known:
                raise FaultPlanError(
                    f"rpc: unknown method {name!r}; expected one of {', '.join(sorted(known))}"
                )
            if not isinstance(fault, RpcFault):
                raise FaultPlanError(f"rpc[{name!r}] must be an RpcFault")
        object.__setattr__(self, "rpc", types.MappingProxyType(dict(self.rpc)))
        _check_count("stream_drop_after_events", self.stream_drop_after_events)
        _check_count("stream_stall_after_events", self.stream_stall_after_events)
        _check_count("stream_fault_count", self.stream_fault_count)
        _check_count("quality_flaky_one_in", self.quality_flaky_one_in)
        if self.worker_crash_after_commands is not None and (
            isinstance(self.worker_crash_after_commands, bool)
            or not isinstance(self.worker_crash_after_commands, int)
            or self.worker_crash_after_commands < 1
        ):
            raise FaultPlanError("worker_crash_after_commands must be a positive integer or null")
        if self.stream_drop_after_events is not None and self.stream_stall_after_events is not None:
            raise FaultPlanError("choose stream_drop_after_events or stream_stall_after_events")
        if not self.galaxy_delay_s >= 0.0:
            raise FaultPlanError("galaxy_delay_s must be >= 0")
        if not self.galaxy_probe_timeout_s > 0.0:
            raise FaultPlanError("galaxy_probe_timeout_s must be > 0")

    # -- decisions -----------------------------------------------------------------------

    def fault_for(self, method: str) -> RpcFault | None:
        """The faults of ``method`` (its own entry, else ``"*"``, else None)."""
        return self.rpc.get(method) or self.rpc.get("*")

    def fails(self, method: str, call_index: int) -> bool:
        """Whether the ``call_index``-th call (0-based) of ``method`` fails UNAVAILABLE."""
        fault = self.fault_for(method)
        if fault is None or fault.unavailable_fraction <= 0.0:
            return False
        digest = hashlib.blake2b(
            f"{self.seed}:{method}:{call_index}".encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < fault.unavailable_fraction

    @property
    def active(self) -> bool:
        """True when the plan injects anything beyond simulated quality faults."""
        return self != FaultPlan(quality_flaky_one_in=self.quality_flaky_one_in, seed=self.seed)

    # -- JSON ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """A plan from its JSON object (keys are the attribute names; unknown keys fail)."""
        if not isinstance(data, Mapping):
            raise FaultPlanError("a fault plan is a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FaultPlanError(
                f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        values = dict(data)
        rpc: dict[str, RpcFault] = {}
        raw_rpc = values.pop("rpc", {}) or {}
        if not isinstance(raw_rpc, Mapping):
            raise FaultPlanError("rpc must be an object of method name -> faults")
        for name, entry in raw_rpc.items():
            if not isinstance(entry, Mapping):
                raise FaultPlanError(f"rpc[{name!r}] must be an object")
            bad = sorted(set(entry) - {"delay_s", "unavailable_fraction"})
            if bad:
                raise FaultPlanError(
                    f"rpc[{name!r}]: unknown key(s) {', '.join(bad)}; "
                    "valid keys: delay_s, unavailable_fraction"
                )
            try:
                rpc[name] = RpcFault(
                    delay_s=float(entry.get("delay_s", 0.0)),
                    unavailable_fraction=float(entry.get("unavailable_fraction", 0.0)),
                )
            except (TypeError, ValueError) as exc:
                raise FaultPlanError(f"rpc[{name!r}]: {exc}") from None
        for key in ("galaxy_delay_s", "galaxy_probe_timeout_s"):
            if key in values:
                if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
                    raise FaultPlanError(f"{key} must be a number")
                values[key] = float(values[key])
        if "test_connection_fails" in values and not isinstance(
            values["test_connection_fails"], bool
        ):
            raise FaultPlanError("test_connection_fails must be true or false")
        for key in ("seed", "quality_flaky_one_in"):
            if key in values and (
                isinstance(values[key], bool) or not isinstance(values[key], int)
            ):
                raise FaultPlanError(f"{key} must be an integer")
        return cls(rpc=rpc, **values)

    @classmethod
    def load(cls, path: str | Path) -> FaultPlan:
        """A plan from a JSON file (FaultPlanError names the problem; OSError when unreadable)."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultPlanError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        try:
            return cls.from_dict(data)
        except FaultPlanError as exc:
            raise FaultPlanError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The plan as its JSON object (``FaultPlan.from_dict(plan.to_dict()) == plan``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rpc":
                value = {
                    k: {"delay_s": v.delay_s, "unavailable_fraction": v.unavailable_fraction}
                    for k, v in value.items()
                }
            out[f.name] = value
        return out


class StreamBudget:
    """How many more events one event stream may send before its drop or stall."""

    __slots__ = ("remaining", "stall")

    def __init__(self, remaining: int, *, stall: bool) -> None:
        self.remaining = remaining
        self.stall = stall

    async def trip(self, sub: Subscriber, context: aio.ServicerContext[Any, Any]) -> None:
        """Drop the stream (UNAVAILABLE) or stall it until the subscriber's stream ends."""
        if not self.stall:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "fault injection: the event stream was dropped"
            )
        while sub.end is None:
            sub.wake.clear()
            await sub.wake.wait()
        sub.queue.clear()  # a stalled stream never sends what piled up


class FaultInjector:
    """The run-time state of a :class:`FaultPlan` in one simulator."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self.active = self.plan.active
        """False: calls pass untouched (no per-call cost when nothing is injected)."""
        self.sessions: SessionManager | None = None
        self._calls: dict[str, int] = {}
        self._commands: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        """UNAVAILABLE answers injected, by method."""
        self.streams_opened = 0
        self.streams_dropped = 0
        self.streams_stalled = 0
        self.crashed_sessions: list[str] = []

    def wrap_rpc(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` with the plan's per-RPC faults (the gateway and Galaxy services;
        others unchanged): what :class:`~mxgateway_sim._auth.AuthInterceptor` serves while
        the plan is :attr:`active`."""
        service, _, name = method.strip("/").partition("/")
        if service not in (_GATEWAY_SERVICE, _GALAXY_SERVICE):
            return handler
        if name == "InvokeStream":
            # While faults are injected the command stream is "not implemented": clients
            # fall back to Invoke, where the plan's command faults apply.
            return _unimplemented()
        return _wrap(handler, name, service == _GALAXY_SERVICE, self)

    def replace(self, plan: FaultPlan) -> None:
        """Switch to another plan and reset the counters (quality faults keep their start value)."""
        self.plan = plan
        self.active = plan.active
        self._calls.clear()
        self._commands.clear()
        self.failed.clear()
        self.streams_opened = self.streams_dropped = self.streams_stalled = 0
        self.crashed_sessions.clear()

    def open_stream(self) -> StreamBudget | None:
        """Called when an event stream starts: its drop/stall budget, or None."""
        plan = self.plan
        index = self.streams_opened
        self.streams_opened += 1
        if plan.stream_fault_count is not None and index >= plan.stream_fault_count:
            return None
        if plan.stream_drop_after_events is not None:
            self.streams_dropped += 1
            return StreamBudget(plan.stream_drop_after_events, stall=False)
        if plan.stream_stall_after_events is not None:
            self.streams_stalled += 1
            return StreamBudget(plan.stream_stall_after_events, stall=True)
        return None

    async def before(
        self, method: str, request: object, context: aio.ServicerContext[Any, Any]
    ) -> None:
        """Apply the method's faults before its handler runs (may abort UNAVAILABLE)."""
        plan = self.plan
        index = self._calls.get(method, 0)
        self._calls[method] = index + 1
        if plan.fails(method, index):
            self.failed[method] = self.failed.get(method, 0) + 1
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"fault injection: {method} is unavailable"
            )
        fault = plan.fault_for(method)
        if fault is not None and fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if method == "Invoke" and plan.worker_crash_after_commands is not None:
            self._count_command(request)

    def _count_command(self, request: object) -> None:
        session_id = getattr(request, "session_id", "")
        # Only the caller's own sessions count: another key's commands must not crash a
        # session they cannot see (and unknown ids must not grow the table).
        principal = current_principal.get()
        if principal is None or self.sessions is None:
            return
        admin = principal.allows("admin")
        if self.sessions.find(session_id, principal.key_id, admin=admin) is None:
            return
        count = self._commands.get(session_id, 0) + 1
        self._commands[session_id] = count
        limit = self.plan.worker_crash_after_commands
        if limit is not None and count == limit:
            self.crash(session_id)

    def crash(self, session_id: str, message: str = WORKER_CRASH_MESSAGE) -> bool:
        """Fault a session as if its worker process died; False when there is no such session.

        A session with a worker process (``--session-isolation process``) loses it for real:
        the worker is killed and reaped, and CloseSession releases nothing, as after a crash.
        """
        session = self.sessions.get(session_id) if self.sessions is not None else None
        if session is None:
            return False
        session.fault(message, cause="injected")
        if session.state is not SessionState.FAULTED:  # closing or closed already
            return False
        crash = getattr(session.runtime, "crash", None)
        if crash is not None:
            crash(message)
        self.crashed_sessions.append(session_id)
        return True

    async def test_connection(self) -> gr.TestConnectionReply | None:
        """The injected TestConnection answer (None: let the database answer)."""
        plan = self.plan
        if plan.test_connection_fails:
            return gr.TestConnectionReply(ok=False)
        if plan.galaxy_delay_s >= plan.galaxy_probe_timeout_s:
            await asyncio.sleep(plan.galaxy_probe_timeout_s)
            return gr.TestConnectionReply(ok=False)
        return None


STREAM_OFF = "InvokeStream is off while faults are injected"
"""The ``UNIMPLEMENTED`` text of a command stream refused (or ended) under a fault plan."""


def _unimplemented() -> grpc.RpcMethodHandler[Any, Any]:
    return refusal(grpc.StatusCode.UNIMPLEMENTED, STREAM_OFF)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, galaxy: bool, injector: FaultInjector
) -> grpc.RpcMethodHandler[Any, Any]:
    async def before(request: object, context: aio.ServicerContext[Any, Any]) -> None:
        await injector.before(method, request, context)
        if galaxy and method != "TestConnection" and injector.plan.galaxy_delay_s > 0:
            await asyncio.sleep(injector.plan.galaxy_delay_s)

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: object, context: aio.ServicerContext[Any, Any]) -> Any:
            await before(request, context)
            if galaxy and method == "TestConnection":
                injected = await injector.test_connection()
                if injected is not None:
                    return injected
                if injector.plan.galaxy_delay_s > 0:
                    await asyncio.sleep(injector.plan.galaxy_delay_s)
            return await inner(request, context)  # type: ignore[arg-type]

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(
            request: object, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await before(request, context)
            result: Any = inner_stream(request, context)  # type: ignore[arg-type]
            if not hasattr(result, "__aiter__"):  # a handler that writes with context.write()
                await result
                return
            try:
                async for message in result:
                    yield message
            finally:
                await result.aclose()  # run the handler's cleanup now, not at GC time

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # no client-streaming methods in these services
