"""Every example marked *Runnable* in docs/client.md runs against the simulator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
_BLOCK = re.compile(r"\*Runnable:\*\s*\n\s*```python\n(.*?)```", re.S)


def _examples() -> list[str]:
    return _BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_doc_has_runnable_examples() -> None:
    assert len(_examples()) >= 4


@pytest.mark.parametrize("index", range(len(_examples())))
def test_runnable_example(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = _examples()[index]
    exec(compile(code, f"{DOC.name}[example {index}]", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert out.strip(), "the example printed nothing"
