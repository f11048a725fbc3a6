"""Loggers whose lines a caller cannot forge.

Log messages carry text from the other side (session and client names, references, error
texts, a gateway's fault messages). A newline or a control character in such a field would
let a caller write a line of their own into the server log (``name\\n2026-01-01 WARNING
admin key revoked``), a hostile gateway into a client's, or hide one with terminal escapes.
Every logger of the library, the simulator and the COM runtime comes from
:func:`get_logger`, whose filter escapes those characters (``\\n``, ``\\x1b``,
``\\u2028``...) in the message and its arguments before any handler formats them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

__all__ = ["SafeFieldsFilter", "escape_log_text", "get_logger"]

# C0 controls, DEL, C1 controls (NEL and the rest), Unicode line/paragraph separators and
# the bidirectional overrides that can make a line read differently from what it holds.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_log_text(text: str) -> str:
    """``text`` with every character that could break or disguise a log line escaped."""
    return _UNSAFE.sub(_escape_char, text)


def _safe(value: object) -> object:
    if value is None or isinstance(value, (int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    if _UNSAFE.search(text) is None:
        return value  # unchanged, so %r and friends behave as written
    return escape_log_text(text)


class SafeFieldsFilter(logging.Filter):
    """Escapes control and line-breaking characters in a record's message and arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The message is usually a format string, but may be any object (an exception).
        record.msg = _safe(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_safe(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = {key: _safe(arg) for key, arg in args.items()}
        return True


_FILTER = SafeFieldsFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the escaping filter attached (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
