"""The operations listener (``--metrics-listen``): ``/metrics`` for Prometheus, ``/`` for people.

A deliberately small HTTP/1.1 server on the gateway's own event loop, so a scrape or a page
reads the sessions between two events, never half-way through a change, and needs no thread.
It answers GET and HEAD of two paths, one request per connection, and keeps to the rules of
the gRPC side: a bounded number of connections, a bounded request head (8 KiB) that must
arrive within a few seconds, and nothing from the request echoed back. It is loopback-only
unless the operator allows a remote address (it has no authentication: put it behind the
network controls of your monitoring).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from mxgateway._incident import incident_details
from mxgateway._logsafe import get_logger
from mxgateway_sim._incidents import log_unexpected
from mxgateway_sim._metrics import MetricsExporter
from mxgateway_sim._opstatus import EventRates, GatewayStatus
from mxgateway_sim._statuspage import CONTENT_SECURITY_POLICY, render_status_page

__all__ = ["MAX_CONNECTIONS", "OpsServer"]

log = get_logger("mxgateway_sim.ops")

MAX_CONNECTIONS = 32
"""Connections served at once; more are closed at once."""
HEAD_LIMIT_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0


class OpsServer:
    """Serves the metrics and the status page of one gateway."""

    def __init__(self, status: Callable[[EventRates], GatewayStatus], host: str, port: int) -> None:
        self._status = status
        self._rates = EventRates()
        self._exporter = MetricsExporter(lambda: status(self._rates))
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self.bound_port = 0

    @property
    def endpoint(self) -> str:
        """``host:port`` actually bound."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.bound_port}"

    async def start(self) -> None:
        """Bind and serve (raises OSError when the address cannot be bound)."""
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=HEAD_LIMIT_BYTES, reuse_address=True
        )
        self.bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close the connections being served."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():  # too many at once: refuse without reading
            writer.close()
            return
        async with self._slots:
            try:
                await self._answer(reader, writer)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                pass  # the client went away or was too slow: nothing to answer
            except Exception:  # one bad request must not stop the listener
                log.exception("status request failed")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, "text/plain", b"request head too large\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, 400, "text/plain", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, "text/plain", b"only GET and HEAD\n", allow=True)
            return
        path = target.split("?", 1)[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        try:
            if path == "/metrics":
                body, content_type = self._exporter.render(headers.get("accept", ""))
            elif path == "/":
                body = render_status_page(self._status(self._rates)).encode()
                content_type = "text/html; charset=utf-8"
            else:
                await self._send(writer, 404, "text/plain", b"not found: try / or /metrics\n")
                return
        except Exception as exc:  # a bug: the id to the scraper, the traceback to the log
            incident = log_unexpected(exc, f"{method} {path}")
            text = incident_details(incident) + "\n"
            await self._send(writer, 500, "text/plain", text.encode(), head_only=method == "HEAD")
            return
        await self._send(writer, 200, content_type, body, head_only=method == "HEAD")

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        code: int,
        content_type: str,
        body: bytes,
        *,
        head_only: bool = False,
        allow: bool = False,
    ) -> None:
        reason = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
            500: "Internal Server Error",
        }[code]
        head = (
            f"HTTP/1.1 {code} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            f"Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n"
            "Referrer-Policy: no-referrer\r\n"
            + ("Allow: GET, HEAD\r\n" if allow else "")
            + "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + (b"" if head_only else body))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
