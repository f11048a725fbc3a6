"""A session's read cache remembers several ReadBulk calls, each with its own plans.

A client that reads a long list in several requests (the library's pipelined
``read_bulk``) repeats each of them: every one is recalled, not only the last. A plan
belongs to the call it was made for: a call read between the chunks of another (two
reads of one session at once, on ``Invoke`` or two streams) never answers with the other
call's rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from test_sim_bulk_fast_paths import _model_catalog

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import Plant, SimulatedRuntime
from mxgateway_sim._readrows import MEMO_CALLS, MEMO_CHUNK_ROWS
from mxgateway_sim._slicing import chunks
from mxgateway_sim._svc_common import READ_CHUNK_ROWS

ROOM = 1 << 24
SCALARS = [f"Obj{i:03d}.{n}" for i in range(800) for n in ("Level", "Count", "Flag")]
"""2,400 scalar attributes only their models drive (a remembered read of them is planned)."""


async def _runtime() -> tuple[SimulatedRuntime, int]:
    plant = Plant(_model_catalog(800), scan_interval_ms=1, flaky_one_in=0)
    runtime = SimulatedRuntime(plant)
    await runtime.start(lambda events: None)
    return runtime, await runtime.register("calls")


def _read(runtime: SimulatedRuntime, hlmx: int, key: bytes, tags: Sequence[str]) -> list[str]:
    """One whole ReadBulk call ``key`` of ``tags`` as the handler runs it: the references
    of the rows it answered, in order."""
    memo = runtime.read_memo(key)
    assert memo is not None
    wires: list[bytes] = []
    if memo.rows is None:
        for chunk in chunks(tags, READ_CHUNK_ROWS):
            wire = runtime.read_wire(hlmx, chunk, ROOM, memo=memo)
            assert wire is not None
            wires.append(wire)
    else:
        for part, rows in enumerate(memo.rows):
            wire = runtime.read_wire(hlmx, None, ROOM, memo=memo, rows=rows, part=part)
            assert wire is not None
            wires.append(wire)
    memo.done()
    return _tags(b"".join(wires))


def _tags(wire: bytes) -> list[str]:
    return [r.tag_address for r in pb.BulkReadReply.FromString(wire).results]


async def test_a_call_read_between_the_chunks_of_another_keeps_its_own_rows() -> None:
    # Call A is recalled and planned; B is read (and remembered) after A's first chunk,
    # before its second: the plan A's second chunk makes belongs to A, and B's repeat
    # answers B's rows (one cache slot of plans by chunk number gave B A's second chunk).
    runtime, hlmx = await _runtime()
    a = SCALARS[: 2 * MEMO_CHUNK_ROWS + 100]
    b = list(reversed(a))  # as many rows a chunk: no miscount shows the mix-up
    assert _read(runtime, hlmx, b"A", a) == a  # remembered
    assert _read(runtime, hlmx, b"A", a) == a  # recalled: each chunk planned
    memo = runtime.read_memo(b"A")
    assert memo is not None and memo.rows is not None
    got: list[str] = []
    for part, rows in enumerate(memo.rows):
        wire = runtime.read_wire(hlmx, None, ROOM, memo=memo, rows=rows, part=part)
        assert wire is not None
        got += _tags(wire)
        if part == 0:
            assert _read(runtime, hlmx, b"B", b) == b  # another call, remembered
    memo.done()
    assert got == a
    for _ in range(2):
        assert _read(runtime, hlmx, b"B", b) == b
        assert _read(runtime, hlmx, b"A", a) == a


async def test_the_calls_of_a_split_read_are_each_recalled() -> None:
    # A list read in parts, again and again: each part's repeat finds its rows (the cache
    # remembers every part, not only the last), up to MEMO_CALLS calls, the one used
    # longest ago forgotten first.
    runtime, hlmx = await _runtime()
    cache = runtime._read_rows
    assert cache is not None
    parts = [(f"part{i}".encode(), SCALARS[i * 100 : i * 100 + 300]) for i in range(4)]
    for _ in range(3):
        for key, tags in parts:
            assert _read(runtime, hlmx, key, tags) == tags
    for key, _tags_of in parts:
        memo = runtime.read_memo(key)
        assert memo is not None and memo.rows is not None, key
    many = [(f"call{i}".encode(), SCALARS[i : i + 50]) for i in range(MEMO_CALLS)]
    for key, tags in many:
        assert _read(runtime, hlmx, key, tags) == tags
    assert len(cache.calls) == MEMO_CALLS
    assert set(cache.calls) == {key for key, _ in many}  # the oldest went first
    assert cache.bytes <= cache.max_bytes
