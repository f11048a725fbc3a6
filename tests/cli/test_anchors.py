"""Host, port and metadata checks match the whole text: a final newline (which ``$`` lets
through) or non-ASCII digits are refused, by the CLI and by the library."""

from __future__ import annotations

import pytest

import mxgateway
from mxgateway_cli._errors import CliUsageError
from mxgateway_cli._parsing import parse_endpoint


@pytest.mark.parametrize(
    "text", ["localhost\n:5000", "gw.example\n:5001", "localhost:\uff15\uff10\uff10\uff10"]
)
def test_cli_endpoint_refuses_newlines_and_non_ascii_digits(text: str) -> None:
    with pytest.raises(CliUsageError):
        parse_endpoint(text)


def test_cli_endpoint_still_accepts_the_plain_forms() -> None:
    assert parse_endpoint(" localhost:5000\n") == "localhost:5000"  # surrounding space
    assert parse_endpoint("[::1]:5000") == "[::1]:5000"


@pytest.mark.parametrize("key", ["x-trace\n", "x-trace\r\n"])
def test_library_metadata_key_refuses_a_final_newline(key: str) -> None:
    with pytest.raises(ValueError, match="metadata key"):
        mxgateway.ClientOptions(endpoint="localhost:5000", plaintext=True, metadata={key: "v"})


def test_library_endpoint_refuses_a_newline_inside() -> None:
    with pytest.raises(ValueError, match="host:port"):
        mxgateway.ClientOptions(endpoint="localhost\n:5000", plaintext=True)
    options = mxgateway.ClientOptions(endpoint="localhost:5000\n", plaintext=True)
    assert options.endpoint == "localhost:5000"
