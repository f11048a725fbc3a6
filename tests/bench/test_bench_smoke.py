"""Each benchmark runs end-to-end in ``--quick`` mode and prints one valid JSON document.

No timing is asserted here (speed is measured in bench/, never in tests): only that every
script starts its servers, runs, cleans up and reports the documented keys, and that
``python -m bench all`` output renders through ``python -m bench.report``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # real processes or TLS handshakes: left out of the fast loop

REPO = Path(__file__).resolve().parents[2]

# benchmark -> a key path that must exist in "results" of its quick run.
EXPECTED: dict[str, tuple[str, ...]] = {
    "parse": ("single_parse", "events_per_s"),
    "unary": ("replay", "bare_stub", "median_us"),
    "events": ("replay", "bare_stream_events", "events_per_s"),
    "bulk": ("replay", "bare_stub", "read", "100", "speedup"),
    "capacity": (),
    "profile": ("bare_stream_events", "top_by_tottime"),
    "stall": ("attacks", "gc_policy_valve_check_100k_items", "loop", "max_loop_cpu_ms"),
    "opcua": ("rows", "read_one_median", "ratio"),
    "startup": ("mxgw_py_version", "median_ms"),
    "worker_hop": ("grpc", "process", "commands_us_median", "ping"),
    "worker_floor": ("round_trip", "worker", "cross_cpu_gap", "median_us"),
    "metrics": ("in_process", "scrape_cpu_ms"),
    "keepup": ("asyncio_min_changes_per_s",),
    "readcpu": ("read", "client_cpu_ms"),
    "wakeups": ("sides", "gateway", "server_sleeps"),
    "gc_valve": ("full_collection", "cpu_ms"),
    "unary_floor": ("modes", "bare_read", "ratio_to_ua_read"),
    "readclient": ("read", "library_vs_bare_stub"),
    "eventsclient": ("tags_50", "library", "replay_cpu_us_per_change"),
    "readtail": ("conditions", "quiet", "library", "slow_reads_by_tag"),
}


def _quick_run(name: str, **env_changes: str) -> dict[str, Any]:
    """``python -m bench <name> --quick`` from the checkout (with ``env_changes``): its
    JSON document, once the run exited 0."""
    env = dict(os.environ, **env_changes)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_run_prints_json(name: str) -> None:
    if name == "wakeups" and not Path("/proc/self/task").is_dir():
        pytest.skip("wakeups counts context switches in Linux's /proc")
    doc = _quick_run(name)
    assert "error" not in doc, doc.get("error")
    assert doc["benchmark"] == name
    assert doc["quick"] is True
    machine = doc["machine"]
    for key in ("cores", "python", "grpcio", "protobuf", "date_utc"):
        assert machine[key], key
    for key in ("results", "targets", "skipped"):
        assert key in doc, key
    node = doc["results"]
    for key in EXPECTED[name]:
        assert key in node, f"{name}: missing {key!r} in {sorted(node)}"
        node = node[key]
    if name == "opcua":
        _check_opcua(doc)
    if name == "keepup":  # each loop measured (uvloop is a dependency off Windows)
        loops = {r["event_loop"] for r in doc["results"]["rounds"]}
        assert loops == ({"asyncio"} if sys.platform == "win32" else {"asyncio", "uvloop"})
    if name == "worker_hop" and sys.platform != "win32":  # the serve default's pair too
        assert "ping" in doc["results"]["commands_uvloop"]["added_us_median"]
    if name == "capacity":
        # Either the ladder ran or the reason it could not is reported.
        assert doc["results"] or doc["skipped"]
    for target in doc["targets"]:
        assert set(target) == {"name", "goal", "measured", "met"}


def test_wakeups_compares_the_library_of_another_checkout() -> None:
    # MXGW_BENCH_BASE_SRC: two more sides, each a client process with its checkout's
    # library against its checkout's simulator (here the same checkout twice).
    if not Path("/proc/self/task").is_dir():
        pytest.skip("wakeups counts context switches in Linux's /proc")
    results = _quick_run("wakeups", MXGW_BENCH_BASE_SRC=str(REPO / "src"))["results"]
    assert results["base_src"] == str(REPO / "src")
    for side in ("library", "base"):
        row = results["sides"][side]
        assert row["library"] == str(REPO / "src" / "mxgateway"), side
        assert row["server_sleeps"] > 0 and row["client_sleeps"] > 0, side


def test_all_quick_renders_as_markdown(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    out = tmp_path / "all.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    # ``all`` runs every benchmark except those that run only when named (asked of bench
    # itself: tests/bench shadows the bench package inside pytest).
    named_only = subprocess.run(
        [sys.executable, "-c", "from bench.__main__ import ONLY_WHEN_NAMED as o; print(*o)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    in_all = set(EXPECTED) - set(named_only)
    assert in_all and in_all != set(EXPECTED), named_only
    assert in_all <= set(doc["benchmarks"])
    for name, bench in doc["benchmarks"].items():
        assert "error" not in bench, (name, bench.get("error"))
    report = subprocess.run(
        [sys.executable, "-m", "bench.report", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "### Targets" in report.stdout
    for name in in_all:
        assert f"### {name} (" in report.stdout, name


# Issue 15's table: row -> goal (highest ratio mxgateway / asyncua that meets it).
OPCUA_GOALS = {
    "events_typed_2000_cpu_per_change": 0.12,
    "events_typed_200_cpu_per_change": 0.12,
    "events_subscribe_2000_cpu_per_change": 0.15,
    "bulk_read_10000": 0.05,
    "bulk_read_10000_advised": 0.05,
    "bulk_read_10000_scan_1s": 0.05,
    "read_one_median": 1.0,
    "read_one_p99": 1.0,
    "ping_vs_read_median": 1.0,
    "write_one_median": 1.0,
    "read_one_median_unary": 1.0,
    "read_one_p99_unary": 1.0,
    "ping_vs_read_median_unary": 1.0,
    "write_one_median_unary": 1.0,
}


def _check_opcua(doc: dict[str, object]) -> None:
    """Every row of issue 15's table is there with both sides, its ratio, spread and goal,
    and the machine load is recorded before and after the run."""
    results = doc["results"]
    assert isinstance(results, dict)
    assert len(results["load_before"]) == 3 and len(results["load_after"]) == 3
    rows = results["rows"]
    assert set(rows) == set(OPCUA_GOALS)
    for name, row in rows.items():
        assert row["goal"] == OPCUA_GOALS[name]
        # A figure is None only when nothing could be measured in the tiny window (a
        # loaded machine): the shape is checked, never the timing.
        for key in ("mxgateway", "asyncua", "ratio", "ratio_min", "ratio_max"):
            assert row[key] is None or isinstance(row[key], float), (name, key, row[key])
        if row["ratio"] is not None:
            assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
            assert isinstance(row["met"], bool)
    # The floor of the unary rows: the bare stub's Invoke against the same simulator.
    references = results["references"]
    assert set(references) == {"bare_stub_read_median", "bare_stub_ping_median"}
    for name, row in references.items():
        assert "goal" not in row and row["rounds"] >= 1, name
        assert all(isinstance(row[k], float) for k in ("mxgateway", "asyncua", "ratio")), row
    keep_up = results["keep_up"]
    for key in ("changes_per_s", "lag_end_s", "late_scans"):
        assert key in keep_up, key
    targets = {t["name"] for t in doc["targets"]}  # type: ignore[union-attr, attr-defined]
    assert len(targets) == len(OPCUA_GOALS) + 1  # + the simulator keeping up


def test_worker_instr_without_valgrind_says_so(tmp_path: Path) -> None:
    """``bench worker_instr`` (callgrind, minutes even when quick, so not run here) reports
    that it skipped everything, and why, where valgrind cannot be found."""
    doc = _quick_run("worker_instr", PATH=str(tmp_path))  # no valgrind there
    assert doc["benchmark"] == "worker_instr"
    assert doc["skipped"] == [{"what": "everything", "why": "valgrind is not installed"}]
