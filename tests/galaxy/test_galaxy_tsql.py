"""The T-SQL Galaxy queries (the SQL Server ZB backend) run against the ZB-shaped SQLite.

The production text of every query is translated by sqlglot (T-SQL -> SQLite) and run on
the simulator's Galaxy database; what it reads must be what the simulator's own loader
reads from the same file: the same objects, parents, template chains and attributes
(dynamic and built-in, with their flags), except the element count of arrays, which a real
ZB keeps inside ``mx_value``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlglot

from mxgateway import GalaxyRepositoryClient, GatewayClient
from mxgateway_sim import GatewaySimulator
from mxgateway_sim.galaxy import create_galaxy, deploy
from mxgateway_sim.galaxy._cache import HierarchySnapshot, load_snapshot
from mxgateway_sim.galaxy._zb import QUERIES, ZbSource, deployed_changes


def tsql_to_sqlite(sql: str) -> str:
    [out] = sqlglot.transpile(sql, read="tsql", write="sqlite")
    return out


def _concat(*parts: object) -> str:
    """T-SQL CONCAT (NULL counts as ''), for SQLite older than 3.44, which has none."""
    return "".join("" if p is None else str(p) for p in parts)


def sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    if sqlite3.sqlite_version_info < (3, 44):
        conn.create_function("CONCAT", -1, _concat, deterministic=True)
    return conn


def zb_on_sqlite(path: Path) -> ZbSource:
    return ZbSource(lambda: sqlite_connect(path), translate=tsql_to_sqlite, description="test")


@pytest.fixture(scope="module")
def galaxy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zb") / "galaxy.db"
    create_galaxy(path)
    return path


def _objects(snap: HierarchySnapshot) -> dict[int, tuple[object, ...]]:
    return {
        r.gobject_id: (
            r.tag_name,
            r.contained_name,
            r.hierarchical_name,
            r.browse_name,
            r.parent_id,
            r.area_id,
            r.host_id,
            r.category_id,
            r.template_chain,
        )
        for r in snap.dfs
    }


def _attributes(snap: HierarchySnapshot) -> dict[int, set[tuple[object, ...]]]:
    # Everything but array_dimension (index 3): ZB has no column for it.
    return {r.gobject_id: {row[:3] + row[4:] for row in r.attrs.rows} for r in snap.dfs}


def test_every_query_is_tsql_that_translates() -> None:
    for name, sql in QUERIES.items():
        parsed = sqlglot.parse_one(sql, read="tsql")  # T-SQL as written
        assert parsed is not None, name
        assert tsql_to_sqlite(sql)
    assert "TOP (1)" in QUERIES["deploy_time"]
    assert "RECURSIVE" not in QUERIES["attributes"].upper()  # T-SQL spells no RECURSIVE


def test_tsql_reads_what_the_simulator_reads(galaxy_db: Path) -> None:
    native = load_snapshot(galaxy_db, 1)
    zb = zb_on_sqlite(galaxy_db).load(1)
    assert zb.time_of_last_deploy == native.time_of_last_deploy is not None
    assert _objects(zb) == _objects(native)
    assert _attributes(zb) == _attributes(native)
    assert zb.object_count == native.object_count > 30
    assert zb.attribute_count == native.attribute_count
    # The interesting rows are there: built-in attributes of a named extension, never
    # flagged; a dynamic attribute flagged by its extensions; an instance-level UDA.
    tank = zb.by_tag["l1_tank01"]
    rows = {row[0]: row for row in tank.attrs.rows}
    assert rows["Level"][6:] == (True, True)
    assert rows["Level.InAlarm"][6:] == (False, False)
    assert "ShortDesc" in rows and rows["Level.HiLimit"][1] == 4


def test_dynamic_attribute_wins_a_collision_with_a_builtin(tmp_path: Path) -> None:
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    with closing(sqlite3.connect(path)) as conn, conn:
        gid, pkg = conn.execute(
            "SELECT gobject_id, deployed_package_id FROM gobject WHERE tag_name = 'L1_Tank01'"
        ).fetchone()
        conn.execute(
            "INSERT INTO dynamic_attribute (gobject_id, package_id, attribute_name, mx_data_type,"
            " security_classification) VALUES (?, ?, 'shortdesc', 16, 0)",
            (gid, pkg),
        )
    zb = zb_on_sqlite(path).load(1)
    native = load_snapshot(path, 1)
    assert _attributes(zb) == _attributes(native)
    rows = [r for r in zb.by_tag["l1_tank01"].attrs.rows if r[0].lower() == "shortdesc"]
    assert [(r[0], r[1], r[4]) for r in rows] == [("shortdesc", 16, 0)]


def test_deploy_time_and_change_detection(tmp_path: Path) -> None:
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    source = zb_on_sqlite(path)
    present, before_time = source.deploy_time()
    assert present and before_time is not None
    before = source.deployed_packages()
    result = deploy(path, add=2, remove=1, seed=3)
    present, after_time = source.deploy_time()
    assert present and after_time is not None and after_time > before_time
    added, removed, changed = deployed_changes(before, source.deployed_packages())
    snap = source.load(2)
    assert sorted(snap.by_id[g].tag_name for g in added) == result["added"]
    assert len(removed) == 1 and changed == []
    assert snap.object_count == result["object_count"]


def test_connection_failures_are_false_not_errors(tmp_path: Path) -> None:
    assert zb_on_sqlite(tmp_path / "missing.db").test_connection() is False
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    assert zb_on_sqlite(path).test_connection() is True


# -- the SQL Server backend behind the gateway, over real gRPC -------------------------------


async def test_gateway_serves_the_tsql_galaxy_over_grpc(tmp_path: Path) -> None:
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    native = load_snapshot(path, 1)
    async with (
        GatewaySimulator(galaxy_source=zb_on_sqlite(path), galaxy_poll_interval=0.05) as sim,
        await GalaxyRepositoryClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as client,
    ):
        assert await client.test_connection() is True
        assert await client.get_last_deploy_time() == native.time_of_last_deploy
        objects = [o async for o in client.iter_hierarchy(include_attributes=True)]
        assert [o.gobject_id for o in objects] == [r.gobject_id for r in native.dfs]
        level = next(o for o in objects if o.tag_name == "L1_Tank01")
        by_name = {a.attribute_name: a for a in level.attributes}
        assert by_name["Level"].is_historized and by_name["Level"].is_alarm
        assert by_name["Level"].full_tag_reference == "L1_Tank01.Level"
        # The runtime's tag namespace comes from the same source.
        async with await GatewayClient.connect(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        ) as gateway:
            session = await gateway.open_session(client_session_name="zb")
            try:
                h = await session.register("zb")
                rows = await session.read_bulk(h, ["L1_Tank01.Level", "L1_Tank01.Nope"])
                assert [r.was_successful for r in rows] == [True, False]
            finally:
                await session.close()
        # A redeploy is noticed through the T-SQL deploy-time query.
        deploy(path, add=1, seed=1)
        for _ in range(200):
            found = [o async for o in client.iter_hierarchy(tag_name_glob="DeployedPump*")]
            if found:
                break
            await asyncio.sleep(0.05)
        assert [o.tag_name for o in found] == ["DeployedPump0001"]


SIM_CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]


def _serve_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *SIM_CLI,
            "serve",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--api-key-env",
            "K",
            *args,
        ],
        env={**os.environ, "K": "mxgw_k1_" + "ab" * 20, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_sql_server_connection_string_never_echoed(tmp_path: Path) -> None:
    secret = "Pa55-never-shown"
    bad = f"Server=127.0.0.1,1;Database=ZB;UID=sa;PWD={secret};Bogus Keyword=1"
    run = _serve_cli("--galaxy-sql-server-env", "ZB_CS", env={"ZB_CS": bad})
    assert run.returncode == 2 and secret not in run.stdout + run.stderr
    assert run.stderr.startswith("mxgw-sim: error: ") and "Traceback" not in run.stderr
    missing = _serve_cli("--galaxy-sql-server-env", "ZB_UNSET", env={})
    assert missing.returncode == 2
    assert "--galaxy-sql-server-env: the environment variable it names is not set" in (
        missing.stderr
    )
    # The connection string itself given where its variable's name or file belongs.
    for flag in ("--galaxy-sql-server-env", "--galaxy-sql-server-file"):
        run = _serve_cli(flag, bad, env={})
        assert run.returncode == 2 and secret not in run.stdout + run.stderr, flag
        assert run.stderr.startswith(f"mxgw-sim: error: {flag}: "), run.stderr
    empty = tmp_path / "cs.txt"
    empty.write_text("\n\n", encoding="utf-8")
    run = _serve_cli("--galaxy-sql-server-file", str(empty), env={})
    assert run.returncode == 2 and "holds no connection string" in run.stderr


class _DeployDuring:
    """A connection after whose N-th query (of each 6-query read) another process deploys."""

    def __init__(self, path: Path, after: int, times: int) -> None:
        self.path, self.after, self.times, self.queries = path, after, times, 0

    def connect(self) -> _DeployDuring:
        self.conn = sqlite_connect(self.path)
        return self

    def cursor(self) -> _DeployDuring:
        self.cur = self.conn.cursor()
        return self

    def execute(self, sql: str, /) -> object:
        assert self.cur is not None
        return self.cur.execute(sql)

    def fetchall(self) -> list[Any]:
        assert self.cur is not None
        rows = self.cur.fetchall()
        self.queries += 1
        if self.times and self.queries % 6 == self.after:
            self.times -= 1
            deploy(self.path, add=1, seed=self.times)
        return rows

    def close(self) -> None:
        if self.cur is not None:
            self.cur.close()
            self.cur = None
        else:
            self.conn.close()

    cur: sqlite3.Cursor | None = None


def test_a_deploy_during_a_load_makes_it_read_again(tmp_path: Path) -> None:
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    during = _DeployDuring(path, after=2, times=1)  # after the template chain of read 1
    source = ZbSource(during.connect, translate=tsql_to_sqlite, description="test")
    snap = source.load(1)
    native = load_snapshot(path, 1)
    assert during.queries == 12  # two whole reads of 6 queries
    assert snap.time_of_last_deploy == native.time_of_last_deploy
    assert _objects(snap) == _objects(native) and "deployedpump0001" in snap.by_tag


def test_a_galaxy_that_never_settles_is_served_and_read_again_next_poll(tmp_path: Path) -> None:
    path = tmp_path / "galaxy.db"
    create_galaxy(path)
    present, before = zb_on_sqlite(path).deploy_time()
    during = _DeployDuring(path, after=2, times=3)  # every read sees a deploy
    snap = ZbSource(during.connect, translate=tsql_to_sqlite, description="test").load(1)
    assert during.queries == 18
    # The snapshot carries the time read first, so the next poll sees a change and reloads.
    assert snap.time_of_last_deploy is not None and present and before is not None
    assert snap.time_of_last_deploy < zb_on_sqlite(path).deploy_time()[1]  # type: ignore[operator]
