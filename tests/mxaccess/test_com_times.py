"""VT_DATE timestamps in fixed zones: what pywin32 hands over, read and written right.

pywin32 gives a VT_DATE as a ``pywintypes.datetime`` labelled UTC whose fields are the
DATE's wall clock, unconverted; it writes the UTC fields of ``astimezone(UTC)`` into a
DATE. The runtime reads wall clocks (naive, pywin32's, OLE floats) in its date zone (the
host's by default), takes any other aware datetime as the instant it says and a FILETIME as
UTC. Zones are injected (``ZoneInfo``) or, for the host's own zone, set with ``TZ`` in a
subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from comhelpers import com_gateway, data_changes
from fake_lmx import FakePlatform, PyWinDateTime, Variant, vt_date

import mxgateway_mxaccess
from mxgateway._events import DataChange as ClientDataChange
from mxgateway._version import WORKER_PROTOCOL_VERSION
from mxgateway.generated import mxaccess_worker_pb2 as wpb
from mxgateway_mxaccess import MxAccessComRuntime
from mxgateway_mxaccess._variant import as_utc, from_variant, time_from_variant, time_to_variant
from mxgateway_sim._domain import MxRuntimeEvent, WriteRequest
from mxgateway_sim._framing import FrameDecoder
from mxgateway_sim._workerwire import EnvelopeHead
from mxgateway_sim.cli import _runtime_options, build_parser
from mxgateway_sim.worker import _parser as worker_parser
from mxgateway_sim.worker import serve
from support import wait_for

UTC = timezone.utc
SESSION = "session-" + "cd" * 16
NEW_YORK = ZoneInfo("America/New_York")  # UTC-5 in winter, UTC-4 in summer
KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+5:30, no daylight saving time
WINTER = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)


def ole(wall: datetime) -> float:
    """An OLE date (VT_R8 days since 1899-12-30) of a naive wall clock."""
    return (wall - datetime(1899, 12, 30)) / timedelta(days=1)


def filetime(instant: datetime) -> int:
    return (instant - datetime(1601, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 10


@pytest.mark.parametrize("zone", [NEW_YORK, KOLKATA, UTC])
@pytest.mark.parametrize("instant", [WINTER, SUMMER])
def test_wall_clocks_are_read_in_the_date_zone(zone: tzinfo, instant: datetime) -> None:
    wall = instant.astimezone(zone).replace(tzinfo=None)
    pywin32 = vt_date(instant, zone)
    assert type(pywin32).__module__ == "pywintypes" and pywin32.tzinfo is UTC
    # pywin32's label says UTC, the fields are the node's wall clock: the zone decides.
    for given in (wall, pywin32):
        assert as_utc(given, zone) == instant
        assert time_from_variant(given, zone) == instant.timestamp()
        assert from_variant(given, zone=zone) == (instant, 6)
    assert time_from_variant(ole(wall), zone) == pytest.approx(instant.timestamp(), abs=1e-3)
    # A FILETIME is UTC whatever the zone; so is an aware datetime that is not pywin32's.
    assert time_from_variant(filetime(instant), zone) == instant.timestamp()
    elsewhere = instant.astimezone(timezone(timedelta(hours=2)))
    assert as_utc(elsewhere, zone) == instant and from_variant(elsewhere, zone=zone)[0] == instant


def test_the_zone_changes_the_instant_of_the_same_wall_clock() -> None:
    wall = PyWinDateTime(2026, 1, 15, 7, 0, tzinfo=UTC)  # 07:00 on the node's clock
    assert as_utc(wall, NEW_YORK) == WINTER  # 07:00 EST is 12:00 UTC
    assert as_utc(wall, UTC) == WINTER - timedelta(hours=5)
    assert as_utc(PyWinDateTime(2026, 7, 15, 17, 30, tzinfo=UTC), KOLKATA) == SUMMER


@pytest.mark.parametrize("zone", [NEW_YORK, KOLKATA, UTC])
@pytest.mark.parametrize("instant", [WINTER, SUMMER])
def test_written_times_are_wall_clocks_labelled_utc(zone: tzinfo, instant: datetime) -> None:
    variant = time_to_variant(instant.astimezone(KOLKATA), Variant, zone=zone)
    assert isinstance(variant, Variant) and variant.vt == 7
    assert isinstance(variant.value, datetime) and variant.value.tzinfo is UTC
    # What pywin32 puts into the DATE: the UTC fields of astimezone(UTC), here the wall
    # clock in the date zone, which the node reads back as the same instant.
    date_fields = variant.value.astimezone(UTC).replace(tzinfo=None)
    assert date_fields == instant.astimezone(zone).replace(tzinfo=None)
    back = PyWinDateTime(*date_fields.timetuple()[:6], tzinfo=UTC)
    assert as_utc(back, zone) == instant


_HOST_PROBE = """
import json, sys
from datetime import datetime, timezone
from mxgateway_mxaccess._variant import as_utc, time_to_variant
instant = datetime.fromisoformat(sys.argv[1])
wall = datetime.fromisoformat(sys.argv[2])
written = time_to_variant(instant, lambda vt, v: v)
print(json.dumps({"read": as_utc(wall).isoformat(), "written": written.isoformat()}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="TZ with zone names is POSIX's")
@pytest.mark.parametrize(
    ("tz", "instant", "wall"),
    [
        ("America/New_York", WINTER, "2026-01-15T07:00:00"),
        ("America/New_York", SUMMER, "2026-07-15T08:00:00"),
        ("Asia/Kolkata", WINTER, "2026-01-15T17:30:00"),
        ("UTC", SUMMER, "2026-07-15T12:00:00"),
    ],
)
def test_the_default_date_zone_is_the_hosts(tz: str, instant: datetime, wall: str) -> None:
    env = {**os.environ, "TZ": tz}
    out = subprocess.run(
        [sys.executable, "-c", _HOST_PROBE, instant.isoformat(), wall],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert datetime.fromisoformat(result["read"]) == instant  # a naive wall clock: host zone
    assert result["written"] == f"{wall}+00:00"  # written as the host's wall clock


async def test_the_runtime_reads_the_nodes_timestamps_in_its_zone() -> None:
    platform = FakePlatform(node_zone=NEW_YORK)
    runtime = MxAccessComRuntime(platform, date_zone=NEW_YORK, idle_s=0.02)
    events: list[MxRuntimeEvent] = []
    await runtime.start(events.extend)
    try:
        h = await runtime.register("times")
        item = await runtime.add_item(h, "Tank01.Setpoint")
        await runtime.advise(h, item, supervisory=False)
        await wait_for(lambda: data_changes(events, item))
        [change] = data_changes(events, item)
        assert platform.server is not None
        [stamped] = platform.server.stamps
        assert change.sample.timestamp == pytest.approx(stamped.timestamp(), abs=1e-6)
        # Write2: the request's instant reaches MXAccess as New York's wall clock.
        await runtime.write(h, item, WriteRequest(value=4, timestamp=WINTER))
        [(_, args)] = [c for c in platform.server.calls if c[0] == "Write2"]
        assert args[3].value.astimezone(UTC).replace(tzinfo=None) == datetime(2026, 1, 15, 7)
    finally:
        await runtime.close()


async def test_the_client_gets_the_instant_over_grpc() -> None:
    platforms: list[FakePlatform] = []
    async with com_gateway(platforms, node_zone=KOLKATA, date_zone=KOLKATA) as (_sim, client):
        session = await client.open_session(client_session_name="times")
        try:
            h = await session.register("com")
            item = await session.add_item(h, "Tank01.Level")
            await session.advise(h, item)
            async for event in session.events():
                assert isinstance(event, ClientDataChange)
                [fake] = [p.server for p in platforms]
                assert fake is not None
                assert event.timestamp == fake.stamps[0]
                break
        finally:
            await session.close()


def test_the_zone_is_a_gateway_flag_passed_to_the_workers() -> None:
    args = build_parser("mxgw-gateway").parse_args(["serve", "--vt-date-zone", "utc"])
    command = _runtime_options(args)["worker_settings"].command
    assert command[-2:] == ("--vt-date-zone", "utc")
    worker = worker_parser().parse_args([*command[3:], "--protocol-version", "1"])
    assert worker.vt_date_zone == "utc"
    assert build_parser().parse_args(["serve"]).vt_date_zone == "local"


ZONE_FLAGS = [((), None), (("--vt-date-zone", "local"), None), (("--vt-date-zone", "utc"), UTC)]


@pytest.mark.parametrize(("flag", "zone"), ZONE_FLAGS)
async def test_the_worker_builds_its_runtime_in_the_zone_it_is_given(
    monkeypatch: pytest.MonkeyPatch, flag: tuple[str, ...], zone: tzinfo | None
) -> None:
    """``mxgw-worker``'s own path from its arguments to the COM runtime it hosts: its parsed
    arguments go to ``serve`` (in this process, on pipes), whose worker builds the runtime
    at the gateway's hello. COM cannot run here, so the runtime is the real one on the fake
    platform, and only what it is built with is checked (the zone's effect is above)."""
    built: list[dict[str, object]] = []

    def runtime_on_the_fake(**keywords: Any) -> MxAccessComRuntime:
        built.append(keywords)
        return MxAccessComRuntime(FakePlatform(), idle_s=0.02, **keywords)

    monkeypatch.setattr(mxgateway_mxaccess, "start_problem", lambda: None)
    monkeypatch.setattr(mxgateway_mxaccess, "MxAccessComRuntime", runtime_on_the_fake)
    version = str(WORKER_PROTOCOL_VERSION)
    args = worker_parser().parse_args(
        ["--session-id", SESSION, "--protocol-version", version, "--runtime", "mxaccess", *flag]
    )
    worker_in, to_worker = os.pipe()
    from_worker, worker_out = os.pipe()
    head = EnvelopeHead(SESSION)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    pipe, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_worker, "rb", 0)
    )
    served = asyncio.ensure_future(serve(args, "n0nce", worker_in, worker_out))
    decoder = FrameDecoder()

    async def receive(body: str) -> wpb.WorkerEnvelope:
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 16), 30)
            assert chunk, f"the worker ended its output before {body}"
            for data in decoder.feed(chunk):
                envelope = wpb.WorkerEnvelope.FromString(data)
                assert envelope.WhichOneof("body") != "worker_fault", envelope
                if envelope.WhichOneof("body") == body:
                    return envelope

    try:
        os.write(to_worker, head.frame(gateway_hello=wpb.GatewayHello(nonce="n0nce")))
        await receive("worker_ready")
        assert built == [{"date_zone": zone}]
        os.write(to_worker, head.frame("bye", worker_shutdown=wpb.WorkerShutdown(reason="t")))
        assert await asyncio.wait_for(served, 30) == 0
    finally:
        served.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await served
        os.close(to_worker)
        pipe.close()
