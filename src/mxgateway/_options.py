"""Connection options for the gateway clients (one frozen, validated value object).

``ClientOptions`` is everything a channel needs: where the gateway is, how to reach it
(plaintext or TLS), the API key, default deadlines, keepalive and message limits. It is
validated once, at construction, so a bad option fails with a clear ``ValueError`` before
any network activity. The API key never appears in ``repr``/``str``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mxgateway._logsafe import get_logger
from mxgateway._retry import RetryPolicy
from mxgateway._secret import Secret

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ClientOptions"]

_log = get_logger(__name__)
_log.addHandler(logging.NullHandler())

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Default send/receive message size limit (16 MiB): large bulk replies fit."""

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})\Z")
_METADATA_KEY = re.compile(r"^[0-9a-z_.\-]+\Z")
# Metadata keys the transport owns or gRPC reserves; callers may not set them.
_RESERVED_METADATA = frozenset({"authorization", "te", "content-type", "user-agent"})


def _normalize_metadata(
    value: Mapping[str, str] | Sequence[tuple[str, str]] | None,
) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items = list(value.items()) if isinstance(value, Mapping) else list(value)
    out: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError("metadata entries must be (key, value) pairs of strings")
        key, val = item
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValueError("metadata keys and values must be strings")
        if not _METADATA_KEY.match(key) or key.startswith("grpc-"):
            raise ValueError(
                f"metadata key {key!r} is invalid: use lowercase letters, digits, '-', '_' "
                "or '.', not starting with 'grpc-'"
            )
        if key in _RESERVED_METADATA:
            raise ValueError(
                f"metadata key {key!r} is reserved; pass the API key as api_key instead"
                if key == "authorization"
                else f"metadata key {key!r} is reserved by gRPC"
            )
        if key.endswith("-bin"):
            raise ValueError(f"binary metadata key {key!r} is not supported")
        if any(ord(c) < 0x20 or ord(c) > 0x7E for c in val):
            raise ValueError(f"metadata value for {key!r} must be printable ASCII")
        out.append((key, val))
    return tuple(out)


