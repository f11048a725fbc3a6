"""The command kinds of ``Invoke``: one table for the library, the CLI and the server.

Each :class:`CommandSpec` says what one ``MxCommandKind`` is made of and where it appears:
the ``MxCommand.payload`` member it carries, the ``MxCommandReply.result`` member a success
fills, the API-key scope ``Invoke`` needs for it, whether it is safe to repeat after
UNAVAILABLE, the :class:`~mxgateway.Session` method that issues it and the ``mxgw-py``
command that does. The server's scope check (``mxgateway_sim._auth``), the retry rule
(``mxgateway._retry``) and the server's payload check are derived from :data:`COMMANDS`;
``tests/test_command_table.py`` checks that the library helpers, CLI commands, server
handlers, worker dispatch and fixtures agree with it. Adding a kind: CONTRIBUTING.md.

A kind missing here (newer than this table) needs the ``admin`` scope and is never retried:
both rules fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = [
    "ADMIN_SCOPE",
    "COMMANDS",
    "CommandSpec",
    "command_spec",
    "idempotent_kinds",
    "scope_for_command",
]

_KIND_PREFIX = "MX_COMMAND_KIND_"
ADMIN_SCOPE = "admin"
"""The scope of kinds this table does not know (authorization fails closed)."""

_READ, _WRITE, _SECURE, _EVENTS = "invoke:read", "invoke:write", "invoke:secure", "events:read"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command kind and the names it goes by in each part.

    Attributes:
        kind: The ``MxCommandKind`` number.
        payload: The ``MxCommand.payload`` oneof member the kind requires.
        reply: The ``MxCommandReply.result`` member a success fills (None: no body).
        scope: The API-key scope ``Invoke`` needs for this kind.
        idempotent: Only reads, so the client may repeat it after UNAVAILABLE
            (``mxgateway._retry``).
        session_method: The :class:`~mxgateway.Session` method that issues it (None: only
            through ``Session.invoke``).
        cli: The ``mxgw-py`` command that issues it (None: none).
    """

    kind: int
    payload: str
    reply: str | None
    scope: str
    idempotent: bool = False
    session_method: str | None = None
    cli: str | None = None

    @property
    def name(self) -> str:
        """The enum name without its prefix, e.g. ``ADD_ITEM``."""
        return pb.MxCommandKind.Name(self.kind)[len(_KIND_PREFIX) :]  # type: ignore[arg-type]


def _spec(
    kind: int,
    payload: str,
    reply: str | None,
    scope: str,
    *,
    idempotent: bool = False,
    session: str | None = None,
    cli: str | None = None,
) -> tuple[int, CommandSpec]:
    return kind, CommandSpec(kind, payload, reply, scope, idempotent, session, cli)


