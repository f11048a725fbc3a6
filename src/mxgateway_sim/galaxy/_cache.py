"""The hierarchy cache: one snapshot of the deployed Galaxy, read with Q2/Q3-style queries.

Objects are kept compactly (one slotted record each, attributes shared per package chain),
walked once into depth-first order, and turned into protobuf messages only for the page a
caller asks for, so a 50,000-object Galaxy pages without materialising every attribute.
"""

from __future__ import annotations

import re
import sqlite3
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway_sim._catalog import TagInfo
from mxgateway_sim._slicing import Slicer, chunks
from mxgateway_sim.galaxy._glob import TagGlob
from mxgateway_sim.galaxy._schema import DATA_TYPE_NAMES, SCHEMA_VERSION, parse_db_time

__all__ = ["Filters", "GalaxyObjectRecord", "HierarchySnapshot", "load_snapshot"]

# Q2: deployed instances of the browsable categories, with their template and placement.
_Q2_OBJECTS = """
SELECT g.gobject_id, g.tag_name, g.contained_name, g.hierarchical_name,
       g.contained_by_gobject_id, g.area_gobject_id, g.hosted_by_gobject_id,
       td.category_id, g.derived_from_gobject_id, g.deployed_package_id
FROM gobject g
JOIN template_definition td ON td.template_definition_id = g.template_definition_id
WHERE g.is_template = 0 AND g.namespace_id = 1 AND g.deployed_package_id <> 0
  AND td.category_id IN (1, 3, 4, 10, 11, 13, 17, 24, 26)
"""

# Q2 template chain: recursive CTE over derived_from_gobject_id (depth < 10).
_Q2_TEMPLATE_CHAIN = """
WITH RECURSIVE chain(start_id, gobject_id, depth) AS (
    SELECT DISTINCT derived_from_gobject_id, derived_from_gobject_id, 0
    FROM gobject WHERE is_template = 0 AND deployed_package_id <> 0
                   AND derived_from_gobject_id <> 0
    UNION ALL
    SELECT c.start_id, t.derived_from_gobject_id, c.depth + 1
    FROM chain c JOIN gobject t ON t.gobject_id = c.gobject_id
    WHERE t.derived_from_gobject_id <> 0 AND c.depth < 9
)
SELECT c.start_id, t.tag_name FROM chain c JOIN gobject t ON t.gobject_id = c.gobject_id
ORDER BY c.start_id, c.depth
"""

# Q3 deployed package chain: from each deployed package up through derived_from_package_id.
_Q3_PACKAGE_CHAIN = """
WITH RECURSIVE deployed_package_chain(gobject_id, package_id, depth) AS (
    SELECT gobject_id, deployed_package_id, 0
    FROM gobject WHERE is_template = 0 AND deployed_package_id <> 0
    UNION ALL
    SELECT c.gobject_id, p.derived_from_package_id, c.depth + 1
    FROM deployed_package_chain c JOIN package p ON p.package_id = c.package_id
    WHERE p.derived_from_package_id <> 0 AND c.depth < 9
)
SELECT gobject_id, package_id FROM deployed_package_chain ORDER BY gobject_id, depth DESC
"""

# Q3 attributes per package (joined to the chain in memory, so shared template packages are
# read and cached once), with the extension primitives that flag history and alarms. The
# element count of an array is the simulator's own column (ZB keeps it inside mx_value).
_Q3_ATTRIBUTES = """
SELECT da.package_id, da.attribute_name, da.mx_data_type, da.is_array,
       da.sim_array_element_count, da.security_classification, da.mx_attribute_category
FROM dynamic_attribute da
ORDER BY da.package_id, da.rowid
"""
# Q3 built-in attributes (upstream since 2026-05-22): attribute_definition joined through
# the primitive instances of each package; no category filter, never historized or alarm.
# A named primitive (an extension) prefixes its attributes: ``Level`` + ``InAlarm``.
_Q3_BUILTIN_ATTRIBUTES = """
SELECT pi.package_id, pi.primitive_name, ad.attribute_name, ad.mx_data_type, ad.is_array,
       ad.security_classification, ad.mx_attribute_category
FROM primitive_instance pi
JOIN attribute_definition ad ON ad.primitive_definition_id = pi.primitive_definition_id
ORDER BY pi.package_id, pi.rowid, ad.attribute_definition_id
"""
_Q3_EXTENSIONS = """
SELECT pi.package_id, pi.primitive_name, pd.primitive_name
FROM primitive_instance pi
JOIN primitive_definition pd ON pd.primitive_definition_id = pi.primitive_definition_id
WHERE pd.primitive_name IN ('HistoryExtension', 'AlarmExtension')
"""

