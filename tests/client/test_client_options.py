"""ClientOptions: validation at construction, frozen, the API key never shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mxgateway import ClientOptions

KEY = "mxgw_k1_s3cr3tS3cr3t0123456789"


def test_defaults_are_tls_with_keepalive() -> None:
    opts = ClientOptions(endpoint="gw.example.com:5001")
    assert opts.plaintext is False
    assert opts.ca_file is None
    assert opts.keepalive_time is not None and opts.keepalive_time > 0
    assert opts.keepalive_permit_without_calls is True
    assert opts.max_message_bytes == 16 * 1024 * 1024
    assert opts.timeout is not None and opts.timeout > 0


def test_frozen_and_keyword_only() -> None:
    opts = ClientOptions(endpoint="gw:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.endpoint = "x:2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ClientOptions("gw:1")  # type: ignore[misc]


def test_api_key_not_in_repr_or_str() -> None:
    opts = ClientOptions(endpoint="gw:1", api_key=KEY)
    assert KEY not in repr(opts)
    assert KEY not in str(opts)
    assert "s3cr3t" not in repr(opts)
    assert "api_key=<redacted>" in repr(opts)
    assert opts.api_key == KEY


@pytest.mark.parametrize(
    "endpoint",
    ["localhost:5000", "10.0.0.1:1", "[::1]:5001", "gw.example.com:65535", "unix:/tmp/gw.sock"],
)
def test_valid_endpoints(endpoint: str) -> None:
    assert ClientOptions(endpoint=endpoint).endpoint == endpoint


@pytest.mark.parametrize(
    ("endpoint", "needle"),
    [
        ("", "endpoint is required"),
        ("localhost", "host:port"),
        ("localhost:", "host:port"),
        ("http://localhost:5000", "host:port"),
        ("localhost:0", "outside 1-65535"),
        ("localhost:70000", "outside 1-65535"),
        ("::1:5000", "host:port"),
    ],
)
def test_invalid_endpoints(endpoint: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ClientOptions(endpoint=endpoint)


def test_ca_file_checks(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match="does not exist"):
        ClientOptions(endpoint="gw:1", ca_file=str(missing))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        ClientOptions(endpoint="gw:1", ca_file=str(junk))
    good = tmp_path / "ca.pem"
    good.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert ClientOptions(endpoint="gw:1", ca_file=good).ca_file == str(good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="plaintext"):
        ClientOptions(endpoint="gw:1", ca_file=str(good), plaintext=True)


def test_server_name_override_needs_tls() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        ClientOptions(endpoint="gw:1", plaintext=True, server_name_override="gw")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"keepalive_time": 0}, "keepalive_time"),
        ({"keepalive_timeout": 0}, "keepalive_timeout"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"max_message_bytes": 2**31}, "max_message_bytes"),
        ({"metadata": (("Bad Key", "v"),)}, "metadata key"),
        ({"metadata": (("authorization", "Bearer x"),)}, "reserved"),
        ({"metadata": (("x-a", "line\nbreak"),)}, "printable"),
        ({"api_key": ""}, "api_key is empty"),
        ({"api_key": "Bearer " + KEY}, "Bearer"),
        ({"api_key": "a b"}, "whitespace"),
    ],
)
def test_invalid_values(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        ClientOptions(endpoint="gw:1", **changes)  # type: ignore[arg-type]
    assert KEY not in str(info.value)


def test_metadata_mapping_is_normalized_and_replace_revalidates() -> None:
    opts = ClientOptions(endpoint="gw:1", metadata={"x-client": "tests"})  # type: ignore[arg-type]
    assert opts.metadata == (("x-client", "tests"),)
    other = opts.replace(timeout=5.0)
    assert other.timeout == 5.0 and other.metadata == opts.metadata
    with pytest.raises(ValueError):
        opts.replace(endpoint="nope")


def test_channel_arguments_follow_the_options() -> None:
    from mxgateway._transport import _channel_arguments

    args = dict(_channel_arguments(ClientOptions(endpoint="gw:1", max_message_bytes=1234)))
    assert args["grpc.max_send_message_length"] == 1234
    assert args["grpc.max_receive_message_length"] == 1234
    assert args["grpc.keepalive_time_ms"] == 30_000
    assert args["grpc.keepalive_timeout_ms"] == 10_000
    assert args["grpc.keepalive_permit_without_calls"] == 1
    assert "grpc.ssl_target_name_override" not in args
    off = dict(
        _channel_arguments(
            ClientOptions(
                endpoint="gw:1",
                keepalive_time=None,
                server_name_override="gw.test",
                channel_options=(("grpc.primary_user_agent", "tests"),),
            )
        )
    )
    assert not any(k.startswith("grpc.keepalive") for k in off)
    assert off["grpc.ssl_target_name_override"] == "gw.test"
    assert off["grpc.primary_user_agent"] == "tests"


def test_api_key_is_held_in_a_secret_that_never_prints(caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging
    import pickle

    from mxgateway import Secret

    opts = ClientOptions(endpoint="gw:1", api_key=KEY)
    assert isinstance(opts.api_key, Secret)
    assert opts.api_key.get_secret_value() == KEY and opts.api_key_value() == KEY
    shown = [
        repr(dataclasses.asdict(opts)),
        repr(dataclasses.astuple(opts)),
        repr(vars(opts)),
        f"{opts.api_key} {opts.api_key!r} {opts.api_key:>40}",
        json.dumps(dataclasses.asdict(opts), default=str),
    ]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test.secret").warning("options %s %r key %s", opts, opts, opts.api_key)
    shown.append(caplog.text)
    for text in shown:
        assert "s3cr3t" not in text, text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(opts)
    with pytest.raises(AttributeError):
        opts.api_key._value = "x"  # type: ignore[union-attr]
    # The public API keeps taking a plain string (or a Secret), and keeps the key on replace.
    again = ClientOptions(endpoint="gw:1", api_key=Secret(" " + KEY + " "))
    assert again.api_key == KEY and again == opts
    assert opts.replace(timeout=5.0).api_key_value() == KEY
    assert ClientOptions(endpoint="gw:1").api_key_value() is None
