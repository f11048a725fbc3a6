"""An unexpected error in any servicer method reaches the caller as INTERNAL with an incident
id, never as its own text; the gateway log has the traceback under that id; the client
raises :class:`MxGatewayInternalError` naming the id."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from ophelpers import http_get, scrape
from simhelpers import Gw, command

from mxgateway import (
    ClientOptions,
    GatewayClient,
    MxGatewayInternalError,
    MxGatewayProtocolError,
)
from mxgateway._incident import incident_details, incident_of
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import GatewaySimulator, SimulatedRuntime
from mxgateway_sim.galaxy._service import GalaxyRepositoryServicer, GalaxyService

SECRET = "cannot open /srv/plant/secret.mdf as sa@db-host-7: SELECT * FROM users"
"""What the failing code says: internals no caller may see."""


class _Broken(RuntimeError):
    pass


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise _Broken(SECRET)


class _BrokenPing(SimulatedRuntime):
    async def ping(self) -> None:
        _fail()


def _answered(exc: grpc.aio.AioRpcError) -> str:
    """The incident id of an INTERNAL answer that shows nothing of the failure."""
    assert exc.code() is grpc.StatusCode.INTERNAL, exc
    details = exc.details() or ""
    assert SECRET not in details and "_Broken" not in details and "Unexpected" not in details
    incident = incident_of(details)
    assert incident is not None, details
    assert details == incident_details(incident)
    return incident


def _logged(caplog: pytest.LogCaptureFixture, incident: str) -> BaseException:
    """The exception the gateway logged under ``incident`` (one record), its frames kept."""
    records = [r for r in caplog.records if incident in r.getMessage()]
    assert len(records) == 1, caplog.records
    (record,) = records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], _Broken)
    return record.exc_info[1]


def _last_frame(exc: BaseException) -> str:
    return traceback.extract_tb(exc.__traceback__)[-1].name


async def test_a_command_that_fails_unexpectedly_answers_internal_with_an_incident(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # On Invoke and InvokeStream: INTERNAL, the id, nothing of the exception's text; the
    # log has the exception with the frame it was raised in, under that id.
    caplog.set_level(logging.ERROR)
    async with (
        GatewaySimulator(runtime_factory=_BrokenPing) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        gw = Gw(channel, sim.api_key)
        sid = await gw.open()
        request = pb.MxCommandRequest(session_id=sid, command=command("ping"))
        incidents = []
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await gw.stub.Invoke(request, metadata=gw.md)
        incidents.append(_answered(unary.value))
        stream = gw.stub.InvokeStream(iter([request]), metadata=gw.md)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stream:
                pass
        incidents.append(_answered(streamed.value))
        # The session still serves its other commands.
        await gw.ok(sid, "register", client_name="after")
    assert len(set(incidents)) == 2
    for incident in incidents:
        assert _last_frame(_logged(caplog, incident)) == "_fail"
    assert SECRET not in "".join(r.getMessage() for r in caplog.records if r.exc_info is None)


async def _galaxy_unary(channel: grpc.aio.Channel, md: Any) -> None:
    await gr_grpc.GalaxyRepositoryStub(channel).GetLastDeployTime(
        gr.GetLastDeployTimeRequest(), metadata=md
    )


async def _galaxy_stream(channel: grpc.aio.Channel, md: Any) -> None:
    stream = gr_grpc.GalaxyRepositoryStub(channel).WatchDeployEvents(
        gr.WatchDeployEventsRequest(), metadata=md
    )
    async for _ in stream:
        pass


async def _health_check(channel: grpc.aio.Channel, md: Any) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())


async def _health_watch(channel: grpc.aio.Channel, md: Any) -> None:
    async for _ in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
        pass


async def _broken_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    _fail()
    yield  # pragma: no cover - an async generator


async def _broken_call(*args: Any, **kwargs: Any) -> Any:
    _fail()


@pytest.mark.parametrize(
    ("owner", "name", "broken", "call"),
    [
        (GalaxyRepositoryServicer, "GetLastDeployTime", _broken_call, _galaxy_unary),
        (GalaxyService, "state_event", _fail, _galaxy_stream),
        (health_aio.HealthServicer, "Check", _broken_call, _health_check),
        (health_aio.HealthServicer, "Watch", _broken_call, _health_watch),
    ],
    ids=["galaxy-unary", "galaxy-stream", "health-check", "health-watch"],
)
async def test_every_service_answers_an_unexpected_error_with_an_incident(
    owner: type,
    name: str,
    broken: Callable[..., Any],
    call: Callable[[grpc.aio.Channel, Any], Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Galaxy and health, unary and streaming, served with and without a key.
    caplog.set_level(logging.ERROR)
    monkeypatch.setattr(owner, name, broken)  # before the servicers are registered
    async with (
        GatewaySimulator(galaxy_db=tmp_path / "g.db") as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, Gw(channel, sim.api_key).md)
    _logged(caplog, _answered(failed.value))


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "command-stream"])
async def test_the_client_raises_a_typed_error_that_names_the_incident(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with GatewaySimulator(runtime_factory=_BrokenPing) as sim:
        options = ClientOptions(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True, command_stream=stream
        )
        async with (
            await GatewayClient.connect(options=options) as client,
            await client.open_session() as session,
        ):
            with pytest.raises(MxGatewayInternalError) as failed:
                await session.ping()
            await session.register("after")  # the session goes on
    err = failed.value
    assert isinstance(err, MxGatewayProtocolError)  # what callers caught before
    assert err.grpc_code is grpc.StatusCode.INTERNAL
    assert err.incident_id is not None
    assert re.search(rf"look in its log for incident {err.incident_id}\b", str(err)), str(err)
    assert SECRET not in str(err) and SECRET not in err.details
    _logged(caplog, err.incident_id)


async def test_the_status_page_answers_an_unexpected_error_with_an_incident(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The operations listener: HTTP 500 with the same details, the traceback in the log,
    # and it goes on serving (before: the connection was closed without an answer).
    caplog.set_level(logging.ERROR)
    monkeypatch.setattr("mxgateway_sim._opsserver.render_status_page", _fail)
    async with GatewaySimulator(metrics_listen=("127.0.0.1", 0)) as sim:
        endpoint = sim.metrics_endpoint
        assert endpoint is not None
        status, headers, body = await http_get(endpoint, "/")
        assert await scrape(endpoint)  # still serving
    assert status == 500 and headers["content-type"] == "text/plain"
    text = body.decode()
    assert SECRET not in text and "_Broken" not in text
    incident = incident_of(text)
    assert incident is not None and text == incident_details(incident) + "\n"
    assert _last_frame(_logged(caplog, incident)) == "_fail"
