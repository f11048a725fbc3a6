"""One status rule (failure by category) shared by library, CLI and simulator: they agree."""

from __future__ import annotations

import pytest

from mxgateway import status_failed
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli._cmd_session import event_line
from mxgateway_sim._domain import MxStatus
from mxgateway_sim._wire import status_to_pb

COM_CATEGORIES = range(-1, 9)  # MxStatusCategory: Unknown -1 ... OtherError 8


@pytest.mark.parametrize("com", COM_CATEGORIES)
@pytest.mark.parametrize("success", [0, 1, -1])
def test_library_cli_and_simulator_agree(com: int, success: int) -> None:
    sim = MxStatus(success, com, 1, 0)
    wire = status_to_pb(sim)
    expected_ok = com in (0, 1)  # OK and PENDING only, whatever `success` says
    assert sim.ok is expected_ok
    assert status_failed(wire) is not expected_ok
    event = pb.MxEvent(worker_sequence=1, family=pb.MX_EVENT_FAMILY_ON_WRITE_COMPLETE)
    event.on_write_complete.statuses.append(wire)
    assert f"ok={expected_ok}" in event_line(event)


def test_unset_and_newer_categories() -> None:
    assert not status_failed(pb.MxStatusProxy(success=0))  # proto3 defaults say nothing
    assert status_failed(pb.MxStatusProxy(success=1, category=11))  # type: ignore[arg-type]
