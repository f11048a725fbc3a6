"""The library logs through per-module loggers with a NullHandler and never prints."""

from __future__ import annotations

import asyncio
import importlib
import logging

import grpc
import pytest
from client_fakes import FakeServer, StreamAbort, data_change

from mxgateway import EventGap, GatewayClient
from mxgateway.generated import mxaccess_gateway_pb2 as pb

MODULES = [
    "mxgateway._client",
    "mxgateway._errors",
    "mxgateway._events",
    "mxgateway._options",
    "mxgateway._session",
    "mxgateway._transport",
]
KEY = "mxgw_log_loggingSecret99abcdef"


@pytest.mark.parametrize("name", MODULES)
def test_each_module_has_a_logger_with_a_null_handler(name: str) -> None:
    module = importlib.import_module(name)
    logger = module._log
    assert logger.name == name
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)


async def test_nothing_is_printed_and_no_key_is_logged(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    async def plan(req: pb.StreamEventsRequest, attempt: int):  # type: ignore[no-untyped-def]
        if attempt == 0:
            yield pb.MxEventBatch(events=[data_change(1), data_change(3)])
            yield StreamAbort(grpc.StatusCode.UNAVAILABLE, "drop")
        yield pb.MxEventBatch(events=[data_change(4)])
        await asyncio.Event().wait()

    fake.servicer.batches_plan = plan
    caplog.set_level(logging.DEBUG, logger="mxgateway")
    async with await GatewayClient.connect(
        endpoint=fake.endpoint, api_key=KEY, plaintext=True
    ) as client:
        session = await client.open_session("quiet")
        async with session.events() as events:
            got = [await events.__anext__() for _ in range(4)]
        await session.close()
    assert isinstance(got[1], EventGap)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 events" in m for m in messages)
    assert any("resuming after sequence 3" in m for m in messages)
    assert all(KEY not in m for m in messages)
    assert all(r.name.startswith("mxgateway.") for r in caplog.records)
