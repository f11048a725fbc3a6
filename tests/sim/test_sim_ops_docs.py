"""docs/operations.md names only metrics the gateway exports, and documents every one."""

from __future__ import annotations

import re
from pathlib import Path

from ophelpers import http_get
from prometheus_client.parser import text_string_to_metric_families

from mxgateway_sim import GatewaySimulator, SessionOptions
from mxgateway_sim._server import COUNT_LIMIT_FLAGS
from mxgateway_sim.cli import build_parser

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


async def test_every_metric_in_the_docs_is_exported_and_documented(tmp_path: Path) -> None:
    async with GatewaySimulator(
        galaxy_db=tmp_path / "galaxy.db", metrics_listen=("127.0.0.1", 0)
    ) as sim:
        assert sim.metrics_endpoint is not None
        _, _, body = await http_get(sim.metrics_endpoint, "/metrics")
    exported: set[str] = set()
    families: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("mxgw_"):
            continue
        families.add(family.name)
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
        if family.type == "histogram":
            exported.update(family.name + s for s in SUFFIXES)
    named = set(re.findall(r"\bmxgw_[a-z_]+[a-z]", DOC))
    assert named, "no metric named in docs/operations.md"
    unknown = sorted(n for n in named if n not in exported)
    assert not unknown, f"docs/operations.md names metrics the gateway does not export: {unknown}"
    for name in families:  # each family in the metrics table (a counter with its _total)
        assert f"`{name}" in DOC, f"{name} is not documented in docs/operations.md"


def test_the_status_page_limit_table_matches_the_serve_flags() -> None:
    """COUNT_LIMIT_FLAGS names real `mxgw-sim serve` flags whose defaults are the
    SessionOptions defaults (the page shows what a flag set, under the flag's name)."""
    parser = build_parser()
    args = parser.parse_args(["serve", "--plaintext"])
    defaults = SessionOptions()
    for flag, field in COUNT_LIMIT_FLAGS:
        dest = flag.removeprefix("--").replace("-", "_")
        assert hasattr(args, dest), flag
        given = getattr(args, dest)
        expected = getattr(defaults, field)
        assert str(given) == str(getattr(expected, "value", expected)), (flag, given, expected)
