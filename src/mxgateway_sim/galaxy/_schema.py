"""SQLite Galaxy Repository: the ZB table shapes, the seeded plant and simulated redeploys.

Only the tables and columns the hierarchy and attribute queries need are created, with the
names of the real Galaxy Repository (``gobject``, ``template_definition``, ``package``,
``dynamic_attribute``, ``primitive_definition``, ``primitive_instance``,
``attribute_definition``, ``galaxy``) so the queries in :mod:`mxgateway_sim.galaxy._cache`
port to SQL Server with little change. One column is the simulator's own and says so in its
name: ``dynamic_attribute.sim_array_element_count`` (the real ZB carries an array's element
count inside the binary ``mx_value``, whose layout is not public).
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = [
    "DATA_TYPE_NAMES",
    "SCHEMA_VERSION",
    "create_galaxy",
    "db_file_name",
    "default_db_path",
    "deploy",
    "format_db_time",
    "parse_db_time",
]

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of a database this module creates (1: before ``attribute_definition``
and ``sim_array_element_count``); older files are refused with a message to delete them."""

SCHEMA = """
CREATE TABLE galaxy (
    galaxy_name TEXT NOT NULL,
    time_of_last_deploy TEXT NULL
);
CREATE TABLE template_definition (
    template_definition_id INTEGER PRIMARY KEY,
    base_gobject_id INTEGER NOT NULL DEFAULT 0,
    original_template_tagname TEXT NOT NULL,
    category_id INTEGER NOT NULL,
    codebase TEXT NOT NULL DEFAULT ''
);
CREATE TABLE gobject (
    gobject_id INTEGER PRIMARY KEY,
    template_definition_id INTEGER NOT NULL,
    derived_from_gobject_id INTEGER NOT NULL DEFAULT 0,
    contained_by_gobject_id INTEGER NOT NULL DEFAULT 0,
    area_gobject_id INTEGER NOT NULL DEFAULT 0,
    hosted_by_gobject_id INTEGER NOT NULL DEFAULT 0,
    tag_name TEXT NOT NULL COLLATE NOCASE,
    contained_name TEXT NOT NULL DEFAULT '',
    hierarchical_name TEXT NOT NULL DEFAULT '',
    is_template INTEGER NOT NULL DEFAULT 0,
    namespace_id INTEGER NOT NULL DEFAULT 1,
    checked_in_package_id INTEGER NOT NULL DEFAULT 0,
    deployed_package_id INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX ix_gobject_tag ON gobject (tag_name, namespace_id);
CREATE INDEX ix_gobject_area ON gobject (area_gobject_id);
CREATE INDEX ix_gobject_container ON gobject (contained_by_gobject_id);
CREATE INDEX ix_gobject_deployed ON gobject (deployed_package_id);
CREATE TABLE package (
    package_id INTEGER PRIMARY KEY,
    gobject_id INTEGER NOT NULL,
    derived_from_package_id INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ix_package_gobject ON package (gobject_id);
CREATE TABLE dynamic_attribute (
    gobject_id INTEGER NOT NULL,
    package_id INTEGER NOT NULL,
    mx_primitive_id INTEGER NOT NULL DEFAULT 2,
    attribute_name TEXT NOT NULL,
    mx_data_type INTEGER NOT NULL,
    is_array INTEGER NOT NULL DEFAULT 0,
    security_classification INTEGER NOT NULL DEFAULT 1,
    mx_attribute_category INTEGER NOT NULL DEFAULT 10,
    -- Simulator-only (not a ZB column): ZB encodes the element count in mx_value.
    sim_array_element_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ix_dynamic_attribute_package ON dynamic_attribute (package_id);
CREATE TABLE attribute_definition (
    attribute_definition_id INTEGER PRIMARY KEY,
    primitive_definition_id INTEGER NOT NULL,
    attribute_name TEXT NOT NULL,
    mx_attribute_id INTEGER NOT NULL DEFAULT 0,
    mx_data_type INTEGER NOT NULL,
    security_classification INTEGER NOT NULL DEFAULT 6,
    mx_attribute_category INTEGER NOT NULL DEFAULT 2,
    is_locked INTEGER NOT NULL DEFAULT 0,
    is_array INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ix_attribute_definition_primitive ON attribute_definition (primitive_definition_id);
CREATE TABLE primitive_definition (
    primitive_definition_id INTEGER PRIMARY KEY,
    template_definition_id INTEGER NOT NULL DEFAULT 0,
    primitive_name TEXT NOT NULL
);
CREATE TABLE primitive_instance (
    gobject_id INTEGER NOT NULL,
    package_id INTEGER NOT NULL,
    mx_primitive_id INTEGER NOT NULL,
    primitive_definition_id INTEGER NOT NULL,
    primitive_name TEXT NOT NULL
);
CREATE INDEX ix_primitive_instance_package ON primitive_instance (package_id);
"""

