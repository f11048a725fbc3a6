"""Bulk commands too large for one message are split, keeping every row and its order."""

from __future__ import annotations

import pytest

from mxgateway import to_mx_value
from mxgateway._chunking import split_bulk_command
from mxgateway.generated import mxaccess_gateway_pb2 as pb


def _write_bulk(n: int) -> pb.MxCommand:
    entries = [
        pb.WriteBulkEntry(item_handle=i + 1, value=to_mx_value(f"v{i:06d}")) for i in range(n)
    ]
    return pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_WRITE_BULK,
        write_bulk=pb.WriteBulkCommand(server_handle=7, entries=entries),
    )


def test_a_command_that_fits_is_sent_as_is() -> None:
    command = _write_bulk(10)
    assert split_bulk_command(command, max_bytes=1 << 20) == [command]


def test_non_bulk_commands_are_never_split() -> None:
    command = pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_ADD_ITEM,
        add_item=pb.AddItemCommand(server_handle=1, item_definition="X" * 5000),
    )
    assert split_bulk_command(command, max_bytes=100) == [command]


@pytest.mark.parametrize("max_bytes", [300, 1000, 4096])
def test_parts_fit_the_budget_and_keep_every_row_in_order(max_bytes: int) -> None:
    command = _write_bulk(500)
    parts = split_bulk_command(command, max_bytes=max_bytes)
    assert len(parts) > 1
    assert all(part.ByteSize() <= max_bytes for part in parts)
    assert all(part.kind == pb.MX_COMMAND_KIND_WRITE_BULK for part in parts)
    assert all(part.write_bulk.server_handle == 7 for part in parts)
    rows = [row for part in parts for row in part.write_bulk.entries]
    assert rows == list(command.write_bulk.entries)


def test_row_count_limit_splits_small_rows_too() -> None:
    command = pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_READ_BULK,
        read_bulk=pb.ReadBulkCommand(
            server_handle=3, tag_addresses=[f"T{i}.PV" for i in range(25)], timeout_ms=250
        ),
    )
    parts = split_bulk_command(command, max_bytes=1 << 20, max_entries=10)
    assert [len(p.read_bulk.tag_addresses) for p in parts] == [10, 10, 5]
    assert all(p.read_bulk.timeout_ms == 250 for p in parts)
    assert [t for p in parts for t in p.read_bulk.tag_addresses] == list(
        command.read_bulk.tag_addresses
    )


def test_handle_lists_split_as_well() -> None:
    command = pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_ADVISE_ITEM_BULK,
        advise_item_bulk=pb.AdviseItemBulkCommand(
            server_handle=2, item_handles=list(range(1, 1001)), supervisory=True
        ),
    )
    parts = split_bulk_command(command, max_bytes=1 << 20, max_entries=300)
    assert [h for p in parts for h in p.advise_item_bulk.item_handles] == list(range(1, 1001))
    assert all(p.advise_item_bulk.supervisory for p in parts)


def test_a_row_larger_than_the_budget_is_refused_naming_it() -> None:
    command = pb.MxCommand(
        kind=pb.MX_COMMAND_KIND_ADD_ITEM_BULK,
        add_item_bulk=pb.AddItemBulkCommand(server_handle=1, tag_addresses=["a.b", "c" * 2000]),
    )
    with pytest.raises(ValueError, match="row 1 of add_item_bulk"):
        split_bulk_command(command, max_bytes=1000)
