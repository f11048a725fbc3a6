"""The gateway's log lines for operators: text or one JSON object a line, each naming its client.

Every line about a session or a command carries the session id prefix (``session-1a2b3c4d``,
the full id is logged at DEBUG only) and the key id of its owner, so an operator can follow
one client: the fields come from ``extra=session.log_fields`` where a line is written outside
a call (sweep, worker loss), and from the call's context otherwise (the key the interceptor
authenticated and the session the servicer found). Text from callers is escaped by the
loggers' filter (:mod:`mxgateway._logsafe`); the JSON form escapes everything that is not
ASCII on top, so a line is always one line of plain text. Secrets are never in a record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any, Final, Literal

from mxgateway_sim._auth import current_principal

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogContextFilter",
    "LogFormat",
    "TextFormatter",
    "bind_session",
    "configure_logging",
    "session_log_fields",
    "session_prefix",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")

PREFIX_CHARS = 8
"""Hex digits of a session id shown in logs and on the status page (32 of its 128 bits)."""

current_session: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "mxgw_sim_log_session", default=None
)
"""``session_log_fields`` of the session the call being served acts on (None: none yet)."""


def session_prefix(session_id: str) -> str:
    """The short form of a session id for logs and the status page (``session-1a2b3c4d``).

    The full id stays at DEBUG only: with the owner's key it addresses the session, and its
    first 32 bits do not help anyone guess the other 96.
    """
    return session_id[: len("session-") + PREFIX_CHARS]


def session_log_fields(session_id: str, key_id: str) -> dict[str, str]:
    """The ``extra=`` fields of a session's log lines: id prefix and owner key id."""
    return {"session": session_prefix(session_id), "key": key_id}


def bind_session(fields: dict[str, str]) -> None:
    """Name this session on the log lines the current call writes from now on."""
    current_session.set(fields)


class LogContextFilter(logging.Filter):
    """Fills ``record.session`` and ``record.key`` from the call's context when the line did
    not give them (a handler filter: it sees the records of every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            fields = current_session.get()
            if fields is not None:
                record.session = fields["session"]
                record.key = fields["key"]
        if not hasattr(record, "key"):
            principal = current_principal.get()
            if principal is not None:
                record.key = principal.key_id
        return True


def _context(record: logging.LogRecord) -> str:
    session = getattr(record, "session", None)
    key = getattr(record, "key", None)
    parts = []
    if session:
        parts.append(str(session))
    if key:
        parts.append(f"key={key}")
    return f" [{' '.join(parts)}]" if parts else ""


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [session-1a2b3c4d key=ops] message`` (today's form, with context)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.context = _context(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line with stable keys: ``ts`` (RFC 3339 UTC), ``level``, ``logger``,
    ``msg``, then ``session`` and ``key`` when the line concerns one, and ``exc`` (the
    traceback as text) when it carries an exception. ASCII only, so no character a caller
    sent can break or disguise the line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        session = getattr(record, "session", None)
        if session:
            doc["session"] = str(session)
        key = getattr(record, "key", None)
        if key:
            doc["key"] = str(key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=True, default=str)


def configure_logging(level: str, log_format: LogFormat = "text") -> logging.Handler:
    """Log to stderr at ``level`` in ``log_format`` (the root logger's only handler)."""
    handler = logging.StreamHandler()
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
