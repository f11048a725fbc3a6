"""Where the Galaxy service reads the repository: the embedded SQLite file or SQL Server.

:class:`GalaxySource` is the seam: a blocking ``load`` of a whole snapshot, the
``galaxy.time_of_last_deploy`` poll, and ``TestConnection``. :class:`SqliteSource` is the
simulator's own ZB-shaped SQLite file (the default); :class:`~mxgateway_sim.galaxy._zb.ZbSource`
is a real Galaxy Repository on SQL Server, queried in T-SQL.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

from mxgateway_sim.galaxy._cache import (
    HierarchySnapshot,
    connect_ro,
    load_snapshot,
    read_deploy_time,
)

__all__ = ["GalaxySource", "SqliteSource"]


class GalaxySource(Protocol):
    """A Galaxy Repository the service can load and poll (every method blocks)."""

    description: str
    """Names the repository in logs and errors (never a secret)."""

    def load(self, version: int) -> HierarchySnapshot:
        """Read the whole deployed hierarchy with its attributes."""
        ...

    def deploy_time(self) -> tuple[bool, datetime | None]:
        """``(present, time)`` of ``galaxy.time_of_last_deploy``; raises when unreachable."""
        ...

    def test_connection(self) -> bool:
        """True when the repository answers; never raises."""
        ...


class SqliteSource:
    """The simulator's ZB-shaped SQLite Galaxy at ``db_path``."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.description = f"Galaxy database {db_path}"

    def load(self, version: int) -> HierarchySnapshot:
        """:func:`~mxgateway_sim.galaxy._cache.load_snapshot`."""
        return load_snapshot(self.db_path, version)

    def deploy_time(self) -> tuple[bool, datetime | None]:
        """:func:`~mxgateway_sim.galaxy._cache.read_deploy_time`."""
        return read_deploy_time(self.db_path)

    def test_connection(self) -> bool:
        """``SELECT 1`` against the file; False when unreachable."""
        try:
            conn = connect_ro(self.db_path, timeout=0.5)
        except Exception:
            return False
        try:
            # Touching a table makes SQLite actually read the file (a bare SELECT 1 does not).
            conn.execute("SELECT 1 FROM galaxy LIMIT 1").fetchall()
            return True
        except Exception:
            return False
        finally:
            conn.close()
