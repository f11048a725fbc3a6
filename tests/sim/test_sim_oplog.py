"""Log line formats of `mxgw-sim serve`: text and JSON carry the session prefix and key id."""

from __future__ import annotations

import contextvars
import json
import logging

from mxgateway._logsafe import get_logger
from mxgateway_sim._oplog import (
    JsonFormatter,
    LogContextFilter,
    TextFormatter,
    bind_session,
    session_log_fields,
)

SID = "session-0123456789abcdef0123456789abcdef"


def _record(message: str, *args: object, **extra: str) -> logging.LogRecord:
    logger = get_logger("mxgateway_sim.test_oplog")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    for log_filter in logger.filters:  # the escaping filter, as logging would apply it
        log_filter.filter(record)  # type: ignore[union-attr]
    return record


def test_text_lines_name_the_session_prefix_and_key() -> None:
    record = _record("a session closed", **session_log_fields(SID, "plant-hmi"))
    line = TextFormatter().format(record)
    assert "[session-01234567 key=plant-hmi] a session closed" in line
    assert SID not in line
    plain = TextFormatter().format(_record("keys reloaded"))
    assert "[" not in plain and plain.endswith("mxgateway_sim.test_oplog keys reloaded")


def test_json_lines_have_stable_keys_and_escape_client_text() -> None:
    hostile = 'HMI\n2026-01-01 WARNING forged\u202e"}'
    record = _record("key %s opened a session (%s)", "plant-hmi", hostile, session="session-1")
    line = JsonFormatter().format(record)
    assert line.isascii() and "\n" not in line
    doc = json.loads(line)
    assert list(doc) == ["ts", "level", "logger", "msg", "session"]
    assert doc["level"] == "info" and doc["ts"].endswith("Z")
    assert "\n" not in doc["msg"] and "\u202e" not in doc["msg"]  # escaped by the logger
    assert "\\x0a" in doc["msg"] and "\\u202e" in doc["msg"]


def test_the_call_context_names_the_session() -> None:
    def in_call() -> logging.LogRecord:
        bind_session(session_log_fields(SID, "plant-hmi"))
        record = _record("a read command timed out")
        LogContextFilter().filter(record)
        return record

    record = contextvars.copy_context().run(in_call)
    assert record.session == "session-01234567"  # type: ignore[attr-defined]
    assert record.key == "plant-hmi"  # type: ignore[attr-defined]
    outside = _record("outside any call")
    LogContextFilter().filter(outside)
    assert not hasattr(outside, "session")
