"""``TransportOwner``: what the public clients share about owning one ``Transport``.

A client dropped without being closed leaves its channel (and any stream on it) to the
garbage collector, which may end them after their event loop has closed; as httpx and
aiohttp do, the client warns ``ResourceWarning`` when it is collected open, so the leak is
found where it starts. ``GatewayClient`` and ``GalaxyRepositoryClient`` both derive from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mxgateway._options import ClientOptions
    from mxgateway._transport import Transport

__all__ = ["TransportOwner"]


class TransportOwner:
    """Base of a client that owns ``self._transport``: its connection's properties, its
    ``async with`` exit (:meth:`close`), its repr and its unclosed warning."""

    _transport: Transport

    @property
    def transport(self) -> Transport:
        """The gRPC seam this client calls through."""
        return self._transport

    @property
    def options(self) -> ClientOptions:
        """The connection options (the API key is redacted in their repr)."""
        return self._transport.options

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._transport.closed

    async def close(self) -> None:
        """Close the channel (idempotent)."""
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._transport.closed else "open"
        return f"<{type(self).__name__} {self._transport.options.endpoint} {state}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # ``_warn`` is bound at definition: at interpreter exit the module globals may be gone.
        # ``__dict__.get``: a client whose ``__init__`` failed has no transport to warn about.
        transport = self.__dict__.get("_transport")
        if transport is not None and not transport.closed:
            _warn(
                f"unclosed {self!r}: use `async with` or `await client.close()`",
                ResourceWarning,
                source=self,
            )