_AREA = 13

# (attribute_name, mx_data_type, is_array, array_dimension, security, category, hist, alarm)
_AttrRow = tuple[str, int, bool, int, int, int, bool, bool]
# package_id -> (attribute_name, mx_data_type, is_array, array_dimension, security, category)
_PkgRows = dict[int, list[tuple[str, int, bool, int, int, int]]]


@dataclass(frozen=True, slots=True)
class AttributeSet:
    """The attributes an object gets from its deployed package chain (shared by many)."""

    rows: tuple[_AttrRow, ...]
    by_name: dict[str, int]
    has_alarm: bool
    has_historized: bool


@dataclass(slots=True)
class GalaxyObjectRecord:
    """One deployed object of the snapshot (compact; no protobuf until a page is built)."""

    gobject_id: int
    tag_name: str
    contained_name: str
    hierarchical_name: str
    browse_name: str
    parent_id: int
    area_id: int
    host_id: int
    category_id: int
    template_chain: tuple[str, ...]
    attrs: AttributeSet
    depth: int = 0
    order: int = 0
    subtree_end: int = 0
    children: list[int] | None = None


@dataclass(frozen=True, slots=True)
class Filters:
    """The object filters of DiscoverHierarchy/BrowseChildren (AND-combined)."""

    category_ids: frozenset[int] = frozenset()
    template_chain_contains: frozenset[str] = frozenset()  # lower-cased
    tag_name_glob: str = ""
    alarm_bearing_only: bool = False
    historized_only: bool = False

    def compile(self) -> TagGlob | None:
        if not self.tag_name_glob:
            return None
        return TagGlob(self.tag_name_glob)

    def restricts_attributes(self) -> bool:
        return self.alarm_bearing_only or self.historized_only

    def keep_attribute(self, row: _AttrRow) -> bool:
        if self.alarm_bearing_only and not row[7]:
            return False
        return not (self.historized_only and not row[6])


def _sort_key(rec: GalaxyObjectRecord) -> tuple[int, str, int]:
    return (0 if rec.category_id == _AREA else 1, rec.browse_name.casefold(), rec.gobject_id)


_FILTER_SLICE = 512
"""Objects filtered between two pauses of a sliced walk."""

_R = TypeVar("_R")


