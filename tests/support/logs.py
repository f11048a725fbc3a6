"""Root logging kept as each test found it.

``mxgw-sim serve`` run in-process (``mxgateway_sim.cli.main``) makes a handler on the
captured stderr of its test the root logger's only one (``configure_logging``). Left there,
it writes every later record to a stream pytest has closed, and ``logging`` reports that as
"--- Logging error ---" on the stderr of whichever test logs next (a client test that
checks the library prints nothing then fails, in some orders of the suite).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

__all__ = ["root_logging_kept"]


@pytest.fixture(autouse=True)
def root_logging_kept() -> Iterator[None]:
    """Restore the root logger's handlers and level after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
