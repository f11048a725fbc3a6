"""A decoding view of the event messages for the typed event stream.

``Session.events()`` reads ``StreamEventBatches`` through classes built at import from the
contract's own descriptors, with one difference: ``OnDataChangeEvent.timestamp`` is read as
the bytes of its ``Timestamp`` instead of a message. The bytes on the wire are the same
(a message field and a ``bytes`` field are both length-delimited), so nothing is lost; what
changes is the cost: reading a nested message makes a wrapper object per event and
comparing two of them compares fields, while the changes of one scan share one timestamp
whose bytes compare with one ``memcmp`` and convert once. Offline that took about a fifth
off decoding a change and reading its value, quality and timestamp (docs/benchmarks.md).

Everything else keeps the contract's shape (field numbers, names and oneofs come from the
generated descriptors, so the view cannot drift from the bindings), and an event the
caller asks to see whole (``DataChange.raw``) is re-parsed as the generated ``MxEvent``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor

from mxgateway.generated import mxaccess_gateway_pb2 as pb

__all__ = ["EventBatchView", "EventView", "full_event", "is_view"]


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        if fd.name == pb.DESCRIPTOR.name:
            _timestamp_as_bytes(proto)
        pool.Add(proto)
        added.add(fd.name)

    add(pb.DESCRIPTOR)
    return pool


def _timestamp_as_bytes(proto: descriptor_pb2.FileDescriptorProto) -> None:
    name = pb.OnDataChangeEvent.DESCRIPTOR.name
    number = pb.OnDataChangeEvent.DESCRIPTOR.fields_by_name["timestamp"].number
    for message in proto.message_type:
        if message.name == name:
            for field in message.field:
                if field.number == number:
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.ClearField("type_name")
                    return
    raise RuntimeError("OnDataChangeEvent.timestamp is missing from the contract")


_POOL = _build_pool()
_PACKAGE = pb.DESCRIPTOR.package

EventBatchView: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{_PACKAGE}.MxEventBatch")
)
"""``MxEventBatch`` as the typed event stream reads it (see the module's docstring)."""

EventView: Any = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.MxEvent"))
"""``MxEvent`` as the typed event stream reads it."""

_full_from = pb.MxEvent.FromString


def is_view(event: object) -> bool:
    """True for an event of the view (not a generated ``MxEvent``)."""
    return type(event) is EventView


def full_event(event: Any) -> pb.MxEvent:
    """The generated ``MxEvent`` of ``event`` (itself when it already is one)."""
    if type(event) is EventView:
        return _full_from(event.SerializeToString())
    full: pb.MxEvent = event
    return full
