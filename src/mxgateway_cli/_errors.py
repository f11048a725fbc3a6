"""The one place where exceptions become exit codes and error documents.

Commands contain no error handling of their own: whatever they raise reaches
:func:`classify`, which looks the exception's class up in :data:`EXIT_CODES` (walking the MRO,
so the most specific class wins) and builds the ``{"error": {...}}`` document. The ``code``
field names what the gateway said (the gRPC status or protocol status name the library
attached), else the exit category. Messages are redacted before anyone sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import mxgateway
from mxgateway import enum_name
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli._exit_codes import ExitCode

__all__ = [
    "EXIT_CODES",
    "HINTS",
    "CliUsageError",
    "CommandFailed",
    "ErrorReport",
    "HelpRequested",
    "classify",
    "hint_for",
    "redact",
]

REDACTED = "***"


class HelpRequested(Exception):
    """``--help`` was printed; the run ends with exit code 0."""


class CliUsageError(Exception):
    """Bad command line or input value: explained in one line, exit code ``USAGE``."""


class CommandFailed(Exception):
    """A command ran but its own check failed (for example ``smoke`` saw no event)."""

    def __init__(self, message: str, exit_code: ExitCode, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.hint = hint


EXIT_CODES: dict[type[BaseException], ExitCode] = {
    # The CLI's own failures.
    CliUsageError: ExitCode.USAGE,
    KeyboardInterrupt: ExitCode.INTERRUPTED,
    asyncio.CancelledError: ExitCode.INTERRUPTED,
    TimeoutError: ExitCode.TIMEOUT,
    asyncio.TimeoutError: ExitCode.TIMEOUT,  # a distinct class on Python 3.10
    # The library (and protobuf) reject bad arguments with ValueError; every argument
    # comes from the command line, so it is bad input.
    ValueError: ExitCode.USAGE,
    # The library's tree (mxgateway._errors), most specific first for readability.
    mxgateway.MxGatewayAuthenticationError: ExitCode.AUTH,
    mxgateway.MxGatewayPermissionError: ExitCode.PERMISSION,
    mxgateway.MxGatewayNotFoundError: ExitCode.NOT_FOUND,
    mxgateway.MxGatewayUnavailableError: ExitCode.UNAVAILABLE,
    mxgateway.MxGatewayOverloadedError: ExitCode.UNAVAILABLE,
    mxgateway.MxGatewayTimeoutError: ExitCode.TIMEOUT,
    mxgateway.MxAccessError: ExitCode.MXACCESS,
    mxgateway.MxGatewayInvalidRequestError: ExitCode.PROTOCOL,
    mxgateway.MxGatewaySessionStateError: ExitCode.PROTOCOL,
    mxgateway.MxGatewayAbortedError: ExitCode.PROTOCOL,
    # The gateway failed (a bug of the gateway's, INTERNAL): not a refusal of the command.
    mxgateway.MxGatewayInternalError: ExitCode.ERROR,
    mxgateway.MxGatewayProtocolError: ExitCode.PROTOCOL,
    mxgateway.MxGatewayCancelledError: ExitCode.ERROR,
    mxgateway.ClientClosedError: ExitCode.ERROR,
    mxgateway.MxGatewayError: ExitCode.ERROR,
}
"""Exception class -> exit code. Anything not listed (a bug) exits ``ERROR``."""


@dataclass(frozen=True)
class ErrorReport:
    """What the user sees of a failure: exit code plus the error document fields."""

    exit_code: ExitCode
    type: str
    code: str
    message: str
    hint: str | None = None
    """What to do about it, when the failure is a known mistake (see :data:`HINTS`)."""

    def to_json(self) -> dict[str, object]:
        """The ``{"error": {...}}`` document, keys in a fixed order (``hint`` only when
        there is one)."""
        error: dict[str, object] = {
            "type": self.type,
            "message": self.message,
            "code": self.code,
            "exitCode": int(self.exit_code),
        }
        if self.hint is not None:
            error["hint"] = self.hint
        return {"error": error}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of every secret (longest first) with ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of ``exc``: its class's entry in :data:`EXIT_CODES`, via the MRO."""
    if isinstance(exc, CommandFailed):
        return exc.exit_code
    for klass in type(exc).__mro__:
        code = EXIT_CODES.get(klass)
        if code is not None:
            return code
    return ExitCode.ERROR


