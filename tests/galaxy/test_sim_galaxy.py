"""The simulator's GalaxyRepository over real gRPC: paging, filters, tokens, deploys, watch."""

from __future__ import annotations

import asyncio
import fnmatch
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from galaxy_helpers import GalaxyServer, start_server, wait_for

from mxgateway._values import datetime_to_timestamp, timestamp_to_datetime
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim.galaxy import GalaxyService, deploy
from mxgateway_sim.galaxy._service import _Watcher


async def walk(
    stub: gr_grpc.GalaxyRepositoryStub, **kw: object
) -> tuple[list[gr.GalaxyObject], int, int]:
    """Every page of a DiscoverHierarchy walk: (objects, pages, total_object_count)."""
    objects: list[gr.GalaxyObject] = []
    token, pages, total = "", 0, -1
    while True:
        reply = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_token=token, **kw))
        pages += 1
        objects.extend(reply.objects)
        if total >= 0:
            assert reply.total_object_count == total
        total = reply.total_object_count
        token = reply.next_page_token
        if not token:
            return objects, pages, total


def deployed_tags(db: Path) -> set[str]:
    """Q1 straight from the database: the deployed instances."""
    with closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute(
            "SELECT tag_name FROM gobject WHERE is_template = 0 AND namespace_id = 1 "
            "AND deployed_package_id > 0"
        ).fetchall()
    return {r[0] for r in rows}


async def test_full_walk_matches_database_and_pages_depth_first(galaxy: GalaxyServer) -> None:
    whole, pages, total = await walk(galaxy.stub, page_size=5000)
    assert pages == 1
    assert {o.tag_name for o in whole} == deployed_tags(galaxy.db_path)
    assert total == len(whole)
    paged, pages, _ = await walk(galaxy.stub, page_size=7)
    assert pages == -(-len(whole) // 7)
    assert [o.tag_name for o in paged] == [o.tag_name for o in whole]
    # Depth first: every object comes after its parent, and roots have parent 0.
    seen: set[int] = set()
    by_id = {o.gobject_id: o for o in whole}
    for o in whole:
        assert o.parent_gobject_id == 0 or o.parent_gobject_id in seen
        seen.add(o.gobject_id)
    # Areas come before other siblings.
    plant = next(o for o in whole if o.tag_name == "Plant")
    children = [o for o in whole if o.parent_gobject_id == plant.gobject_id]
    kinds = [o.is_area for o in children]
    assert kinds == sorted(kinds, reverse=True) and kinds[0]
    # Attributes carry their owner and the runtime reference.
    tank = by_id[next(o.gobject_id for o in whole if o.tag_name == "L1_Tank01")]
    assert list(tank.template_chain) == ["$Tank", "$gMachine", "$UserDefined"]
    attrs = {a.attribute_name: a for a in tank.attributes}
    assert attrs["Level"].full_tag_reference == "L1_Tank01.Level"
    assert attrs["Level"].is_historized and attrs["Level"].is_alarm
    assert attrs["LevelHistory"].is_array and attrs["LevelHistory"].array_dimension == 10
    assert attrs["Setpoint"].security_classification == 2
    contained = next(o for o in whole if o.tag_name == "L1_Tank01_InletValve")
    assert contained.parent_gobject_id == tank.gobject_id
    assert contained.hierarchical_name == "L1_Tank01.InletValve"
    assert contained.browse_name == "InletValve"


async def test_seeded_plant_covers_types_and_security(galaxy: GalaxyServer) -> None:
    whole, _, _ = await walk(galaxy.stub, page_size=5000)
    attrs = [a for o in whole for a in o.attributes]
    assert {1, 2, 3, 4, 5, 6, 7, 16} <= {a.mx_data_type for a in attrs}
    assert {0, 1, 2, 3, 4, 5, 6} <= {a.security_classification for a in attrs}
    assert {a.mx_data_type for a in attrs if a.is_array} >= {1, 2, 4, 5, 6}
    assert any(a.is_historized for a in attrs) and any(a.is_alarm for a in attrs)
    assert {o.category_id for o in whole} >= {1, 3, 10, 11, 13}
    assert "SparePump" not in {o.tag_name for o in whole}  # configured, never deployed


async def test_default_page_size_and_cap(tmp_path: Path) -> None:
    server, svc, address = await start_server(tmp_path / "big.db", objects=5200)
    channel = grpc.aio.insecure_channel(address)
    try:
        stub = gr_grpc.GalaxyRepositoryStub(channel)
        first = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(include_attributes=False))
        assert len(first.objects) == 500 and first.total_object_count == 5200
        capped = await stub.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(page_size=100_000, include_attributes=False)
        )
        assert len(capped.objects) == 5000 and capped.next_page_token
        rest = await stub.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(
                page_size=100_000, include_attributes=False, page_token=capped.next_page_token
            )
        )
        assert len(rest.objects) == 200 and not rest.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_size=-1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await server.stop(None)
        await svc.close()


