"""Security: keys and scopes on every RPC and command kind, no key leaks, TLS rules."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mxgateway import (
    ClientOptions,
    GatewayClient,
    MxGatewayAuthenticationError,
    MxGatewayError,
    MxGatewayPermissionError,
    MxGatewayUnavailableError,
)
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_rpc
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway.generated import mxaccess_gateway_pb2_grpc as rpc
from mxgateway_sim import SCOPES, ApiKeyStore, GatewaySimulator, builtin_catalog, new_key
from mxgateway_sim.cli import main as sim_main
from support.tls import make_tls

MXGW_SIM = (sys.executable, "-c", "from mxgateway_sim.cli import run; run()")
MXGW_PY = (sys.executable, "-c", "from mxgateway_cli.main import run; run()")
"""The CLI(s) as this interpreter runs them (no console script needed)."""
"""The console scripts (mxgw-sim, mxgw-py) of this environment."""

# The scope table of docs/protocol.md, written out independently of the server's code.
WRITE_KINDS = {"WRITE", "WRITE2", "WRITE_BULK", "WRITE2_BULK", "ACKNOWLEDGE_ALARM"}
SECURE_KINDS = {"WRITE_SECURED", "WRITE_SECURED2", "WRITE_SECURED_BULK", "WRITE_SECURED2_BULK"}
RPC_SCOPES = {
    "OpenSession": "session:open",
    "CloseSession": "session:close",
    "StreamEvents": "events:read",
    "StreamEventBatches": "events:read",
    "StreamAlarms": "events:read",
    "QueryActiveAlarms": "events:read",
    "AcknowledgeAlarm": "invoke:write",
}
GALAXY_RPCS = [m.name for m in gr.DESCRIPTOR.services_by_name["GalaxyRepository"].methods]
GATEWAY_RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["MxAccessGateway"].methods]
PREFIX = "MX_COMMAND_KIND_"
KINDS = [n[len(PREFIX) :] for n, _ in pb.MxCommandKind.items() if n != PREFIX + "UNSPECIFIED"]


def kind_scope(kind: str) -> str:
    if kind in WRITE_KINDS:
        return "invoke:write"
    if kind in SECURE_KINDS:
        return "invoke:secure"
    if kind in ("DRAIN_EVENTS", "QUERY_ACTIVE_ALARMS"):  # as the RPCs that read events
        return "events:read"
    if kind == "SHUTDOWN_WORKER":
        return "admin"
    return "invoke:read"


def test_the_table_covers_every_rpc() -> None:
    assert set(GATEWAY_RPCS) == {*RPC_SCOPES, "Invoke", "InvokeStream"}
    assert len(KINDS) >= 38 and len(GALAXY_RPCS) >= 5


class Keys:
    """One key per scope ("only") and one with every scope but that one and admin ("but")."""

    def __init__(self) -> None:
        self.store = ApiKeyStore()
        self.admin = self._add(SCOPES)
        self.only = {s: self._add([s]) for s in SCOPES}
        self.but = {s: self._add([x for x in SCOPES if x not in (s, "admin")]) for s in SCOPES}

    def _add(self, scopes: Any) -> str:
        key = new_key()
        self.store.add(key, scopes)
        return key


def md(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),) if key else ()


def _request(method: str, session_id: str) -> Any:
    requests: dict[str, Any] = {
        "OpenSession": pb.OpenSessionRequest(client_session_name="scope"),
        "CloseSession": pb.CloseSessionRequest(session_id="session-" + "0" * 32),
        "Invoke": pb.MxCommandRequest(
            session_id=session_id, command=pb.MxCommand(kind=pb.MX_COMMAND_KIND_PING, ping={})
        ),
        "StreamEvents": pb.StreamEventsRequest(session_id="session-" + "0" * 32),
        "StreamEventBatches": pb.StreamEventsRequest(session_id="session-" + "0" * 32),
        "StreamAlarms": pb.StreamAlarmsRequest(alarm_filter_prefix="nothing-matches"),
        "QueryActiveAlarms": pb.QueryActiveAlarmsRequest(alarm_filter_prefix="nothing-matches"),
        "AcknowledgeAlarm": pb.AcknowledgeAlarmRequest(alarm_full_reference="No.Such"),
    }
    if method in requests:
        return requests[method]
    return getattr(gr, f"{method}Request")()


async def call(
    channel: grpc.aio.Channel, method: str, key: str | None, sid: str
) -> grpc.StatusCode:
    """The status of one call (OK when the first message or the reply arrived)."""
    galaxy = method in GALAXY_RPCS and method not in GATEWAY_RPCS
    stub: Any = gr_rpc.GalaxyRepositoryStub(channel) if galaxy else rpc.MxAccessGatewayStub(channel)
    # InvokeStream carries Invoke's requests on a stream (scopes per command, as Invoke).
    request = iter([_request("Invoke", sid)]) if method == "InvokeStream" else _request(method, sid)
    try:
        result = getattr(stub, method)(request, metadata=md(key), timeout=5)
        if hasattr(result, "__aiter__"):
            try:
                await asyncio.wait_for(result.__aiter__().__anext__(), 2.0)
            except (StopAsyncIteration, asyncio.TimeoutError):
                pass  # an empty or quiet stream: authorized
            finally:
                result.cancel()
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[GatewaySimulator, Keys, grpc.aio.Channel]]:
    keys = Keys()
    async with (
        GatewaySimulator(key_store=keys.store, galaxy_db=tmp_path / "g.db", flaky_one_in=0) as sim,
        grpc.aio.insecure_channel(sim.endpoint) as channel,
    ):
        assert sim.galaxy_available
        yield sim, keys, channel


async def test_every_rpc_without_or_with_a_wrong_key_is_unauthenticated(
    secured: tuple[GatewaySimulator, Keys, grpc.aio.Channel],
) -> None:
    _, keys, channel = secured
    key_id = keys.admin.split("_")[1]
    wrong = [
        None,
        new_key(),  # unknown key id
        f"mxgw_{key_id}_not-the-secret",  # known id, wrong secret
        "mxgw_nonsense",
        "",
    ]
    for method in [*GATEWAY_RPCS, *GALAXY_RPCS]:
        for key in wrong:
            assert await call(channel, method, key, "x") is grpc.StatusCode.UNAUTHENTICATED, (
                method,
                key,
            )
    # Wrong schemes are refused too.
    stub = rpc.MxAccessGatewayStub(channel)
    for header in (f"Basic {keys.admin}", keys.admin, f"Bearer  {keys.admin}x"):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.OpenSession(pb.OpenSessionRequest(), metadata=(("authorization", header),))
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_every_rpc_needs_its_scope(
    secured: tuple[GatewaySimulator, Keys, grpc.aio.Channel],
) -> None:
    _, keys, channel = secured
    sid = (
        await rpc.MxAccessGatewayStub(channel).OpenSession(
            pb.OpenSessionRequest(), metadata=md(keys.admin)
        )
    ).session_id
    for method in [*RPC_SCOPES, *GALAXY_RPCS]:
        scope = RPC_SCOPES.get(method, "metadata:read")
        denied = await call(channel, method, keys.but[scope], sid)
        assert denied is grpc.StatusCode.PERMISSION_DENIED, (method, scope)
        for allowed_key in (keys.only[scope], keys.admin):
            code = await call(channel, method, allowed_key, sid)
            assert code not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            ), (method, code)
        for other in SCOPES:  # a key with only another (non-admin) scope is denied
            if other not in (scope, "admin"):
                code = await call(channel, method, keys.only[other], sid)
                assert code is grpc.StatusCode.PERMISSION_DENIED, (method, other)


async def test_every_command_kind_needs_its_scope(
    secured: tuple[GatewaySimulator, Keys, grpc.aio.Channel],
) -> None:
    _, keys, channel = secured
    stub = rpc.MxAccessGatewayStub(channel)

    async def invoke(kind: str, key: str, sid: str) -> grpc.StatusCode | int:
        payload = kind.lower()
        cmd = pb.MxCommand(kind=pb.MxCommandKind.Value(PREFIX + kind))
        getattr(cmd, payload).SetInParent()
        try:
            reply = await stub.Invoke(
                pb.MxCommandRequest(session_id=sid, command=cmd), metadata=md(key)
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return reply.protocol_status.code

    async def new_session() -> str:
        reply = await stub.OpenSession(pb.OpenSessionRequest(), metadata=md(keys.admin))
        return reply.session_id

    sid = await new_session()
    for kind in KINDS:
        scope = kind_scope(kind)
        denied_key = keys.but[scope]
        assert await invoke(kind, denied_key, sid) is grpc.StatusCode.PERMISSION_DENIED, kind
        target = await new_session() if kind == "SHUTDOWN_WORKER" else sid
        result = await invoke(kind, keys.only[scope], target)
        assert isinstance(result, int) and result != 0, (kind, result)  # reached the handler
    # Unknown kinds fail closed: only admin may send them (and then they are invalid).
    for kind_number in (999, -7):
        cmd = pb.MxCommand(kind=kind_number)  # type: ignore[arg-type]
        request = pb.MxCommandRequest(session_id=sid, command=cmd)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Invoke(request, metadata=md(keys.but["admin"]))
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.Invoke(request, metadata=md(keys.admin))
        assert reply.protocol_status.code == pb.PROTOCOL_STATUS_CODE_INVALID_REQUEST


async def test_public_client_maps_auth_failures(
    secured: tuple[GatewaySimulator, Keys, grpc.aio.Channel],
) -> None:
    sim, keys, _ = secured
    base = ClientOptions(endpoint=sim.endpoint, plaintext=True, timeout=5.0)
    async with await GatewayClient.connect(options=base.replace(api_key=new_key())) as client:
        with pytest.raises(MxGatewayAuthenticationError):
            await client.open_session()
    async with await GatewayClient.connect(
        options=base.replace(api_key=keys.only["session:open"])
    ) as client:
        session = await client.open_session()
        with pytest.raises(MxGatewayPermissionError):
            await session.register("nope")
        with pytest.raises(MxGatewayPermissionError):
            await session.close()


# -- keys never leak ---------------------------------------------------------------------

LEAK_KEY = "mxgw_leakcheck_S3CRET-needle-0123456789abcdef"
LEAK_SECRET = "S3CRET-needle-0123456789abcdef"


def _assert_clean(text: str, where: str) -> None:
    assert LEAK_SECRET not in text, f"the API key secret appears in {where}"


async def test_keys_never_in_logs_errors_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "mxgw_leakcheck_WRONG-needle-secret-value"
    async with GatewaySimulator(
        catalog=builtin_catalog(), api_keys=[LEAK_KEY], flaky_one_in=0
    ) as sim:
        texts: list[str] = [repr(sim), repr(sim.faults)]
        options = ClientOptions(endpoint=sim.endpoint, api_key=LEAK_KEY, plaintext=True)
        texts += [repr(options), str(options)]
        async with await GatewayClient.connect(options=options) as client:
            texts.append(repr(client))
            async with await client.open_session(client_session_name="leak") as session:
                texts.append(repr(session))
                h = await session.register("leak")
                await session.subscribe_bulk(h, ["Tank01.Level", "No.Such"])
                async with session.events(after_worker_sequence=0) as events:
                    texts.append(repr(await asyncio.wait_for(events.__anext__(), 10)))
                    texts.append(repr(events))
                try:
                    await session.write(h, 9999, 1.0)
                except MxGatewayError as exc:
                    texts += [str(exc), repr(exc), repr(exc.reply)]
        bad = options.replace(api_key=wrong)
        texts.append(repr(bad))
        async with await GatewayClient.connect(options=bad) as client:
            with pytest.raises(MxGatewayAuthenticationError) as raised:
                await client.open_session()
            texts += [str(raised.value), repr(raised.value), str(raised.value.__cause__)]
        with pytest.raises(ValueError) as bad_key:
            ClientOptions(endpoint=sim.endpoint, api_key="bad key " + LEAK_SECRET, plaintext=True)
        texts.append(str(bad_key.value))
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    texts.append(caplog.text)
    for i, text in enumerate(texts):
        _assert_clean(text, f"captured text #{i}")
        assert "WRONG-needle-secret-value" not in text, f"a wrong key appears in text #{i}"


def _run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def test_keys_never_in_cli_output(tmp_path: Path) -> None:
    """``mxgw-sim serve`` (debug logs) and ``mxgw-py --json`` (success and failure)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [*MXGW_SIM, "serve", "--listen", "127.0.0.1:0",
         "--plaintext", "--api-key", LEAK_KEY, "--json", "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        endpoint = json.loads(line)["address"]
        cli = list(MXGW_PY)
        common = ["--endpoint", endpoint, "--plaintext", "--json"]
        outputs: list[str] = [line]
        ok = _run([*cli, "open-session", *common, "--api-key", LEAK_KEY], env)
        assert ok.returncode == 0, ok.stderr
        sid = json.loads(ok.stdout)["sessionId"]
        key = ["--api-key", LEAK_KEY]
        debug = [*key, "--debug"]
        runs = [
            [*cli, "register", *common, "--session-id", sid, "--client-name", "c", *key],
            [*cli, "open-session", *common, "--api-key", LEAK_KEY[:-1] + "X"],  # wrong key
            [*cli, "register", *common, "--session-id", "nope", "--client-name", "c", *debug],
            [*cli, "close-session", *common, "--session-id", sid, "--api-key-env", "LEAKY"],
        ]
        results = [_run(args, {**env, "LEAKY": LEAK_KEY}) for args in runs]
        assert [r.returncode == 0 for r in results] == [True, False, False, True]
        assert "UNAUTHENTICATED" in results[1].stderr
        assert "SESSION_NOT_FOUND" in results[2].stderr
        for result in [ok, *results]:
            outputs += [result.stdout, result.stderr]
    finally:
        server.terminate()
        try:
            out, err = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            out, err = server.communicate()
    outputs += [out, err]
    assert server.returncode == 0, err
    assert "DEBUG" in err  # the server did log at debug level
    for i, text in enumerate(outputs):
        _assert_clean(text, f"CLI output #{i}")
        assert LEAK_SECRET[:-1] not in text


# -- TLS ---------------------------------------------------------------------------------


def _cert_for(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``name`` only (not localhost, not 127.0.0.1)."""
    tls = make_tls(directory, dns_names=(name,), ips=())  # (IP SANs deliberately absent)
    cert_file, key_file = directory / "srv.pem", directory / "srv.key"
    cert_file.write_bytes(tls.cert_pem)
    key_file.write_bytes(tls.key_pem)
    return tls.ca_file, cert_file, key_file


async def _works(**kwargs: Any) -> None:
    options = ClientOptions(timeout=5.0, connect_timeout=5.0, **kwargs)
    async with (
        await GatewayClient.connect(options=options) as client,
        await client.open_session() as session,
    ):
        await session.ping()


@pytest.mark.slow
async def test_tls_is_required_unless_plaintext_is_asked_for(tmp_path: Path) -> None:
    catalog = builtin_catalog()
    async with GatewaySimulator(catalog=catalog, tls="self-signed", tls_dir=tmp_path) as tls_sim:
        key, endpoint = tls_sim.api_key, tls_sim.endpoint
        await _works(endpoint=endpoint, api_key=key, ca_file=str(tls_sim.ca_file))
        with pytest.raises(MxGatewayUnavailableError):  # plaintext to a TLS server
            await _works(endpoint=endpoint, api_key=key, plaintext=True)
        with pytest.raises(MxGatewayUnavailableError):  # the system roots do not trust it
            await _works(endpoint=endpoint, api_key=key)
    async with GatewaySimulator(catalog=catalog) as plain_sim:
        key, endpoint = plain_sim.api_key, plain_sim.endpoint
        with pytest.raises(MxGatewayUnavailableError):  # TLS (the default) to plaintext
            await _works(endpoint=endpoint, api_key=key, ca_file=str(tls_sim.ca_file))
        await _works(endpoint=endpoint, api_key=key, plaintext=True)


def test_simulator_does_not_serve_plaintext_unless_told_to(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert sim_main(["serve", "--listen", "127.0.0.1:0", "--api-key", new_key()]) == 2
    assert "--plaintext" in capsys.readouterr().err


@pytest.mark.slow
async def test_certificate_for_another_name(tmp_path: Path) -> None:
    ca, cert, key = _cert_for(tmp_path, "gateway.plant.example")
    async with GatewaySimulator(catalog=builtin_catalog(), tls=(cert, key)) as sim:
        base: dict[str, Any] = {
            "endpoint": sim.endpoint,
            "api_key": sim.api_key,
            "ca_file": str(ca),
        }
        with pytest.raises(MxGatewayUnavailableError):  # 127.0.0.1 is not in the certificate
            await _works(**base)
        with pytest.raises(MxGatewayUnavailableError):
            await _works(**base, server_name_override="other.plant.example")
        await _works(**base, server_name_override="gateway.plant.example")