def _code(exc: BaseException, exit_code: ExitCode) -> str:
    """The gateway's name for the failure (gRPC or protocol status; for a write refused in
    its OnWriteComplete, the status category), else the exit code's name."""
    if isinstance(exc, mxgateway.MxAccessError) and exc.completion is not None:
        # Accepted, then refused in OnWriteComplete: the code is the status category.
        failed = exc.failed_statuses
        return enum_name(pb.MxStatusCategory, failed[0].category) if failed else "MXACCESS_FAILURE"
    if isinstance(exc, mxgateway.MxGatewayError):
        if exc.grpc_code is not None:
            return str(exc.grpc_code.name)
        if exc.protocol_code is not None:
            return enum_name(pb.ProtocolStatusCode, exc.protocol_code)
    return exit_code.name


def _message(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return "interrupted"
    text = str(exc).strip()
    if not text:
        return (
            "timed out"
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError))
            else (type(exc).__name__)
        )
    return text.splitlines()[0]


HINTS: tuple[tuple[type[BaseException], tuple[str, ...], str], ...] = (
    (
        mxgateway.MxGatewayUnavailableError,
        ("WRONG_VERSION_NUMBER",),
        "the gateway does not speak TLS there: add --plaintext (or set MXGATEWAY_PLAINTEXT=1)",
    ),
    (
        mxgateway.MxGatewayUnavailableError,
        ("(plaintext)", "Socket closed"),
        "the gateway expects TLS there: drop --plaintext (and MXGATEWAY_PLAINTEXT) and pass "
        "--ca-file PEM if its certificate is not from a public CA",
    ),
    (
        mxgateway.MxGatewayUnavailableError,
        ("CERTIFICATE_VERIFY_FAILED",),
        "the gateway's certificate is not signed by a CA this machine trusts: pass "
        "--ca-file PEM (or set MXGATEWAY_CA_FILE) with the gateway's CA certificate "
        "(mxgw-sim prints it as caFile)",
    ),
    (
        mxgateway.MxGatewayUnavailableError,
        ("Hostname Verification",),
        "the certificate is not for this host name: connect by the name it was issued for, "
        "or pass --server-name-override NAME",
    ),
    (
        mxgateway.MxGatewayUnavailableError,
        ("Connection refused",),
        "nothing listens at that address: is the gateway running? Check --endpoint "
        "(or MXGATEWAY_ENDPOINT; default localhost:5000)",
    ),
    (
        mxgateway.MxGatewayUnavailableError,
        ("failed to connect",),
        "the gateway cannot be reached: check --endpoint (or MXGATEWAY_ENDPOINT), the network "
        "and the firewall",
    ),
    (
        mxgateway.MxGatewayAuthenticationError,
        (),
        "give the gateway's API key: set MXGATEWAY_API_KEY, or pass --api-key-env NAME; if "
        "you did, the gateway does not know that key (ask its administrator)",
    ),
    (
        mxgateway.MxGatewayPermissionError,
        (),
        "the API key is valid but lacks a scope this command needs (the gateway names it "
        "in the message); ask its administrator for a key with that scope",
    ),
    (
        mxgateway.MxGatewayInternalError,
        ("look in its log for incident",),
        "a fault of the gateway, not of this command: give its operator the incident id, "
        "which finds the failure in the gateway log",
    ),
)
"""(exception class, texts that must all appear in the message, what to do about it); the
first matching entry wins."""


def hint_for(exc: BaseException, message: str) -> str | None:
    """What to do about ``exc``, when it is a known mistake."""
    for klass, needles, hint in HINTS:
        if isinstance(exc, klass) and all(n in message for n in needles):
            return hint
    own = getattr(exc, "hint", None)
    return own if isinstance(own, str) else None


def classify(exc: BaseException, secrets: Iterable[str] = ()) -> ErrorReport:
    """Map an exception to its :class:`ErrorReport` (exit code, type, code, redacted message,
    hint)."""
    exit_code = exit_code_for(exc)
    type_name = "UsageError" if isinstance(exc, CliUsageError) else type(exc).__name__
    message = redact(_message(exc), list(secrets))
    return ErrorReport(
        exit_code=exit_code,
        type=type_name,
        code=_code(exc, exit_code),
        message=message,
        hint=hint_for(exc, str(exc)),
    )
