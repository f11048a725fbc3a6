"""A misbehaving worker for the gateway-side protocol tests (run as a script).

``python fakeworker.py MODE --protocol-version ...`` (the session id in the hello's envelope)
answers the gateway's hello like ``mxgw-worker`` (with the nonce from
``MXGATEWAY_WORKER_NONCE``), then breaks the protocol the way MODE says:

* ``wrong-version``: its hello carries protocol version 2;
* ``wrong-nonce``: its hello echoes another nonce;
* ``sequence-gap``: after WorkerReady and a heartbeat it sends events 1, 2 and then 4;
* ``zero-frame``: after WorkerReady and a heartbeat it sends a zero-length frame;
* ``break-at-ready``: a zero-length frame right behind WorkerReady;
* ``silent``: after WorkerReady it answers nothing (not even heartbeats);
* ``garbage-reply``: answers each command with a well-formed envelope (in the layout
  ``mxgw-worker`` writes, ``sent_at`` and all) whose reply is not an ``MxCommandReply``.
"""

from __future__ import annotations

import os
import struct
import sys
import time

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_worker_pb2 as wpb


def _send(env: wpb.WorkerEnvelope) -> None:
    data = env.SerializeToString()
    os.write(1, struct.pack("<I", len(data)) + data)


def _read_frame() -> bytes:
    head = os.read(0, 4)
    if len(head) < 4:
        raise SystemExit(0)
    (size,) = struct.unpack("<I", head)
    body = b""
    while len(body) < size:
        chunk = os.read(0, size - len(body))
        if not chunk:
            raise SystemExit(0)
        body += chunk
    return body


def main() -> None:
    mode = sys.argv[1]
    nonce = os.environ["MXGATEWAY_WORKER_NONCE"]
    session = wpb.WorkerEnvelope.FromString(_read_frame()).session_id  # the GatewayHello

    def env(version: int = 1, **body: object) -> wpb.WorkerEnvelope:
        return wpb.WorkerEnvelope(protocol_version=version, session_id=session, **body)  # type: ignore[arg-type]

    hello = wpb.WorkerHello(
        nonce="not-it" if mode == "wrong-nonce" else nonce, process_id=os.getpid()
    )
    _send(env(2 if mode == "wrong-version" else 1, worker_hello=hello))
    _send(env(worker_ready=wpb.WorkerReady(backend_name="fake")))
    if mode in ("sequence-gap", "zero-frame"):
        _read_frame()  # a heartbeat: the session is open now
    if mode == "sequence-gap":
        for seq in (1, 2, 4):
            event = pb.MxEvent(session_id=session, worker_sequence=seq)
            event.family = pb.MX_EVENT_FAMILY_ON_DATA_CHANGE
            event.on_data_change.server_handle = 1
            _send(env(worker_event=wpb.WorkerEvent(event=event)))
    elif mode in ("zero-frame", "break-at-ready"):
        os.write(1, struct.pack("<I", 0))
    while True:  # then read and ignore everything until the gateway closes the channel
        if mode == "silent":
            time.sleep(0.05)
        data = _read_frame()
        if mode == "garbage-reply":
            request = wpb.WorkerEnvelope.FromString(data)
            if request.WhichOneof("body") == "worker_command":
                reply = env(correlation_id=request.correlation_id)
                reply.sent_at.seconds = 1_700_000_000
                body = b"\x0a\x02\xff\xff"  # WorkerCommandReply.reply: two bytes of nothing
                raw = reply.SerializeToString() + b"\x72" + bytes([len(body)]) + body
                os.write(1, struct.pack("<I", len(raw)) + raw)


if __name__ == "__main__":
    main()
