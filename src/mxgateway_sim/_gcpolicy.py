"""The garbage-collector policy of the simulator's server processes (one place for it).

CPython's collector walks a generation in one piece, on whatever thread allocated the
object that tipped it over: in a gateway that is the event loop, so a collection holds
every session, stream and health check for as long as it takes (0.1-0.5 us per tracked
object on a 2-core machine, more under load). The policy keeps those walks short:

- **Thresholds** (:data:`THRESHOLDS`): generation 0 is collected after 20,000 net new
  objects instead of 700 (the event path allocates many short-lived, acyclic objects; the
  default made the collector a third of the CPU at 100k+ events/s), and generation 1 after
  every second one, so a generation-1 walk is about two generation-0 walks (with 50,000
  and the default 10 it reached ~550k objects: 150-230 ms of loop CPU after a 100k-item
  call). A young generation can still hold more than the threshold: objects that replace
  older ones (a scan tick's new samples) do not count, so a tick over 100k advised
  attributes leaves ~100k young objects whatever the threshold.
- **Freeze after start-up**: once the server is up, everything alive (modules, the
  catalog, the Galaxy snapshot, the plant) is moved out of the collector's generations
  (``gc.freeze()``), so no later collection walks it again. Frozen objects are still freed
  by reference counting; only cyclic garbage among them waits for an unfreeze.
- **Tenure** (dedicated server processes: ``mxgw-sim serve``, ``mxgw-gateway``; opt-in for
  an embedded simulator with ``gc_tenure=True``): what survives any collection is frozen
  as well, so every object is walked by one young collection at most and never again by
  a full one (a session's 100k items are ~450k tracked objects: a full walk holds the
  loop 230-360 ms).
- **Replacements** (with tenure): objects made to replace others (a scan tick's new
  sample of each changed attribute, a write's) leave CPython's count of new objects
  unchanged (each frees the one it replaces), so a young collection could come after
  100k of them and walk them all in one piece. The plant reports them
  (:func:`replaced`), and once :data:`YOUNG_REPLACEMENTS` of them may be alive in the
  young generation a young collection runs: its walks stay about that size (each object
  is walked once however often that is, so a lower bound costs little more CPU).
- **Valve** (with tenure): cyclic garbage among frozen objects is only freed by a full
  collection (unfreeze, collect, freeze again), which walks everything: 150-330 ms of loop
  CPU with a session of 100k items in one piece (the valve's is sliced, below). Every
  :data:`VALVE_CHECK_S` the policy counts the tracked objects
  (:meth:`ServerGcPolicy.valve`) less those the server knows it holds alive (its **held**
  objects: each item, parsed reference, cached read row and attribute model, and the
  model's sample where it is tracked, reported by the simulators through
  ``acquire(held=...)``), and runs the full collection only when the rest grew by
  :data:`VALVE_GROWTH` of what the server holds (at least :data:`VALVE_MIN_GROWTH`
  objects) over the fewest seen since the last one. Garbage stays
  bounded in proportion to what the server holds (CPython's own rule for its oldest
  generation), and items being added, held or removed are no reason for a full walk:
  only objects nobody accounts for are. Items and models die by reference counting (a
  removed item, a closed session's cycle is broken at close), never as cyclic garbage.
  In steady state (a session of 100k advised items streaming events, reads, writes,
  sessions opening and closing) nothing cyclic of ours is frozen
  (``tests/sim/test_sim_gc.py``): the per-call cycles of grpc.aio die young and young
  collections free them; what can be frozen is the cycles of calls in progress during a
  collection.
- **Sliced full collection** (the valve's, :meth:`ServerGcPolicy.full_collection_sliced`):
  the objects the simulators hold alive on purpose cannot be garbage, so the full
  collection need not walk them. The simulators name them (``acquire(hide=...)``: their
  items, attribute models, parsed references, read rows and the dicts that hold them);
  they are taken out of the collector's lists a slice of :data:`SLICE_OBJECTS` at a time
  (``PyObject_GC_UnTrack``, CPython's C API), the full collection walks the rest (~46k
  objects of start-up, caches and calls instead of ~273k with 100k items), and they are
  given back a slice at a time (``PyObject_GC_Track``, a young collection, frozen again),
  each slice a turn of the event loop. The collector treats a reference from an object
  it does not track as a reference from outside, so hiding an object only keeps what it
  refers to alive for that collection: nothing live is ever freed, and garbage that does
  not pass through a hidden object is found as before (a hidden object is held, so no
  garbage passes through it). Where the C API cannot be called (not CPython) the full
  collection walks everything in one piece.

Only servers apply it: a :class:`~mxgateway_sim.GatewaySimulator` while it runs
(``tune_gc=True``, the default; reference-counted, everything restored when the last one
stops) and ``mxgw-worker`` (thresholds) for its whole life. The client library never
touches the collector: a library must not tune its host's.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple, cast

THRESHOLDS = (20_000, 1, 10)
"""``gc.set_threshold`` of a server process (generations 0, 1 and 2)."""

YOUNG_REPLACEMENTS = 10_000
"""Replacing objects that may be alive in the young generation before a young collection
runs (see :func:`replaced`): its walk is a few ms."""

VALVE_CHECK_S = 600.0
"""Seconds between two checks of the valve of a tenuring server (see the module docstring)."""
VALVE_GROWTH = 0.25
"""Growth of the tracked objects nobody accounts for (over the fewest since the last full
collection), as a share of the rest, that runs the next one (CPython's own rule for its
oldest generation)."""
VALVE_MIN_GROWTH = 10_000
"""... and at least this many objects (a small server does not collect for a few dozen)."""
SLICE_OBJECTS = 10_000
"""Objects taken out of (or given back to) the collector's lists per turn of the event loop
in a sliced full collection (a few ms each)."""


acyclic: Callable[[object], None] | None = None
"""While tenuring (and where the C API can be called, see :func:`_tracking_api`):
``PyObject_GC_UnTrack``, for objects the simulator makes all the time that can never be
part of a reference cycle (an attribute's sample: a value of scalars, bytes and statuses;
a catalog record): the collector has nothing to find in them, so none of its walks should
visit them (a scan tick over 100k advised attributes makes up to 100k samples, a full
collection would walk every current one). They are freed by reference counting as any
object. None otherwise (the caller does nothing)."""


def server_thresholds(current: tuple[int, int, int]) -> tuple[int, int, int]:
    """The thresholds a server runs with, given the process's ``current`` ones: generation
    0 at least :data:`THRESHOLDS` ``[0]``, generations 1 and 2 as the policy says."""
    return (max(current[0], THRESHOLDS[0]), THRESHOLDS[1], THRESHOLDS[2])


def host_froze() -> bool:
    """Whether the process has frozen objects of its own (``gc.freeze()``), which the
    policy must leave frozen: it then neither freezes nor tenures (:meth:`ServerGcPolicy.
    acquire`).

    Not simply a freeze count above 0: CPython 3.12 starts with a few hundred objects of
    its own frozen (the immortal base and MRO tuples of its built-in types; 3.13 no
    longer tracks them at all), which would have kept the policy off for good. A
    process's ``gc.freeze()`` froze everything alive then, ``sys.modules`` too, which is
    otherwise in a generation. (The policy's last release unfreezes CPython's own with
    its own: immortal, they are walked, never freed, by a full collection.)"""
    if gc.get_freeze_count() == 0:
        return False
    modules = sys.modules
    return not any(obj is modules for obj in gc.get_objects())


class ServerGcPolicy:
    """The policy shared by the simulators running in one process (reference-counted):
    the first :meth:`acquire` applies it, the last :meth:`release` restores the process's
    thresholds and unfreezes what the policy froze."""

    users = 0
    tenants = 0
    """Users that asked for tenure."""
    saved: tuple[int, int, int] = (700, 10, 10)
    froze = False
    low = 0
    """The fewest tracked objects not held (see :meth:`held`) counted since the last full
    collection (the valve's base)."""
    holders: ClassVar[list[Callable[[], int]]] = []
    """What each simulator reports it holds alive (:meth:`acquire`'s ``held``)."""
    hiders: ClassVar[list[Callable[[], Iterable[object]]]] = []
    """The objects each simulator holds alive (:meth:`acquire`'s ``hide``)."""
    collecting = False
    """True while a sliced full collection runs (:meth:`full_collection_sliced`)."""
    last_sliced: SlicedCollection | None = None
    """How the last sliced full collection went."""
    tenured = False
    """True while :func:`_tenure` freezes the survivors of collections."""
    young_replacements = 0
    """Objects that replaced others since the last collection, as reported (at most what
    can be alive)."""

    @classmethod
    def acquire(
        cls,
        *,
        tenure: bool = False,
        held: Callable[[], int] | None = None,
        hide: Callable[[], Iterable[object]] | None = None,
    ) -> None:
        """Apply the policy (call once the server is up, so start-up's objects are frozen).
        ``held``: how many tracked objects the caller holds alive on purpose (its items and
        attribute models: they grow with what clients ask for, and are no garbage), which
        the valve does not count as growth; ``hide``: those objects themselves (and the
        containers that hold them), which a sliced full collection does not walk (see the
        module docstring); pass the same callables to :meth:`release`."""
        if held is not None:
            cls.holders.append(held)
        if hide is not None:
            cls.hiders.append(hide)
        if cls.users == 0:
            cls.saved = gc.get_threshold()
            gc.set_threshold(*server_thresholds(cls.saved))
            # A process that froze objects itself keeps them frozen when we stop.
            cls.froze = not host_froze()
            if cls.froze:
                gc.freeze()
        cls.users += 1
        if tenure:
            if cls.tenants == 0 and cls.froze:
                global acyclic
                acyclic = None if _TRACKING is None else _TRACKING[0]
                cls.low = gc.get_freeze_count() - cls.held()
                cls.young_replacements = 0
                cls.tenured = True
                gc.callbacks.append(_tenure)
            cls.tenants += 1

    @classmethod
    def release(
        cls,
        *,
        tenure: bool = False,
        held: Callable[[], int] | None = None,
        hide: Callable[[], Iterable[object]] | None = None,
    ) -> None:
        """Undo :meth:`acquire`; the last release restores the process as it was."""
        if held is not None and held in cls.holders:
            cls.holders.remove(held)
        if hide is not None and hide in cls.hiders:
            cls.hiders.remove(hide)
        if tenure:
            cls.tenants -= 1
            if cls.tenants == 0 and _tenure in gc.callbacks:
                global acyclic
                acyclic = None
                cls.tenured = False
                gc.callbacks.remove(_tenure)
        cls.users -= 1
        if cls.users == 0:
            gc.set_threshold(*cls.saved)
            if cls.froze:
                cls.froze = False
                gc.unfreeze()

    @classmethod
    def tenuring(cls) -> bool:
        """True while survivors of collections are frozen."""
        return cls.tenured

    @classmethod
    def held(cls) -> int:
        """Tracked objects the simulators hold alive on purpose (their reports summed)."""
        return sum(count() for count in cls.holders)

    @classmethod
    def full_collection(cls) -> int:
        """Collect everything once (unfreeze, collect, freeze again) and return how many
        unreachable objects were found. Holds the loop for a full walk."""
        if not cls.froze:
            return gc.collect()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        cls.low = gc.get_freeze_count() - cls.held()
        return found

    @classmethod
    async def full_collection_sliced(cls) -> int:
        """:meth:`full_collection` without walking what the simulators hold (see the module
        docstring): the loop is held a slice at a time, and the walk itself is of the
        objects they do not hold (:attr:`last_sliced` says how it went). Falls back to
        :meth:`full_collection` (one piece) where objects cannot be hidden, outside tenure,
        or while another one runs. Cancelled, it gives back whatever it hid before it
        ends."""
        if _TRACKING is None or not cls.tenured or not cls.hiders or cls.collecting:
            return cls.full_collection()
        untrack, _track = _TRACKING
        cls.collecting = True
        steps = _Steps()
        hidden: list[object] = []
        # Our own lists would be walked too, each of their entries a cache miss: hidden
        # (they die by reference counting, with nothing but held objects in them).
        untrack(hidden)
        given = 0
        try:
            is_tracked = gc.is_tracked
            for hide in list(cls.hiders):
                held = list(hide())  # a snapshot, whatever changes while the loop turns
                untrack(held)
                for start in range(0, len(held), SLICE_OBJECTS):
                    for obj in held[start : start + SLICE_OBJECTS]:
                        # Only what the collector tracks now (and so has its header): given
                        # back below, and only if still untracked (a dict that took a
                        # tracked value meanwhile was tracked again by CPython itself).
                        if is_tracked(obj):
                            untrack(obj)
                            hidden.append(obj)
                    await steps.turn()
                del held
            gc.unfreeze()
            found = gc.collect()
            gc.freeze()
            await steps.turn(walk=True)
            while given < len(hidden):
                given = _give_back(hidden, given, SLICE_OBJECTS)
                await steps.turn()
        finally:
            _give_back(hidden, given, len(hidden))  # cancelled: the rest at once
            cls.collecting = False
        cls.low = gc.get_freeze_count() + len(gc.get_objects()) - cls.held()
        cls.last_sliced = steps.done(found, len(hidden))
        return found

    @classmethod
    def _check(cls) -> tuple[int, int, int, bool]:
        """The valve's count: (tracked, held, low, whether the full collection is due).
        Counting walks the frozen objects' list once (a few ms for 500k) and asks the
        holders (a few len() calls), nothing more."""
        # Frozen, and the young ones (few under tenure): held objects not yet tenured must
        # not count as shrinkage now and growth later.
        tracked = gc.get_freeze_count() + len(gc.get_objects())
        held = cls.held()
        if cls.collecting:  # what it hid is not counted now: its end sets the base anew
            return tracked, held, cls.low, False
        loose = tracked - held
        low = min(cls.low, loose)
        grown = loose - low
        due = grown > max((tracked - grown) * VALVE_GROWTH, VALVE_MIN_GROWTH)
        if not due:
            cls.low = low
        return tracked, held, low, due

    @classmethod
    def valve(cls) -> ValveCheck:
        """Tenure's valve: count the tracked objects and run the full collection (in one
        piece) if those nobody holds grew enough since the last one (see the module
        docstring). A server runs :meth:`valve_sliced`."""
        tracked, held, low, due = cls._check()
        if not due:
            return ValveCheck(tracked, low, None, 0, held)
        found = cls.full_collection()
        return ValveCheck(tracked, low, found, gc.get_freeze_count(), held)

    @classmethod
    async def valve_sliced(cls) -> ValveCheck:
        """:meth:`valve` with :meth:`full_collection_sliced`: what a server runs every
        :data:`VALVE_CHECK_S`."""
        tracked, held, low, due = cls._check()
        if not due:
            return ValveCheck(tracked, low, None, 0, held)
        found = await cls.full_collection_sliced()
        return ValveCheck(tracked, low, found, gc.get_freeze_count(), held)


class ValveCheck(NamedTuple):
    """What one check of the valve saw and did."""

    frozen: int
    """Tracked objects counted (frozen and young)."""
    low: int
    """The fewest not held (see ``held``) counted since the last full collection."""
    found: int | None
    """Unreachable objects the full collection found (None: it did not run)."""
    frozen_after: int
    """Frozen objects after the full collection (0 if it did not run)."""
    held: int = 0
    """Tracked objects the simulators hold alive on purpose (:meth:`ServerGcPolicy.held`)."""


class SlicedCollection(NamedTuple):
    """How one :meth:`ServerGcPolicy.full_collection_sliced` went (loop-thread CPU)."""

    found: int
    """Unreachable objects found."""
    hidden: int
    """Objects hidden from its walk (and given back)."""
    steps: int
    """Turns of the event loop it took (each one slice)."""
    cpu_s: float
    """Its steps' CPU together (what ran between them not counted)."""
    longest_s: float
    """The longest step's: how long it held the loop at most."""
    walk_s: float
    """The step with the collection itself (unfreeze, walk, freeze)."""
    others_s: float
    """The longest of the other steps (hiding or giving back a slice)."""


class _Steps:
    """The loop-thread CPU of each step of a sliced collection (between two awaits)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = self.longest = self.walk = self.others = 0.0
        self.since = time.thread_time()

    def _end(self, walk: bool) -> None:
        cpu = time.thread_time() - self.since
        self.count += 1
        self.total += cpu
        self.longest = max(self.longest, cpu)
        if walk:
            self.walk = cpu
        else:
            self.others = max(self.others, cpu)

    async def turn(self, *, walk: bool = False) -> None:
        """End a step (``walk``: the one with the collection's walk): give the loop a turn."""
        self._end(walk)
        await asyncio.sleep(0)
        self.since = time.thread_time()

    def done(self, found: int, hidden: int) -> SlicedCollection:
        self._end(False)
        return SlicedCollection(
            found, hidden, self.count, self.total, self.longest, self.walk, self.others
        )


def _give_back(hidden: list[object], start: int, count: int) -> int:
    """Track ``hidden[start:start + count]`` again (those still untracked), let a young
    collection tenure them (else they would wait in the young generation, ~225k with 100k
    items, for one walk of them all), and drop them from ``hidden``'s slots; returns where
    the next slice starts."""
    assert _TRACKING is not None
    _untrack, track = _TRACKING
    is_tracked = gc.is_tracked
    end = min(start + count, len(hidden))
    if start >= end:
        return end
    # No collection between the check and the track: ctypes allocates for each call, and a
    # collection's finalizers could make CPython track an object again in that gap.
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(start, end):
            obj = hidden[i]
            # None: given back already. PyObject_GC_Track aborts on a tracked object.
            if obj is not None and not is_tracked(obj):
                track(obj)
            hidden[i] = None
    finally:
        if enabled:
            gc.enable()
    gc.collect(0)  # _tenure freezes them
    return end


def _tracking_api() -> tuple[Callable[[object], None], Callable[[object], None]] | None:
    """CPython's ``PyObject_GC_UnTrack`` and ``PyObject_GC_Track`` (public C API, called
    with the GIL held), or None where they cannot be used: another implementation, a
    build without the GIL, or no ctypes."""
    if sys.implementation.name != "cpython" or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    try:
        import ctypes

        proto = ctypes.PYFUNCTYPE(None, ctypes.py_object)
        untrack = proto(("PyObject_GC_UnTrack", ctypes.pythonapi))
        track = proto(("PyObject_GC_Track", ctypes.pythonapi))
    except (ImportError, AttributeError, OSError):
        return None
    return cast(Callable[[object], None], untrack), cast(Callable[[object], None], track)


_TRACKING = _tracking_api()


def replaced(count: int, live: int) -> None:
    """The caller made ``count`` tracked objects that replace others (at most ``live`` of
    those it made can be alive: one sample per attribute model the tick or the write
    touches). While tenuring, once :data:`YOUNG_REPLACEMENTS` of them may be alive in the
    young generation, run a young collection (its survivors are frozen), so none walks
    more; otherwise nothing."""
    if not ServerGcPolicy.tenured:
        return
    pending = min(ServerGcPolicy.young_replacements + count, live)
    if pending >= YOUNG_REPLACEMENTS:
        gc.collect(0)  # _tenure resets the count
    else:
        ServerGcPolicy.young_replacements = pending


def _tenure(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks`` hook: after a collection, freeze its survivors (everything alive
    then: the generations it walked were just emptied, the younger ones too)."""
    if phase == "stop":
        ServerGcPolicy.young_replacements = 0
        gc.freeze()


def apply_to_worker_process() -> None:
    """``mxgw-worker``: the server thresholds for the whole life of the process."""
    gc.set_threshold(*server_thresholds(gc.get_threshold()))
