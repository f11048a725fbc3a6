"""Fixtures for the MXAccess COM runtime tests: the fake LMXProxyServer or a real one.

Every test that takes ``target`` runs against the fake COM server (tests/mxaccess/fake_lmx.py)
and, with ``MXGATEWAY_INTEGRATION=1`` on a System Platform node, against the real
``LMXProxy.LMXProxyServer`` too; the real run names its tags through environment variables.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from comhelpers import Target, fake_target_of, real_skip_reason, running

from mxgateway_mxaccess import MxAccessComRuntime


@pytest.fixture(params=["fake", "real"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "real":
        reason = real_skip_reason()
        if reason:
            pytest.skip(reason)
        runtime = MxAccessComRuntime()
        t = Target(
            "real",
            runtime,
            os.environ["MXGATEWAY_TEST_TAG"],
            os.environ["MXGATEWAY_TEST_WRITE_TAG"],
            None,
            first_value_s=10.0,
        )
    else:
        t = fake_target_of()
    async with running(t):
        yield t


@pytest.fixture
async def fake_target() -> AsyncIterator[Target]:
    """The fake only (tests of behaviour a real node cannot be made to show on demand)."""
    t = fake_target_of()
    async with running(t):
        yield t
