"""A decoding view of the event messages for the typed event stream.

``Session.events()`` reads ``StreamEventBatches`` through classes built at import from the
contract's own descriptors, with one difference: a few message fields are read as the
bytes of their message (:data:`_AS_BYTES`), a data change's ``timestamp`` among them. The
bytes on the wire are the same (a message field and a ``bytes`` field are both
length-delimited), so nothing is lost; what changes is the cost: reading a nested message
makes a wrapper object per event and comparing two of them compares fields, while the
changes of one scan share one timestamp whose bytes compare with one ``memcmp`` and
convert once; and the fields the typed stream never reads from the view (the event's
gateway and worker timestamps, a change's statuses) are parsed as bytes instead of nested
messages. Offline the timestamp took about a fifth off decoding a change and reading its
value, quality and timestamp, the other three about 6% of the instructions left
(docs/benchmarks.md).

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
            _fields_as_bytes(proto)
        pool.Add(proto)
        added.add(fd.name)

    add(pb.DESCRIPTOR)
    return pool


_AS_BYTES = (
    (pb.OnDataChangeEvent, "timestamp"),
    (pb.OnDataChangeEvent, "statuses"),
    (pb.MxEvent, "gateway_timestamp"),
    (pb.MxEvent, "worker_timestamp"),
)
"""Message fields the view reads as the bytes of their message (``statuses``: one
``bytes`` per record). The typed stream compares and converts a data change's timestamp
as bytes and never reads the others from the view (``raw`` and the rarer events parse the
generated ``MxEvent``), so parsing them as bytes spares a nested message each."""


def _fields_as_bytes(proto: descriptor_pb2.FileDescriptorProto) -> None:
    for cls, field_name in _AS_BYTES:
        name = cls.DESCRIPTOR.name
        number = cls.DESCRIPTOR.fields_by_name[field_name].number
        for message in proto.message_type:
            if message.name == name:
                for field in message.field:
                    if field.number == number:
                        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                        field.ClearField("type_name")
                        break
                else:
                    raise RuntimeError(f"{name}.{field_name} is missing from the contract")
                break
        else:
            raise RuntimeError(f"{name} is missing from the contract")


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
