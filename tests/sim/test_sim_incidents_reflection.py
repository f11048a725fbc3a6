"""Reflection (a bidirectional method served through the interceptor's wrapper) answers an
unexpected error as every other method does: INTERNAL with an incident id, never its text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from test_sim_incidents import _answered, _fail, _logged

from mxgateway_sim import GatewaySimulator


async def _broken_bidi(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    _fail()
    yield  # pragma: no cover - an async generator


async def test_reflection_answers_an_unexpected_error_with_an_incident(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    servicer = reflection.aio.ReflectionServicer  # type: ignore[attr-defined]
    monkeypatch.setattr(servicer, "ServerReflectionInfo", _broken_bidi)
    async with (
        GatewaySimulator() as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        # The handler fails as it starts, before it reads a request: a request written now
        # could meet the ended call (InvalidStateError, or gRPC core's own INTERNAL in place
        # of the gateway's status), so none is written; the read gets the call's status.
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call.read()
        call.cancel()
    _logged(caplog, _answered(failed.value))
