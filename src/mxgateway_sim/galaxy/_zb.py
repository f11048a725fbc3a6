"""The Galaxy Repository on SQL Server (a real ``ZB``): the queries, in T-SQL, and the loader.

The queries are written once, in T-SQL, as a real Galaxy Repository needs them (domain
reference 6.2-6.3, upstream facts): deployed instances (``namespace_id = 1``,
``is_template = 0``, ``deployed_package_id <> 0``) of the browsable categories; the template
chain by a recursive CTE over ``derived_from_gobject_id``; the attributes by a recursive CTE
over each object's deployed package chain, as the UNION of ``dynamic_attribute`` and the
built-in ``attribute_definition`` rows of the chain's ``primitive_instance`` (built-in rows
never flagged historized or alarm; a dynamic row wins a reference collision, the most
derived package wins within each); ``galaxy.time_of_last_deploy`` for deploy detection and
each object's ``deployed_package_id`` for change detection. The tests run exactly this text
against the ZB-shaped SQLite database after translation by sqlglot (T-SQL -> SQLite).

ZB keeps an array's element count inside the binary ``mx_value`` (layout not public): the
attributes read here report ``array_dimension`` 0; the real MXAccess checks indexes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Final, Protocol

from mxgateway_sim._logsafe import get_logger
from mxgateway_sim.galaxy._cache import (
    AttributeSet,
    GalaxyObjectRecord,
    HierarchySnapshot,
    _attribute_set,
    _AttrRow,
)
from mxgateway_sim.galaxy._schema import parse_db_time

__all__ = [
    "QUERIES",
    "ZbSource",
    "deployed_changes",
    "sql_server_source",
]

log = get_logger("mxgateway_sim.galaxy")

LOAD_ATTEMPTS: Final = 3
"""Reads of the whole hierarchy before a load gives up waiting for a quiet moment."""

BROWSABLE_CATEGORIES: Final = "1, 3, 4, 10, 11, 13, 17, 24, 26"

Q_TEST_CONNECTION: Final = "SELECT 1"

Q_DEPLOY_TIME: Final = "SELECT TOP (1) time_of_last_deploy FROM galaxy"

Q_OBJECTS: Final = f"""
SELECT g.gobject_id, g.tag_name, g.contained_name, g.hierarchical_name,
       g.contained_by_gobject_id, g.area_gobject_id, g.hosted_by_gobject_id,
       td.category_id, g.derived_from_gobject_id
FROM gobject AS g
JOIN template_definition AS td ON td.template_definition_id = g.template_definition_id
WHERE g.is_template = 0 AND g.namespace_id = 1 AND g.deployed_package_id <> 0
  AND td.category_id IN ({BROWSABLE_CATEGORIES})
