"""What a worker needs to build the simulated runtime the gateway would have built inline.

The gateway writes it once per catalog version to a file in its private directory (mode
0600) and passes the path to each worker (``--runtime-config``): the catalog's attributes,
the simulated users, the seed, the scan interval and the per-session limits. Each worker
builds its own :class:`~mxgateway_sim._plant.Plant` from it (see docs/simulator.md, "Process
isolation": sessions in worker processes do not share a plant).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxgateway_sim._builtin import InMemoryCatalog
from mxgateway_sim._catalog import TagCatalog, TagInfo
from mxgateway_sim._limits import (
    DEFAULT_MAX_ITEMS_PER_SESSION,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_READ_CACHE_BYTES,
    DEFAULT_REFERENCE_CACHE_BYTES,
)
from mxgateway_sim._plant import Plant
from mxgateway_sim._simruntime import SimulatedRuntime, SimUser


class ConfigError(Exception):
    """The runtime configuration file is missing or malformed."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated runtime's settings, apart from the catalog and the users: the one
    place the gateway turns its options into a :class:`SimulatedRuntime`, inline or in a
    worker."""

    seed: int = 0
    scan_interval_ms: int = 200
    flaky_one_in: int = 8
    max_items: int = DEFAULT_MAX_ITEMS_PER_SESSION
    reference_cache_bytes: int = DEFAULT_REFERENCE_CACHE_BYTES
    read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES
    first_value_delay_s: float = 0.0
    max_batch_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def runtime(self, plant: Plant, users: Sequence[SimUser]) -> SimulatedRuntime:
        """A session's simulated runtime over ``plant``."""
        return SimulatedRuntime(
            plant,
            users,
            max_items=self.max_items,
            reference_cache_bytes=self.reference_cache_bytes,
            read_cache_bytes=self.read_cache_bytes,
            first_value_delay_s=self.first_value_delay_s,
            max_batch_bytes=self.max_batch_bytes,
        )


def write_config(
    path: Path, catalog: TagCatalog, users: Sequence[SimUser], settings: SimSettings
) -> None:
    """Write the configuration file (owner-only: it holds the simulated users' passwords)."""
    doc = {
        "settings": dataclasses.asdict(settings),
        "users": [dataclasses.asdict(u) for u in users],
        "tags": [dataclasses.astuple(t) for t in catalog.all_tags()],
        "catalogVersion": catalog.version,
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    tmp.replace(path)


def build_runtime(path: Path) -> tuple[SimulatedRuntime, Plant]:
    """The simulated runtime (and its plant, not started) described by the file at ``path``.

    Raises:
        ConfigError: the file cannot be read or does not describe a runtime.
    """
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        settings = SimSettings(**doc["settings"])
        users = [SimUser(**u) for u in doc["users"]]
        tags = [TagInfo(*t) for t in doc["tags"]]
        version = int(doc["catalogVersion"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the runtime configuration {path}: {exc}") from None
    plant = Plant(
        InMemoryCatalog(tags, version),
        seed=settings.seed,
        scan_interval_ms=settings.scan_interval_ms,
        flaky_one_in=settings.flaky_one_in,
    )
    return settings.runtime(plant, users), plant
