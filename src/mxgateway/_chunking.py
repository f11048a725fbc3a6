"""Splitting of bulk commands that would not fit in one gRPC message.

A bulk command carries one repeated field of rows (``tag_addresses``, ``item_handles`` or
``entries``). When the serialized command is larger than the message budget, or has more
rows than one reply should carry, it is split into several commands of the same kind whose
rows, in order, are exactly the original rows; the caller runs them one after the other and
concatenates the results, so "one result per entry, in input order" still holds.
"""

from __future__ import annotations

from google.protobuf.message import Message

from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["MAX_BULK_ENTRIES", "split_bulk_command"]

MAX_BULK_ENTRIES = 50_000
"""Most rows per request: bounds the size of the reply as well as the request."""

# Upper bound of the bytes protobuf adds around one row: a field tag and a length varint.
_ROW_OVERHEAD = 11
# The repeated field that holds the rows of each bulk payload.
_ROW_FIELD = {
    "add_item_bulk": "tag_addresses",
    "advise_item_bulk": "item_handles",
    "remove_item_bulk": "item_handles",
    "un_advise_item_bulk": "item_handles",
    "subscribe_bulk": "tag_addresses",
    "unsubscribe_bulk": "item_handles",
    "write_bulk": "entries",
    "write2_bulk": "entries",
    "write_secured_bulk": "entries",
    "write_secured2_bulk": "entries",
    "read_bulk": "tag_addresses",
}


def _row_size(row: object) -> int:
    if isinstance(row, Message):
        return row.ByteSize() + _ROW_OVERHEAD
    if isinstance(row, str):
        return len(row.encode("utf-8")) + _ROW_OVERHEAD
    return _ROW_OVERHEAD  # a varint handle


def split_bulk_command(
    command: pb.MxCommand, max_bytes: int, max_entries: int = MAX_BULK_ENTRIES
) -> list[pb.MxCommand]:
    """Return ``command`` itself, or the commands it splits into to respect the limits.

    Raises:
        ValueError: One row alone is larger than ``max_bytes``.
    """
    payload_name = command.WhichOneof("payload")
    row_field = _ROW_FIELD.get(payload_name or "")
    if row_field is None:
        return [command]
    payload = getattr(command, payload_name)  # type: ignore[arg-type]
    if len(getattr(payload, row_field)) <= max_entries and command.ByteSize() <= max_bytes:
        return [command]
    rows = list(getattr(payload, row_field))

    shell = pb.MxCommand()
    shell.CopyFrom(command)
    shell_payload = getattr(shell, payload_name)  # type: ignore[arg-type]
    shell_payload.ClearField(row_field)
    base = shell.ByteSize() + _ROW_OVERHEAD  # the payload's own length prefix may grow

    parts: list[pb.MxCommand] = []
    chunk: list[object] = []
    size = base

    def flush() -> None:
        part = pb.MxCommand()
        part.CopyFrom(shell)
        getattr(getattr(part, payload_name), row_field).extend(chunk)  # type: ignore[arg-type]
        parts.append(part)

    for index, row in enumerate(rows):
        row_size = _row_size(row)
        if base + row_size > max_bytes:
            raise ValueError(
                f"row {index} of {payload_name} is {row_size} bytes, more than the "
                f"{max_bytes}-byte message budget on its own"
            )
        if chunk and (size + row_size > max_bytes or len(chunk) >= max_entries):
            flush()
            chunk = []
            size = base
        chunk.append(row)
        size += row_size
    if chunk:
        flush()
    return parts
