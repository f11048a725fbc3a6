"""Opening library clients from validated connection flags (public ``mxgateway`` API only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import mxgateway
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CliUsageError, redact
from mxgateway_cli._parsing import ConnectionSettings

__all__ = ["DEFAULT_TIMEOUT", "client_options", "galaxy_client", "gateway_client"]

DEFAULT_TIMEOUT = 30.0
"""Deadline of each unary call when ``--timeout`` is not given, in seconds."""
CONNECT_TIMEOUT = 10.0
"""How long connecting may take when ``--timeout`` is not given, in seconds."""


def client_options(
    settings: ConnectionSettings, *, window: bool = False
) -> mxgateway.ClientOptions:
    """The library options for ``settings``; the library's own validation is a usage error.

    ``window``: ``--timeout`` is the command's listening window (``stream-events``,
    ``galaxy-watch``), not a call deadline, so calls and connecting keep their defaults.
    """
    timeout = None if window else settings.timeout
    try:
        return mxgateway.ClientOptions(
            endpoint=settings.endpoint,
            api_key=settings.api_key,
            plaintext=settings.plaintext,
            ca_file=settings.ca_file,
            server_name_override=settings.server_name_override,
            timeout=timeout or DEFAULT_TIMEOUT,
            connect_timeout=timeout or CONNECT_TIMEOUT,
            # One command per process: a persistent command stream saves nothing, and a
            # gateway without it (upstream's) would answer a failed stream call first.
            command_stream=False,
        )
    except ValueError as exc:
        secrets = [settings.api_key_text] if settings.api_key_text else []
        raise CliUsageError(redact(str(exc), secrets)) from None


@asynccontextmanager
async def gateway_client(
    ctx: Context, *, window: bool = False
) -> AsyncIterator[mxgateway.GatewayClient]:
    """A connected :class:`mxgateway.GatewayClient`, closed on exit."""
    options = client_options(ctx.connection(), window=window)
    client = await mxgateway.GatewayClient.connect(options=options)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def galaxy_client(
    ctx: Context, *, window: bool = False
) -> AsyncIterator[mxgateway.GalaxyRepositoryClient]:
    """A connected :class:`mxgateway.GalaxyRepositoryClient`, closed on exit."""
    options = client_options(ctx.connection(), window=window)
    client = await mxgateway.GalaxyRepositoryClient.connect(options=options)
    try:
        yield client
    finally:
        await client.close()