"""

Q_TEMPLATE_CHAIN: Final = """
WITH template_chain (start_id, gobject_id, depth) AS (
    SELECT DISTINCT g.derived_from_gobject_id, g.derived_from_gobject_id, 0
    FROM gobject AS g
    WHERE g.is_template = 0 AND g.namespace_id = 1 AND g.deployed_package_id <> 0
      AND g.derived_from_gobject_id <> 0
    UNION ALL
    SELECT c.start_id, t.derived_from_gobject_id, c.depth + 1
    FROM template_chain AS c
    JOIN gobject AS t ON t.gobject_id = c.gobject_id
    WHERE t.derived_from_gobject_id <> 0 AND c.depth < 9
)
SELECT c.start_id, t.tag_name
FROM template_chain AS c
JOIN gobject AS t ON t.gobject_id = c.gobject_id
ORDER BY c.start_id, c.depth
"""

Q_ATTRIBUTES: Final = f"""
WITH deployed_package_chain (gobject_id, package_id, depth) AS (
    SELECT g.gobject_id, g.deployed_package_id, 0
    FROM gobject AS g
    JOIN template_definition AS td ON td.template_definition_id = g.template_definition_id
    WHERE g.is_template = 0 AND g.namespace_id = 1 AND g.deployed_package_id <> 0
      AND td.category_id IN ({BROWSABLE_CATEGORIES})
    UNION ALL
    SELECT c.gobject_id, p.derived_from_package_id, c.depth + 1
    FROM deployed_package_chain AS c
    JOIN package AS p ON p.package_id = c.package_id
    WHERE p.derived_from_package_id <> 0 AND c.depth < 9
),
extension_flags (gobject_id, attribute_name, is_historized, is_alarm) AS (
    SELECT c.gobject_id, LOWER(pi.primitive_name),
           MAX(CASE WHEN pd.primitive_name = 'HistoryExtension' THEN 1 ELSE 0 END),
           MAX(CASE WHEN pd.primitive_name = 'AlarmExtension' THEN 1 ELSE 0 END)
    FROM deployed_package_chain AS c
    JOIN primitive_instance AS pi ON pi.package_id = c.package_id
    JOIN primitive_definition AS pd
      ON pd.primitive_definition_id = pi.primitive_definition_id
    WHERE pd.primitive_name IN ('HistoryExtension', 'AlarmExtension')
    GROUP BY c.gobject_id, LOWER(pi.primitive_name)
),
candidates (gobject_id, attribute_name, mx_data_type, is_array, security_classification,
            mx_attribute_category, source_rank, depth) AS (
    SELECT c.gobject_id, da.attribute_name, da.mx_data_type, da.is_array,
           da.security_classification, da.mx_attribute_category, 0, c.depth
    FROM deployed_package_chain AS c
    JOIN dynamic_attribute AS da ON da.package_id = c.package_id
    UNION ALL
    SELECT c.gobject_id,
           CASE WHEN pi.primitive_name = '' THEN ad.attribute_name
                ELSE CONCAT(pi.primitive_name, '.', ad.attribute_name) END,
           ad.mx_data_type, ad.is_array, ad.security_classification,
           ad.mx_attribute_category, 1, c.depth
    FROM deployed_package_chain AS c
    JOIN primitive_instance AS pi ON pi.package_id = c.package_id
    JOIN attribute_definition AS ad
      ON ad.primitive_definition_id = pi.primitive_definition_id
),
ranked AS (
    SELECT cand.gobject_id, cand.attribute_name, cand.mx_data_type, cand.is_array,
           cand.security_classification, cand.mx_attribute_category, cand.source_rank,
           cand.depth,
           ROW_NUMBER() OVER (
               PARTITION BY cand.gobject_id, LOWER(cand.attribute_name)
               ORDER BY cand.source_rank, cand.depth
           ) AS pick
    FROM candidates AS cand
)
SELECT r.gobject_id, r.attribute_name, r.mx_data_type, r.is_array,
       r.security_classification, r.mx_attribute_category,
       CASE WHEN r.source_rank = 0 AND ef.is_historized = 1 THEN 1 ELSE 0 END,
       CASE WHEN r.source_rank = 0 AND ef.is_alarm = 1 THEN 1 ELSE 0 END
FROM ranked AS r
LEFT JOIN extension_flags AS ef
  ON ef.gobject_id = r.gobject_id AND ef.attribute_name = LOWER(r.attribute_name)
WHERE r.pick = 1
ORDER BY r.gobject_id, r.source_rank, r.depth DESC, r.attribute_name
"""

Q_DEPLOYED_PACKAGES: Final = f"""
SELECT g.gobject_id, g.deployed_package_id
FROM gobject AS g
JOIN template_definition AS td ON td.template_definition_id = g.template_definition_id
WHERE g.is_template = 0 AND g.namespace_id = 1 AND g.deployed_package_id <> 0
  AND td.category_id IN ({BROWSABLE_CATEGORIES})
