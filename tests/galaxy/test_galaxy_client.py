"""GalaxyRepositoryClient against the simulator's servicer over real gRPC (with API keys)."""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from galaxy_helpers import (
    EXAMPLE_BROWSE,
    EXAMPLE_ITER,
    EXAMPLE_WATCH,
    FULL_KEY,
    NO_SCOPE_KEY,
    ScopeInterceptor,
    start_server,
    wait_for,
)

from mxgateway._errors import (
    MxGatewayAuthenticationError,
    MxGatewayNotFoundError,
    MxGatewayPermissionError,
)
from mxgateway._galaxy import (
    DeployEvent,
    DeployEventWatch,
    GalaxyHierarchyChangedError,
    GalaxyObject,
    GalaxyRepositoryClient,
)
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim.galaxy import GalaxyService, deploy


class CountingServicer(gr_grpc.GalaxyRepositoryServicer):
    """Delegates to the real servicer and counts DiscoverHierarchy page requests."""

    def __init__(self, inner: gr_grpc.GalaxyRepositoryServicer) -> None:
        self.inner = inner
        self.pages = 0
        self.after_page: Any = None  # optional async hook run after each page is served

    async def TestConnection(self, request: Any, context: Any) -> Any:
        return await self.inner.TestConnection(request, context)  # type: ignore[misc]

    async def GetLastDeployTime(self, request: Any, context: Any) -> Any:
        return await self.inner.GetLastDeployTime(request, context)  # type: ignore[misc]

    async def DiscoverHierarchy(self, request: Any, context: Any) -> Any:
        self.pages += 1
        reply = await self.inner.DiscoverHierarchy(request, context)  # type: ignore[misc]
        if self.after_page is not None:
            await self.after_page(self.pages)
        return reply

    async def BrowseChildren(self, request: Any, context: Any) -> Any:
        return await self.inner.BrowseChildren(request, context)  # type: ignore[misc]

    async def WatchDeployEvents(self, request: Any, context: Any) -> Any:
        async for event in self.inner.WatchDeployEvents(request, context):  # type: ignore[union-attr]
            yield event


