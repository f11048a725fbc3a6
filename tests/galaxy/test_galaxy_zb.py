"""The Galaxy like ZB: built-in attributes as upstream returns them, no invented columns,
pages bounded by serialized size (a 4 MiB client gets every page), over real gRPC."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from galaxy_helpers import FULL_KEY, GalaxyServer, ScopeInterceptor, start_server

from mxgateway import ClientOptions, GalaxyRepositoryClient
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim.galaxy import DEFAULT_PAGE_BYTES, GalaxyService, create_galaxy
from mxgateway_sim.galaxy._schema import SCHEMA_VERSION

FOUR_MIB = 4 * 1024 * 1024
BIG = 5200  # objects: more than one 4 MiB page with attributes, even at page_size 5000


async def _walk(
    stub: gr_grpc.GalaxyRepositoryStub, **kw: object
) -> list[gr.DiscoverHierarchyReply]:
    replies: list[gr.DiscoverHierarchyReply] = []
    token = ""
    while True:
        reply = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_token=token, **kw))
        replies.append(reply)
        token = reply.next_page_token
        if not token:
            return replies


def _objects(replies: list[gr.DiscoverHierarchyReply]) -> list[gr.GalaxyObject]:
    return [o for r in replies for o in r.objects]


# ----- built-in attributes ------------------------------------------------------------------


async def test_builtin_attributes_are_returned_and_never_flagged(galaxy: GalaxyServer) -> None:
    objects = _objects(await _walk(galaxy.stub, page_size=5000))
    tank = next(o for o in objects if o.tag_name == "L1_Tank01")
    attrs = {a.attribute_name: a for a in tank.attributes}
    # The common primitive's attributes and those of the Level extensions (named after it).
    for name in ("ShortDesc", "ScanState", "Tagname", "Level.InAlarm", "Level.TrendHi"):
        assert name in attrs, name
        assert not attrs[name].is_historized and not attrs[name].is_alarm, name
    assert attrs["Level.InAlarm"].full_tag_reference == "L1_Tank01.Level.InAlarm"
    assert attrs["Level.InAlarm"].data_type_name == "Boolean"
    assert attrs["Level"].is_historized and attrs["Level"].is_alarm  # the dynamic one
    # Every deployed object has the common built-ins, areas and engines included.
    assert all("ShortDesc" in {a.attribute_name for a in o.attributes} for o in objects)
    # Filters on history/alarms never select a built-in attribute.
    flagged = _objects(await _walk(galaxy.stub, page_size=5000, historized_only=True))
    names = {a.attribute_name for o in flagged for a in o.attributes}
    assert names and not names & {"ShortDesc", "Level.TrendHi", "Level.InAlarm"}
    # The runtime namespace follows: a built-in reference resolves.
    info = galaxy.service.catalog.lookup("L1_Tank01.Level.InAlarm")
    assert info is not None and info.mx_data_type == 1 and not info.is_alarm


async def test_a_dynamic_attribute_wins_a_reference_collision(tmp_path: Path) -> None:
    db = tmp_path / "collide.db"
    create_galaxy(db)
    with closing(sqlite3.connect(db)) as conn, conn:
        gid, pkg = conn.execute(
            "SELECT gobject_id, deployed_package_id FROM gobject WHERE tag_name = 'L1_Pump01'"
        ).fetchone()
        # A dynamic attribute with the reference of a built-in one, but other facts.
        conn.execute(
            "INSERT INTO dynamic_attribute (gobject_id, package_id, attribute_name, "
            "mx_data_type, is_array, security_classification, mx_attribute_category) "
            "VALUES (?, ?, 'ShortDesc', 2, 0, 0, 10)",
            (gid, pkg),
        )
    server, svc, address = await start_server(db)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = gr_grpc.GalaxyRepositoryStub(channel)
            objects = _objects(await _walk(stub, page_size=5000))
    finally:
        await server.stop(None)
        await svc.close()
    pump = next(o for o in objects if o.tag_name == "L1_Pump01")
    short = [a for a in pump.attributes if a.attribute_name.casefold() == "shortdesc"]
    assert [(a.mx_data_type, a.security_classification) for a in short] == [(2, 0)]
    other = next(o for o in objects if o.tag_name == "L1_Pump02")
    (builtin,) = [a for a in other.attributes if a.attribute_name == "ShortDesc"]
    assert (builtin.mx_data_type, builtin.security_classification) == (5, 5)


# ----- no invented columns ------------------------------------------------------------------


def test_the_schema_has_zb_columns_and_one_marked_simulator_column(tmp_path: Path) -> None:
    db = tmp_path / "schema.db"
    create_galaxy(db)
    with closing(sqlite3.connect(db)) as conn, conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(dynamic_attribute)")}
        builtin = {r[1] for r in conn.execute("PRAGMA table_info(attribute_definition)")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert "array_dimension" not in columns  # not a ZB column
    assert {c for c in columns if c.startswith("sim_")} == {"sim_array_element_count"}
    assert {"primitive_definition_id", "attribute_name", "mx_data_type", "is_array"} <= builtin
    assert version == SCHEMA_VERSION


async def test_an_older_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    create_galaxy(db)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(ValueError, match="older mxgw-sim: delete the file"):
        await GalaxyService.open(db)


# ----- pages bounded by bytes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("big") / "big.db"
    create_galaxy(db, objects=BIG)
    return db


@pytest.fixture
async def big(big_db: Path) -> AsyncIterator[GalaxyServer]:
    server, svc, address = await start_server(big_db, interceptors=[ScopeInterceptor()])
    # A client with the 4 MiB receive limit most gRPC clients have by default.
    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", FOUR_MIB)]
    )
    try:
        yield GalaxyServer(svc, address, gr_grpc.GalaxyRepositoryStub(channel), big_db)
    finally:
        await channel.close()
        await server.stop(None)
        await svc.close()


async def test_a_4mib_client_gets_every_page_of_a_large_galaxy(big: GalaxyServer) -> None:
    md = (("authorization", f"Bearer {FULL_KEY}"),)
    stub = big.stub
    replies: list[gr.DiscoverHierarchyReply] = []
    token = ""
    while True:  # the largest page size the server allows, attributes included
        reply = await stub.DiscoverHierarchy(
            gr.DiscoverHierarchyRequest(page_size=5000, page_token=token), metadata=md
        )
        replies.append(reply)
        token = reply.next_page_token
        if not token:
            break
    objects = _objects(replies)
    assert len(objects) == BIG == replies[0].total_object_count
    assert len(replies) > 2  # the byte bound cut pages that the count bound allowed
    assert all(r.ByteSize() <= FOUR_MIB for r in replies)
    assert len({o.gobject_id for o in objects}) == BIG  # each object once
    # Same objects, same order as a walk in small pages.
    small = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(page_size=50), metadata=md)
    assert [o.gobject_id for o in small.objects] == [o.gobject_id for o in objects[:50]]
    # The default page fits too.
    default = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(), metadata=md)
    assert 0 < len(default.objects) <= 500 and default.ByteSize() <= FOUR_MIB


async def test_the_library_walks_a_large_galaxy_within_4mib(big: GalaxyServer) -> None:
    options = ClientOptions(
        endpoint=big.address, api_key=FULL_KEY, plaintext=True, max_message_bytes=FOUR_MIB
    )
    async with await GalaxyRepositoryClient.connect(options=options) as galaxy:
        seen = 0
        async for _ in galaxy.iter_hierarchy(page_size=5000):
            seen += 1
        assert seen == BIG
        area = next(o for o in await galaxy.discover_hierarchy(max_depth=1) if o.is_area)
        children = await galaxy.browse_children(parent_gobject_id=area.gobject_id)
        assert children and all(c.tag_name for c, _ in children)


async def test_browse_children_pages_are_bounded_by_bytes_too(tmp_path: Path) -> None:
    db = tmp_path / "plant.db"
    budget = 5_000  # about two objects with their attributes
    svc = await GalaxyService.open(db, page_bytes=budget)
    server = grpc.aio.server()
    gr_grpc.add_GalaxyRepositoryServicer_to_server(svc.servicer, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gr_grpc.GalaxyRepositoryStub(channel)
            got: list[tuple[str, bool]] = []
            pages, token = 0, ""
            while True:
                reply = await stub.BrowseChildren(
                    gr.BrowseChildrenRequest(
                        parent_tag_name="Line1", page_size=5000, page_token=token
                    )
                )
                pages += 1
                assert len(reply.children) == len(reply.child_has_children) >= 1
                assert len(reply.children) == 1 or reply.ByteSize() <= budget + 1024
                got += [
                    (c.tag_name, h)
                    for c, h in zip(reply.children, reply.child_has_children, strict=True)
                ]
                token = reply.next_page_token
                if not token:
                    break
            whole = await stub.BrowseChildren(
                gr.BrowseChildrenRequest(parent_tag_name="Line1", include_attributes=False)
            )
            discovered = _objects(await _walk(stub, page_size=5000, root_tag_name="Line1"))
    finally:
        await server.stop(None)
        await svc.close()
    assert pages > 1
    assert got == list(
        zip(
            [c.tag_name for c in whole.children],
            list(whole.child_has_children),
            strict=True,
        )
    )
    assert len(discovered) > 1  # DiscoverHierarchy pages under the same budget


async def test_page_bytes_must_be_positive(tmp_path: Path) -> None:
    assert DEFAULT_PAGE_BYTES < FOUR_MIB
    with pytest.raises(ValueError, match="page_bytes"):
        await GalaxyService.open(tmp_path / "x.db", page_bytes=0)