async def test_roots_and_not_found(galaxy: GalaxyServer) -> None:
    whole, _, _ = await walk(galaxy.stub, page_size=5000)
    line1 = next(o for o in whole if o.tag_name == "Line1")
    expected = []
    inside = False
    for o in whole:  # the subtree of Line1 in DFS order, from the full walk
        if o.tag_name == "Line1":
            inside = True
        elif inside and o.is_area:
            break
        if inside:
            expected.append(o.tag_name)
    by_id, _, _ = await walk(galaxy.stub, root_gobject_id=line1.gobject_id)
    by_tag, _, _ = await walk(galaxy.stub, root_tag_name="line1")
    by_path, _, _ = await walk(galaxy.stub, root_contained_path="Plant/Production/Line1")
    assert [o.tag_name for o in by_id] == expected
    assert [o.tag_name for o in by_tag] == expected
    assert [o.tag_name for o in by_path] == expected
    for req, named in (
        (gr.DiscoverHierarchyRequest(root_gobject_id=999_999), "999999"),
        (gr.DiscoverHierarchyRequest(root_tag_name="NoSuchTag"), "'NoSuchTag'"),
        (gr.DiscoverHierarchyRequest(root_contained_path="Plant/Nowhere"), "'Plant/Nowhere'"),
        (gr.DiscoverHierarchyRequest(root_tag_name="SparePump"), "'SparePump'"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await galaxy.stub.DiscoverHierarchy(req)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == f"root {named} is not a deployed object"


async def test_max_depth(galaxy: GalaxyServer) -> None:
    root_only, _, _ = await walk(galaxy.stub, root_tag_name="Production", max_depth=0)
    assert [o.tag_name for o in root_only] == ["Production"]
    one, _, _ = await walk(galaxy.stub, root_tag_name="Production", max_depth=1)
    assert [o.tag_name for o in one] == ["Production", "Line1", "Line2", "Line3"]
    two, _, _ = await walk(galaxy.stub, root_tag_name="Production", max_depth=2)
    assert "L1_Tank01" in {o.tag_name for o in two}
    assert "L1_Tank01_InletValve" not in {o.tag_name for o in two}
    whole_top, _, _ = await walk(galaxy.stub, max_depth=0)
    assert all(o.parent_gobject_id == 0 for o in whole_top)


async def test_object_filters_and_combinations(galaxy: GalaxyServer) -> None:
    whole, _, _ = await walk(galaxy.stub, page_size=5000)

    async def check(expected: list[gr.GalaxyObject], **kw: object) -> list[gr.GalaxyObject]:
        got, _, total = await walk(galaxy.stub, page_size=4, **kw)
        assert [o.tag_name for o in got] == [o.tag_name for o in expected], kw
        assert total == len(expected)
        assert expected, f"filter {kw} should select something in the seeded plant"
        return got

    await check([o for o in whole if o.category_id == 13], category_ids=[13])
    await check([o for o in whole if o.category_id in (1, 3)], category_ids=[1, 3])
    await check(
        [o for o in whole if "$Valve" in o.template_chain], template_chain_contains=["$valve"]
    )
    await check(
        [o for o in whole if "$gMachine" in o.template_chain],
        template_chain_contains=["$gMachine"],
    )
    await check(
        [o for o in whole if fnmatch.fnmatchcase(o.tag_name.lower(), "l?_tank*")],
        tag_name_glob="L?_TANK*",
    )
    # Anchored: "Tank*" does not match "L1_Tank01".
    await check([o for o in whole if o.tag_name.lower().startswith("l1_")], tag_name_glob="l1_*")
    got, _, _ = await walk(galaxy.stub, tag_name_glob="Tank*")
    assert got == []
    alarm = await check(
        [o for o in whole if any(a.is_alarm for a in o.attributes)], alarm_bearing_only=True
    )
    assert all(a.is_alarm for o in alarm for a in o.attributes)
    hist = await check(
        [o for o in whole if any(a.is_historized for a in o.attributes)], historized_only=True
    )
    assert all(a.is_historized for o in hist for a in o.attributes)
    both = await check(
        [
            o
            for o in whole
            if "$Pump" in o.template_chain
            and o.tag_name.startswith("L2")
            and any(a.is_alarm and a.is_historized for a in o.attributes)
        ],
        template_chain_contains=["$Pump"],
        tag_name_glob="L2*",
        alarm_bearing_only=True,
        historized_only=True,
        root_tag_name="Production",
    )
    assert all(a.attribute_name == "Flow" for o in both for a in o.attributes)
    bare, _, _ = await walk(galaxy.stub, include_attributes=False)
    assert len(bare) == len(whole) and all(len(o.attributes) == 0 for o in bare)


async def test_page_tokens_are_bound_to_filters_and_version(galaxy: GalaxyServer) -> None:
    first = await galaxy.stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_size=3))
    assert first.next_page_token
    bad_requests = [
        gr.DiscoverHierarchyRequest(page_size=3, page_token=first.next_page_token, max_depth=1),
        gr.DiscoverHierarchyRequest(
            page_size=3, page_token=first.next_page_token, category_ids=[10]
        ),
        gr.DiscoverHierarchyRequest(page_token="not-a-token"),
    ]
    for req in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await galaxy.stub.DiscoverHierarchy(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A BrowseChildren token is not a DiscoverHierarchy token.
    browse = await galaxy.stub.BrowseChildren(
        gr.BrowseChildrenRequest(parent_tag_name="Line1", page_size=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await galaxy.stub.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(page_token=browse.next_page_token)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The page size may change between pages.
    ok = await galaxy.stub.DiscoverHierarchy(
        gr.DiscoverHierarchyRequest(page_size=5, page_token=first.next_page_token)
    )
    assert len(ok.objects) == 5
    # A redeploy makes the token stale.
    version = first.cache_sequence
    await asyncio.to_thread(deploy, galaxy.db_path)
    await galaxy.service.refresh()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await galaxy.stub.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(page_size=3, page_token=first.next_page_token)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stale" in (err.value.details() or "")
    trailers = dict(err.value.trailing_metadata() or ())
    assert trailers.get("cache-sequence") == str(version + 1)
    fresh = await galaxy.stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_size=3))
    assert fresh.cache_sequence == version + 1


async def test_browse_children(galaxy: GalaxyServer) -> None:
    roots = await galaxy.stub.BrowseChildren(gr.BrowseChildrenRequest())
    assert [c.tag_name for c in roots.children] == ["Plant"]
    assert list(roots.child_has_children) == [True]
    plant = await galaxy.stub.BrowseChildren(gr.BrowseChildrenRequest(parent_tag_name="Plant"))
    names = [c.browse_name for c in plant.children]
    areas = [c.browse_name for c in plant.children if c.is_area]
    others = [c.browse_name for c in plant.children if not c.is_area]
    assert names == sorted(areas, key=str.casefold) + sorted(others, key=str.casefold)
    assert areas == ["Production", "Utilities"]
    line = await galaxy.stub.BrowseChildren(
        gr.BrowseChildrenRequest(parent_contained_path="Plant/Production/Line1")
    )
    has = dict(zip([c.tag_name for c in line.children], line.child_has_children, strict=True))
    assert has["L1_Tank01"] is True and has["L1_Pump01"] is False
    assert line.total_child_count == len(line.children) == 6
    # Paging.
    collected: list[str] = []
    token = ""
    while True:
        page = await galaxy.stub.BrowseChildren(
            gr.BrowseChildrenRequest(parent_tag_name="Line1", page_size=4, page_token=token)
        )
        assert len(page.children) <= 4 and page.total_child_count == 6
        collected += [c.tag_name for c in page.children]
        token = page.next_page_token
        if not token:
            break
    assert collected == [c.tag_name for c in line.children]
    # Filters and include_attributes.
    tanks = await galaxy.stub.BrowseChildren(
        gr.BrowseChildrenRequest(
            parent_tag_name="Line1", template_chain_contains=["$Tank"], include_attributes=False
        )
    )
    assert [c.tag_name for c in tanks.children] == ["L1_Tank01", "L1_Tank02"]
    assert all(len(c.attributes) == 0 for c in tanks.children)
    glob = await galaxy.stub.BrowseChildren(
        gr.BrowseChildrenRequest(parent_tag_name="Line1", tag_name_glob="*pump??")
    )
    assert [c.tag_name for c in glob.children] == ["L1_Pump01", "L1_Pump02"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await galaxy.stub.BrowseChildren(gr.BrowseChildrenRequest(parent_gobject_id=424242))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "parent 424242 is not a deployed object"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await galaxy.stub.BrowseChildren(
            gr.BrowseChildrenRequest(
                parent_tag_name="Line2", page_token=page.next_page_token or "x"
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("breakage", ["deleted", "garbage", "locked"])
async def test_test_connection_false_when_database_unreachable(
    galaxy: GalaxyServer, breakage: str
) -> None:
    assert (await galaxy.stub.TestConnection(gr.TestConnectionRequest())).ok is True
    locker: sqlite3.Connection | None = None
    if breakage == "deleted":
        galaxy.db_path.unlink()
    elif breakage == "garbage":
        galaxy.db_path.write_bytes(b"this is not a database" * 100)
    else:
        locker = sqlite3.connect(galaxy.db_path, isolation_level=None)
        locker.execute("PRAGMA locking_mode = EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
    try:
        reply = await galaxy.stub.TestConnection(gr.TestConnectionRequest())
        assert reply.ok is False
        # The cache keeps serving the last good snapshot.
        page = await galaxy.stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(max_depth=0))
        assert [o.tag_name for o in page.objects] == ["Plant"]
    finally:
        if locker is not None:
            locker.execute("ROLLBACK")
            locker.close()
    if locker is not None:
        assert (await galaxy.stub.TestConnection(gr.TestConnectionRequest())).ok is True


async def test_last_deploy_time_and_deploy_from_another_process(galaxy: GalaxyServer) -> None:
    before = await galaxy.stub.GetLastDeployTime(gr.GetLastDeployTimeRequest())
    assert before.time_of_last_deploy_present
    with closing(sqlite3.connect(galaxy.db_path)) as conn, conn:
        stored = conn.execute("SELECT time_of_last_deploy FROM galaxy").fetchone()[0]
    assert (
        timestamp_to_datetime(before.time_of_last_deploy).strftime("%Y-%m-%d %H:%M:%S.%f") == stored
    )
    script = (
        "import json, sys; from pathlib import Path; from mxgateway_sim.galaxy import deploy; "
        "print(json.dumps(deploy(Path(sys.argv[1]), add=2, remove=1, seed=3)))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(galaxy.db_path), stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    import json

    result = json.loads(out)

    async def changed() -> bool:
        now = await galaxy.stub.GetLastDeployTime(gr.GetLastDeployTimeRequest())
        return now.time_of_last_deploy != before.time_of_last_deploy

    await wait_for(changed, what="the poller to notice the deploy")
    whole, _, _ = await walk(galaxy.stub, page_size=5000)
    tags = {o.tag_name for o in whole}
    assert set(result["added"]) <= tags and len(result["added"]) == 2
    assert not set(result["removed"]) & tags and len(result["removed"]) == 1
    assert tags == deployed_tags(galaxy.db_path)
    # The runtime's catalog follows the redeploy.
    added = result["added"][0]
    assert galaxy.service.catalog.lookup(f"{added.upper()}.speed") is not None
    assert galaxy.service.catalog.lookup(f"{result['removed'][0]}.Description") is None


async def test_watch_bootstrap_suppression_and_deploy_event(galaxy: GalaxyServer) -> None:
    current = await galaxy.stub.GetLastDeployTime(gr.GetLastDeployTimeRequest())
    plain = galaxy.stub.WatchDeployEvents(gr.WatchDeployEventsRequest())
    quiet = galaxy.stub.WatchDeployEvents(
        gr.WatchDeployEventsRequest(last_seen_deploy_time=current.time_of_last_deploy)
    )
    try:
        first = await asyncio.wait_for(plain.read(), 10)
        assert isinstance(first, gr.DeployEvent)
        assert first.time_of_last_deploy == current.time_of_last_deploy
        assert first.object_count == galaxy.service.snapshot.object_count
        assert first.attribute_count == galaxy.service.snapshot.attribute_count > 0
        await asyncio.to_thread(deploy, galaxy.db_path, add=1)
        second = await asyncio.wait_for(plain.read(), 20)
        assert isinstance(second, gr.DeployEvent)
        assert second.sequence == first.sequence + 1
        assert second.object_count == first.object_count + 1
        # The suppressed watcher's first message is the new deploy, not the old state.
        q = await asyncio.wait_for(quiet.read(), 20)
        assert isinstance(q, gr.DeployEvent)
        assert q.sequence == second.sequence
        assert q.time_of_last_deploy == second.time_of_last_deploy
    finally:
        plain.cancel()
        quiet.cancel()
    # An older last_seen still gets the bootstrap.
    old = datetime_to_timestamp(timestamp_to_datetime(current.time_of_last_deploy))
    stale = galaxy.stub.WatchDeployEvents(gr.WatchDeployEventsRequest(last_seen_deploy_time=old))
    try:
        boot = await asyncio.wait_for(stale.read(), 10)
        assert isinstance(boot, gr.DeployEvent) and boot.sequence == second.sequence
    finally:
        stale.cancel()


async def test_watch_stream_ends_when_service_closes(tmp_path: Path) -> None:
    server, svc, address = await start_server(tmp_path / "g.db")
    channel = grpc.aio.insecure_channel(address)
    try:
        call = gr_grpc.GalaxyRepositoryStub(channel).WatchDeployEvents(
            gr.WatchDeployEventsRequest()
        )
        assert isinstance(await call.read(), gr.DeployEvent)
        await svc.close()
        assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await channel.close()
        await server.stop(None)
        await svc.close()


async def test_watcher_buffer_drops_oldest_as_a_gap() -> None:
    w = _Watcher(2)
    for seq in (5, 6, 7, 8):
        w.push(gr.DeployEvent(sequence=seq))
    got = [await w.next(), await w.next()]
    assert [e.sequence for e in got if e is not None] == [7, 8]
    w.close()
    assert await w.next() is None


async def test_catalog_is_the_deployed_attribute_namespace(galaxy: GalaxyServer) -> None:
    whole, _, _ = await walk(galaxy.stub, page_size=5000)
    refs = [a.full_tag_reference for o in whole for a in o.attributes]
    catalog = galaxy.service.catalog
    assert [t.full_tag_reference for t in catalog.all_tags()] == refs
    info = catalog.lookup("l1_tank01.LEVELHISTORY[]")
    assert info is not None and info.is_array and info.array_dimension == 10
    hier = catalog.lookup("L1_Tank01.InletValve.Position")
    assert hier is not None and hier.tag_name == "L1_Tank01_InletValve"
    assert catalog.lookup("L1_Tank01.NoSuchAttribute") is None
    assert catalog.lookup("SparePump.Speed") is None
    version = catalog.version
    await asyncio.to_thread(deploy, galaxy.db_path, remove=1)
    # The fixture's poller (every 50 ms) may see the deploy before this refresh does, and
    # then refresh() finds nothing new: either way the catalog follows the deploy.
    await galaxy.service.refresh()
    assert catalog.version != version


async def test_open_creates_default_and_synthetic(tmp_path: Path) -> None:
    svc = await GalaxyService.open(tmp_path / "syn.db", objects=321, seed=7)
    try:
        assert svc.snapshot.object_count == 321
        assert len(deployed_tags(tmp_path / "syn.db")) == 321
    finally:
        await svc.close()
    with pytest.raises(ValueError):
        await GalaxyService.open(tmp_path / "x.db", poll_interval=0)


def test_glob_wildcards_are_only_star_and_question_mark() -> None:
    from mxgateway_sim.galaxy._glob import TagGlob

    assert TagGlob("l?_TANK*").matches("L1_Tank01")
    assert not TagGlob("Tank*").matches("L1_Tank01")  # anchored at the start
    assert not TagGlob("L1_Tank0").matches("L1_Tank01")  # and at the end
    assert TagGlob("A[1]*").matches("A[1]x")  # brackets are literal
    assert not TagGlob("A[1]*").matches("A1x")


async def test_open_rejects_a_file_that_is_not_a_galaxy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="not a readable Galaxy database"):
        await GalaxyService.open(bad)


async def test_catalog_object_tag_names(galaxy: GalaxyServer) -> None:
    names = galaxy.service.catalog.object_tag_names()
    assert set(names) == deployed_tags(galaxy.db_path)
    assert {t.tag_name for t in galaxy.service.catalog.all_tags()} <= set(names)
