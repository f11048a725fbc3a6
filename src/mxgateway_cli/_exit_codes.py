"""The exit codes of ``mxgw-py``: one table, shared by every command.

Scripts branch on these numbers, so they never change meaning. ``2`` follows the argparse
convention for usage errors and ``130`` the shell convention for Ctrl+C (128 + SIGINT).
"""

from __future__ import annotations

from enum import IntEnum, unique

__all__ = ["ExitCode"]


@unique
class ExitCode(IntEnum):
    """Process exit status of ``mxgw-py``."""

    OK = 0
    """The command did what it was asked."""
    ERROR = 1
    """An unexpected error (a bug, or a gateway failure no other code describes)."""
    USAGE = 2
    """Bad command line or bad input value; nothing was sent to the gateway."""
    NOT_FOUND = 3
    """Unknown session, object, tag or handle."""
    AUTH = 4
    """The gateway rejected the API key (missing, malformed or unknown)."""
    PERMISSION = 5
    """The API key is valid but lacks the scope the command needs."""
    UNAVAILABLE = 6
    """The gateway could not be reached, or it is not ready (connection refused, TLS failure,
    server shutting down, session limit reached)."""
    TIMEOUT = 7
    """The gateway did not answer within ``--timeout``."""
    MXACCESS = 8
    """The command reached MXAccess and MXAccess reported a failure (HRESULT/status)."""
    PROTOCOL = 9
    """The gateway refused the command (invalid request, session not ready or faulted,
    overloaded, command disabled by policy)."""
    INTERRUPTED = 130
    """Interrupted by Ctrl+C (SIGINT)."""
    BROKEN_PIPE = 141
    """The reader of stdout went away (``mxgw-py ... | head``): 128 + SIGPIPE, as Unix
    tools do; nothing more is printed."""
