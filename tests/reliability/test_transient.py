"""One module decides what is transient and how long to wait (``mxgateway._retry``)."""

from __future__ import annotations

import random

import pytest

import mxgateway
from mxgateway._retry import (
    DEFAULT_RECONNECT,
    FATAL_ERRORS,
    RESUMABLE_STREAM_ERRORS,
    TRANSIENT_ERRORS,
    is_transient,
    resume_policy,
)


def test_transient_and_fatal_do_not_overlap() -> None:
    for transient in TRANSIENT_ERRORS:
        assert not issubclass(transient, FATAL_ERRORS), transient
    for resumable in RESUMABLE_STREAM_ERRORS:
        assert issubclass(resumable, TRANSIENT_ERRORS)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (mxgateway.MxGatewayUnavailableError("down"), True),
        (mxgateway.MxGatewayTimeoutError("slow"), True),
        (mxgateway.MxGatewayWriteTimeoutError("no completion"), True),
        (mxgateway.MxGatewayCancelledError("cancelled"), True),
        (mxgateway.MxGatewayOverloadedError("busy"), True),
        (mxgateway.MxGatewayAuthenticationError("bad key"), False),
        (mxgateway.MxGatewayPermissionError("no scope"), False),
        (mxgateway.MxGatewayInvalidRequestError("bad"), False),
        (mxgateway.MxGatewaySessionNotFoundError("gone"), False),
        (mxgateway.MxGatewayProtocolError("broken reply"), False),
        (None, False),
    ],
)
def test_is_transient(error: BaseException | None, transient: bool) -> None:
    assert is_transient(error) is transient


def test_resume_backoff_doubles_to_two_seconds_without_jitter() -> None:
    policy = resume_policy(0.05, 5)
    rng = random.Random(1)
    assert [policy.backoff(n, rng) for n in range(1, 8)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        2.0,
    ]
    assert policy.allows(5, 0.0) and not policy.allows(6, 0.0)  # five resumes in a row
    with pytest.raises(ValueError):
        resume_policy(0, 5)


def test_reconnect_policy_is_unbounded_and_jittered() -> None:
    assert DEFAULT_RECONNECT.max_attempts is None and DEFAULT_RECONNECT.max_elapsed is None
    assert DEFAULT_RECONNECT.jitter > 0
