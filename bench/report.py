"""Render the JSON of ``python -m bench all --out FILE`` (or of one benchmark) as the
Markdown tables of ``docs/benchmarks.md``: ``python -m bench.report LATEST [EARLIER ...]``
(with earlier runs, also a table of every target's value per run).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3f}".rstrip("0").rstrip(".") or "0"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def targets(doc: dict[str, Any]) -> str:
    """Every target of every benchmark: met, missed, or not measurable."""
    rows = []
    for name, b in doc["benchmarks"].items():
        for t in b.get("targets", []):
            met = {True: "**met**", False: "**missed**", None: "n/a"}[t["met"]]
            rows.append([name, t["name"], t["goal"], t["measured"], met])
        if name == "galaxy":
            row = galaxy_target(b)
            if row:
                rows.append(row)
    return table(["bench", "target", "goal", "measured", "result"], rows)


def unary(b: dict[str, Any]) -> str:
    """Unary latency and throughput per server and mode."""
    rows = []
    for where, modes in b["results"].items():
        if where == "library_overhead_without_grpc":
            continue
        for mode, r in modes.items():
            rows.append(
                [
                    where,
                    mode,
                    r["median_us"],
                    r["p99_us"],
                    r["throughput_16_callers_per_s"],
                    r["cpu_us_per_call_16_callers"],
                    r.get("median_vs_bare"),
                    r.get("throughput_vs_bare"),
                    r.get("cpu_per_call_vs_bare"),
                ]
            )
    o = b["results"].get("library_overhead_without_grpc")
    extra = ""
    if o:
        extra = (
            "\n\nLibrary cost per call without gRPC (stub.Invoke replaced by a canned reply): "
            + ", ".join(
                f"{k} {v['cpu_us_per_call']} µs (+{v['added_vs_bare_us']})" for k, v in o.items()
            )
            + "."
        )
    return (
        table(
            [
                "server",
                "mode",
                "median µs",
                "p99 µs",
                "calls/s (16 callers)",
                "CPU µs/call",
                "median vs bare",
                "calls/s vs bare",
                "CPU vs bare",
            ],
            rows,
        )
        + extra
    )


def events(b: dict[str, Any]) -> str:
    """Event throughput and CPU per event per server and mode."""
    rows = []
    for where, modes in b["results"].items():
        if where == "raw_wrapper_overhead":
            continue
        for mode, r in modes.items():
            if not isinstance(r, dict):
                continue
            rows.append(
                [
                    where,
                    mode,
                    r.get("events_per_s"),
                    r.get("cpu_us_per_event"),
                    r.get("events_per_s_vs_bare"),
                    r.get("cpu_per_event_vs_bare"),
                    r.get("disconnected_runs"),
                    r.get("error", ""),
                ]
            )
    w = b["results"].get("raw_wrapper_overhead")
    extra = ""
    if w:
        extra = (
            f"\n\nRaw wrapper (`Stream`) cost without gRPC: {w['added_us_per_message']} µs "
            f"added per message ({w['direct_us_per_message']} µs iterating a fake call "
            f"directly, {w['wrapped_us_per_message']} µs through the wrapper)."
        )
    return (
        table(
            [
                "server",
                "mode",
                "events/s",
                "CPU µs/event",
                "events/s vs bare",
                "CPU vs bare",
                "disconnected runs",
                "error",
            ],
            rows,
        )
        + extra
    )


def parse(b: dict[str, Any]) -> str:
    """Parse ceilings."""
    rows = [
        [k, v["events_per_s"], v["cpu_us_per_event"]]
        for k, v in b["results"].items()
        if isinstance(v, dict)
    ]
    return table(["ceiling", "events/s", "CPU µs/event"], rows)


def bulk(b: dict[str, Any]) -> str:
    """Bulk vs singles."""
    rows = []
    for where, flavours in b["results"].items():
        if not isinstance(flavours, dict):
            continue
        for flavour, ops in flavours.items():
            for op, sizes in ops.items():
                for n, r in sizes.items():
                    rows.append(
                        [
                            where,
                            flavour,
                            op,
                            int(n),
                            r["bulk_call_ms"],
                            r["bulk_tags_per_s"],
                            r["singles_tags_per_s"],
                            ("yes" if r["singles_extrapolated"] else "no"),
                            r["speedup"],
                        ]
                    )
    return table(
        [
            "server",
            "client",
            "op",
            "tags",
            "one call ms",
            "bulk tags/s",
            "singles tags/s",
            "singles extrapolated",
            "speedup",
        ],
        rows,
    )


def capacity(b: dict[str, Any]) -> str:
    """Capacity ladders."""
    rows = []
    for ladder, r in b["results"].items():
        for s in r["steps"]:
            rows.append(
                [
                    ladder,
                    s["sessions"],
                    s["items_per_session"],
                    s["subscribe_chunk"],
                    s["events_per_s"],
                    s["events_per_item_s"],
                    s["gaps"],
                    s["overflow_notices"],
                    s["disconnected_subscribers"],
                    "DROP" if s["dropped"] else "ok",
                    s["server_cpu_share"],
                ]
            )
    return table(
        [
            "ladder",
            "sessions",
            "items/session",
            "advised per call",
            "events/s",
            "events/item/s",
            "holes",
            "overflow notices",
            "disconnects",
            "result",
            "sim CPU share",
        ],
        rows,
    )


def profile(b: dict[str, Any], top: int = 6) -> str:
    """Top functions by own time, per profile."""
    parts = []
    for name, r in b["results"].items():
        rows = [
            [x["function"], x["calls"], x["tottime_pct"], x["tottime_us_per_event"]]
            for x in r["top_by_tottime"][:top]
        ]
        parts.append(
            f"**{name}** (profiled {r['profiled_total_us_per_event']} µs per event/tag)\n\n"
            + table(["function", "calls", "% own time", "own µs/event"], rows)
        )
    return "\n\n".join(parts)


def galaxy(b: dict[str, Any]) -> str:
    """``bench/galaxy_memory.py`` (the Galaxy helpers' script): objects/s and peaks."""
    rows = []
    for mode, r in (b.get("modes") or {}).items():
        rows.append(
            [
                mode,
                r.get("objects"),
                r.get("objects_per_s"),
                r.get("rss_peak_growth_bytes", 0) / 1e6,
                r.get("tracemalloc_peak_bytes", 0) / 1e6,
            ]
        )
    return table(["mode", "objects", "objects/s", "RSS growth MB", "tracemalloc peak MB"], rows)


def galaxy_target(b: dict[str, Any]) -> list[Any] | None:
    """Issue target 4 computed from the galaxy document (it reports no targets itself)."""
    modes = b.get("modes") or {}
    it, disc = modes.get("iter_hierarchy"), modes.get("discover_hierarchy")
    if not it or not disc or not disc.get("tracemalloc_peak_bytes"):
        return None
    r = it["tracemalloc_peak_bytes"] / disc["tracemalloc_peak_bytes"]
    return [
        "galaxy",
        "iter_hierarchy peak under 10% of discover_hierarchy's (tracemalloc)",
        "ratio < 0.10",
        round(r, 3),
        "**met**" if r < 0.10 else "**missed**",
    ]


_OPCUA_UNITS = {
    "bulk_read_10000": "ms",
    "bulk_read_10000_advised": "ms",
    "bulk_read_10000_scan_1s": "ms",
}


def opcua(b: dict[str, Any]) -> str:
    """Issue 15's table: mxgateway vs asyncua per row, the median ratio with its spread."""
    r = b["results"]
    rows = []
    for name, row in r["rows"].items():
        unit = _OPCUA_UNITS.get(name, "µs")
        met = {True: "**met**", False: "**missed**", None: "n/a"}[row["met"]]
        spread = f"{_fmt(row['ratio'])} [{_fmt(row['ratio_min'])}-{_fmt(row['ratio_max'])}]"
        rows.append(
            [
                row["label"],
                f"{_fmt(row['mxgateway'])} {unit}",
                f"{_fmt(row['asyncua'])} {unit}",
                spread,
                f"<= {_fmt(row['goal'])}",
                met,
            ]
        )
    out = [
        table(["figure", "mxgateway", "asyncua", "ratio [min-max]", "goal", "result"], rows),
        "",
        f"Load average (1/5/15 min) before: {r.get('load_before')}, after: "
        f"{r.get('load_after')}; asyncua {r.get('asyncua')}; "
        f"{r.get('parameters', {}).get('rounds')} rounds; bare grpc.aio health check / "
        f"asyncua read (median): {_fmt(r.get('grpc_health_vs_asyncua_read_median'))}.",
    ]
    keep = r.get("keep_up")
    if keep:
        out.append(
            f"Simulator keeping up (2,000 tags, 1 ms scan, one subscriber, "
            f"{_fmt(keep.get('seconds'))} s): {_fmt(keep.get('changes_per_s'))} changes/s, "
            f"lag at the end {_fmt(keep.get('lag_end_s'))} s (per second: "
            f"{keep.get('lag_per_second_s')}), disconnected: {keep.get('disconnected')}, "
            f"late scans {_fmt(keep.get('late_scans'))} of {_fmt(keep.get('scans'))} "
            f"({_fmt(keep.get('skipped_scans'))} skipped), simulator CPU "
            f"{_fmt(keep.get('server_cpu_share'))} of a core."
        )
    return "\n".join(out)


def readtail(b: dict[str, Any]) -> str:
    """``bench readtail``: per condition and side, the read's median and p99, the p99 ratio
    to asyncua, the legs of a read and what overlapped the slowest reads."""
    r = b["results"]
    rows = []
    for condition, sides in r["conditions"].items():
        for side, row in sides.items():
            if side == "other_simulators":
                continue
            legs = row.get("legs_median_us") or {}
            ratio = row.get("p99_us_ratio")
            tags = ", ".join(f"{k} {v}" for k, v in list(row["slow_reads_by_tag"].items())[:3])
            rows.append(
                [
                    condition,
                    side,
                    f"{_fmt(row['median_us'])} µs",
                    f"{_fmt(row['p99_us'])} µs",
                    f"{_fmt(ratio)} [{_fmt(row.get('p99_us_ratio_min'))}-"
                    f"{_fmt(row.get('p99_us_ratio_max'))}]"
                    if ratio is not None
                    else "",
                    " / ".join(_fmt(legs.get(leg)) for leg in ("request", "server", "reply"))
                    if legs
                    else "",
                    tags,
                ]
            )
    heads = [
        "rounds",
        "side",
        "median",
        "p99",
        "p99 / asyncua's [min-max]",
        "request / command / reply (µs)",
        "slowest reads overlapped",
    ]
    others = {c: v.get("other_simulators") for c, v in r["conditions"].items()}
    return "\n".join(
        [
            table(heads, rows),
            "",
            f"Load average (1/5/15 min) before: {r.get('load_before')}, after: "
            f"{r.get('load_after')}; other simulators: {others}.",
        ]
    )


def _target_values(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, b in doc["benchmarks"].items():
        for t in b.get("targets", []):
            out[f"{name}: {t['name']}"] = t["measured"]
        if name == "galaxy":
            row = galaxy_target(b)
            if row:
                out[f"galaxy: {row[1]}"] = row[3]
    return out


def spread(docs: list[dict[str, Any]]) -> str:
    """Each target's measured value in every run given (latest first): the run-to-run spread."""
    values = [_target_values(d) for d in docs]
    heads = ["target"] + [d["machine"]["date_utc"][11:16] + " UTC" for d in docs]
    rows = [[key] + [v.get(key) for v in values] for key in values[0]]
    return table(heads, rows)


def _wrap(doc: dict[str, Any]) -> dict[str, Any]:
    """One benchmark's document (``python -m bench NAME --out F``) shaped like ``all``'s."""
    return {
        "machine": doc["machine"],
        "elapsed_s": doc.get("elapsed_s"),
        "benchmarks": {doc["benchmark"]: doc},
    }


def main(argv: list[str] | None = None) -> int:
    """Print every section of the first file; with more files, also the spread table."""
    args = sys.argv[1:] if argv is None else argv
    docs = []
    for path in args:
        with open(path, encoding="utf-8") as fh:
            docs.append(json.load(fh))
    docs = [d if "benchmarks" in d else _wrap(d) for d in docs]
    doc = docs[0]
    m = doc["machine"]
    print(
        f"Machine: {m['cores']} cores ({m.get('cpu_model', '?')}), Python {m['python']}, "
        f"grpcio {m['grpcio']}, protobuf {m['protobuf']} ({m['protobuf_implementation']}), "
        f"{m['date_utc']}; total {doc.get('elapsed_s')} s.\n"
    )
    print("### Targets\n\n" + targets(doc) + "\n")
    if len(docs) > 1:
        print("### Run-to-run spread (same command, same machine)\n\n" + spread(docs) + "\n")
    renderers = {
        "unary": unary,
        "events": events,
        "parse": parse,
        "bulk": bulk,
        "capacity": capacity,
        "profile": profile,
        "galaxy": galaxy,
        "opcua": opcua,
        "readtail": readtail,
    }
    for name, b in doc["benchmarks"].items():
        print(f"### {name} ({b.get('elapsed_s', '?')} s)\n")
        if "error" in b:
            print(f"ERROR: {b['error']}\n")
            continue
        fn = renderers.get(name)
        if fn is not None:
            print(fn(b) + "\n")
        for s in b.get("skipped", []):
            print(f"- skipped: {s['what']}: {s['why']}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
