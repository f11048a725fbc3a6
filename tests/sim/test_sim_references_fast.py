"""The reference parser's fast path answers exactly as the full grammar (issue 15 §5).

``_parse`` checks bracket-free references with a simpler pattern; ``_parse_full`` is the
grammar as it was. Both must give the same ``ParsedReference`` (and key) or the same
``ReferenceSyntaxError`` message for any input.
"""

from __future__ import annotations

import random

import pytest

from mxgateway_sim._references import (
    MAX_REFERENCE_LENGTH,
    ReferenceSyntaxError,
    _parse,
    _parse_full,
)

ALPHABET = "aZ09_$#@!%&'-.[]1 \n\tMe.é"
CONTEXTS = ("", "Tank01", "x" * MAX_REFERENCE_LENGTH, "y" * (MAX_REFERENCE_LENGTH + 1))
FIXED = [
    "",
    " ",
    "Tank01",
    "Tank01.Level",
    "tank01.level.PV",
    "Me",
    "Me.Level",
    "me.Level",
    "ME.Level.Sub",
    "Tank01.Arr[]",
    "Tank01.Arr[3]",
    "Tank01.Arr[-1]",
    "Tank01.Arr[0]",
    "Tank01..Level",
    ".Level",
    "Level.",
    "Tank01.Level\n",
    "Tank 01.Level",
    "A" * 32 + ".B",
    "A" * 33 + ".B",
    "A." + "B." * 160 + "C",
    ("A." * 200)[: MAX_REFERENCE_LENGTH + 1],
    "a" * MAX_REFERENCE_LENGTH,
    "Tank$#@!%&'-.Level",
    "Tank01.Levél",
]


def _outcome(fn: object, text: str, context: str) -> object:
    try:
        ref = fn(text, context)  # type: ignore[operator]
    except ReferenceSyntaxError as exc:
        return ("error", str(exc))
    return (ref, ref.key)


def _corpus() -> list[str]:
    rng = random.Random(15)
    out = list(FIXED)
    for _ in range(3000):
        n = rng.choice((1, 2, 5, 12, 40, 80))
        out.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    for _ in range(300):  # mostly valid shapes, some with edits
        parts = [
            rng.choice(("Me", "me", "Tank01", "X_1", "a" * rng.randint(1, 34))) for _ in range(3)
        ]
        text = ".".join(parts[: rng.randint(1, 3)])
        if rng.random() < 0.3:
            text += rng.choice(("[]", "[2]", "[-1]", "[0]", "[40000]", "[1][2]"))
        out.append(text)
    return out


@pytest.mark.parametrize("context", CONTEXTS, ids=["none", "short", "max", "too-long"])
def test_fast_path_equals_the_full_grammar(context: str) -> None:
    for text in _corpus():
        assert _outcome(_parse, text, context) == _outcome(_parse_full, text, context), text
