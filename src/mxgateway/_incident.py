"""How the gateway names a failure of its own to a caller: an incident id, never the error.

An unexpected error in a handler (a bug) must not reach the caller as its own text: that
can carry paths, SQL or host names to anyone on the network. The gateway answers
``INTERNAL`` with :func:`incident_details` and logs the traceback under the same id; the
client finds the id again with :func:`incident_of` (one format, shared by both sides).
"""

from __future__ import annotations

import re
import secrets

__all__ = ["incident_details", "incident_of", "new_incident_id"]

_DETAILS = "the gateway failed unexpectedly (incident {id}); its log has the details"
_ID = re.compile(r"\(incident ([0-9a-f]{16})\)")


def new_incident_id() -> str:
    """A fresh id (16 hex digits) that finds one failure in the gateway log."""
    return secrets.token_hex(8)


def incident_details(incident_id: str) -> str:
    """The gRPC status details the gateway answers an unexpected error with."""
    return _DETAILS.format(id=incident_id)


def incident_of(details: str) -> str | None:
    """The incident id in a status's details (:func:`incident_details`), else None."""
    match = _ID.search(details)
    return match.group(1) if match is not None else None