def _run(steps: Generator[None, None, _R]) -> _R:
    """Run a sliced computation to its end in one piece."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def _run_sliced(steps: Generator[None, None, _R]) -> _R:
    """Run a sliced computation, giving the event loop back between slices."""
    slicer = Slicer()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await slicer.checkpoint()


class HierarchySnapshot:
    """An immutable view of the deployed Galaxy at one ``time_of_last_deploy``."""

    def __init__(
        self,
        version: int,
        time_of_last_deploy: datetime | None,
        records: list[GalaxyObjectRecord],
    ) -> None:
        self.version = version
        self.time_of_last_deploy = time_of_last_deploy
        self.by_id: dict[int, GalaxyObjectRecord] = {r.gobject_id: r for r in records}
        self.by_tag: dict[str, GalaxyObjectRecord] = {r.tag_name.casefold(): r for r in records}
        self.by_hier: dict[str, GalaxyObjectRecord] = {
            r.hierarchical_name.casefold(): r for r in records if r.hierarchical_name
        }
        roots: list[GalaxyObjectRecord] = []
        for r in records:
            parent = self.by_id.get(r.parent_id) if r.parent_id else None
            if parent is None or parent is r:
                r.parent_id = 0
                roots.append(r)
            else:
                if parent.children is None:
                    parent.children = []
                parent.children.append(r.gobject_id)
        roots.sort(key=_sort_key)
        self.roots = [r.gobject_id for r in roots]
        for r in records:
            if r.children:
                r.children.sort(key=lambda cid: _sort_key(self.by_id[cid]))
        # Depth-first order, iteratively (deep containment must not hit the recursion limit).
        self.dfs: list[GalaxyObjectRecord] = []
        stack: list[tuple[GalaxyObjectRecord, int]] = [
            (self.by_id[rid], 0) for rid in reversed(self.roots)
        ]
        while stack:
            rec, depth = stack.pop()
            rec.depth = depth
            rec.order = len(self.dfs)
            self.dfs.append(rec)
            for cid in reversed(rec.children or ()):
                stack.append((self.by_id[cid], depth + 1))
        # subtree_end: first DFS index after the subtree (computed from the depths).
        n = len(self.dfs)
        open_stack: list[GalaxyObjectRecord] = []
        for rec in self.dfs:
            while open_stack and open_stack[-1].depth >= rec.depth:
                open_stack.pop().subtree_end = rec.order
            open_stack.append(rec)
        for rec in open_stack:
            rec.subtree_end = n
        self.object_count = len(records)
        self.attribute_count = sum(len(r.attrs.rows) for r in records)
        self._filtered: OrderedDict[tuple[object, ...], Sequence[int]] = OrderedDict()

    # ----- resolution -------------------------------------------------------------------
    def resolve_path(self, path: str) -> GalaxyObjectRecord | None:
        """Object at a contained-name path (``Plant/Production/Line1``), or a hierarchical
        name (``L1_Tank01.InletValve``); segments match browse name or tag (no case)."""
        parts = [p for p in re.split(r"[/\\]", path.strip()) if p]
        if not parts:
            return None
        if len(parts) == 1:
            found = self.by_hier.get(parts[0].casefold())
            if found is not None:
                return found
        level = self.roots
        rec: GalaxyObjectRecord | None = None
        for part in parts:
            key = part.casefold()
            rec = None
            for cid in level:
                cand = self.by_id[cid]
                if cand.browse_name.casefold() == key or cand.tag_name.casefold() == key:
                    rec = cand
                    break
            if rec is None:
                return None
            level = rec.children or []
        return rec

    # ----- filtering --------------------------------------------------------------------
    def matches(self, rec: GalaxyObjectRecord, f: Filters, glob: TagGlob | None) -> bool:
        if f.category_ids and rec.category_id not in f.category_ids:
            return False
        if f.template_chain_contains and not any(
            t.casefold() in f.template_chain_contains for t in rec.template_chain
        ):
            return False
        if glob is not None and not glob.matches(rec.tag_name):
            return False
        if f.alarm_bearing_only or f.historized_only:
            return any(f.keep_attribute(row) for row in rec.attrs.rows)
        return True

    def walk(
        self, root: GalaxyObjectRecord | None, max_depth: int | None, f: Filters
    ) -> Sequence[int]:
        """DFS indexes of the objects a DiscoverHierarchy walk returns (cached per filter)."""
        return _run(self._walk(root, max_depth, f))

    async def walk_sliced(
        self, root: GalaxyObjectRecord | None, max_depth: int | None, f: Filters
    ) -> Sequence[int]:
        """:meth:`walk`, giving the event loop back between slices (a 50k-object walk with
        a filter is 100 ms of work; the snapshot is immutable, so pausing is safe)."""
        return await _run_sliced(self._walk(root, max_depth, f))

    def _walk(
        self, root: GalaxyObjectRecord | None, max_depth: int | None, f: Filters
    ) -> Generator[None, None, Sequence[int]]:
        key = ("walk", root.gobject_id if root else 0, max_depth, f)
        hit = self._filtered.get(key)
        if hit is not None:
            self._filtered.move_to_end(key)
            return hit
        start, end, base = (
            (root.order, root.subtree_end, root.depth) if root else (0, len(self.dfs), 0)
        )
        glob = f.compile()
        out: list[int] = []
        for lo in range(start, end, _FILTER_SLICE):
            out.extend(
                i
                for i in range(lo, min(lo + _FILTER_SLICE, end))
                if (max_depth is None or self.dfs[i].depth - base <= max_depth)
                and self.matches(self.dfs[i], f, glob)
            )
            yield
        self._remember(key, out)
        return out

    def children_of(self, parent: GalaxyObjectRecord | None, f: Filters) -> Sequence[int]:
        """gobject ids of the direct children (roots when ``parent`` is None) that match."""
        return _run(self._children_of(parent, f))

    async def children_of_sliced(
        self, parent: GalaxyObjectRecord | None, f: Filters
    ) -> Sequence[int]:
        """:meth:`children_of`, giving the event loop back between slices."""
        return await _run_sliced(self._children_of(parent, f))

    def _children_of(
        self, parent: GalaxyObjectRecord | None, f: Filters
    ) -> Generator[None, None, Sequence[int]]:
        key = ("children", parent.gobject_id if parent else 0, f)
        hit = self._filtered.get(key)
        if hit is not None:
            self._filtered.move_to_end(key)
            return hit
        ids = self.roots if parent is None else (parent.children or [])
        glob = f.compile()
        out: list[int] = []
        for chunk in chunks(ids, _FILTER_SLICE):
            out.extend(cid for cid in chunk if self.matches(self.by_id[cid], f, glob))
            yield
        self._remember(key, out)
        return out

    def _remember(self, key: tuple[object, ...], value: Sequence[int]) -> None:
        self._filtered[key] = value
        while len(self._filtered) > 16:
            self._filtered.popitem(last=False)

    # ----- materialisation --------------------------------------------------------------
    def fill_proto(
        self,
        obj: gr.GalaxyObject,
        rec: GalaxyObjectRecord,
        *,
        include_attributes: bool,
        f: Filters | None,
    ) -> None:
        """Fill an empty ``GalaxyObject`` (one added to a reply in place: no copy)."""
        obj.gobject_id = rec.gobject_id
        obj.tag_name = rec.tag_name
        obj.contained_name = rec.contained_name
        obj.hierarchical_name = rec.hierarchical_name
        obj.browse_name = rec.browse_name
        obj.parent_gobject_id = rec.parent_id
        obj.area_gobject_id = rec.area_id
        obj.hosted_by_gobject_id = rec.host_id
        obj.category_id = rec.category_id
        obj.is_area = rec.category_id == _AREA
        obj.template_chain.extend(rec.template_chain)
        if include_attributes:
            restrict = f is not None and f.restricts_attributes()
            attrs = obj.attributes
            for row in rec.attrs.rows:
                if restrict and f is not None and not f.keep_attribute(row):
                    continue
                attrs.add(
                    gobject_id=rec.gobject_id,
                    attribute_name=row[0],
                    full_tag_reference=f"{rec.tag_name}.{row[0]}",
                    mx_data_type=row[1],
                    data_type_name=DATA_TYPE_NAMES.get(row[1], "Unknown"),
                    is_array=row[2],
                    array_dimension=row[3],
                    security_classification=row[4],
                    mx_attribute_category=row[5],
                    is_historized=row[6],
                    is_alarm=row[7],
                )

    # ----- TagCatalog -------------------------------------------------------------------
    def lookup(self, full_tag_reference: str) -> TagInfo | None:
        """The attribute at ``tag.attr`` or ``hierarchical.name.attr`` (no case), or None."""
        ref = full_tag_reference.strip()
        if ref.endswith("[]"):
            ref = ref[:-2]
        folded = ref.casefold()
        pos = folded.find(".")
        while pos > 0:
            head, tail = folded[:pos], folded[pos + 1 :]
            rec = self.by_tag.get(head) or self.by_hier.get(head)
            if rec is not None:
                idx = rec.attrs.by_name.get(tail)
                if idx is not None:
                    return _tag_info(rec, rec.attrs.rows[idx])
            pos = folded.find(".", pos + 1)
        return None

    def iter_tags(self) -> Iterator[TagInfo]:
        for rec in self.dfs:
            for row in rec.attrs.rows:
                yield _tag_info(rec, row)


def _tag_info(rec: GalaxyObjectRecord, row: _AttrRow) -> TagInfo:
    return TagInfo(
        tag_name=rec.tag_name,
        attribute_name=row[0],
        full_tag_reference=f"{rec.tag_name}.{row[0]}",
        mx_data_type=row[1],
        is_array=row[2],
        array_dimension=row[3],
        security_classification=row[4],
        mx_attribute_category=row[5],
        is_historized=row[6],
        is_alarm=row[7],
    )


def connect_ro(db_path: Path, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection that fails (instead of creating a file) when the DB is gone."""
    return sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


