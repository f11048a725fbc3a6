"""Turning command-line text into typed values, before anything is sent.

Only the *string -> Python* step per ``--type`` lives here; the Python -> ``MxValue`` rules
(ranges, finiteness, time zones) belong to :func:`mxgateway.to_mx_value`, whose
``ValueError`` becomes a usage error. Connection flags are checked here too, so a malformed
endpoint, an unreadable CA file or a missing key variable fails fast with one line.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import mxgateway
from mxgateway._secret import Secret, env_secret_missing
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli._errors import CliUsageError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ConnectionSettings",
    "parse_aware_datetime",
    "parse_endpoint",
    "parse_python_value",
    "parse_value",
]

DEFAULT_ENDPOINT = "localhost:5000"
"""Endpoint used when neither ``--endpoint`` nor ``MXGATEWAY_ENDPOINT`` is given."""

ENV_ENDPOINT = "MXGATEWAY_ENDPOINT"
ENV_PLAINTEXT = "MXGATEWAY_PLAINTEXT"
ENV_CA_FILE = "MXGATEWAY_CA_FILE"
ENV_SERVER_NAME = "MXGATEWAY_SERVER_NAME_OVERRIDE"
ENV_API_KEY = "MXGATEWAY_API_KEY"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-_.]*[A-Za-z0-9])?\Z")


def parse_aware_datetime(text: str, flag: str) -> datetime:
    """Parse the value of ``flag`` (``--timestamp``, ``--last-seen``) as a datetime with a
    time zone (a naive one would be read in whatever zone the gateway is in).

    Raises:
        CliUsageError: Not a datetime, or one without a time zone.
    """
    value = parse_python_value("datetime", text)
    assert isinstance(value, datetime)
    if value.tzinfo is None:
        raise CliUsageError(f"{flag} {text!r} has no time zone; add Z or +HH:MM")
    return value


def parse_python_value(type_name: str, text: str) -> object:
    """Parse ``text`` as the Python value ``to_mx_value`` expects for ``type_name``.

    Raises:
        CliUsageError: The type is unknown or the text is not a value of that type.
    """
    if type_name not in mxgateway.VALUE_TYPES:
        raise CliUsageError(
            f"unknown --type {type_name!r}; expected one of {', '.join(mxgateway.VALUE_TYPES)}"
        )
    stripped = text.strip()
    try:
        if type_name == "bool":
            lowered = stripped.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected true/false, 1/0, yes/no or on/off")
        if type_name in ("int32", "int64"):
            return int(stripped, 10)
        if type_name in ("float", "double"):
            return float(stripped)
        if type_name == "string":
            return text
        if type_name == "datetime":
            iso = stripped[:-1] + "+00:00" if stripped.endswith(("Z", "z")) else stripped
            return datetime.fromisoformat(iso)
        if type_name == "elapsed":
            return timedelta(seconds=float(stripped))
        # bytes: base64, as protobuf-JSON writes them.
        return base64.b64decode(stripped, validate=True)
    except (ValueError, OverflowError, binascii.Error) as exc:
        raise CliUsageError(f"--value {text!r} is not a valid {type_name}: {exc}") from None


def parse_value(type_name: str, text: str) -> pb.MxValue:
    """Parse ``text`` per ``--type`` and convert it with :func:`mxgateway.to_mx_value`.

    Raises:
        CliUsageError: Unknown type, unparsable text, or a value MXAccess cannot hold
            (non-finite float, out-of-range integer, naive datetime...).
    """
    value = parse_python_value(type_name, text)
    try:
        return mxgateway.to_mx_value(value, type_name)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CliUsageError(f"--value {text!r} as {type_name}: {exc}") from None


def parse_endpoint(text: str) -> str:
    """Check an endpoint is ``host:port`` (``[v6]:port`` for IPv6) and return it.

    Raises:
        CliUsageError: Missing port, port out of 1..65535, empty or malformed host.
    """
    candidate = text.strip()
    bad = CliUsageError(
        f"malformed --endpoint {text!r}; expected HOST:PORT (for example localhost:5000)"
    )
    if "://" in candidate or "/" in candidate:
        raise bad
    if candidate.startswith("["):
        host, sep, port = candidate[1:].partition("]:")
        if not sep or not host or ":" not in host:
            raise bad
    else:
        host, sep, port = candidate.rpartition(":")
        if not sep or not _HOST.match(host):
            raise bad
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise CliUsageError(f"malformed --endpoint {text!r}: port must be 1..65535")
    return candidate


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return False
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise CliUsageError(f"environment variable {name}={raw!r} is not a boolean (1/0, true/false)")


@dataclass(frozen=True)
class ConnectionSettings:
    """Validated connection flags of one command."""

    endpoint: str
    plaintext: bool
    ca_file: str | None
    server_name_override: str | None
    api_key: Secret | None
    """Shown as ``Secret('**********')`` by ``repr`` and ``dataclasses.asdict``."""
    timeout: float | None

    @property
    def api_key_text(self) -> str | None:
        """The key as a plain string, for the redaction filter."""
        return None if self.api_key is None else self.api_key.get_secret_value()

    @classmethod
    def from_flags(
        cls,
        *,
        endpoint: str | None,
        plaintext: bool,
        tls: bool,
        ca_file: str | None,
        server_name_override: str | None,
        api_key: str | None,
        api_key_env: str | None,
        timeout: float | None,
        env: Mapping[str, str] | None = None,
    ) -> ConnectionSettings:
        """Validate the connection flags (falling back to ``MXGATEWAY_*`` variables).

        Raises:
            CliUsageError: ``--tls`` with ``--plaintext``, a malformed endpoint, an
                unreadable CA file, a missing key variable, or a non-positive timeout.
        """
        environ = os.environ if env is None else env
        if plaintext and tls:
            raise CliUsageError("--tls and --plaintext cannot be combined")
        if not plaintext and not tls:
            plaintext = _env_flag(environ, ENV_PLAINTEXT)
        if plaintext and ca_file:
            raise CliUsageError("--ca-file needs TLS; it cannot be combined with --plaintext")
        resolved_endpoint = parse_endpoint(
            endpoint or environ.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT
        )
        ca = ca_file or (None if plaintext else environ.get(ENV_CA_FILE) or None)
        if ca is not None:
            path = Path(ca)
            try:
                with path.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise CliUsageError(f"cannot read --ca-file {ca!r}: {reason}") from None
        name_override = server_name_override or (
            None if plaintext else environ.get(ENV_SERVER_NAME) or None
        )
        if api_key is not None and api_key_env is not None:
            raise CliUsageError("--api-key and --api-key-env cannot be combined")
        key = api_key
        if api_key_env is not None:
            key = environ.get(api_key_env)
            if not key:
                raise CliUsageError(env_secret_missing("--api-key-env"))
        elif key is None:
            key = environ.get(ENV_API_KEY) or None
        if api_key is not None and not api_key.strip():
            raise CliUsageError("--api-key is empty")
        if timeout is not None and not timeout > 0:
            raise CliUsageError(f"--timeout must be a positive number of seconds, not {timeout}")
        return cls(
            endpoint=resolved_endpoint,
            plaintext=plaintext,
            ca_file=ca,
            server_name_override=name_override,
            api_key=None if key is None else Secret(key),
            timeout=timeout,
        )
