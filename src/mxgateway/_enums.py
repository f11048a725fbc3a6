"""Tolerant names for protobuf enum values.

The contract is additive: a newer gateway may send a status category, event family, fault
kind or command kind that these bindings do not know. Protobuf keeps such a number as a plain
``int``; ``EnumType.Name`` would raise ``ValueError`` on it. Every decoder (errors, typed
events, CLI text) names enum values through :func:`enum_name` instead, which never raises.
"""

from __future__ import annotations

from typing import Any

__all__ = ["enum_name", "enum_prefix"]


def _prefix(full_name: str, names: tuple[str, ...]) -> str:
    common = min(names, default="")
    last = max(names, default="")
    for i, char in enumerate(common):  # min and max bound every name's prefix
        if last[i] != char:
            common = common[:i]
            break
    return common[: common.rfind("_") + 1]


_PREFIXES: dict[str, str] = {}
"""Enum full name -> its prefix: naming a value (every command's error label) must not list
the enum's values each time."""


def enum_prefix(enum: Any) -> str:
    """The prefix every value name of ``enum`` shares (``MX_STATUS_CATEGORY_``, ``VT_``)."""
    descriptor = enum.DESCRIPTOR
    prefix = _PREFIXES.get(descriptor.full_name)
    if prefix is None:
        names = tuple(v.name for v in descriptor.values)
        prefix = _PREFIXES[descriptor.full_name] = _prefix(descriptor.full_name, names)
    return prefix


def enum_name(enum: Any, number: int, *, short: bool = True) -> str:
    """Name of ``number`` in the generated ``enum`` wrapper; ``UNKNOWN(<number>)`` when the
    bindings have no such value.

    ``short`` drops the prefix the enum's names share (``OK`` rather than
    ``MX_STATUS_CATEGORY_OK``).
    """
    value = enum.DESCRIPTOR.values_by_number.get(number)
    if value is None:
        return f"UNKNOWN({number})"
    name: str = value.name
    return name.removeprefix(enum_prefix(enum)) if short else name
