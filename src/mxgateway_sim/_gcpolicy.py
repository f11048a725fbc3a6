"""The garbage-collector policy of the simulator's server processes (one place for it).

CPython's collector walks a generation in one piece, on whatever thread allocated the
object that tipped it over: in a gateway that is the event loop, so a collection holds
every session, stream and health check for as long as it takes (about 0.1 us per tracked
object on a 2-core machine, more under load). The policy keeps those walks short:

- **Thresholds** (:data:`THRESHOLDS`): generation 0 is collected after 50,000 net new
  objects instead of 700 (the event path allocates many short-lived, acyclic objects; the
  default made the collector a third of the CPU at 100k+ events/s), and generation 1 after
  :data:`THRESHOLDS` ``[1]`` of those, so a generation-1 walk stays near 100k objects
  (with the default 10 it reached ~550k: 150-230 ms of loop CPU after a 100k-item call).
- **Freeze after start-up**: once the server is up, everything alive (modules, the
  catalog, the Galaxy snapshot, the plant) is moved out of the collector's generations
  (``gc.freeze()``), so no later collection walks it again. Frozen objects are still freed
  by reference counting; only cyclic garbage among them would wait for the unfreeze.

Only servers apply it: a :class:`~mxgateway_sim.GatewaySimulator` while it runs
(``tune_gc=True``, the default; reference-counted, everything restored when the last one
stops) and ``mxgw-worker`` for its whole life. The client library never touches the
collector: a library must not tune its host's.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 2, 10)
"""``gc.set_threshold`` of a server process (generations 0, 1 and 2)."""


def server_thresholds(current: tuple[int, int, int]) -> tuple[int, int, int]:
    """The thresholds a server runs with, given the process's ``current`` ones: generation
    0 at least :data:`THRESHOLDS` ``[0]``, generations 1 and 2 as the policy says."""
    return (max(current[0], THRESHOLDS[0]), THRESHOLDS[1], THRESHOLDS[2])


class ServerGcPolicy:
    """The policy shared by the simulators running in one process (reference-counted):
    the first :meth:`acquire` applies it, the last :meth:`release` restores the process's
    thresholds and unfreezes what the first one froze."""

    users = 0
    saved: tuple[int, int, int] = (700, 10, 10)
    froze = False

    @classmethod
    def acquire(cls) -> None:
        """Apply the policy (call once the server is up, so start-up's objects are frozen)."""
        if cls.users == 0:
            cls.saved = gc.get_threshold()
            gc.set_threshold(*server_thresholds(cls.saved))
            # A process that froze objects itself keeps them frozen when we stop.
            cls.froze = gc.get_freeze_count() == 0
            if cls.froze:
                gc.freeze()
        cls.users += 1

    @classmethod
    def release(cls) -> None:
        """Undo :meth:`acquire`; the last release restores the process as it was."""
        cls.users -= 1
        if cls.users == 0:
            gc.set_threshold(*cls.saved)
            if cls.froze:
                cls.froze = False
                gc.unfreeze()


def apply_to_worker_process() -> None:
    """``mxgw-worker``: the server thresholds for the whole life of the process (it freezes
    nothing: a worker's start-up is small, its sessions' items are what it holds)."""
    gc.set_threshold(*server_thresholds(gc.get_threshold()))
