"""Tag-name globs of DiscoverHierarchy/BrowseChildren, matched without backtracking.

A glob has two wildcards, ``*`` (any run of characters, also none) and ``?`` (exactly one
character); every other character, ``[`` included, is literal. It is anchored at both ends
and case-insensitive (characters compare by ``str.lower``).

Translating a glob into a regular expression (``.*`` per ``*``) lets the regex engine
backtrack over every way of splitting the name between the stars: eleven ``*`` took 2 s per
object. Here the stars cut the glob into fixed-length segments; the first must match at the
start, the last at the end, and each one between is taken at its leftmost place after the
previous one (leftmost is always safe, since a star can absorb whatever a later placement
would have skipped). Each segment is placed once, so a name costs at most
``len(name) x len(segment)`` character steps per segment, never more, and literal segments
use ``str.find`` (linear). A glob whose fixed characters outnumber the name's characters is
refused before any of that, so a huge glob costs nothing per object.
"""

from __future__ import annotations

import re

__all__ = ["TagGlob"]

_STARS = re.compile(r"\*+")


def _fold(text: str) -> str:
    """``text`` in lower case, one character for one (a character whose lower case is
    longer, such as U+0130, stays as it is, so ``?`` still counts characters)."""
    folded = text.lower()
    if len(folded) == len(text):
        return folded
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class TagGlob:
    """One compiled tag-name glob; :meth:`matches` tells whether a name matches it."""

    __slots__ = ("_glob", "_min_len", "_segments", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._glob = _STARS.sub("*", _fold(text))  # "**" is "*" (a linear regex)
        self._min_len = len(self._glob) - self._glob.count("*")
        # Cut into segments only when some name is long enough to need them: a glob longer
        # than every name costs two linear passes, whatever its stars and question marks.
        self._segments: list[_Segment] | None = None

    def __repr__(self) -> str:
        return f"TagGlob({self.text!r})"

    def matches(self, name: str) -> bool:
        """True when the whole of ``name`` matches the glob (case-insensitive)."""
        if len(name) < self._min_len:
            return False
        segments = self._segments
        if segments is None:
            segments = self._segments = [_Segment(p) for p in self._glob.split("*")]
        folded = _fold(name)
        first = segments[0]
        if len(segments) == 1:  # no star: the whole name is the one segment
            return len(folded) == first.size and first.at(folded, 0)
        last = segments[-1]
        end = len(folded) - last.size
        if not first.at(folded, 0) or not last.at(folded, end):
            return False
        pos = first.size
        for segment in segments[1:-1]:
            if segment.size:
                found = segment.find(folded, pos, end)
                if found < 0:
                    return False
                pos = found + segment.size
        return True


class _Segment:
    """A star-free piece of a glob: literal characters and ``?`` (any one character)."""

    __slots__ = ("_literal", "_pattern", "size", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        self._literal = "?" not in text
        self._pattern: re.Pattern[str] | None = None
        if not self._literal:
            # Fixed length, no repetition: the engine tries each start once, no backtracking.
            body = "".join("." if c == "?" else re.escape(c) for c in text)
            self._pattern = re.compile(body, re.DOTALL)

    def at(self, name: str, pos: int) -> bool:
        """True when the segment matches ``name`` exactly at ``pos``."""
        if pos < 0 or pos + self.size > len(name):
            return False
        if self._pattern is None:
            return name.startswith(self.text, pos)
        return self._pattern.match(name, pos) is not None

    def find(self, name: str, start: int, end: int) -> int:
        """Leftmost place of the segment in ``name[start:end]``, or -1."""
        if self._pattern is None:
            return name.find(self.text, start, end)
        found = self._pattern.search(name, start, end)
        return -1 if found is None else found.start()
