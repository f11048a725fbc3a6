"""Helpers shared by every test folder (``from support import wait_for``).

``tests/`` is on ``sys.path`` for the test run (``pythonpath`` in pyproject.toml), so any
test folder can import this package; folder-specific helpers stay in their folder's
``*helpers.py``.
"""

from support.ports import unused_port
from support.waiting import DEFAULT_WAIT, wait_for

__all__ = ["DEFAULT_WAIT", "unused_port", "wait_for"]
