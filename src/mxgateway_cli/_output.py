"""Everything ``mxgw-py`` writes: deterministic JSON for scripts, rich text for people.

JSON rules: protobuf messages become protobuf-JSON (``MessageToDict``: camelCase names, enum
names, int64 as strings, defaults omitted), documents keep their keys in the order the
command builds them, and nothing volatile (wall clock, durations) is added except data and
benchmark results. Every byte written goes through :meth:`Output.write`, which redacts the
secrets of the run (API key, passwords), so they cannot leak through any output path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

from mxgateway_cli._errors import ErrorReport, redact

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from rich.console import Console

__all__ = ["Output", "dumps", "message_json"]


_PIPE_WIDTH = 4096
"""Width of the rich console when stdout is not a terminal."""


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as protobuf-JSON (camelCase names, enum names)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message)


def dumps(document: object) -> str:
    """Render a JSON document deterministically (2-space indent, UTF-8 text, trailing newline)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def dumps_line(document: object) -> str:
    """Render one NDJSON line (compact, key order kept)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


class _RedactingFile:
    """A text stream wrapper handed to rich, so console output is redacted too."""

    def __init__(self, output: Output, stream: IO[str]) -> None:
        self._output = output
        self._stream = stream

    def write(self, text: str) -> int:
        self._output.write(text, stream=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return _isatty(self._stream)

    def fileno(self) -> int:
        return self._stream.fileno()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Output:
    """The streams of one run plus its mode (``--json``, ``--ndjson``) and secrets."""

    def __init__(
        self,
        stdout: IO[str],
        stderr: IO[str],
        *,
        json_mode: bool = False,
        ndjson: bool = False,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.json_mode = json_mode
        self.ndjson = ndjson
        self._secrets: list[str] = []

    # rich is imported on first use only: `--help`, `version` and JSON output never pay
    # for it.
    @cached_property
    def console(self) -> Console:
        """The rich console on stdout (redacted), for people's tables."""
        from rich.console import Console

        return Console(
            file=_RedactingFile(self, self.stdout),  # type: ignore[arg-type]
            highlight=False,
            soft_wrap=False,
            # Piped, nothing is cut or wrapped at 80 columns: the reader is a program.
            width=None if self.stdout_is_tty else _PIPE_WIDTH,
        )

    @cached_property
    def err_console(self) -> Console:
        """The rich console on stderr (redacted), for progress displays."""
        from rich.console import Console

        return Console(
            file=_RedactingFile(self, self.stderr),  # type: ignore[arg-type]
            highlight=False,
        )

    def add_secret(self, secret: str | None) -> None:
        """Never write ``secret`` anywhere from now on."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    @property
    def secrets(self) -> list[str]:
        """The secrets this run must not reveal."""
        return list(self._secrets)

    @property
    def stdout_is_tty(self) -> bool:
        """True when stdout is a terminal (live displays allowed)."""
        return _isatty(self.stdout)

    @property
    def stderr_is_tty(self) -> bool:
        """True when stderr is a terminal (progress bars allowed)."""
        return _isatty(self.stderr)

    def write(self, text: str, *, stream: IO[str] | None = None) -> None:
        """Write ``text`` (redacted) to ``stream`` (stdout by default) and flush."""
        target = self.stdout if stream is None else stream
        target.write(redact(text, self._secrets))
        target.flush()

    def emit(self, document: Mapping[str, Any]) -> None:
        """Write one JSON document to stdout."""
        self.write(dumps(document))

    def emit_line(self, document: Mapping[str, Any]) -> None:
        """Write one NDJSON line to stdout."""
        self.write(dumps_line(document))

    def emit_stream(self, key: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Write collected stream items: NDJSON lines or one ``{key: [...]}`` document."""
        if self.ndjson:
            for item in items:
                self.emit_line(item)
        else:
            self.emit({key: list(items)})

    def info(self, text: str) -> None:
        """A diagnostic line for people on stderr; none under ``--json``, whose stderr is
        exactly one document (the error, if any)."""
        if self.json_mode:
            return
        self.write(text.rstrip("\n") + "\n", stream=self.stderr)

    def error(self, report: ErrorReport) -> None:
        """Report a failure on stderr: a JSON document in JSON mode, else one line."""
        if self.json_mode:
            self.write(dumps(report.to_json()), stream=self.stderr)
        else:
            hint = f"mxgw-py: hint: {report.hint}\n" if report.hint else ""
            self.write(f"mxgw-py: error: {report.message}\n{hint}", stream=self.stderr)