"""

QUERIES: Final[dict[str, str]] = {
    "test_connection": Q_TEST_CONNECTION,
    "deploy_time": Q_DEPLOY_TIME,
    "objects": Q_OBJECTS,
    "template_chain": Q_TEMPLATE_CHAIN,
    "attributes": Q_ATTRIBUTES,
    "deployed_packages": Q_DEPLOYED_PACKAGES,
}
"""Every query the SQL Server Galaxy runs, by name (T-SQL; the production text)."""


class DbCursor(Protocol):
    """The part of a DB-API 2.0 cursor the loader uses."""

    def execute(self, operation: str, /) -> object: ...
    def fetchall(self) -> Sequence[Sequence[Any]]: ...
    def close(self) -> None: ...


class DbConnection(Protocol):
    """The part of a DB-API 2.0 connection the loader uses."""

    def cursor(self) -> DbCursor: ...
    def close(self) -> None: ...


def _deploy_time(value: object) -> datetime | None:
    """``galaxy.time_of_last_deploy``: a SQL Server ``datetime`` (UTC, as the GR stores
    times) or SQLite text."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return parse_db_time(str(value))


def deployed_changes(
    before: dict[int, int], after: dict[int, int]
) -> tuple[list[int], list[int], list[int]]:
    """Change detection between two reads of :data:`Q_DEPLOYED_PACKAGES`: the gobject ids
    added, removed, and redeployed (a new ``deployed_package_id``), each sorted."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(g for g, p in after.items() if g in before and before[g] != p)
    return added, removed, changed


class ZbSource:
    """A Galaxy Repository reached through a DB-API connection, queried in T-SQL.

    Args:
        connect: Opens a new connection (one per load or poll; closed after).
        translate: Turns the T-SQL text into the connection's dialect (identity for SQL
            Server; sqlglot's T-SQL -> SQLite in the tests).
        description: What to call the source in logs and errors (never a connection string,
            which may hold a password).
    """

    def __init__(
        self,
        connect: Callable[[], DbConnection],
        *,
        translate: Callable[[str], str] | None = None,
        description: str = "SQL Server Galaxy Repository",
    ) -> None:
        self._connect = connect
        self.description = description
        self._sql = {name: (translate(q) if translate else q) for name, q in QUERIES.items()}
        self.last_deployed: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"ZbSource({self.description!r})"

    def _rows(self, conn: DbConnection, name: str) -> Sequence[Sequence[Any]]:
        cursor = conn.cursor()
        try:
            cursor.execute(self._sql[name])
            return cursor.fetchall()
        finally:
            cursor.close()

    def _query(self, name: str) -> Sequence[Sequence[Any]]:
        conn = self._connect()
        try:
            return self._rows(conn, name)
        finally:
            conn.close()

    def test_connection(self) -> bool:
        """``SELECT 1``; False instead of an exception when unreachable (upstream)."""
        try:
            return bool(self._query("test_connection"))
        except Exception:
            return False

    def deploy_time(self) -> tuple[bool, datetime | None]:
        """``(present, time)`` of ``galaxy.time_of_last_deploy``; raises when unreachable."""
        rows = self._query("deploy_time")
        if not rows:
            return False, None
        value = _deploy_time(rows[0][0])
        return value is not None, value

    def deployed_packages(self) -> dict[int, int]:
        """gobject id -> deployed_package_id of every deployed browsable object."""
        return {int(g): int(p) for g, p in self._query("deployed_packages")}

    def load(self, version: int) -> HierarchySnapshot:
        """Read the hierarchy and attributes and build a snapshot (blocking: run in a thread).

        The queries run one after the other on one connection, without a snapshot
        transaction (a real ZB need not allow SNAPSHOT isolation): ``time_of_last_deploy``
        is read before and after, and a deploy in between makes the whole read start again
        (at most :data:`LOAD_ATTEMPTS` times), so a snapshot never mixes two deploys.
        """
        for _ in range(LOAD_ATTEMPTS - 1):
            snapshot = self._load_once(version)
            if snapshot is not None:
                return snapshot
        snapshot = self._load_once(version, last=True)
        assert snapshot is not None
        return snapshot

    def _load_once(self, version: int, *, last: bool = False) -> HierarchySnapshot | None:
        conn = self._connect()
        try:
            time_rows = self._rows(conn, "deploy_time")
            chains: dict[int, list[str]] = {}
            for start, tag in self._rows(conn, "template_chain"):
                chains.setdefault(int(start), []).append(str(tag))
            per_object: dict[int, list[_AttrRow]] = {}
            for gid, name, mtype, is_arr, sec, cat, hist, alarm in self._rows(conn, "attributes"):
                per_object.setdefault(int(gid), []).append(
                    (
                        str(name),
                        int(mtype),
                        bool(is_arr),
                        0,
                        int(sec),
                        int(cat),
                        bool(hist),
                        bool(alarm),
                    )
                )
            objects = self._rows(conn, "objects")
            deployed = {int(g): int(p) for g, p in self._rows(conn, "deployed_packages")}
            after = self._rows(conn, "deploy_time")
        finally:
            conn.close()
        before_time = _deploy_time(time_rows[0][0]) if time_rows else None
        after_time = _deploy_time(after[0][0]) if after else None
        if before_time != after_time:
            if not last:
                log.info("%s: deployed while being read; reading again", self.description)
                return None
            log.warning(
                "%s: deployed while being read %d times in a row; serving the last read "
                "until the next poll reads it again",
                self.description,
                LOAD_ATTEMPTS,
            )
            after_time = before_time  # the next poll sees a new deploy time and reloads
        sets: dict[tuple[_AttrRow, ...], AttributeSet] = {}
        records: list[GalaxyObjectRecord] = []
        for gid, tag, cname, hname, container, area, host, cat, derived in objects:
            rows = tuple(per_object.get(int(gid), ()))
            attrs = sets.get(rows)
            if attrs is None:
                attrs = sets[rows] = _attribute_set(rows)
            contained = str(cname or "")
            records.append(
                GalaxyObjectRecord(
                    gobject_id=int(gid),
                    tag_name=str(tag),
                    contained_name=contained,
                    hierarchical_name=str(hname or ""),
                    browse_name=contained or str(tag),
                    parent_id=int(container) if container else int(area or 0),
                    area_id=int(area or 0),
                    host_id=int(host or 0),
                    category_id=int(cat),
                    template_chain=tuple(chains.get(int(derived or 0), ())),
                    attrs=attrs,
                )
            )
        if self.last_deployed:
            added, removed, changed = deployed_changes(self.last_deployed, deployed)
            log.info(
                "%s: %d objects added, %d removed, %d redeployed since the last load",
                self.description,
                len(added),
                len(removed),
                len(changed),
            )
        self.last_deployed = deployed
        return HierarchySnapshot(version, after_time, records)


def sql_server_source(connection_string: str) -> ZbSource:
    """A :class:`ZbSource` on SQL Server through ``mssql-python`` (the ``[galaxy-sql]``
    extra), for example ``Server=localhost;Database=ZB;Trusted_Connection=yes;``.

    Raises:
        ValueError: The driver is not installed, or the connection string is empty.
    """
    if not connection_string.strip():
        raise ValueError("the Galaxy SQL Server connection string is empty")
    try:
        driver: Any = importlib.import_module("mssql_python")
    except ImportError:
        raise ValueError(
            "the SQL Server Galaxy needs the mssql-python driver: "
            'pip install "mxaccess-gateway-client[galaxy-sql]"'
        ) from None

    def connect() -> DbConnection:
        conn: DbConnection = driver.connect(connection_string)
        return conn

    where = _server_of(connection_string)
    return ZbSource(connect, description=f"SQL Server Galaxy Repository ({where})")


def _server_of(connection_string: str) -> str:
    """``server/database`` named in a connection string (nothing else: no credentials)."""
    parts: dict[str, str] = {}
    for piece in connection_string.split(";"):
        key, _, value = piece.partition("=")
        parts[key.strip().lower()] = value.strip()
    server = parts.get("server") or parts.get("data source") or parts.get("address") or "?"
    database = parts.get("database") or parts.get("initial catalog") or "?"
    return f"{server}/{database}"
