"""TLS: custom CA, server name override, and no silent downgrade either way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from client_fakes import FakeServer

from mxgateway import ClientOptions, GatewayClient, MxGatewayUnavailableError
from mxgateway._transport import Transport
from support import unused_port
from support.tls import make_tls

pytestmark = pytest.mark.slow  # real processes or TLS handshakes: left out of the fast loop

KEY = "mxgw_tls_tlsSecret0123456789"


async def _roundtrip(client: GatewayClient) -> str:
    return (await client.open_session_raw("tls")).session_id


async def test_tls_with_ca_file(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        async with await GatewayClient.connect(
            endpoint=server.endpoint, api_key=KEY, ca_file=tls.ca_file
        ) as client:
            assert await _roundtrip(client)
        (md,) = server.servicer.rec.metadata["OpenSession"]
        assert md["authorization"] == f"Bearer {KEY}"


async def test_tls_without_the_ca_fails(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        with pytest.raises(MxGatewayUnavailableError) as info:
            await GatewayClient.connect(endpoint=server.endpoint, api_key=KEY)
        assert KEY not in str(info.value)
        assert "OpenSession" not in server.servicer.rec.metadata


async def test_a_failed_handshake_is_reported_over_a_refused_second_address(
    tmp_path: Path,
) -> None:
    """``localhost`` may resolve to ::1 and 127.0.0.1: the server listens on the second only.
    The connect wait must report the TLS failure (a server answered), not the refusal of
    the other address that gRPC happened to try last."""
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        for _ in range(4):  # which address is tried last varies from run to run
            with pytest.raises(MxGatewayUnavailableError) as info:
                await GatewayClient.connect(endpoint=f"localhost:{port}", api_key=KEY)
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value), str(info.value)


async def test_each_address_of_the_name_is_probed_alone_for_a_hidden_handshake_failure(
    tmp_path: Path,
) -> None:
    """What the connect wait looks at after a refusal, made deterministic: which address gRPC
    tried last varies (the test above), the probe of each address alone does not."""
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        port = server.endpoint.rsplit(":", 1)[1]
        for endpoint, found_one in ((f"localhost:{port}", True), (server.endpoint, False)):
            transport = Transport(ClientOptions(endpoint=endpoint, api_key=KEY))
            try:
                found = await transport._listener_error_behind(10.0)
            finally:
                await transport.close()
            # An IP literal has nothing behind it: gRPC's own error already names it.
            assert (found is not None) is found_one
            if found is not None:
                assert "CERTIFICATE_VERIFY_FAILED" in (found.details() or "")


async def test_a_tls_gateway_by_name_that_starts_a_moment_later_is_waited_for(
    tmp_path: Path,
) -> None:
    """Looking behind a refusal (each address of the name probed alone) must not end the
    wait while nothing listens anywhere yet: the gateway started a moment later is reached."""
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    port = unused_port()
    connecting = asyncio.ensure_future(
        GatewayClient.connect(endpoint=f"localhost:{port}", api_key=KEY, ca_file=tls.ca_file)
    )
    await asyncio.sleep(1.5)  # past the first refusal and the look at each address
    assert not connecting.done()
    server = grpc.aio.server()  # no services: UNIMPLEMENTED proves the channel works
    server.add_secure_port(
        f"127.0.0.1:{port}", grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)])
    )
    await server.start()
    try:
        client = await asyncio.wait_for(connecting, 15)
        await client.close()
    finally:
        await server.stop(None)


async def test_server_name_override(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, dns_names=("gateway.test",), ips=())
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        with pytest.raises(MxGatewayUnavailableError):
            await GatewayClient.connect(endpoint=server.endpoint, ca_file=tls.ca_file)
        async with await GatewayClient.connect(
            endpoint=server.endpoint,
            ca_file=tls.ca_file,
            server_name_override="gateway.test",
        ) as client:
            assert await _roundtrip(client)


async def test_plaintext_client_does_not_talk_to_a_tls_server(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer(tls=(tls.cert_pem, tls.key_pem)) as server:
        with pytest.raises(MxGatewayUnavailableError):
            await GatewayClient.connect(endpoint=server.endpoint, plaintext=True)


async def test_tls_client_does_not_downgrade_to_plaintext(tmp_path: Path) -> None:
    tls = make_tls(tmp_path, dns_names=("localhost",), ips=("127.0.0.1",))
    async with FakeServer() as server:
        with pytest.raises(MxGatewayUnavailableError):
            await GatewayClient.connect(endpoint=server.endpoint, ca_file=tls.ca_file)
        assert "OpenSession" not in server.servicer.rec.metadata
