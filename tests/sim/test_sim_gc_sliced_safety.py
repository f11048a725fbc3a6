"""The sliced full collection's use of CPython's C API (``PyObject_GC_UnTrack`` and
``PyObject_GC_Track``, ``mxgateway_sim._gcpolicy``): ``PyObject_GC_Track`` of an object
the collector tracks aborts the process, so nothing may be tracked twice, even a
container CPython tracked again itself while it was hidden; and where the C API cannot be
called the valve's full collection still frees cyclic garbage (in one piece)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from test_sim_gc import REFS, _Node, _tenured

from mxgateway_sim import _gcpolicy
from mxgateway_sim._gcpolicy import ServerGcPolicy


async def test_a_container_cpython_tracks_again_while_hidden_is_not_tracked_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The plant's dict of attribute models is hidden in the first slice; a model made
    # while the collection takes its turns goes into that dict, and CPython tracks the dict
    # again itself (a dict that takes a tracked value). Giving it back must leave it as it
    # is: PyObject_GC_Track of a tracked object is a fatal error (the process aborts).
    monkeypatch.setattr("mxgateway_sim._gcpolicy.SLICE_OBJECTS", 100)
    async with _tenured(monkeypatch, 60_000) as (sim, _gw, _sid, _sh):
        plant = sim.plant
        assert plant is not None
        early = [plant.state(ref) for ref in REFS[:1_000]]
        states = plant._states
        assert gc.is_tracked(states)
        task = asyncio.create_task(ServerGcPolicy.full_collection_sliced())
        await asyncio.sleep(0)
        while gc.is_tracked(states):  # hidden in the first slice
            assert ServerGcPolicy.collecting
            await asyncio.sleep(0)
        assert ServerGcPolicy.collecting
        late = [plant.state(ref) for ref in REFS[1_000:]]  # new models, into the hidden dict
        assert gc.is_tracked(states)  # tracked again by CPython, not by the collection
        garbage = _Node()
        ref = weakref.ref(garbage)
        del garbage
        await task
        assert ServerGcPolicy.last_sliced is not None and ServerGcPolicy.last_sliced.hidden > 0
        assert gc.is_tracked(states)
        assert all(map(gc.is_tracked, [*early, *late]))
        assert ref() is None  # found by the walk


async def test_without_the_c_api_the_valves_full_collection_runs_in_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another implementation, a build without the GIL, no ctypes: nothing is hidden or
    # untracked (samples stay tracked), and the full collection frees cyclic garbage.
    monkeypatch.setattr(_gcpolicy, "_TRACKING", None)
    monkeypatch.setattr(ServerGcPolicy, "last_sliced", None)
    async with _tenured(monkeypatch, 60_000) as (sim, _gw, _sid, _sh):
        assert _gcpolicy.acyclic is None
        plant = sim.plant
        assert plant is not None
        models = [plant.state(ref) for ref in REFS[:100]]
        plant.step()
        assert all(gc.is_tracked(m.sample) for m in models)
        garbage = _Node()
        ref = weakref.ref(garbage)
        gc.collect(0)  # tenured: only a full collection frees it
        del garbage
        assert ref() is not None
        assert await ServerGcPolicy.full_collection_sliced() >= 1
        assert ref() is None
        assert ServerGcPolicy.last_sliced is None  # the one-piece collection
        assert all(map(gc.is_tracked, [plant._states, *models]))


async def test_a_holder_that_fails_midway_gets_everything_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A snapshot that raises (a holder in a state it did not expect) after another's
    # objects were hidden: the error reaches the valve, and everything hidden is tracked
    # again; the next collection runs.
    monkeypatch.setattr("mxgateway_sim._gcpolicy.SLICE_OBJECTS", 100)
    async with _tenured(monkeypatch, 60_000) as (sim, _gw, _sid, _sh):
        plant = sim.plant
        assert plant is not None
        models = [plant.state(ref) for ref in REFS]

        def broken() -> list[object]:
            assert not all(map(gc.is_tracked, models))  # the plant's are hidden by now
            raise RuntimeError("a holder failed")

        ServerGcPolicy.hiders.append(broken)
        try:
            with pytest.raises(RuntimeError, match="a holder failed"):
                await ServerGcPolicy.full_collection_sliced()
        finally:
            ServerGcPolicy.hiders.remove(broken)
        assert not ServerGcPolicy.collecting
        assert all(map(gc.is_tracked, [plant._states, *models]))
        assert await ServerGcPolicy.full_collection_sliced() >= 0
        assert all(map(gc.is_tracked, [plant._states, *models]))
