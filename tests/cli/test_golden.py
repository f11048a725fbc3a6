"""Every command's JSON against the shared simulator, pinned by golden files.

One scenario runs the commands in a realistic order (open, register, add, advise, stream,
write, secure write, bulk, unadvise, remove, unregister, close) in-process through
``main(argv)``; each command's normalised output is compared with ``golden/<command>.json``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .clirunner import Result, run
from .conftest import SimServer
from .golden import check

LIVE = "L1_Mixer.RunHours"
"""A Double that changes on every scan."""
WRITABLE = "L1_Tank01_InletValve.Cmd"
"""An Integer with security classification Operate: plain writes work."""
SECURED = "L1_Pump01.Cmd"
"""An Integer with security classification SecuredWrite: needs WriteSecured."""


class Scenario:
    """Runs commands against one session and keeps every result by name."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.results: dict[str, Result] = {}
        self.session_id = ""

    def cli(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Result:
        result = run([*argv, "--json", *self.sim.flags], env=env)
        assert result.code == 0, f"{name}: exit {result.code}: {result.err}"
        assert result.err == ""
        self.results[name] = result
        return result

    def session(self, name: str, *argv: str, env: dict[str, str] | None = None) -> Any:
        return self.cli(name, name, "--session-id", self.session_id, *argv, env=env).json()


@pytest.fixture(scope="module")
def scenario(sim: SimServer) -> Scenario:
    s = Scenario(sim)
    opened = s.cli("open-session", "open-session", "--client-name", "golden").json()
    s.session_id = opened["sessionId"]
    hlmx = str(s.session("register", "--client-name", "python-client")["register"]["serverHandle"])
    live = s.session("add-item", "--server-handle", hlmx, "--item", LIVE)["addItem"]["itemHandle"]
    item = str(live)
    s.session("advise", "--server-handle", hlmx, "--item-handle", item)
    s.session("stream-events", "--max-events", "2", "--after-sequence", "0", "--timeout", "30")
    writable = run(
        [
            "add-item",
            "--session-id",
            s.session_id,
            "--server-handle",
            hlmx,
            "--item",
            WRITABLE,
            "--json",
            *sim.flags,
        ]
    ).json()["addItem"]["itemHandle"]
    w = str(writable)
    s.session("advise-supervisory", "--server-handle", hlmx, "--item-handle", w)
    s.session(
        "write", "--server-handle", hlmx, "--item-handle", w, "--type", "int32", "--value", "7"
    )
    s.cli(
        "write-no-wait",
        "write",
        "--session-id",
        s.session_id,
        "--server-handle",
        hlmx,
        "--item-handle",
        w,
        "--type",
        "int32",
        "--value",
        "6",
        "--no-wait",
    )
    s.session(
        "write2",
        "--server-handle",
        hlmx,
        "--item-handle",
        w,
        "--type",
        "int32",
        "--value",
        "8",
        "--timestamp",
        "2026-01-02T03:04:05Z",
    )
    s.session(
        "write-bulk",
        "--server-handle",
        hlmx,
        "--item-handle",
        w,
        "--value",
        "9",
        "--item-handle",
        "9999",
        "--value",
        "10",
        "--type",
        "int32",
    )
    env = {"MXGW_TEST_PASSWORD": "operator"}
    user = s.session(
        "authenticate-user",
        "--server-handle",
        hlmx,
        "--user",
        "operator",
        "--password-env",
        "MXGW_TEST_PASSWORD",
        env=env,
    )["authenticateUser"]["userId"]
    secured = run(
        [
            "add-item",
            "--session-id",
            s.session_id,
            "--server-handle",
            hlmx,
            "--item",
            SECURED,
            "--json",
            *sim.flags,
        ]
    ).json()["addItem"]["itemHandle"]
    run(
        [
            "advise",
            "--session-id",
            s.session_id,
            "--server-handle",
            hlmx,
            "--item-handle",
            str(secured),
            *sim.flags,
        ]
    )
    s.session(
        "write-secured",
        "--server-handle",
        hlmx,
        "--item-handle",
        str(secured),
        "--current-user-id",
        str(user),
        "--type",
        "int32",
        "--value",
        "1",
    )
    s.session("read-bulk", "--server-handle", hlmx, "--item", LIVE, "--item", "Nope.Missing")
    s.session("unadvise", "--server-handle", hlmx, "--item-handle", item)
    s.session("remove-item", "--server-handle", hlmx, "--item-handle", item)
    s.session("unregister", "--server-handle", hlmx)
    s.session("close-session")
    s.cli("galaxy-test-connection", "galaxy-test-connection")
    s.cli("galaxy-last-deploy", "galaxy-last-deploy")
    s.cli("galaxy-discover", "galaxy-discover", "--root-tag-name", "Line1", "--max-depth", "1")
    s.cli("galaxy-watch", "galaxy-watch", "--max-events", "1", "--timeout", "30")
    s.cli("smoke", "smoke", "--item", LIVE, "--max-events", "2")
    return s


GOLDEN_COMMANDS = [
    "open-session",
    "register",
    "add-item",
    "advise",
    "stream-events",
    "advise-supervisory",
    "write",
    "write-no-wait",
    "write2",
    "write-bulk",
    "authenticate-user",
    "write-secured",
    "read-bulk",
    "unadvise",
    "remove-item",
    "unregister",
    "close-session",
    "galaxy-test-connection",
    "galaxy-last-deploy",
    "galaxy-discover",
    "galaxy-watch",
    "smoke",
]


@pytest.mark.parametrize("command", GOLDEN_COMMANDS)
def test_command_json_matches_golden(scenario: Scenario, command: str) -> None:
    check(command, scenario.results[command].out)


def test_json_is_byte_identical_across_runs(sim: SimServer) -> None:
    first = run(["galaxy-discover", "--tag-glob", "L1_*", "--json", *sim.flags])
    second = run(["galaxy-discover", "--tag-glob", "L1_*", "--json", *sim.flags])
    assert first.code == second.code == 0
    assert first.out == second.out


def test_ndjson_discover_is_the_same_objects(sim: SimServer) -> None:
    document = run(["galaxy-discover", "--root-tag-name", "Line1", "--json", *sim.flags]).json()
    lines = run(["galaxy-discover", "--root-tag-name", "Line1", "--ndjson", "--json", *sim.flags])
    assert lines.code == 0
    parsed = [json.loads(line) for line in lines.out.splitlines()]
    assert parsed == document["objects"]
    assert document["objectCount"] == len(parsed) > 1


def test_bench_json_shape(sim: SimServer) -> None:
    result = run(
        [
            "bench-stream-events",
            "--sessions",
            "2",
            "--items",
            "3",
            "--duration-seconds",
            "1",
            "--json",
            *sim.flags,
        ]
    )
    assert result.code == 0, result.err
    document = result.json()
    latency = document.pop("latencyMs")
    assert list(latency) == ["p50", "p95", "p99", "max", "mean"]
    volatile = {
        "durationMs",
        "totalEvents",
        "dataChangeEvents",
        "streamMessages",
        "eventsPerSecond",
    }
    numbers = {k: document.pop(k) for k in volatile}
    assert numbers["totalEvents"] > 0
    assert numbers["durationMs"] >= 1000
    assert all(isinstance(v, float) for v in latency.values())
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    check("bench-stream-events", json.dumps(document))


def test_bench_per_event_stream(sim: SimServer) -> None:
    result = run(
        [
            "bench-stream-events",
            "--per-event",
            "--item",
            LIVE,
            "--duration-seconds",
            "1",
            "--json",
            *sim.flags,
        ]
    )
    assert result.code == 0, result.err
    document = result.json()
    assert document["stream"] == "StreamEvents"
    assert document["itemsPerSession"] == 1
    # One message per event on the per-event stream.
    assert document["streamMessages"] == document["totalEvents"] + document["faultEvents"]


def test_version_golden() -> None:
    result = run(["version", "--json"])
    assert result.code == 0
    assert list(result.json()) == [
        "package",
        "gatewayProtocolVersion",
        "workerProtocolVersion",
        "grpcio",
        "protobuf",
    ]


def test_stream_events_ndjson_and_human_lines(sim: SimServer) -> None:
    session = run(["open-session", "--json", *sim.flags]).json()["sessionId"]
    base = ["--session-id", session, *sim.flags]
    try:
        hlmx = str(run(["register", "--json", *base]).json()["register"]["serverHandle"])
        item = str(
            run(["add-item", "--server-handle", hlmx, "--item", LIVE, "--json", *base]).json()[
                "addItem"
            ]["itemHandle"]
        )
        assert run(["advise", "--server-handle", hlmx, "--item-handle", item, *base]).code == 0
        window = ["--max-events", "2", "--after-sequence", "0", "--timeout", "30"]
        lines = run(["stream-events", *window, "--ndjson", *base])
        assert lines.code == 0, lines.err
        events = [json.loads(line) for line in lines.out.splitlines()]
        assert [e["workerSequence"] for e in events] == ["1", "2"]
        assert all(e["onDataChange"]["itemHandle"] == int(item) for e in events)
        human = run(["stream-events", *window, *base])
        assert human.code == 0, human.err
        assert human.out.splitlines()[0].startswith(f"#1 ON_DATA_CHANGE server={hlmx} item={item}")
    finally:
        assert run(["close-session", *base]).code == 0


def test_discover_pages_through_small_pages(sim: SimServer) -> None:
    whole = run(["galaxy-discover", "--json", *sim.flags])
    paged = run(["galaxy-discover", "--page-size", "3", "--json", *sim.flags])
    assert whole.code == paged.code == 0, paged.err
    # Many pages of three give exactly the objects of the default (one-page) walk.
    assert paged.out == whole.out
    assert whole.json()["objectCount"] > 3


def test_discover_unknown_root_is_not_found(sim: SimServer) -> None:
    result = run(["galaxy-discover", "--root-tag-name", "NoSuchArea", "--json", *sim.flags])
    assert result.code == 3, result.err
    assert result.out == ""
    assert result.error()["code"] == "NOT_FOUND"


def test_discover_failing_midway_still_ends_its_json_document(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway goes away after the first objects were written: the error goes to stderr
    # as one document, and stdout is a finished JSON document of the objects written.
    import grpc

    from mxgateway import GalaxyRepositoryClient, MxGatewayUnavailableError

    pages = GalaxyRepositoryClient.iter_hierarchy

    async def failing_midway(self: GalaxyRepositoryClient, **kwargs: Any) -> Any:
        count = 0
        async for obj in pages(self, **kwargs):
            yield obj
            count += 1
            if count == 2:
                raise MxGatewayUnavailableError(
                    "gateway went away", grpc_code=grpc.StatusCode.UNAVAILABLE
                )

    monkeypatch.setattr(GalaxyRepositoryClient, "iter_hierarchy", failing_midway)
    result = run(["galaxy-discover", "--root-tag-name", "Line1", "--json", *sim.flags])
    assert result.code != 0
    assert result.error()["code"] == "UNAVAILABLE", result.err
    assert len(result.json()["objects"]) == 2, result.out