# COM MxDataType -> name (domain reference 4.1).
DATA_TYPE_NAMES: dict[int, str] = {
    -1: "Unknown",
    0: "NoData",
    1: "Boolean",
    2: "Integer",
    3: "Float",
    4: "Double",
    5: "String",
    6: "Time",
    7: "ElapsedTime",
    8: "Reference",
    9: "Status",
    10: "DataTypeEnum",
    11: "SecurityClassificationEnum",
    12: "DataQualityType",
    13: "QualifiedEnum",
    14: "QualifiedStruct",
    15: "InternationalizedString",
    16: "BigString",
}

# ECATEGORY ids used by the seed.
CAT_PLATFORM, CAT_APP_ENGINE, CAT_APP_OBJECT, CAT_IO_NETWORK, CAT_AREA = 1, 3, 10, 11, 13
# MxSecurityClassification.
FREE, OPERATE, SECURED, VERIFIED, TUNE, CONFIGURE, VIEW_ONLY = 0, 1, 2, 3, 4, 5, 6
# MxAttributeCategory.
CALCULATED, WRITEABLE_USC_LOCKABLE, WRITEABLE_UC, SYSTEM_SETS_ONLY = 2, 10, 7, 12
# primitive_definition ids: the two extensions and the common primitive every object has.
PRIM_HISTORY, PRIM_ALARM, PRIM_COMMON = 1, 2, 3

# Built-in (primitive) attributes: attribute_definition rows per primitive definition,
# (name, COM mx_data_type, security, category). An object gets those of the primitive
# instances in its package chain; an extension's attributes are named after the extended
# attribute (``Level.InAlarm``). Scalars only: attribute_definition has no element count.
_BUILTIN_ATTRIBUTES: dict[int, tuple[tuple[str, int, int, int], ...]] = {
    PRIM_COMMON: (
        ("ShortDesc", 5, CONFIGURE, WRITEABLE_UC),
        ("Tagname", 5, VIEW_ONLY, SYSTEM_SETS_ONLY),
        ("ContainedName", 5, VIEW_ONLY, SYSTEM_SETS_ONLY),
        ("HierarchicalName", 5, VIEW_ONLY, SYSTEM_SETS_ONLY),
        ("Area", 8, VIEW_ONLY, SYSTEM_SETS_ONLY),
        ("Host", 8, VIEW_ONLY, SYSTEM_SETS_ONLY),
        ("ScanState", 1, VIEW_ONLY, CALCULATED),
        ("ScanStateCmd", 1, OPERATE, WRITEABLE_USC_LOCKABLE),
        ("AlarmInhibit", 1, OPERATE, WRITEABLE_USC_LOCKABLE),
        ("InAlarm", 1, VIEW_ONLY, CALCULATED),
    ),
    PRIM_HISTORY: (
        ("TrendHi", 4, TUNE, WRITEABLE_USC_LOCKABLE),
        ("TrendLo", 4, TUNE, WRITEABLE_USC_LOCKABLE),
        ("ValueDeadBand", 4, TUNE, WRITEABLE_USC_LOCKABLE),
    ),
    PRIM_ALARM: (
        ("InAlarm", 1, VIEW_ONLY, CALCULATED),
        ("Acked", 1, VIEW_ONLY, CALCULATED),
        ("Priority", 2, TUNE, WRITEABLE_USC_LOCKABLE),
        ("AckMsg", 5, OPERATE, WRITEABLE_USC_LOCKABLE),
    ),
}


