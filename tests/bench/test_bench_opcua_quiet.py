"""``bench opcua`` measures each single call without other rows' simulators ticking.

The busy simulator's write tag (advised for its write row) is advised only while that
simulator's own calls run: advised throughout, its 1 ms scan woke its process about a
thousand times a second while every other side's single calls were timed (``bench
readtail`` measures what that background costs the read's tail). Run in a subprocess with
stand-ins for the two sides (``tests/bench`` shadows the ``bench`` package in pytest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import asyncio, json
from bench import opcua

class Side:
    # A stand-in for bench.opcua.Mx / Ua: records, for each call, whether the busy
    # simulator's tag was advised then.
    def __init__(self, name, busy=None):
        self.name, self.busy, self.advised, self.seen = name, busy, False, []
    async def begin_writes(self): self.advised = True
    async def end_writes(self): self.advised = False
    async def _call(self, what):
        self.seen.append((what, (self.busy or self).advised))
    async def read_one(self): await self._call("read")
    async def ping(self): await self._call("ping")
    async def write_one(self): await self._call("write")
    async def bare_health(self): await self._call("health")

async def main():
    busy = Side("busy")
    plain, unary, ua = Side("plain", busy), Side("unary", busy), Side("ua", busy)
    for flip in (False, True):
        await opcua.unary_round(plain, unary, ua, 3, flip, busy)
    print(json.dumps({s.name: s.seen for s in (busy, plain, unary, ua)}))

asyncio.run(main())
"""


def test_busy_simulator_tag_is_advised_only_during_its_own_calls() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout)
    # The busy simulator's own reads, pings and writes ran with its tag advised ...
    assert {what for what, _ in seen["busy"]} == {"read", "ping", "write"}
    assert all(advised for _, advised in seen["busy"])
    # ... every other side's calls with it not advised (its plant parked).
    for side in ("plain", "unary", "ua"):
        assert seen[side], side
        assert not any(advised for _, advised in seen[side]), side