@dataclass(frozen=True, kw_only=True, repr=False)
class ClientOptions:
    """How to reach and authenticate to an MXAccess Gateway.

    Frozen and keyword-only; derive variants with :meth:`replace`. The default is TLS with
    the system trust roots: plaintext is used only when ``plaintext=True`` is asked for
    (there is no implicit localhost downgrade).

    Attributes:
        endpoint: ``host:port`` (``[v6addr]:port`` for IPv6 literals) or a ``unix:`` path.
        api_key: API key (``mxgw_<keyId>_<secret>``), sent as ``authorization: Bearer``
            metadata on every call and stream. Given as a ``str`` (or a :class:`Secret`),
            kept as a :class:`Secret`: never shown by ``repr``/``str``/errors/logging or
            ``dataclasses.asdict``, and the options refuse to be pickled while they hold
            a key. ``options.api_key.get_secret_value()`` returns the string.
        plaintext: Open an unencrypted channel (local development only).
        ca_file: PEM file with the CA certificate(s) to trust instead of the system roots.
        server_name_override: TLS host name to verify instead of the endpoint's host
            (test certificates); also sets the ``:authority``.
        timeout: Default deadline of unary calls in seconds (``None``: no deadline).
            Streams have no deadline.
        connect_timeout: How long :meth:`GatewayClient.connect` waits for the channel to
            become ready, in seconds; ``None`` connects lazily on the first call.
        connect_wait: How long connecting keeps retrying a gateway that refuses or cannot
            be reached yet (one that is still starting, e.g. right after ``mxgw-sim serve
            &``), in seconds, within ``connect_timeout``; after it, the last refusal is
            raised as :class:`MxGatewayUnavailableError`. ``0`` fails at the first refusal.
        keepalive_time: Seconds between HTTP/2 keepalive pings so that a dead gateway is
            noticed on a quiet long-lived stream; ``None`` disables keepalive.
        keepalive_timeout: Seconds to wait for a keepalive ping acknowledgement.
        keepalive_permit_without_calls: Send keepalive pings even with no call active.
        max_message_bytes: Largest message sent or received.
        metadata: Extra metadata sent with every call (lowercase ASCII keys).
        channel_options: Extra raw gRPC channel arguments (escape hatch), appended last.
        retry: How unary calls that are safe to repeat (read-only queries, see
            ``docs/reliability.md``) are retried after UNAVAILABLE; ``None`` or
            ``RetryPolicy.disabled()`` turns retries off. Writes are never retried.
        command_stream: Send commands on one persistent ``InvokeStream`` (our addition,
            see ``docs/protocol.md``) instead of one ``Invoke`` call each: the same
            requests and replies in about half the time of a unary call
            (``docs/benchmarks.md``). One command at a time uses it; a command issued
            while another is in flight, and every command on a gateway without it
            (``UNIMPLEMENTED``, e.g. upstream's), goes through ``Invoke``. On by default;
            ``False`` sends every command through ``Invoke``.
    """

    endpoint: str
    api_key: str | Secret | None = None
    plaintext: bool = False
    ca_file: str | None = None
    server_name_override: str | None = None
    timeout: float | None = 30.0
    connect_timeout: float | None = 10.0
    connect_wait: float = 5.0
    keepalive_time: float | None = 30.0
    keepalive_timeout: float = 10.0
    keepalive_permit_without_calls: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    metadata: tuple[tuple[str, str], ...] = field(default=())
    channel_options: tuple[tuple[str, Any], ...] = field(default=())
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    command_stream: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        # endpoint
        if not isinstance(self.endpoint, str) or not self.endpoint.strip():
            raise ValueError("endpoint is required, for example 'gateway.example.com:5001'")
        endpoint = self.endpoint.strip()
        if endpoint.startswith("unix:"):
            if len(endpoint) <= len("unix:"):
                raise ValueError("endpoint 'unix:' needs a socket path")
        else:
            match = _HOST_PORT.match(endpoint)
            if match is None:
                raise ValueError(
                    f"endpoint {endpoint!r} must have the form host:port "
                    "(or [ipv6]:port, or unix:/path)"
                )
            port = int(match.group("port"))
            if not 0 < port < 65536:
                raise ValueError(f"endpoint {endpoint!r} has port {port} outside 1-65535")
        set_(self, "endpoint", endpoint)
        # api key: validated without ever echoing it, then kept in a Secret.
        if self.api_key is not None:
            raw = (
                self.api_key.get_secret_value()
                if isinstance(self.api_key, Secret)
                else self.api_key
            )
            if not isinstance(raw, str):
                raise ValueError("api_key must be a string")
            key = raw.strip()
            if not key:
                raise ValueError("api_key is empty; pass None to send no key")
            if key.lower().startswith("bearer"):
                raise ValueError("api_key must be the bare key, without a 'Bearer ' prefix")
            if any(ord(c) <= 0x20 or ord(c) > 0x7E for c in key):
                raise ValueError("api_key contains whitespace or non-ASCII characters")
            set_(self, "api_key", Secret(key))
        # TLS
        if not isinstance(self.plaintext, bool):
            raise ValueError("plaintext must be a bool")
        if self.ca_file is not None:
            ca = os.fspath(self.ca_file)
            if not isinstance(ca, str) or not ca:
                raise ValueError("ca_file must be a path")
            if self.plaintext:
                raise ValueError("ca_file cannot be combined with plaintext=True")
            if not os.path.isfile(ca):
                raise ValueError(f"ca_file {ca!r} does not exist or is not a file")
            try:
                with open(ca, "rb") as fh:
                    head = fh.read(1 << 20)
            except OSError as exc:
                raise ValueError(f"ca_file {ca!r} is not readable: {exc.strerror}") from exc
            if b"-----BEGIN CERTIFICATE-----" not in head:
                raise ValueError(f"ca_file {ca!r} holds no PEM certificate")
            set_(self, "ca_file", ca)
        if self.server_name_override is not None:
            if self.plaintext:
                raise ValueError("server_name_override cannot be combined with plaintext=True")
            if not isinstance(self.server_name_override, str) or not (
                self.server_name_override.strip()
            ):
                raise ValueError("server_name_override must be a non-empty host name")
        # numbers
        for name in ("timeout", "connect_timeout", "keepalive_time"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds or None")
        if (
            isinstance(self.connect_wait, bool)
            or not isinstance(self.connect_wait, (int, float))
            or not 0 <= self.connect_wait < float("inf")
        ):
            raise ValueError("connect_wait must be a number of seconds >= 0")
        if (
            isinstance(self.keepalive_timeout, bool)
            or not isinstance(self.keepalive_timeout, (int, float))
            or self.keepalive_timeout <= 0
        ):
            raise ValueError("keepalive_timeout must be a positive number of seconds")
        if (
            isinstance(self.max_message_bytes, bool)
            or not isinstance(self.max_message_bytes, int)
            or not 0 < self.max_message_bytes < 2**31
        ):
            raise ValueError("max_message_bytes must be a positive int below 2 GiB")
        set_(self, "metadata", _normalize_metadata(self.metadata))
        opts = tuple(self.channel_options)
        for opt in opts:
            if not (isinstance(opt, tuple) and len(opt) == 2 and isinstance(opt[0], str)):
                raise ValueError("channel_options entries must be (name, value) pairs")
        set_(self, "channel_options", opts)
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise ValueError("retry must be a RetryPolicy or None")

    def api_key_value(self) -> str | None:
        """The API key as a plain string (``None`` without one), for the transport."""
        key = self.api_key
        return key.get_secret_value() if isinstance(key, Secret) else key

    def replace(self, **changes: Any) -> ClientOptions:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                parts.append(f"api_key={'<redacted>' if value is not None else None}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"ClientOptions({', '.join(parts)})"

    __str__ = __repr__