def read_deploy_time(db_path: Path) -> tuple[bool, datetime | None]:
    """``(present, time)`` of ``galaxy.time_of_last_deploy``; raises when unreachable."""
    conn = connect_ro(db_path)
    try:
        row = conn.execute("SELECT time_of_last_deploy FROM galaxy").fetchone()
    finally:
        conn.close()
    if row is None:
        return False, None
    value = parse_db_time(row[0])
    return value is not None, value


def load_snapshot(db_path: Path, version: int) -> HierarchySnapshot:
    """Run Q2/Q3 against the database and build a snapshot (blocking; run in a thread).

    Raises:
        sqlite3.DatabaseError: Not a Galaxy database, or one of an older schema.
    """
    conn = connect_ro(db_path)
    try:
        schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if schema < SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {schema}, this simulator needs {SCHEMA_VERSION} "
                "(created by an older mxgw-sim: delete the file to have it seeded again)"
            )
        conn.execute("BEGIN")  # one consistent read of every table
        row = conn.execute("SELECT time_of_last_deploy FROM galaxy").fetchone()
        deploy_time = parse_db_time(row[0]) if row else None
        chains: dict[int, list[str]] = {}
        for start, tag in conn.execute(_Q2_TEMPLATE_CHAIN):
            chains.setdefault(int(start), []).append(str(tag))
        frozen_chains = {k: tuple(v) for k, v in chains.items()}
        pkg_attrs: _PkgRows = {}
        for pkg, name, mtype, is_arr, dim, sec, cat in conn.execute(_Q3_ATTRIBUTES):
            pkg_attrs.setdefault(int(pkg), []).append(
                (str(name), int(mtype), bool(is_arr), int(dim), int(sec), int(cat))
            )
        pkg_builtin: _PkgRows = {}
        for pkg, prim, name, mtype, is_arr, sec, cat in conn.execute(_Q3_BUILTIN_ATTRIBUTES):
            full = f"{prim}.{name}" if prim else str(name)
            pkg_builtin.setdefault(int(pkg), []).append(
                (full, int(mtype), bool(is_arr), 0, int(sec), int(cat))
            )
        pkg_ext: dict[int, list[tuple[str, bool]]] = {}
        for pkg, prim_name, kind in conn.execute(_Q3_EXTENSIONS):
            pkg_ext.setdefault(int(pkg), []).append((str(prim_name), kind == "AlarmExtension"))
        obj_chain: dict[int, list[int]] = {}
        for gid, pkg in conn.execute(_Q3_PACKAGE_CHAIN):
            pkg = int(pkg)
            if pkg in pkg_attrs or pkg in pkg_ext or pkg in pkg_builtin:
                obj_chain.setdefault(int(gid), []).append(pkg)
        sets: dict[tuple[int, ...], AttributeSet] = {}
        records: list[GalaxyObjectRecord] = []
        empty = _attribute_set(())
        for gid, tag, cname, hname, container, area, host, cat, derived, _pkg in conn.execute(
            _Q2_OBJECTS
        ):
            key = tuple(obj_chain.get(int(gid), ()))
            attrs = sets.get(key)
            if attrs is None:
                attrs = _build_set(key, pkg_attrs, pkg_builtin, pkg_ext) if key else empty
                sets[key] = attrs
            cname = str(cname or "")
            records.append(
                GalaxyObjectRecord(
                    gobject_id=int(gid),
                    tag_name=str(tag),
                    contained_name=cname,
                    hierarchical_name=str(hname or ""),
                    browse_name=cname or str(tag),
                    parent_id=int(container) if container else int(area),
                    area_id=int(area),
                    host_id=int(host),
                    category_id=int(cat),
                    template_chain=frozen_chains.get(int(derived), ()),
                    attrs=attrs,
                )
            )
        conn.rollback()
    finally:
        conn.close()
    return HierarchySnapshot(version, deploy_time, records)


