"""A caller cannot forge or disguise a line of the server log through a text field."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
from pathlib import Path

import grpc
from simhelpers import Gw, serve_process

import mxgateway
import mxgateway_mxaccess
import mxgateway_sim
from mxgateway._logsafe import SafeFieldsFilter, escape_log_text, get_logger
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import new_key

FORGED = "2026-12-01 00:00:00,000 WARNING mxgateway_sim keys reloaded: forged"


def test_escaping_covers_line_breaks_and_terminal_controls() -> None:
    text = "a\nb\rc\x1b[2Kd\u2028e\x85f\u202eg\th"
    escaped = escape_log_text(text)
    assert escaped == "a\\x0ab\\x0dc\\x1b[2Kd\\u2028e\\x85f\\u202eg\\x09h"
    assert escape_log_text("Tank01.Level ok") == "Tank01.Level ok"


def test_every_logger_of_the_packages_escapes() -> None:
    """Library, simulator and COM runtime: every module-level logger has the filter."""
    checked = []
    for package in (mxgateway, mxgateway_sim, mxgateway_mxaccess):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, logging.Logger) and value.name.startswith("mxgateway"):
                    assert any(isinstance(f, SafeFieldsFilter) for f in value.filters), info.name
                    checked.append(value.name)
    assert {"mxgateway_sim.sessions", "mxgateway._events", "mxgateway_mxaccess"} <= set(checked)


def test_filter_escapes_arguments_and_keeps_clean_ones() -> None:
    logger = get_logger("mxgateway_sim.test")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("opened %s (%r) n=%d", "x\n" + FORGED, "clean", 3)
        logger.warning("named %(name)s", {"name": "y\r\n" + FORGED})
        logger.warning(ValueError("z\n" + FORGED))
    finally:
        logger.removeHandler(handler)
    lines = [record.getMessage() for record in records]
    assert lines[0] == "opened x\\x0a" + FORGED + " ('clean') n=3"
    assert lines[1] == "named y\\x0d\\x0a" + FORGED
    assert all("\n" not in line for line in lines), lines


async def test_session_name_cannot_forge_a_server_log_line(tmp_path: Path) -> None:
    key = new_key()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key": key}]))
    log = tmp_path / "sim.log"
    args = ["--log-level", "debug", "--api-keys-file", str(keys)]
    async with serve_process(*args, "--galaxy-db", str(tmp_path / "g.db"), log=log) as (proc, at):
        async with grpc.aio.insecure_channel(at) as channel:
            gw = Gw(channel, key)
            sid = await gw.open("evil\n" + FORGED + "\x1b[2K\u2028" + FORGED)
            await gw.ok(sid, "register", client_name="c\r\n" + FORGED)
            await gw.stub.CloseSession(pb.CloseSessionRequest(session_id=sid), metadata=gw.md)
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    text = log.read_text()
    assert "evil\\x0a" + FORGED in text  # the name was logged, escaped
    for line in text.splitlines():
        assert not line.startswith(FORGED), text
        assert "\x1b" not in line and "\u2028" not in line
