"""The gateway reads a ReadBulk reply's rows straight from its bytes only in the exact
layout the worker writes; anything more (a newer worker's field) goes to the generated parse."""

from __future__ import annotations

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim._wire import varint
from mxgateway_sim._workerwire import READ_REPLY_HEAD, read_reply_rows


def test_a_read_reply_with_a_field_after_its_rows_is_not_taken_for_rows() -> None:
    rows = pb.BulkReadReply(
        results=[pb.BulkReadResult(tag_address="Tank01.Level", was_successful=True)]
    ).SerializeToString()
    reply = READ_REPLY_HEAD + varint(len(rows)) + rows
    assert read_reply_rows(reply) == rows
    assert pb.MxCommandReply.FromString(reply).bulk_read.SerializeToString() == rows
    newer = reply + varint(1000 << 3) + b"\x01"  # field 1000, a varint: unknown to us
    assert read_reply_rows(newer) is None  # parsed instead: its rows are still the same
    assert pb.MxCommandReply.FromString(newer).bulk_read.SerializeToString() == rows
    assert read_reply_rows(reply[:-1]) is None  # cut short
    assert read_reply_rows(READ_REPLY_HEAD) is None
