"""Ceilings: how many ``MxEvent`` messages one Python process parses per second from bytes.

Four figures, all single-threaded and free of gRPC:

* ``single_parse``: ``MxEvent.FromString`` per event (the cost floor of ``StreamEvents``).
* ``batch_parse``: ``MxEventBatch.FromString`` of 500-event batches, per event.
* ``batch_parse_read_all``: the same, then every field read into Python objects (value via
  ``from_mx_value``, timestamps via ``timestamp_to_datetime``, statuses as tuples): roughly
  what a typed event costs without the typed wrapper class.
* ``batch_parse_touch``: parse and read only ``worker_sequence`` (what counting costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench._common import Report, rnd
from bench._events import batch_bytes, make_event
from mxgateway._values import from_mx_value, timestamp_to_datetime
from mxgateway.generated import mxaccess_gateway_pb2 as pb


def read_all(ev: pb.MxEvent) -> tuple[Any, ...]:
    """Every field of an OnDataChange event as plain Python objects."""
    dc = ev.on_data_change
    return (
        ev.session_id,
        ev.worker_sequence,
        ev.family,
        ev.WhichOneof("body"),
        timestamp_to_datetime(ev.gateway_timestamp),
        timestamp_to_datetime(ev.worker_timestamp),
        dc.server_handle,
        dc.item_handle,
        from_mx_value(dc.value),
        dc.value.data_type,
        dc.quality,
        timestamp_to_datetime(dc.timestamp),
        tuple(
            (s.success, s.category, s.detected_by, s.detail, s.raw_category, s.raw_detected_by)
            for s in dc.statuses
        ),
    )


def _rate(fn: Callable[[], int], min_seconds: float) -> tuple[float, float]:
    """Run ``fn`` (which returns how many events it handled) until ``min_seconds`` passed."""
    n = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        n += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            break
    cpu = time.process_time() - cpu0
    return n / elapsed, cpu / n * 1e6


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the four ceilings; returns the JSON document."""
    report = Report("parse", quick)
    count = 2_000 if quick else 20_000
    min_s = 0.2 if quick else 2.0
    singles = [make_event(i + 1).SerializeToString() for i in range(count)]
    batches = [batch_bytes(singles[i : i + 500]) for i in range(0, count, 500)]
    event_from = pb.MxEvent.FromString
    batch_from = pb.MxEventBatch.FromString

    def single_parse() -> int:
        for b in singles:
            event_from(b)
        return len(singles)

    def batch_parse() -> int:
        n = 0
        for b in batches:
            n += len(batch_from(b).events)
        return n

    def batch_parse_touch() -> int:
        n = 0
        for b in batches:
            for ev in batch_from(b).events:
                if ev.worker_sequence:
                    n += 1
        return n

    def batch_parse_read_all() -> int:
        n = 0
        for b in batches:
            for ev in batch_from(b).events:
                read_all(ev)
                n += 1
        return n

    def single_parse_read_all() -> int:
        for b in singles:
            read_all(event_from(b))
        return len(singles)

    for name, fn in (
        ("single_parse", single_parse),
        ("single_parse_read_all", single_parse_read_all),
        ("batch_parse", batch_parse),
        ("batch_parse_touch", batch_parse_touch),
        ("batch_parse_read_all", batch_parse_read_all),
    ):
        rate, us = _rate(fn, min_s)
        report.results[name] = {"events_per_s": rnd(rate, 0), "cpu_us_per_event": rnd(us, 3)}
    report.results["event_bytes"] = len(singles[0])
    report.results["batch_bytes_500"] = len(batches[0])
    report.notes.append(
        "One thread, no gRPC: the most events/s any client in this process can reach. "
        "batch_parse only parses (upb creates Python wrappers lazily); read_all converts "
        "every field (value, 3 timestamps, status) to Python objects."
    )
    return report.to_json()
