"""The simulator's programs set gRPC's server settings before gRPC loads (_grpcenv)."""

from __future__ import annotations

import os
import sys

import pytest

import mxgateway_sim
from mxgateway_sim._grpcenv import GRPC_EXPERIMENTS, SERVER_EXPERIMENTS, apply_server_experiments
from support.probe import fresh_python

# Runs an entry point of mxgateway_sim._launch with the CLI replaced by a probe that
# reports the variable and whether gRPC was loaded when the CLI started.
_ENTRY = """
import json, os, sys, types
cli = types.ModuleType("mxgateway_sim.cli")
def report():
    print(json.dumps([os.environ.get("GRPC_EXPERIMENTS"), "grpc" in sys.modules]))
    sys.exit(0)
cli.run = cli.run_gateway = report
sys.modules["mxgateway_sim.cli"] = cli
from mxgateway_sim import _launch
_launch.{entry}()
"""


def _entry_sees(entry: str, **env: str) -> list[object]:
    environ = {k: v for k, v in os.environ.items() if k != GRPC_EXPERIMENTS}
    environ.update(env)
    seen: list[object] = fresh_python(_ENTRY.format(entry=entry), environ)
    return seen


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="applied on Linux only")


@linux_only
@pytest.mark.parametrize("entry", ["run", "run_gateway"])
def test_programs_turn_the_event_engine_listener_off_before_grpc_loads(entry: str) -> None:
    assert _entry_sees(entry) == [SERVER_EXPERIMENTS, False]


@pytest.mark.parametrize("value", ["", "-event_engine_client"])
def test_the_operators_own_setting_wins(value: str) -> None:
    assert _entry_sees("run", GRPC_EXPERIMENTS=value) == [value, False]


def test_other_platforms_keep_grpcs_defaults() -> None:
    for platform in ("win32", "darwin"):
        env: dict[str, str] = {}
        assert apply_server_experiments(env, platform=platform) is False
        assert env == {}


def test_nothing_is_set_once_grpc_is_loaded() -> None:
    # This test process has loaded gRPC: setting the variable now would change nothing in
    # it and only mislead its child processes.
    import grpc  # noqa: F401

    env: dict[str, str] = {}
    assert apply_server_experiments(env) is False
    assert env == {}


def test_the_package_exports_resolve_to_their_modules() -> None:
    import importlib

    for name in mxgateway_sim.__all__:
        home = importlib.import_module(f"mxgateway_sim.{mxgateway_sim._HOME[name]}")
        assert getattr(mxgateway_sim, name) is getattr(home, name)
    assert set(mxgateway_sim._HOME) == set(mxgateway_sim.__all__)
    with pytest.raises(AttributeError):
        _ = mxgateway_sim.NoSuchName  # type: ignore[attr-defined]
