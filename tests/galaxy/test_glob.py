"""Tag-name globs: ``*``/``?`` only, anchored, case-insensitive, and no backtracking.

``TagGlob`` is checked against a plain dynamic-programming matcher on random globs and names,
and a glob of many stars (2 s per object with the old regex translation) is matched over
gRPC against a galaxy, with the health service answering meanwhile. Speed is measured in
``bench/loop_stall.py``, never asserted here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from galaxy_helpers import start_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway_sim.galaxy._glob import TagGlob


def reference_match(glob: str, name: str) -> bool:
    """Textbook wildcard matching by dynamic programming (what the glob means)."""
    g, n = glob.lower(), name.lower()
    # row[j]: g[:i] matches n[:j]
    row = [True] + [False] * len(n)
    for c in g:
        if c == "*":
            nxt = [row[0]]
            for j in range(1, len(n) + 1):
                nxt.append(nxt[j - 1] or row[j])
        else:
            nxt = [False] + [
                row[j - 1] and (c == "?" or c == n[j - 1]) for j in range(1, len(n) + 1)
            ]
        row = nxt
    return row[len(n)]


@settings(max_examples=2000, deadline=None)
@given(
    st.text(alphabet="aAbB?*[.\n", max_size=12),
    st.text(alphabet="aAbB[.\n", max_size=14),
)
def test_glob_agrees_with_the_reference_matcher(glob: str, name: str) -> None:
    assert TagGlob(glob).matches(name) == reference_match(glob, name), (glob, name)


def test_glob_semantics() -> None:
    cases = [
        ("*", "", True),
        ("", "", True),
        ("", "a", False),
        ("?", "", False),
        ("?", "x", True),
        ("L?_Tank*", "l1_TANK01", True),  # case-insensitive both ways
        ("Tank*", "L1_Tank01", False),  # anchored at the start
        ("*Tank", "L1_Tank01", False),  # and at the end
        ("*tank*", "L1_Tank01", True),
        ("a*a", "a", False),  # the first and last segments may not overlap
        ("a*a", "aa", True),
        ("*a*b*c*", "xxaxxbxxcxx", True),
        ("*a*b*c*", "xxcxxbxxaxx", False),  # order matters
        ("a**b", "ab", True),  # repeated stars are one star
        ("[1]?", "[1]x", True),  # brackets are literal
        ("a.c", "abc", False),  # the dot too
        ("?*?", "x", False),
        ("ÄB*", "äbc", True),  # case-insensitive beyond ASCII
    ]
    for glob, name, expected in cases:
        assert TagGlob(glob).matches(name) is expected, (glob, name)


def test_pathological_globs_complete() -> None:
    # Eleven stars and a tail that never matches: the regex translation tried every way of
    # splitting the name between the stars (2 s per object); this places each segment once.
    name = "a" * 300
    assert not TagGlob("*a" * 11 + "*b").matches(name)
    assert TagGlob("*a" * 11 + "*").matches(name)
    assert not TagGlob("*" * 10_000 + "b").matches(name)
    assert not TagGlob("?" * 1_000_000).matches(name)  # longer than any name: never split
    assert TagGlob("*" + "a?" * 100 + "*").matches(name)
    assert not TagGlob("*" + "a?" * 100 + "b*").matches(name)


async def test_discover_hierarchy_with_a_pathological_glob_keeps_health_answering(
    tmp_path: Path,
) -> None:
    server, svc, address = await start_server(tmp_path / "galaxy.db", objects=3000)
    checker = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = gr_grpc.GalaxyRepositoryStub(channel)
            health_stub = health_pb2_grpc.HealthStub(channel)
            bad = "*" * 11 + "?" * 3 + "*" * 11 + "#"  # no tag name contains '#'
            calls = [
                stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(tag_name_glob=bad + str(i)))
                for i in range(4)  # distinct filters: no cached walk is reused
            ]
            answers = [health_stub.Check(health_pb2.HealthCheckRequest()) for _ in range(4)]
            results = await asyncio.gather(*calls, *answers)
            assert all(r.total_object_count == 0 for r in results[:4])
            assert all(r.status == health_pb2.HealthCheckResponse.SERVING for r in results[4:])
            every = await stub.DiscoverHierarchy(
                gr.DiscoverHierarchyRequest(tag_name_glob="*" * 11 + "?*", page_size=5000)
            )
            assert every.total_object_count == svc.snapshot.object_count
            # The walk pauses every few hundred objects; what it selects is unchanged.
            some = await stub.DiscoverHierarchy(gr.DiscoverHierarchyRequest(tag_name_glob="*1*"))
            glob = TagGlob("*1*")
            expected = [r.tag_name for r in svc.snapshot.dfs if glob.matches(r.tag_name)]
            assert some.total_object_count == len(expected) > 512
            assert [o.tag_name for o in some.objects] == expected[: len(some.objects)]
    finally:
        await server.stop(None)
        await svc.close()
