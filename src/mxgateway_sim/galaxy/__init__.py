"""The simulator's Galaxy Repository: SQLite with the ZB table shapes, served over gRPC.

``GalaxyService.open(...)`` creates/seeds the database when missing, loads the hierarchy
cache and polls ``galaxy.time_of_last_deploy``; ``svc.servicer`` is the ``GalaxyRepository``
servicer and ``svc.catalog`` the runtime's tag namespace. ``deploy(...)`` simulates a redeploy
from another process. ``GalaxyService.open(source=sql_server_source(...))`` serves a real
Galaxy Repository on SQL Server instead, with the T-SQL queries of :mod:`._zb`.
"""

from mxgateway_sim.galaxy._schema import create_galaxy, default_db_path, deploy
from mxgateway_sim.galaxy._service import (
    DEFAULT_PAGE_BYTES,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    GalaxyCatalog,
    GalaxyRepositoryServicer,
    GalaxyService,
)
from mxgateway_sim.galaxy._source import GalaxySource, SqliteSource
from mxgateway_sim.galaxy._zb import QUERIES, ZbSource, sql_server_source

__all__ = [
    "DEFAULT_PAGE_BYTES",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "QUERIES",
    "GalaxyCatalog",
    "GalaxyRepositoryServicer",
    "GalaxyService",
    "GalaxySource",
    "SqliteSource",
    "ZbSource",
    "create_galaxy",
    "default_db_path",
    "deploy",
    "sql_server_source",
]
