"""Helpers for the operations tests: a plain HTTP GET and a parsed Prometheus scrape."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(
    endpoint: str, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """``method path`` on ``host:port`` over a fresh connection: status, headers, body."""
    host, _, port = endpoint.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {endpoint}\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def scrape(endpoint: str) -> Samples:
    """Every sample of ``/metrics``, by (sample name, labels)."""
    status, headers, body = await http_get(endpoint, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain"), headers
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when it is absent, as Prometheus reads a missing series)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