@dataclass(frozen=True)
class _Attr:
    name: str
    mx_data_type: int
    security: int
    category: int = WRITEABLE_USC_LOCKABLE
    array: int = 0
    historized: bool = False
    alarm: bool = False


def _ro(name: str, mx_type: int, **kw: int | bool) -> _Attr:
    return _Attr(name, mx_type, VIEW_ONLY, CALCULATED, **kw)  # type: ignore[arg-type]


# Templates: tag name -> (parent template, template_definition id, attributes). Every data
# type of the runtime appears, scalar and array, with every useful security classification.
_TEMPLATES: dict[str, tuple[str, int, tuple[_Attr, ...]]] = {
    "$WinPlatform": ("", 1, (_ro("CPULoad", 3, historized=True), _ro("Host", 8))),
    "$AppEngine": ("", 2, (_ro("ScanPeriod", 7), _ro("ObjectCount", 2))),
    "$Area": ("", 3, (_ro("ActiveAlarmCount", 2), _ro("AlarmInhibited", 1))),
    "$DDESuiteLinkClient": ("", 5, (_ro("ConnectionStatus", 5),)),
    "$UserDefined": ("", 4, ()),
    "$gMachine": (
        "$UserDefined",
        4,
        (
            _Attr("Description", 5, CONFIGURE, WRITEABLE_UC),
            _Attr("Enabled", 1, OPERATE),
            _Attr("Mode", 5, OPERATE),
            _ro("RunHours", 4, historized=True),
            _ro("StartCount", 2),
            _Attr("LastMaintenance", 6, TUNE),
        ),
    ),
    "$Tank": (
        "$gMachine",
        4,
        (
            _ro("Level", 4, historized=True, alarm=True),
            _Attr("Level.HiLimit", 4, TUNE),
            _Attr("Level.LoLimit", 4, TUNE),
            _ro("Temperature", 3, historized=True),
            _Attr("Setpoint", 4, SECURED),
            _Attr("BatchId", 5, OPERATE),
            _Attr("Recipe", 16, CONFIGURE, WRITEABLE_UC),
            _ro("CycleTime", 7),
            _ro("LevelHistory", 4, array=10),
            _Attr("BatchIds", 5, OPERATE, array=5),
            _ro("HighLevel", 1, alarm=True),
        ),
    ),
    "$Pump": (
        "$gMachine",
        4,
        (
            _ro("Running", 1, historized=True),
            _ro("Speed", 3, historized=True),
            _Attr("SpeedSP", 3, VERIFIED),
            _Attr("Cmd", 2, SECURED),
            _ro("Flow", 4, historized=True, alarm=True),
            _ro("Fault", 1, alarm=True),
            _ro("Vibration", 3, array=4),
            _Attr("Permissive", 1, FREE),
        ),
    ),
    "$Valve": (
        "$gMachine",
        4,
        (
            _ro("Position", 3, historized=True),
            _Attr("Open", 1, OPERATE),
            _Attr("Cmd", 2, OPERATE),
            _ro("Interlock", 1),
            _Attr("TravelTime", 7, TUNE),
            _ro("FailedToOpen", 1, alarm=True),
        ),
    ),
    "$Motor": (
        "$gMachine",
        4,
        (
            _ro("Current", 3, historized=True, alarm=True),
            _ro("Running", 1),
            _Attr("Start", 1, SECURED),
            _Attr("Stop", 1, VERIFIED),
            _ro("Temperatures", 4, array=3),
            _Attr("Setpoints", 2, TUNE, array=4),
            _Attr("Flags", 1, OPERATE, array=8),
            _ro("StartTimes", 6, array=2),
            _Attr("Notes", 16, OPERATE),
            _ro("Overload", 1, alarm=True),
        ),
    ),
}
_TEMPLATE_DEFS = (
    (1, "$WinPlatform", CAT_PLATFORM),
    (2, "$AppEngine", CAT_APP_ENGINE),
    (3, "$Area", CAT_AREA),
    (4, "$UserDefined", CAT_APP_OBJECT),
    (5, "$DDESuiteLinkClient", CAT_IO_NETWORK),
)
_EQUIPMENT = ("$Tank", "$Pump", "$Valve", "$Motor")