@dataclass
class Env:
    service: GalaxyService
    counter: CountingServicer
    endpoint: str
    db_path: Path

    async def client(self, key: str | None = FULL_KEY) -> GalaxyRepositoryClient:
        return await GalaxyRepositoryClient.connect(
            endpoint=self.endpoint, api_key=key, plaintext=True
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """The seeded plant behind a counting wrapper and a scope-checking interceptor."""
    db = tmp_path / "galaxy.db"
    service = await GalaxyService.open(db, poll_interval=0.05)
    counter = CountingServicer(service.servicer)
    server = grpc.aio.server(interceptors=[ScopeInterceptor()])
    gr_grpc.add_GalaxyRepositoryServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Env(service, counter, f"127.0.0.1:{port}", db)
    finally:
        await server.stop(None)
        await service.close()


def db_objects(db: Path) -> dict[str, set[str]]:
    """Deployed objects and their attribute names, straight from SQL (Q1 + Q3 chain): the
    dynamic attributes UNION the built-in ones of attribute_definition, as upstream."""
    query = """
    WITH RECURSIVE chain(gobject_id, package_id, depth) AS (
        SELECT gobject_id, deployed_package_id, 0 FROM gobject
        WHERE is_template = 0 AND namespace_id = 1 AND deployed_package_id > 0
        UNION ALL
        SELECT c.gobject_id, p.derived_from_package_id, c.depth + 1
        FROM chain c JOIN package p ON p.package_id = c.package_id
        WHERE p.derived_from_package_id <> 0
    )
    SELECT g.tag_name, da.attribute_name FROM gobject g
    JOIN chain c ON c.gobject_id = g.gobject_id
    LEFT JOIN dynamic_attribute da ON da.package_id = c.package_id
    UNION
    SELECT g.tag_name, CASE WHEN pi.primitive_name = '' THEN ad.attribute_name
                            ELSE pi.primitive_name || '.' || ad.attribute_name END
    FROM gobject g
    JOIN chain c ON c.gobject_id = g.gobject_id
    JOIN primitive_instance pi ON pi.package_id = c.package_id
    JOIN attribute_definition ad ON ad.primitive_definition_id = pi.primitive_definition_id
    """
    out: dict[str, set[str]] = {}
    with closing(sqlite3.connect(db)) as conn, conn:
        for tag, attr in conn.execute(query):
            names = out.setdefault(tag, set())
            if attr is not None:
                names.add(attr)
    return out


# ----- the three Galaxy examples of the client spec, verbatim -------------------------------


def _compile_example(source: str, endpoint: str, namespace: dict[str, Any]) -> Any:
    code = source.replace("localhost:5000", endpoint).replace("<key>", FULL_KEY)
    body = textwrap.indent(code, "    ")
    exec(f"async def _example():\n{body}\n", namespace)
    return namespace["_example"]


def _mxgateway_exports_galaxy() -> bool:
    import mxgateway

    return hasattr(mxgateway, "GalaxyRepositoryClient") and hasattr(mxgateway, "DeployEvent")


needs_exports = pytest.mark.skipif(
    not _mxgateway_exports_galaxy(), reason="mxgateway does not export the Galaxy client yet"
)


@needs_exports
async def test_spec_example_browse(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await _compile_example(EXAMPLE_BROWSE, env.endpoint, {})()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "last deploy: 2026-01-05 06:00:00+00:00"
    assert "L1_Tank01 Tank01" in out
    assert "   Level -> L1_Tank01.Level" in out
    tags = {line.split()[0] for line in out[1:] if not line.startswith(" ")}
    assert tags == set(db_objects(env.db_path))


@needs_exports
async def test_spec_example_iter(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import mxgateway

    await _compile_example(EXAMPLE_ITER, env.endpoint, vars(mxgateway).copy())()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(db_objects(env.db_path))
    assert "L1_Tank01_InletValve InletValve" in out


@needs_exports
async def test_spec_example_watch(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.ensure_future(_compile_example(EXAMPLE_WATCH, env.endpoint, {})())
    printed: list[str] = []

    async def lines(n: int) -> bool:
        printed.extend(capsys.readouterr().out.splitlines())
        if task.done():
            task.result()  # surface a failure of the example
        return len(printed) >= n

    try:
        await wait_for(lambda: lines(1), what="the bootstrap event")
        assert printed[0].startswith("#1 deploy=2026-01-05 06:00:00+00:00 objects=")
        await asyncio.to_thread(deploy, env.db_path, add=1)
        await wait_for(lambda: lines(2), what="the deploy event")
        assert printed[1].startswith("#2 deploy=")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await wait_for(_no_watchers(env), what="the stream to close after cancel")


def _no_watchers(env: Env) -> Any:
    async def check() -> bool:
        gc.collect()
        return env.service.watcher_count == 0

    return check


# ----- behaviour -----------------------------------------------------------------------------


async def test_connectivity_true_then_false(env: Env) -> None:
    async with await env.client() as galaxy:
        assert await galaxy.test_connection() is True
        env.db_path.unlink()
        assert await galaxy.test_connection() is False
    assert galaxy.closed


async def test_last_deploy_time_is_aware_utc(env: Env) -> None:
    async with await env.client() as galaxy:
        when = await galaxy.get_last_deploy_time()
        assert when == datetime(2026, 1, 5, 6, 0, tzinfo=timezone.utc)
        assert when is not None and when.utcoffset() is not None
        result = await asyncio.to_thread(deploy, env.db_path)

        async def moved() -> bool:
            return await galaxy.get_last_deploy_time() == datetime.fromisoformat(
                str(result["time_of_last_deploy"])
            )

        await wait_for(moved, what="the new deploy time")


async def test_full_discovery_equals_database(env: Env) -> None:
    async with await env.client() as galaxy:
        objects = await galaxy.discover_hierarchy(page_size=7)
        assert env.counter.pages == -(-len(objects) // 7)
        got = {o.tag_name: {a.attribute_name for a in o.attributes} for o in objects}
        assert got == db_objects(env.db_path)
        assert all(isinstance(o, GalaxyObject) for o in objects)
        streamed = [o.tag_name async for o in galaxy.iter_hierarchy(page_size=9)]
        assert streamed == [o.tag_name for o in objects]


async def test_iter_hierarchy_fetches_pages_lazily(env: Env) -> None:
    async with await env.client() as galaxy:
        it = galaxy.iter_hierarchy(page_size=5, include_attributes=False)
        assert env.counter.pages == 0  # nothing requested before the first object is asked for
        for _ in range(5):
            await it.__anext__()
            assert env.counter.pages == 1
        await it.__anext__()  # the 6th object needs the second page
        assert env.counter.pages == 2
        for _ in range(4):
            await it.__anext__()
        assert env.counter.pages == 2
        await it.aclose()
        assert env.counter.pages == 2


async def test_filters_as_keyword_arguments(env: Env) -> None:
    async with await env.client() as galaxy:
        whole = await galaxy.discover_hierarchy()

        async def same(expected: list[GalaxyObject], **kw: Any) -> list[GalaxyObject]:
            got = await galaxy.discover_hierarchy(page_size=3, **kw)
            assert [o.tag_name for o in got] == [o.tag_name for o in expected], kw
            assert expected
            return got

        line1 = next(o for o in whole if o.tag_name == "Line1")
        subtree = await same(
            [o for o in whole if o.tag_name.startswith("L1_") or o.tag_name == "Line1"],
            root_gobject_id=line1.gobject_id,
        )
        await same(subtree, root_tag_name="LINE1")
        await same(subtree, root_contained_path="Plant/Production/Line1")
        await same(subtree[:1], root_tag_name="Line1", max_depth=0)
        await same([o for o in whole if o.category_id in (1, 3)], category_ids=[1, 3])
        await same(
            [o for o in whole if "$Motor" in o.template_chain], template_chain_contains=["$Motor"]
        )
        await same(
            [o for o in whole if fnmatch.fnmatch(o.tag_name.lower(), "*pump0?")],
            tag_name_glob="*PUMP0?",
        )
        alarm = await same(
            [o for o in whole if any(a.is_alarm for a in o.attributes)], alarm_bearing_only=True
        )
        assert all(a.is_alarm for o in alarm for a in o.attributes)
        hist = await same(
            [o for o in whole if any(a.is_historized for a in o.attributes)],
            historized_only=True,
        )
        assert all(a.is_historized for o in hist for a in o.attributes)
        bare = await same(whole, include_attributes=False)
        assert not any(o.attributes for o in bare)
        with pytest.raises(ValueError):
            await galaxy.discover_hierarchy(root_tag_name="Line1", root_gobject_id=1)
        with pytest.raises(ValueError):
            await galaxy.discover_hierarchy(template_chain_contains="$Pump")
        with pytest.raises(MxGatewayNotFoundError):
            await galaxy.discover_hierarchy(root_tag_name="NoSuchObject")


async def test_browse_children(env: Env) -> None:
    async with await env.client() as galaxy:
        roots = await galaxy.browse_children()
        assert [(c.tag_name, has) for c, has in roots] == [("Plant", True)]
        line = await galaxy.browse_children(parent_tag_name="Line1", page_size=2)
        assert [c.browse_name for c, _ in line] == [
            "Mixer", "Pump01", "Pump02", "Tank01", "Tank02", "Valve01",
        ]  # fmt: skip
        assert dict((c.browse_name, has) for c, has in line)["Tank01"] is True
        tanks = await galaxy.browse_children(
            parent_contained_path="Plant/Production/Line2", template_chain_contains=["$Tank"]
        )
        assert [c.tag_name for c, _ in tanks] == ["L2_Tank01", "L2_Tank02"]


async def test_stale_token_mid_walk(env: Env) -> None:
    async with await env.client() as galaxy:
        # iter_hierarchy: objects of the old deploy were already handed out -> typed error.
        it = galaxy.iter_hierarchy(page_size=4)
        first = [await it.__anext__() for _ in range(4)]
        assert len(first) == 4
        await asyncio.to_thread(deploy, env.db_path, add=1)
        await env.service.refresh()
        with pytest.raises(GalaxyHierarchyChangedError, match="redeployed"):
            await it.__anext__()
        await it.aclose()

        # discover_hierarchy: a redeploy after the first page restarts the walk cleanly.
        async def redeploy_once(page: int) -> None:
            if page == 1:
                await asyncio.to_thread(deploy, env.db_path, add=2, remove=1)
                await env.service.refresh()

        env.counter.pages = 0
        env.counter.after_page = redeploy_once
        objects = await galaxy.discover_hierarchy(page_size=10)
        env.counter.after_page = None
        got = {o.tag_name: {a.attribute_name for a in o.attributes} for o in objects}
        assert got == db_objects(env.db_path)
        assert len(objects) == len({o.tag_name for o in objects})  # no duplicates

        # A Galaxy that keeps changing gives up after max_restarts.
        async def always(page: int) -> None:
            await asyncio.to_thread(deploy, env.db_path)
            await env.service.refresh()

        env.counter.after_page = always
        with pytest.raises(GalaxyHierarchyChangedError):
            await galaxy.discover_hierarchy(page_size=10, max_restarts=1)
        env.counter.after_page = None


async def test_watch_bootstrap_and_suppression(env: Env) -> None:
    async with await env.client() as galaxy:
        current = await galaxy.get_last_deploy_time()
        assert current is not None
        async with galaxy.watch_deploy_events() as watch:
            boot = await asyncio.wait_for(watch.__anext__(), 10)
            assert isinstance(boot, DeployEvent)
            assert boot.time_of_last_deploy_present
            assert boot.time_of_last_deploy.ToDatetime(tzinfo=timezone.utc) == current
        # The closed watch is let go of asynchronously; until then it would count below.
        await wait_for(_no_watchers(env), what="the first watch to close")
        quiet = galaxy.watch_deploy_events(last_seen_deploy_time=current)
        try:
            await wait_for(_watchers_at_least(env, 1), what="the quiet watcher to subscribe")
            result = await asyncio.to_thread(deploy, env.db_path, add=1)
            event = await asyncio.wait_for(quiet.__anext__(), 20)
            assert event.sequence == boot.sequence + 1  # the bootstrap was suppressed
            assert event.object_count == result["object_count"]
        finally:
            await quiet.aclose()
        with pytest.raises(ValueError, match="naive"):
            galaxy.watch_deploy_events(last_seen_deploy_time=datetime(2026, 1, 1))
    await wait_for(_no_watchers(env), what="streams to close")


def _watchers_at_least(env: Env, n: int) -> Any:
    async def check() -> bool:
        return env.service.watcher_count >= n

    return check


async def test_deploy_from_another_process_arrives_as_event(env: Env) -> None:
    async with await env.client() as galaxy:
        watch = galaxy.watch_deploy_events()
        boot = await asyncio.wait_for(watch.__anext__(), 10)
        script = (
            "import json, sys; from pathlib import Path; from mxgateway_sim.galaxy import deploy;"
            " print(json.dumps(deploy(Path(sys.argv[1]), add=3)))"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(env.db_path), stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        result = json.loads(out)
        event = await asyncio.wait_for(watch.__anext__(), 20)
        assert event.sequence == boot.sequence + 1
        assert event.object_count == boot.object_count + 3 == result["object_count"]
        assert event.time_of_last_deploy.ToDatetime(tzinfo=timezone.utc) == datetime.fromisoformat(
            result["time_of_last_deploy"]
        )
        await watch.aclose()
    await wait_for(_no_watchers(env), what="the stream to close")


async def test_watch_closes_on_break_aclose_and_cancel(env: Env) -> None:
    async with await env.client() as galaxy:
        async for _event in galaxy.watch_deploy_events():
            break
        await wait_for(_no_watchers(env), what="close on break")

        watch = galaxy.watch_deploy_events()
        await watch.__anext__()
        assert env.service.watcher_count == 1
        await watch.aclose()
        await wait_for(_no_watchers(env), what="close on aclose")
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()

        started = asyncio.Event()

        async def consume() -> None:
            async for _ in galaxy.watch_deploy_events():
                started.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), 10)
        assert env.service.watcher_count == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(_no_watchers(env), what="close on cancel")


async def test_scope_denial_and_missing_key(env: Env) -> None:
    async with await env.client(NO_SCOPE_KEY) as galaxy:
        with pytest.raises(MxGatewayPermissionError) as err:
            await galaxy.test_connection()
        assert NO_SCOPE_KEY not in str(err.value)
        with pytest.raises(MxGatewayPermissionError):
            await galaxy.get_last_deploy_time()
        with pytest.raises(MxGatewayPermissionError):
            await galaxy.discover_hierarchy()
        with pytest.raises(MxGatewayPermissionError):
            async for _ in galaxy.iter_hierarchy():
                pass
        with pytest.raises(MxGatewayPermissionError):
            await galaxy.browse_children()
        with pytest.raises(MxGatewayPermissionError):
            async for _ in galaxy.watch_deploy_events():
                pass
    async with await env.client(None) as galaxy:
        with pytest.raises(MxGatewayAuthenticationError):
            await galaxy.test_connection()


class GappyServicer(gr_grpc.GalaxyRepositoryServicer):
    """Emits sequences 1, 2, 5, 9 (what a server whose buffer dropped events would send)."""

    async def WatchDeployEvents(self, request: Any, context: Any) -> Any:
        for seq in (1, 2, 5, 9):
            yield gr.DeployEvent(sequence=seq)


async def test_sequence_gaps_are_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = grpc.aio.server()
    gr_grpc.add_GalaxyRepositoryServicer_to_server(GappyServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with await GalaxyRepositoryClient.connect(
            endpoint=f"127.0.0.1:{port}", plaintext=True
        ) as galaxy:
            watch = galaxy.watch_deploy_events()
            assert isinstance(watch, DeployEventWatch)
            with caplog.at_level(logging.WARNING, logger="mxgateway.galaxy"):
                seqs = [e.sequence async for e in watch]
            assert seqs == [1, 2, 5, 9]
            assert watch.gaps == 2 and watch.missed_events == 2 + 3
            assert galaxy.deploy_events_missed == 5
            warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
            assert len(warnings) == 2
    finally:
        await server.stop(None)


async def test_connect_options_and_repr(env: Env) -> None:
    from mxgateway._options import ClientOptions

    opts = ClientOptions(endpoint=env.endpoint, api_key=FULL_KEY, plaintext=True)
    async with await GalaxyRepositoryClient.connect(options=opts, timeout=5.0) as galaxy:
        assert await galaxy.test_connection()
        assert galaxy.options.timeout == 5.0 and galaxy.options.endpoint == env.endpoint
        assert FULL_KEY not in repr(galaxy) and FULL_KEY not in repr(galaxy.options)
    with pytest.raises(ValueError):
        await GalaxyRepositoryClient.connect()


async def test_a_client_dropped_without_closing_warns(env: Env) -> None:
    # The same mechanism as GatewayClient's (mxgateway._owner): a client collected open
    # warns, naming itself; one closed first does not.
    galaxy = await env.client()
    transport = galaxy.transport
    try:
        with pytest.warns(
            ResourceWarning, match=r"unclosed <GalaxyRepositoryClient 127\.0\.0\.1:\d+ open>"
        ):
            del galaxy
            gc.collect()
    finally:
        await transport.close()
    async with await env.client() as closed:
        assert await closed.test_connection()
    assert repr(closed) == f"<GalaxyRepositoryClient {env.endpoint} closed>"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del closed
        gc.collect()


async def test_root_only_walk_through_the_interceptor(tmp_path: Path) -> None:
    server, svc, address = await start_server(tmp_path / "h.db", interceptors=[ScopeInterceptor()])
    try:
        async with await GalaxyRepositoryClient.connect(
            endpoint=address, api_key=FULL_KEY, plaintext=True
        ) as galaxy:
            assert len(await galaxy.discover_hierarchy(max_depth=0)) == 1
    finally:
        await server.stop(None)
        await svc.close()


async def test_filter_keywords_are_checked_like_arguments(env: Env) -> None:
    # The filters are listed once (GalaxyFilters/HierarchyFilters); a misspelt one is a
    # TypeError, as a misspelt keyword argument, and nothing is sent.
    async with await env.client() as galaxy:
        with pytest.raises(TypeError, match="'categry_ids'"):
            await galaxy.discover_hierarchy(categry_ids=[3])  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'max_depth'"):
            await galaxy.browse_children(max_depth=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'root_tag'"):
            async for _ in galaxy.iter_hierarchy(root_tag="Line1"):  # type: ignore[call-arg]
                pass
        with pytest.raises(ValueError, match="page_size"):
            await galaxy.browse_children(page_size=0)
        tanks = await galaxy.discover_hierarchy(tag_name_glob="L1_Tank*", include_attributes=False)
        assert tanks and all(o.tag_name.startswith("L1_Tank") for o in tanks)


async def test_connect_keywords_are_checked_like_arguments() -> None:
    with pytest.raises(TypeError, match="'plaintxt'"):
        await GalaxyRepositoryClient.connect("127.0.0.1:1", plaintxt=True)  # type: ignore[call-arg]
