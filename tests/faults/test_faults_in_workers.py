"""The fault-plan tests again, with every session's runtime in its own ``mxgw-worker``
process (``--session-isolation process``): the fault hooks (``sim.fault_session()``,
``worker_crash_after_commands``, RPC delays and failures, stream drops and stalls, a
restart) reach a worker-isolated session as they reach an inline one.

The test functions are those of ``test_fault_plan.py`` that take the ``sim`` or
``isolation`` fixture; only ``isolation`` differs.
"""

from __future__ import annotations

import os
import sys

import grpc
import psutil
import pytest
import test_fault_plan
from faulthelpers import Raw

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import FaultPlan, GatewaySimulator, builtin_catalog
from mxgateway_sim._workers import SessionIsolation
from support import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX worker processes")


def _tests_of(module: object) -> dict[str, object]:
    """The module's tests that take the ``sim`` or ``isolation`` fixture."""
    out = {}
    for name, value in vars(module).items():
        code = getattr(value, "__code__", None)
        if not name.startswith("test_") or code is None:
            continue
        if {"sim", "isolation"} & set(code.co_varnames[: code.co_argcount]):
            out[f"{name}_in_workers"] = value
    return out


globals().update(_tests_of(test_fault_plan))


@pytest.fixture
def isolation() -> SessionIsolation:
    return "process"


async def _worker_pid(raw: Raw, sid: str) -> int:
    reply = await raw.ok(sid, "get_worker_info")
    pid = reply.worker_info.process_id
    assert pid not in (0, os.getpid())
    return pid


async def _reaped(pid: int) -> None:
    """Wait until ``pid`` is gone: killed and reaped (a zombie still exists)."""
    await wait_for(lambda: not psutil.pid_exists(pid), what=f"process {pid} to be reaped")


async def test_fault_session_kills_the_sessions_worker(sim: GatewaySimulator, raw: Raw) -> None:
    """As a real crash: the faulted session's worker process is gone (killed, reaped), its
    commands answer SESSION_FAULTED with the injected message, CloseSession releases nothing
    (the worker took its handles with it); another session's worker runs on."""
    sid = await raw.open()
    keep = await raw.open()
    victim, bystander = await _worker_pid(raw, sid), await _worker_pid(raw, keep)
    h = (await raw.ok(sid, "register", client_name="x")).register.server_handle
    await raw.ok(sid, "add_item", server_handle=h, item_definition="Tank01.Level")
    assert sim.fault_session(sid)
    await _reaped(victim)
    reply = await raw.invoke(sid, "ping")
    assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
    assert "simulated crash" in reply.protocol_status.message
    closed = await raw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=raw.md)
    assert closed.final_state == pb.SESSION_STATE_CLOSED
    assert closed.released_item_count == 0 and closed.released_registration_count == 0
    await raw.ok(keep, "ping")
    assert psutil.pid_exists(bystander) and psutil.Process(bystander).status() != "zombie"


async def test_worker_crash_after_n_commands_kills_the_worker() -> None:
    plan = FaultPlan(worker_crash_after_commands=2)
    async with (
        GatewaySimulator(
            catalog=builtin_catalog(), flaky_one_in=0, faults=plan, session_isolation="process"
        ) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        raw = Raw(channel, sim.api_key)
        sid = await raw.open()
        pid = await _worker_pid(raw, sid)  # command 1
        reply = await raw.invoke(sid, "ping")  # command 2: the worker "crashes"
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_SESSION_FAULTED
        await _reaped(pid)
        assert sim.faults.crashed_sessions == [sid]