# fmt: off
COMMANDS: Mapping[int, CommandSpec] = MappingProxyType(dict([
    _spec(pb.MX_COMMAND_KIND_REGISTER, "register", "register", _READ,
          session="register", cli="register"),
    _spec(pb.MX_COMMAND_KIND_UNREGISTER, "unregister", None, _READ,
          session="unregister", cli="unregister"),
    _spec(pb.MX_COMMAND_KIND_ADD_ITEM, "add_item", "add_item", _READ,
          session="add_item", cli="add-item"),
    _spec(pb.MX_COMMAND_KIND_ADD_ITEM2, "add_item2", "add_item2", _READ, session="add_item2"),
    _spec(pb.MX_COMMAND_KIND_REMOVE_ITEM, "remove_item", None, _READ,
          session="remove_item", cli="remove-item"),
    _spec(pb.MX_COMMAND_KIND_ADVISE, "advise", None, _READ, session="advise", cli="advise"),
    _spec(pb.MX_COMMAND_KIND_ADVISE_SUPERVISORY, "advise_supervisory", None, _READ,
          session="advise_supervisory", cli="advise-supervisory"),
    _spec(pb.MX_COMMAND_KIND_UN_ADVISE, "un_advise", None, _READ,
          session="unadvise", cli="unadvise"),
    _spec(pb.MX_COMMAND_KIND_WRITE, "write", None, _WRITE, session="write", cli="write"),
    _spec(pb.MX_COMMAND_KIND_WRITE2, "write2", None, _WRITE, session="write2", cli="write2"),
    _spec(pb.MX_COMMAND_KIND_WRITE_SECURED, "write_secured", None, _SECURE,
          session="write_secured", cli="write-secured"),
    _spec(pb.MX_COMMAND_KIND_WRITE_SECURED2, "write_secured2", None, _SECURE,
          session="write_secured2"),
    _spec(pb.MX_COMMAND_KIND_AUTHENTICATE_USER, "authenticate_user", "authenticate_user",
          _READ, session="authenticate_user", cli="authenticate-user"),
    _spec(pb.MX_COMMAND_KIND_ARCHESTRA_USER_TO_ID, "archestra_user_to_id",
          "archestra_user_to_id", _READ, idempotent=True, session="archestra_user_to_id"),
    _spec(pb.MX_COMMAND_KIND_SUSPEND, "suspend", None, _READ, session="suspend"),
    _spec(pb.MX_COMMAND_KIND_ACTIVATE, "activate", None, _READ, session="activate"),
    _spec(pb.MX_COMMAND_KIND_ADD_BUFFERED_ITEM, "add_buffered_item", "add_buffered_item",
          _READ, session="add_buffered_item"),
    _spec(pb.MX_COMMAND_KIND_SET_BUFFERED_UPDATE_INTERVAL, "set_buffered_update_interval",
          None, _READ, session="set_buffered_update_interval"),
    _spec(pb.MX_COMMAND_KIND_ADD_ITEM_BULK, "add_item_bulk", "bulk_subscribe", _READ,
          session="add_item_bulk"),
    _spec(pb.MX_COMMAND_KIND_ADVISE_ITEM_BULK, "advise_item_bulk", "bulk_subscribe", _READ,
          session="advise_item_bulk"),
    _spec(pb.MX_COMMAND_KIND_REMOVE_ITEM_BULK, "remove_item_bulk", "bulk_subscribe", _READ,
          session="remove_item_bulk"),
    _spec(pb.MX_COMMAND_KIND_UN_ADVISE_ITEM_BULK, "un_advise_item_bulk", "bulk_subscribe",
          _READ, session="unadvise_item_bulk"),
    _spec(pb.MX_COMMAND_KIND_SUBSCRIBE_BULK, "subscribe_bulk", "bulk_subscribe", _READ,
          session="subscribe_bulk"),
    _spec(pb.MX_COMMAND_KIND_UNSUBSCRIBE_BULK, "unsubscribe_bulk", "bulk_subscribe", _READ,
          session="unsubscribe_bulk"),
    _spec(pb.MX_COMMAND_KIND_WRITE_BULK, "write_bulk", "bulk_write", _WRITE,
          session="write_bulk", cli="write-bulk"),
    _spec(pb.MX_COMMAND_KIND_WRITE2_BULK, "write2_bulk", "bulk_write", _WRITE,
          session="write2_bulk", cli="write2-bulk"),
    _spec(pb.MX_COMMAND_KIND_WRITE_SECURED_BULK, "write_secured_bulk", "bulk_write", _SECURE,
          session="write_secured_bulk", cli="write-secured-bulk"),
    _spec(pb.MX_COMMAND_KIND_WRITE_SECURED2_BULK, "write_secured2_bulk", "bulk_write",
          _SECURE, session="write_secured2_bulk", cli="write-secured2-bulk"),
    # READ_BULK of a tag the session does not advise adds, advises, unadvises and removes it
    # inside the one command: repeating it leaves the session as it was.
    _spec(pb.MX_COMMAND_KIND_READ_BULK, "read_bulk", "bulk_read", _READ, idempotent=True,
          session="read_bulk", cli="read-bulk"),
    _spec(pb.MX_COMMAND_KIND_PING, "ping", None, _READ, idempotent=True, session="ping"),
    _spec(pb.MX_COMMAND_KIND_GET_SESSION_STATE, "get_session_state", "session_state", _READ,
          idempotent=True, session="get_session_state"),
    _spec(pb.MX_COMMAND_KIND_GET_WORKER_INFO, "get_worker_info", "worker_info", _READ,
          idempotent=True, session="get_worker_info"),
    # Not repeated: a retry would lose the events the first attempt drained.
    _spec(pb.MX_COMMAND_KIND_DRAIN_EVENTS, "drain_events", "drain_events", _EVENTS,
          session="drain_events"),
    _spec(pb.MX_COMMAND_KIND_SHUTDOWN_WORKER, "shutdown_worker", None, ADMIN_SCOPE),
    _spec(pb.MX_COMMAND_KIND_SUBSCRIBE_ALARMS, "subscribe_alarms", None, _READ),
    _spec(pb.MX_COMMAND_KIND_UNSUBSCRIBE_ALARMS, "unsubscribe_alarms", None, _READ),
    # The two alarm kinds need the scopes of their RPCs (AcknowledgeAlarm, QueryActiveAlarms).
    _spec(pb.MX_COMMAND_KIND_ACKNOWLEDGE_ALARM, "acknowledge_alarm", "acknowledge_alarm",
          _WRITE),
    _spec(pb.MX_COMMAND_KIND_QUERY_ACTIVE_ALARMS, "query_active_alarms", "query_active_alarms",
          _EVENTS, idempotent=True),
]))
# fmt: on
"""Every command kind this version knows (``MX_COMMAND_KIND_UNSPECIFIED`` excluded)."""


def command_spec(kind: int) -> CommandSpec | None:
    """The table row of ``kind`` (None for UNSPECIFIED and kinds newer than this table)."""
    return COMMANDS.get(kind)


def scope_for_command(kind: int) -> str:
    """The scope ``Invoke`` needs for ``kind``; unknown kinds need ``admin``.

    ``UNSPECIFIED`` needs ``invoke:read``: it names no operation and is answered
    INVALID_REQUEST, which any reader may learn.
    """
    if kind == pb.MX_COMMAND_KIND_UNSPECIFIED:
        return _READ
    spec = COMMANDS.get(kind)
    return ADMIN_SCOPE if spec is None else spec.scope


def idempotent_kinds() -> frozenset[int]:
    """The kinds the client may repeat after UNAVAILABLE (only reads)."""
    return frozenset(k for k, spec in COMMANDS.items() if spec.idempotent)