def _build_set(
    chain: tuple[int, ...],
    pkg_attrs: _PkgRows,
    pkg_builtin: _PkgRows,
    pkg_ext: dict[int, list[tuple[str, bool]]],
) -> AttributeSet:
    """The attributes of a package chain: the dynamic ones (flagged by the extensions),
    then the built-in ones that no dynamic attribute of the same reference replaces."""
    hist: set[str] = set()
    alarm: set[str] = set()
    for pkg in chain:
        for name, is_alarm in pkg_ext.get(pkg, ()):
            (alarm if is_alarm else hist).add(name.casefold())
    rows: list[_AttrRow] = []
    seen: dict[str, int] = {}
    for pkg in chain:  # template first, instance last: an override replaces the inherited row
        for name, mtype, is_arr, dim, sec, cat in pkg_attrs.get(pkg, ()):
            folded = name.casefold()
            row: _AttrRow = (name, mtype, is_arr, dim, sec, cat, folded in hist, folded in alarm)
            if folded in seen:
                rows[seen[folded]] = row
            else:
                seen[folded] = len(rows)
                rows.append(row)
    dynamic = set(seen)
    for pkg in chain:
        for name, mtype, is_arr, dim, sec, cat in pkg_builtin.get(pkg, ()):
            folded = name.casefold()
            if folded in dynamic:
                continue  # upstream: a dynamic_attribute row wins on a reference collision
            builtin: _AttrRow = (name, mtype, is_arr, dim, sec, cat, False, False)
            if folded in seen:
                rows[seen[folded]] = builtin
            else:
                seen[folded] = len(rows)
                rows.append(builtin)
    return _attribute_set(tuple(rows))


def _attribute_set(rows: tuple[_AttrRow, ...]) -> AttributeSet:
    return AttributeSet(
        rows=rows,
        by_name={r[0].casefold(): i for i, r in enumerate(rows)},
        has_alarm=any(r[7] for r in rows),
        has_historized=any(r[6] for r in rows),
    )
