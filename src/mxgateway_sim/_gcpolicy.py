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
  an embedded simulator with ``gc_tenure=True``): what survives a generation-1 collection
  is frozen as well, so a session's items (100k of them are ~500k tracked objects) are
  walked by a young collection or two and never again by a full one, which would hold
  the loop 150-330 ms each time. Cyclic garbage among tenured objects (mostly gRPC's
  per-call cycles of calls in progress at that moment: a few hundred objects a second
  under heavy session churn) is reclaimed by one full collection every
  :data:`TENURE_VALVE_S` (unfreeze, collect, freeze again): that collection walks
  everything, the one long hold left, and it bounds the memory tenure can keep.

Only servers apply it: a :class:`~mxgateway_sim.GatewaySimulator` while it runs
(``tune_gc=True``, the default; reference-counted, everything restored when the last one
stops) and ``mxgw-worker`` (thresholds) for its whole life. The client library never
touches the collector: a library must not tune its host's.
"""

from __future__ import annotations

import gc
from typing import Any

THRESHOLDS = (20_000, 1, 10)
"""``gc.set_threshold`` of a server process (generations 0, 1 and 2)."""

TENURE_VALVE_S = 600.0
"""Seconds between the full collections of a tenuring server (see the module docstring)."""


def server_thresholds(current: tuple[int, int, int]) -> tuple[int, int, int]:
    """The thresholds a server runs with, given the process's ``current`` ones: generation
    0 at least :data:`THRESHOLDS` ``[0]``, generations 1 and 2 as the policy says."""
    return (max(current[0], THRESHOLDS[0]), THRESHOLDS[1], THRESHOLDS[2])


class ServerGcPolicy:
    """The policy shared by the simulators running in one process (reference-counted):
    the first :meth:`acquire` applies it, the last :meth:`release` restores the process's
    thresholds and unfreezes what the policy froze."""

    users = 0
    tenants = 0
    """Users that asked for tenure."""
    saved: tuple[int, int, int] = (700, 10, 10)
    froze = False

    @classmethod
    def acquire(cls, *, tenure: bool = False) -> None:
        """Apply the policy (call once the server is up, so start-up's objects are frozen)."""
        if cls.users == 0:
            cls.saved = gc.get_threshold()
            gc.set_threshold(*server_thresholds(cls.saved))
            # A process that froze objects itself keeps them frozen when we stop.
            cls.froze = gc.get_freeze_count() == 0
            if cls.froze:
                gc.freeze()
        cls.users += 1
        if tenure:
            if cls.tenants == 0 and cls.froze:
                gc.callbacks.append(_tenure)
            cls.tenants += 1

    @classmethod
    def release(cls, *, tenure: bool = False) -> None:
        """Undo :meth:`acquire`; the last release restores the process as it was."""
        if tenure:
            cls.tenants -= 1
            if cls.tenants == 0 and _tenure in gc.callbacks:
                gc.callbacks.remove(_tenure)
        cls.users -= 1
        if cls.users == 0:
            gc.set_threshold(*cls.saved)
            if cls.froze:
                cls.froze = False
                gc.unfreeze()

    @classmethod
    def tenuring(cls) -> bool:
        """True while survivors of generation-1 collections are frozen."""
        return _tenure in gc.callbacks

    @classmethod
    def full_collection(cls) -> int:
        """Tenure's valve: collect everything once (unfreeze, collect, freeze again) and
        return how many unreachable objects were found. Holds the loop for a full walk."""
        if not cls.froze:
            return gc.collect()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        return found


def _tenure(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks`` hook: after a generation-1 (or 2) collection, freeze its survivors
    (everything alive then: the young generations were just emptied)."""
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()


def apply_to_worker_process() -> None:
    """``mxgw-worker``: the server thresholds for the whole life of the process."""
    gc.set_threshold(*server_thresholds(gc.get_threshold()))