def db_file_name(objects: int | None = None, seed: int = 0) -> str:
    """File name of a cached Galaxy (schema version included, so an upgrade re-seeds)."""
    base = "galaxy" if objects is None else f"galaxy-{objects}-seed{seed}"
    return f"{base}-s{SCHEMA_VERSION}.db"


def default_db_path(objects: int | None = None, seed: int = 0) -> Path:
    """Where the simulator keeps its Galaxy when no path is given (a per-user temp dir)."""
    return Path(tempfile.gettempdir()) / "mxgw-sim" / db_file_name(objects, seed)


def format_db_time(value: datetime) -> str:
    """UTC ``datetime`` -> the text stored in ``galaxy.time_of_last_deploy``."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_db_time(text: str | None) -> datetime | None:
    """Text of ``galaxy.time_of_last_deploy`` -> aware UTC ``datetime`` (None when unset)."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class _Builder:
    """Accumulates rows, then writes them with bulk inserts."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        row = conn.execute("SELECT COALESCE(MAX(gobject_id), 0) FROM gobject").fetchone()
        self.next_gobject = int(row[0]) + 1
        row = conn.execute("SELECT COALESCE(MAX(package_id), 0) FROM package").fetchone()
        self.next_package = int(row[0]) + 1
        self.gobjects: list[tuple[object, ...]] = []
        self.packages: list[tuple[int, int, int]] = []
        self.attributes: list[tuple[object, ...]] = []
        self.primitives: list[tuple[object, ...]] = []
        self.template_ids: dict[str, tuple[int, int, int]] = {}  # tag -> (gobject, package, td)
        for gid, tag, pkg, td in conn.execute(
            "SELECT gobject_id, tag_name, checked_in_package_id, template_definition_id "
            "FROM gobject WHERE is_template = 1"
        ):
            self.template_ids[tag] = (gid, pkg, td)

    def template(self, tag: str) -> None:
        parent, td, attrs = _TEMPLATES[tag]
        common = not parent  # a base template carries the common primitive
        gid, pkg = self.next_gobject, self.next_package
        self.next_gobject += 1
        self.next_package += 1
        parent_gid, parent_pkg = 0, 0
        if parent:
            parent_gid, parent_pkg, _ = self.template_ids[parent]
        self.template_ids[tag] = (gid, pkg, td)
        self.gobjects.append((gid, td, parent_gid, 0, 0, 0, tag, "", tag, 1, 1, pkg, 0))
        self.packages.append((pkg, gid, parent_pkg))
        if common:
            self.primitives.append((gid, pkg, 1, PRIM_COMMON, ""))
        self.add_attributes(gid, pkg, attrs)

    def add_attributes(self, gid: int, pkg: int, attrs: Iterable[_Attr]) -> None:
        for i, a in enumerate(attrs):
            prim = 100 + i
            self.attributes.append(
                (
                    gid,
                    pkg,
                    2,
                    a.name,
                    a.mx_data_type,
                    int(a.array > 0),
                    a.security,
                    a.category,
                    a.array,
                )
            )
            if a.historized:
                self.primitives.append((gid, pkg, prim, PRIM_HISTORY, a.name))
            if a.alarm:
                self.primitives.append((gid, pkg, prim + 1000, PRIM_ALARM, a.name))

    def instance(
        self,
        template: str,
        tag: str,
        *,
        contained_name: str = "",
        container: int = 0,
        container_path: str = "",
        area: int = 0,
        host: int = 0,
        deployed: bool = True,
    ) -> int:
        tgid, tpkg, td = self.template_ids[template]
        gid, pkg = self.next_gobject, self.next_package
        self.next_gobject += 1
        self.next_package += 1
        hier = f"{container_path}.{contained_name}" if container_path else tag
        self.gobjects.append(
            (
                gid,
                td,
                tgid,
                container,
                area,
                host,
                tag,
                contained_name,
                hier,
                0,
                1,
                pkg,
                pkg if deployed else 0,
            )
        )
        self.packages.append((pkg, gid, tpkg))
        return gid

    def package_of(self, gid: int) -> int:
        for row in self.gobjects:
            if row[0] == gid:
                return int(str(row[11]))
        raise KeyError(gid)

    def flush(self) -> None:
        c = self.conn
        c.executemany(
            "INSERT INTO gobject (gobject_id, template_definition_id, derived_from_gobject_id, "
            "contained_by_gobject_id, area_gobject_id, hosted_by_gobject_id, tag_name, "
            "contained_name, hierarchical_name, is_template, namespace_id, "
            "checked_in_package_id, deployed_package_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.gobjects,
        )
        c.executemany("INSERT INTO package VALUES (?, ?, ?)", self.packages)
        c.executemany(
            "INSERT INTO dynamic_attribute (gobject_id, package_id, mx_primitive_id, "
            "attribute_name, mx_data_type, is_array, security_classification, "
            "mx_attribute_category, sim_array_element_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.attributes,
        )
        c.executemany(
            "INSERT INTO primitive_instance (gobject_id, package_id, mx_primitive_id, "
            "primitive_definition_id, primitive_name) VALUES (?, ?, ?, ?, ?)",
            self.primitives,
        )
        self.gobjects, self.packages, self.attributes, self.primitives = [], [], [], []


def _seed_static(conn: sqlite3.Connection, name: str, deploy_time: datetime) -> _Builder:
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("INSERT INTO galaxy VALUES (?, ?)", (name, format_db_time(deploy_time)))
    conn.executemany(
        "INSERT INTO template_definition (template_definition_id, original_template_tagname, "
        "category_id) VALUES (?, ?, ?)",
        _TEMPLATE_DEFS,
    )
    conn.executemany(
        "INSERT INTO primitive_definition (primitive_definition_id, primitive_name) VALUES (?, ?)",
        [
            (PRIM_HISTORY, "HistoryExtension"),
            (PRIM_ALARM, "AlarmExtension"),
            (PRIM_COMMON, "CommonPrimitive"),
        ],
    )
    conn.executemany(
        "INSERT INTO attribute_definition (primitive_definition_id, attribute_name, "
        "mx_attribute_id, mx_data_type, security_classification, mx_attribute_category) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (prim, name, n, mx_type, security, category)
            for prim, rows in _BUILTIN_ATTRIBUTES.items()
            for n, (name, mx_type, security, category) in enumerate(rows, start=1)
        ],
    )
    b = _Builder(conn)
    for tag in _TEMPLATES:
        b.template(tag)
    b.flush()
    return b


def _equipment_group(
    b: _Builder, template: str, tag: str, short: str, area: int, rng: random.Random
) -> int:
    """One piece of equipment in an area; tanks contain an inlet valve and an outlet pump."""
    gid = b.instance(template, tag, contained_name=short, area=area, host=area)
    count = 1
    if template == "$Tank":
        b.instance(
            "$Valve",
            f"{tag}_InletValve",
            contained_name="InletValve",
            container=gid,
            container_path=tag,
            area=area,
            host=area,
        )
        b.instance(
            "$Pump",
            f"{tag}_OutletPump",
            contained_name="OutletPump",
            container=gid,
            container_path=tag,
            area=area,
            host=area,
        )
        count += 2
    if rng.random() < 0.25:
        # An instance-level UDA on top of the template's: the package chain matters.
        pkg = b.package_of(gid)
        b.add_attributes(gid, pkg, [_Attr("Comment", 5, FREE, WRITEABLE_UC)])
    return count


def _seed_plant(b: _Builder, rng: random.Random) -> None:
    """The default galaxy: a small, believable plant (about 60 objects)."""
    plant = b.instance("$Area", "Plant", contained_name="Plant")
    platform = b.instance("$WinPlatform", "WinPlatform_001", area=plant)
    engine = b.instance("$AppEngine", "AppEngine_001", area=plant, host=platform)
    b.instance("$DDESuiteLinkClient", "DASSIDirect_001", area=plant, host=engine)
    utilities = b.instance(
        "$Area", "Utilities", contained_name="Utilities", area=plant, host=engine
    )
    production = b.instance(
        "$Area", "Production", contained_name="Production", area=plant, host=engine
    )
    b.instance(
        "$Motor", "AirCompressor", contained_name="AirCompressor", area=utilities, host=utilities
    )
    b.instance("$Pump", "CoolingPump", contained_name="CoolingPump", area=utilities, host=utilities)
    b.instance("$Tank", "WaterTank", contained_name="WaterTank", area=utilities, host=utilities)
    # An object that is configured but not deployed: never visible.
    b.instance(
        "$Pump",
        "SparePump",
        contained_name="SparePump",
        area=utilities,
        host=utilities,
        deployed=False,
    )
    for line in range(1, 4):
        area = b.instance(
            "$Area", f"Line{line}", contained_name=f"Line{line}", area=production, host=engine
        )
        for i in range(1, 3):
            _equipment_group(b, "$Tank", f"L{line}_Tank{i:02d}", f"Tank{i:02d}", area, rng)
        for i in range(1, 3):
            _equipment_group(b, "$Pump", f"L{line}_Pump{i:02d}", f"Pump{i:02d}", area, rng)
        _equipment_group(b, "$Valve", f"L{line}_Valve01", "Valve01", area, rng)
        _equipment_group(b, "$Motor", f"L{line}_Mixer", "Mixer", area, rng)
    b.flush()


def _seed_synthetic(b: _Builder, objects: int, rng: random.Random) -> None:
    """A synthetic galaxy of exactly ``objects`` deployed objects (for scale work)."""
    remaining = objects
    plant = b.instance("$Area", "Plant", contained_name="Plant")
    remaining -= 1
    platform = engine = plant
    if remaining > 0:
        platform = b.instance("$WinPlatform", "WinPlatform_001", area=plant)
        remaining -= 1
    if remaining > 0:
        engine = b.instance("$AppEngine", "AppEngine_001", area=plant, host=platform)
        remaining -= 1
    area_no = 0
    while remaining > 0:
        area_no += 1
        area = b.instance(
            "$Area",
            f"Area{area_no:04d}",
            contained_name=f"Area{area_no:04d}",
            area=plant,
            host=engine,
        )
        remaining -= 1
        for i in range(1, 101):
            if remaining <= 0:
                break
            template = _EQUIPMENT[(i - 1) % len(_EQUIPMENT)]
            if template == "$Tank" and remaining < 3:
                template = "$Pump"
            short = f"{template[1:]}{i:03d}"
            remaining -= _equipment_group(b, template, f"A{area_no:04d}_{short}", short, area, rng)
        if len(b.gobjects) > 20000:
            b.flush()
    b.flush()


def create_galaxy(
    db_path: Path, *, objects: int | None = None, seed: int = 0, name: str = "ZB"
) -> None:
    """Create and seed a Galaxy database at ``db_path`` (which must not exist yet)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f"{db_path.name}.{os.getpid()}.creating")
    tmp.unlink(missing_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        with conn:
            deployed_at = datetime(2026, 1, 5, 6, 0, tzinfo=timezone.utc)
            b = _seed_static(conn, name, deployed_at)
            if objects is None:
                _seed_plant(b, rng)
            else:
                if objects < 1:
                    raise ValueError("objects must be at least 1")
                _seed_synthetic(b, objects, rng)
    finally:
        conn.close()
    tmp.replace(db_path)  # atomic: a concurrent reader never sees a half-seeded file


def _leaf_equipment(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [
        (int(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT g.gobject_id, g.tag_name FROM gobject g "
            "JOIN template_definition td ON td.template_definition_id = g.template_definition_id "
            "WHERE g.is_template = 0 AND g.deployed_package_id <> 0 AND td.category_id = 10 "
            "AND NOT EXISTS (SELECT 1 FROM gobject c WHERE c.deployed_package_id <> 0 "
            "AND (c.contained_by_gobject_id = g.gobject_id OR c.area_gobject_id = g.gobject_id)) "
            "ORDER BY g.gobject_id"
        )
    ]


def deploy(db_path: Path, *, add: int = 0, remove: int = 0, seed: int = 0) -> dict[str, object]:
    """Simulate a redeploy by another process: add/undeploy objects, bump the deploy time.

    ``add`` new pumps go into the first non-root area; ``remove`` leaf application objects
    (chosen deterministically from ``seed``) are undeployed. ``galaxy.time_of_last_deploy``
    always moves forward, so a running simulator notices the deploy on its next poll.
    """
    if add < 0 or remove < 0:
        raise ValueError("add and remove must not be negative")
    if not Path(db_path).exists():
        raise FileNotFoundError(f"no Galaxy database at {db_path}")
    rng = random.Random(seed)
    conn = sqlite3.connect(db_path, timeout=10.0)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            removed: list[str] = []
            if remove:
                leaves = _leaf_equipment(conn)
                chosen = sorted(rng.sample(leaves, min(remove, len(leaves))))
                conn.executemany(
                    "UPDATE gobject SET deployed_package_id = 0 WHERE gobject_id = ?",
                    [(gid,) for gid, _ in chosen],
                )
                removed = [tag for _, tag in chosen]
            added: list[str] = []
            if add:
                b = _Builder(conn)
                row = conn.execute(
                    "SELECT g.gobject_id, g.tag_name FROM gobject g "
                    "JOIN template_definition td "
                    "ON td.template_definition_id = g.template_definition_id "
                    "WHERE td.category_id = 13 AND g.is_template = 0 "
                    "AND g.deployed_package_id <> 0 AND g.area_gobject_id <> 0 "
                    "ORDER BY g.gobject_id LIMIT 1"
                ).fetchone()
                area = int(row[0]) if row else 0
                n = 0
                existing = {str(r[0]).lower() for r in conn.execute("SELECT tag_name FROM gobject")}
                while len(added) < add:
                    n += 1
                    tag = f"DeployedPump{n:04d}"
                    if tag.lower() in existing:
                        continue
                    b.instance("$Pump", tag, contained_name=tag, area=area, host=area)
                    added.append(tag)
                b.flush()
            prev = parse_db_time(
                conn.execute("SELECT time_of_last_deploy FROM galaxy").fetchone()[0]
            )
            now = datetime.now(timezone.utc)
            if prev is not None and now <= prev:
                now = prev + timedelta(milliseconds=1)
            conn.execute("UPDATE galaxy SET time_of_last_deploy = ?", (format_db_time(now),))
            count = conn.execute(
                "SELECT COUNT(*) FROM gobject WHERE is_template = 0 AND deployed_package_id <> 0"
            ).fetchone()[0]
    finally:
        conn.close()
    return {
        "added": added,
        "removed": removed,
        "time_of_last_deploy": now.isoformat(),
        "object_count": int(count),
    }
