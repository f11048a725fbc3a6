"""Secrets that never show themselves, and argument errors that never echo one.

:class:`Secret` wraps a string (an API key, a password) so that every way an object is
usually displayed or serialised (``repr``, ``str``, f-strings, ``dataclasses.asdict``,
logging, pickling) leaves the value out. :class:`NoEchoArgumentParser` is the argparse base
of both command lines (``mxgw-py``, ``mxgw-sim``): it never abbreviates a flag (``--password
x`` must not become ``--password-env x``) and reports unrecognized arguments without their
values (a mistyped secret flag makes the secret itself an unrecognized argument).
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Sequence
from typing import Any, NoReturn, final

__all__ = [
    "NoEchoArgumentParser",
    "Secret",
    "env_secret_missing",
    "unreadable_file",
    "unrecognized_arguments",
]

_MASK = "**********"


@final
class Secret:
    """A string that is shown as ``**********``; :meth:`get_secret_value` gives it back.

    Equal to another :class:`Secret` or a plain ``str`` with the same value (compared in
    constant time). Copies are the same object; pickling is refused with ``TypeError``, so
    the value cannot leave the process by accident.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        object.__setattr__(self, "_value", value)

    def get_secret_value(self) -> str:
        """The wrapped string (put it where it is needed, never into output)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return format(_MASK, spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            other = other._value
        if not isinstance(other, str):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Secret is immutable")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; pass the value to the other process yourself")


def env_secret_missing(flag: str) -> str:
    """The error for a secret flag (``--api-key-env``, ``--password-env``) whose variable is
    unset; the name given is not repeated, since a secret passed where the variable's name
    belongs would be echoed."""
    return (
        f"{flag}: the environment variable it names is not set or is empty "
        f"({flag} takes the variable's name, never the secret itself)"
    )


def unreadable_file(flag: str, path: os.PathLike[str] | str, exc: OSError) -> str:
    """The error for a file flag (``--api-keys-file``, ``--galaxy-sql-server-file``) whose file
    cannot be read. The text given is repeated only when it names something that exists: a
    text that names nothing may be the secret itself, passed where its file's path belongs."""
    if os.path.lexists(path):
        return f"{flag}: cannot read {os.fspath(path)}: {exc.strerror}"
    return (
        f"{flag}: the file it names does not exist "
        f"({flag} takes the file's path, never the secret itself)"
    )


def unrecognized_arguments(extras: Sequence[str]) -> str:
    """argparse's "unrecognized arguments" message naming the flags only, never a value.

    ``--password=x`` is shown as ``--password``; words that are not flags are only counted.
    """
    flags = [arg.split("=", 1)[0] for arg in extras if arg.startswith("-") and len(arg) > 1]
    values = len(extras) - len(flags) + sum("=" in arg for arg in extras if arg.startswith("-"))
    parts = [" ".join(flags)] if flags else []
    if values:
        parts.append(f"{values} value{'s' if values != 1 else ''} (not shown)")
    return "unrecognized arguments: " + ", ".join(parts)


class NoEchoArgumentParser(argparse.ArgumentParser):
    """argparse without flag abbreviations and without values in "unrecognized" errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized_arguments(extras))
        return parsed
