"""Fixtures for the client tests: an in-process fake gateway on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from client_fakes import FakeServer


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    """A running fake gateway (plaintext)."""
    async with FakeServer() as server:
        yield server
