"""What a command gets: its parsed flags, the output and the validated connection."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from mxgateway._secret import env_secret_missing
from mxgateway_cli._errors import CliUsageError
from mxgateway_cli._output import Output
from mxgateway_cli._parsing import ConnectionSettings

__all__ = ["Context"]


@dataclass
class Context:
    """One run of one command."""

    args: argparse.Namespace
    out: Output
    env: Mapping[str, str]
    stdin: IO[str] | None = None
    """Where ``batch`` reads its command lines (default ``sys.stdin``)."""
    _settings: ConnectionSettings | None = field(default=None, repr=False)

    @property
    def input(self) -> IO[str]:
        """The command's standard input."""
        return sys.stdin if self.stdin is None else self.stdin

    @property
    def json(self) -> bool:
        """True under ``--json``."""
        return bool(getattr(self.args, "json", False))

    def connection(self) -> ConnectionSettings:
        """The command's validated connection flags; the API key becomes a secret."""
        if self._settings is None:
            a = self.args
            settings = ConnectionSettings.from_flags(
                endpoint=a.endpoint,
                plaintext=a.plaintext,
                tls=a.tls,
                ca_file=a.ca_file,
                server_name_override=a.server_name_override,
                api_key=a.api_key,
                api_key_env=a.api_key_env,
                timeout=a.timeout,
                env=self.env,
            )
            self.out.add_secret(settings.api_key_text)
            self._settings = settings
        return self._settings

    def secret_from_env(self, flag: str, name: str) -> str:
        """Read a secret (password) from environment variable ``name``; never echoed."""
        value = self.env.get(name)
        if not value:
            raise CliUsageError(env_secret_missing(flag))
        self.out.add_secret(value)
        return value
