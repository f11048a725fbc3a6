"""MXAccess item reference grammar (AVEVA Application Server reference strings).

Only the syntax is checked here; whether the reference exists is the runtime's business.
A malformed reference makes AddItem fail with E_INVALIDARG; a well-formed but unknown one
gets a handle and fails later, through the item's first OnDataChange.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

MAX_REFERENCE_LENGTH = 329
MAX_IDENTIFIER_LENGTH = 32

_IDENT = r"[A-Za-z0-9_$#@!%&'\-]{1,32}"
_INDEX = r"(?:-1|[1-9][0-9]{0,4})"
_REFERENCE = re.compile(
    rf"^(?P<path>{_IDENT}(?:\.{_IDENT})*)"
    rf"(?P<index>\[(?P<first>{_INDEX})?\](?:\[{_INDEX}\]){{0,2}})?$"
)
_PLAIN = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
"""The grammar without an array suffix: the common reference (``Obj.Attr``), checked with
one simpler match (a 10,000-tag ReadBulk parses every tag the cache cannot hold)."""


class ReferenceSyntaxError(ValueError):
    """The string is not a reference MXAccess can parse."""


@dataclass(frozen=True, slots=True)
class ParsedReference:
    """A syntactically valid reference, split into what the runtime resolves."""

    text: str
    """The reference as given."""
    path: str
    """Object and attribute path without the array suffix (``Tank01.Level``)."""
    whole_array: bool
    """True for ``Obj.Arr[]``."""
    index: int | None
    """1-based element for ``Obj.Arr[N]`` (``-1`` kept as given), else None."""
    dimensions: int
    """Number of bracket groups (0 = none)."""
    key: str = field(init=False, repr=False, compare=False)
    """Case-insensitive identity of what the reference reads (derived from the above)."""

    def __post_init__(self) -> None:
        suffix = "[]" if self.whole_array else f"[{self.index}]" if self.index is not None else ""
        object.__setattr__(self, "key", self.path.lower() + suffix)


def parse_reference(text: str, context: str = "") -> ParsedReference:
    """Check ``text`` against the reference grammar; resolve ``Me.`` against ``context``.

    Raises:
        ReferenceSyntaxError: empty, too long, bad characters, empty identifiers, a
            misplaced or out-of-range array index; an item context longer than a reference.
    """
    return _parse(text, context)


ENTRY_OVERHEAD_BYTES = 400
"""Estimated bytes of one cache entry beyond its strings (key tuple, reference object,
string headers, dictionary slot)."""


class ReferenceCache:
    """One session's parsed references, least recently used first out, bounded in bytes.

    The parse depends on the two strings only (never on what is deployed), and ReadBulk
    re-reads the same tags, so it is worth remembering; it is kept per session (it goes
    with the session) and its size counts every string it holds, the item context too. A
    malformed reference is not cached and raises every time.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], ParsedReference] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, text: str, context: str = "") -> ParsedReference:
        """:func:`parse_reference`, remembered."""
        key = (text, context)
        entries = self._entries
        ref = entries.get(key)
        if ref is not None:
            entries.move_to_end(key)
            return ref
        ref = _parse(text, context)
        cost = _cost(text, context, ref)
        if cost <= self.max_bytes:
            entries[key] = ref
            self.bytes += cost
            while self.bytes > self.max_bytes:
                (old_text, old_context), old = entries.popitem(last=False)
                self.bytes -= _cost(old_text, old_context, old)
        return ref

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self.bytes = 0

    def held_objects(self) -> list[object]:
        """The remembered references and their container (a snapshot; see
        ``SimulatedRuntime.held_objects``)."""
        return [self._entries, *self._entries.values()]


def _cost(text: str, context: str, ref: ParsedReference) -> int:
    return len(text) + len(context) + len(ref.path) + len(ref.key) + ENTRY_OVERHEAD_BYTES


def _parse(text: str, context: str) -> ParsedReference:
    if "[" not in text and 0 < len(text) <= MAX_REFERENCE_LENGTH:
        # Fast path, the same answer as _parse_full (tests/sim/test_sim_references_fast.py).
        if len(context) > MAX_REFERENCE_LENGTH or _PLAIN.fullmatch(text) is None:
            return _parse_full(text, context)  # raises with the full path's message
        head, _, rest = text.partition(".")
        if head.lower() == "me":
            if not context:
                raise ReferenceSyntaxError(
                    f"{text!r} is relative (Me.) but no item context is given"
                )
            path = f"{context}.{rest}" if rest else context
        else:
            path = text if rest else f"{text}.PV"
        return ParsedReference(text, path, False, None, 0)
    return _parse_full(text, context)


def _parse_full(text: str, context: str) -> ParsedReference:
    if not text or not text.strip():
        raise ReferenceSyntaxError("the item reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise ReferenceSyntaxError(
            f"the item reference is {len(text)} characters long; the limit is "
            f"{MAX_REFERENCE_LENGTH}"
        )
    if len(context) > MAX_REFERENCE_LENGTH:  # an object's tag name: nvarchar(329)
        raise ReferenceSyntaxError(
            f"the item context is {len(context)} characters long; the limit is "
            f"{MAX_REFERENCE_LENGTH}"
        )
    match = _REFERENCE.fullmatch(text)  # not match(): "$" would accept a trailing "\n"
    if match is None:
        raise ReferenceSyntaxError(f"{text!r} is not a valid MXAccess item reference")
    path = match.group("path")
    index_text = match.group("index") or ""
    indices = re.findall(r"\[(-?[0-9]*)\]", index_text)
    for raw in indices:
        if raw and raw != "-1" and not 1 <= int(raw) <= 32767:
            raise ReferenceSyntaxError(f"array index {raw} in {text!r} is outside 1..32767")
    head, _, rest = path.partition(".")
    if head.lower() == "me":
        if not context:
            raise ReferenceSyntaxError(f"{text!r} is relative (Me.) but no item context is given")
        path = f"{context}.{rest}" if rest else context
    elif not rest:
        # A bare tag name reads its PV (AVEVA: ".PV is assumed").
        path = f"{path}.PV"
    first = match.group("first")
    return ParsedReference(
        text=text,
        path=path,
        whole_array=bool(indices) and first is None,
        index=int(first) if first is not None else None,
        dimensions=len(indices),
    )
