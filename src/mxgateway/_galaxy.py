"""``GalaxyRepositoryClient``: browse the deployed Galaxy and watch deploys.

A thin client of the ``GalaxyRepository`` service built on the shared
:class:`~mxgateway._transport.Transport` (channel, TLS, ``authorization: Bearer`` metadata,
deadlines and error mapping live there, once). Results are the generated protobuf messages
(:data:`GalaxyObject`, :data:`GalaxyAttribute`, :data:`DeployEvent`); times are aware UTC
``datetime`` values.

Stale page tokens: a redeploy during a walk invalidates the server's page token.
:meth:`GalaxyRepositoryClient.discover_hierarchy` returns nothing until the walk is complete,
so it restarts the walk from the first page (up to ``max_restarts`` times) and always returns
one consistent snapshot. :meth:`GalaxyRepositoryClient.iter_hierarchy` has already handed
objects of the old snapshot to the caller, so it raises :class:`GalaxyHierarchyChangedError`
instead of silently mixing two versions; the caller restarts the iteration if it wants to.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict

from mxgateway._errors import MxGatewayInvalidRequestError
from mxgateway._logsafe import get_logger
from mxgateway._owner import TransportOwner
from mxgateway._transport import DEFAULT, Stream, Transport, UseDefault

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mxgateway._transport import ConnectKeywords
from mxgateway._values import datetime_to_timestamp, timestamp_to_datetime
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc

__all__ = [
    "DeployEvent",
    "DeployEventWatch",
    "GalaxyAttribute",
    "GalaxyFilters",
    "GalaxyHierarchyChangedError",
    "GalaxyObject",
    "GalaxyRepositoryClient",
    "HierarchyFilters",
]

_log = get_logger("mxgateway.galaxy")
_log.addHandler(logging.NullHandler())

GalaxyObject = gr.GalaxyObject
"""A deployed object (generated message): ``tag_name``, ``contained_name``, ``attributes``..."""
GalaxyAttribute = gr.GalaxyAttribute
"""One attribute of a :data:`GalaxyObject` (generated message)."""
DeployEvent = gr.DeployEvent
"""A deploy notification (generated message): ``sequence``, ``time_of_last_deploy``..."""


class GalaxyHierarchyChangedError(MxGatewayInvalidRequestError):
    """The Galaxy was redeployed during :meth:`GalaxyRepositoryClient.iter_hierarchy`.

    The server rejected the next page token as stale. Objects already yielded belong to the
    previous deploy; start a new iteration to walk the new one.
    """


def _one_of(prefix: str, **values: object) -> tuple[str, object] | None:
    given = [(k, v) for k, v in values.items() if v is not None]
    if len(given) > 1:
        names = ", ".join(f"{prefix}_{k}" for k, _ in given)
        raise ValueError(f"give at most one of {names}")
    return (f"{prefix}_{given[0][0]}", given[0][1]) if given else None


def _check_page_size(page_size: int | None) -> int:
    if page_size is None:
        return 0
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError("page_size must be a positive int (the server caps it at 5000)")
    return page_size


class GalaxyFilters(TypedDict, total=False):
    """The filters of :meth:`GalaxyRepositoryClient.browse_children` (AND-combined), listed
    once here; the hierarchy walks add :class:`HierarchyFilters`.

    Attributes:
        category_ids: Objects of these categories (ECATEGORY), any of.
        template_chain_contains: Objects derived from any of these templates (tag names).
        tag_name_glob: Tag names matching ``*``/``?`` (anchored, case-insensitive).
        include_attributes: Send the objects' attributes (default True).
        alarm_bearing_only: Objects with alarm attributes, and only those attributes.
        historized_only: Objects with historized attributes, and only those attributes.
        page_size: Objects per page; the server's default (500) when None, capped at 5000.
    """

    category_ids: Iterable[int] | None
    template_chain_contains: Iterable[str] | None
    tag_name_glob: str | None
    include_attributes: bool | None
    alarm_bearing_only: bool
    historized_only: bool
    page_size: int | None


class HierarchyFilters(GalaxyFilters, total=False):
    """The filters of :meth:`GalaxyRepositoryClient.iter_hierarchy` and
    :meth:`~GalaxyRepositoryClient.discover_hierarchy`: those of :class:`GalaxyFilters`,
    at most one ``root_*``, and ``max_depth`` below the root (0 = the root only)."""

    root_gobject_id: int | None
    root_tag_name: str | None
    root_contained_path: str | None
    max_depth: int | None


def _common_filters(filters: Mapping[str, Any], allowed: type, method: str) -> dict[str, Any]:
    """The request fields of ``filters``, checked against the keys of ``allowed``.

    Raises:
        TypeError: An unknown keyword (as a misspelt keyword argument would).
        ValueError: A filter of the wrong shape.
    """
    unknown = sorted(set(filters) - allowed.__optional_keys__)  # type: ignore[attr-defined]
    if unknown:
        raise TypeError(f"{method}() got an unexpected keyword argument {unknown[0]!r}")
    template_chain_contains = filters.get("template_chain_contains")
    if isinstance(template_chain_contains, str):
        raise ValueError("template_chain_contains must be a list of template names, not a str")
    fields: dict[str, Any] = {
        "category_ids": list(filters.get("category_ids") or ()),
        "template_chain_contains": list(template_chain_contains or ()),
        "tag_name_glob": filters.get("tag_name_glob") or "",
        "alarm_bearing_only": bool(filters.get("alarm_bearing_only", False)),
        "historized_only": bool(filters.get("historized_only", False)),
        "page_size": _check_page_size(filters.get("page_size")),
    }
    include_attributes = filters.get("include_attributes")
    if include_attributes is not None:
        fields["include_attributes"] = bool(include_attributes)
    return fields


class DeployEventWatch:
    """Async iterator of :data:`DeployEvent` from one ``WatchDeployEvents`` stream.

    Breaking out of ``async for`` (dropping the iterator), :meth:`aclose`, leaving
    ``async with`` or cancelling the reading task cancels the stream. A jump in ``sequence``
    means the server's per-subscriber buffer dropped events: it is logged as a warning and
    counted in :attr:`missed_events` (and in the client's ``deploy_events_missed``).
    """

    __slots__ = ("_client", "_last_sequence", "_stream", "gaps", "missed_events")

    def __init__(self, client: GalaxyRepositoryClient, stream: Stream[gr.DeployEvent]) -> None:
        self._client = client
        self._stream = stream
        self._last_sequence: int | None = None
        self.gaps = 0
        """Number of sequence gaps seen on this stream."""
        self.missed_events = 0
        """Number of events the server dropped for this stream (sum of the gaps)."""

    def __aiter__(self) -> DeployEventWatch:
        return self

    async def __anext__(self) -> gr.DeployEvent:
        event = await self._stream.__anext__()
        last = self._last_sequence
        if last is not None and event.sequence > last + 1:
            missed = event.sequence - last - 1
            self.gaps += 1
            self.missed_events += missed
            self._client._deploy_events_missed += missed
            _log.warning(
                "deploy event stream skipped %d event(s) (sequence %d -> %d): the server "
                "dropped them from this subscriber's buffer",
                missed,
                last,
                event.sequence,
            )
        self._last_sequence = event.sequence
        return event

    @property
    def last_sequence(self) -> int | None:
        """``sequence`` of the last event received (None before the first)."""
        return self._last_sequence

    async def aclose(self) -> None:
        """Cancel the stream (idempotent)."""
        await self._stream.aclose()

    async def __aenter__(self) -> DeployEventWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class GalaxyRepositoryClient(TransportOwner):
    """Client of the gateway's read-only ``GalaxyRepository`` service (``metadata:read``).

    Create with ``await GalaxyRepositoryClient.connect(...)`` and use as an async context
    manager (or call :meth:`close`)::

        async with await GalaxyRepositoryClient.connect(endpoint=..., api_key=...) as galaxy:
            async for obj in galaxy.iter_hierarchy(root_tag_name="Line1"):
                ...
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = gr_grpc.GalaxyRepositoryStub(transport.channel)
        self._deploy_events_missed = 0

    @classmethod
    async def connect(
        cls,
        endpoint: str | None = None,
        **keywords: Unpack[ConnectKeywords],
    ) -> GalaxyRepositoryClient:
        """Open a channel to the gateway and return a connected client.

        Same arguments and rules as ``GatewayClient.connect``: either ``options`` (a
        :class:`ClientOptions`) or the endpoint and friends; arguments given next to
        ``options`` override its fields. Plaintext only with ``plaintext=True``;
        ``timeout`` is the default deadline of the unary calls.

        Raises:
            ValueError: Invalid options.
            MxGatewayUnavailableError: The gateway could not be reached.
        """
        transport = await Transport.connect(endpoint, **keywords)
        return cls(transport)

    @property
    def deploy_events_missed(self) -> int:
        """Deploy events the server dropped across all watches of this client."""
        return self._deploy_events_missed

    async def close(self) -> None:
        """Close the channel, cancelling running calls and watches (idempotent)."""
        await self._transport.close()

    async def __aenter__(self) -> GalaxyRepositoryClient:
        return self

    # ----- unary ------------------------------------------------------------------------
    async def test_connection(self, *, timeout: float | UseDefault | None = DEFAULT) -> bool:
        """True when the gateway can reach the Galaxy Repository database right now."""
        reply = await self._transport.unary(
            self._stub.TestConnection, gr.TestConnectionRequest(), timeout=timeout
        )
        return reply.ok

    async def get_last_deploy_time(
        self, *, timeout: float | UseDefault | None = DEFAULT
    ) -> datetime | None:
        """``galaxy.time_of_last_deploy`` as an aware UTC datetime (None: never deployed)."""
        reply = await self._transport.unary(
            self._stub.GetLastDeployTime, gr.GetLastDeployTimeRequest(), timeout=timeout
        )
        if not reply.time_of_last_deploy_present:
            return None
        return timestamp_to_datetime(reply.time_of_last_deploy)

    # ----- hierarchy --------------------------------------------------------------------
    @staticmethod
    def _hierarchy_request(filters: Mapping[str, Any], method: str) -> gr.DiscoverHierarchyRequest:
        fields = _common_filters(filters, HierarchyFilters, method)
        root = _one_of(
            "root", gobject_id=filters.get("root_gobject_id"),
            tag_name=filters.get("root_tag_name"),
            contained_path=filters.get("root_contained_path"),
        )  # fmt: skip
        if root is not None:
            fields[root[0]] = root[1]
        max_depth = filters.get("max_depth")
        if max_depth is not None:
            if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
                raise ValueError("max_depth must be a non-negative int (0 = the root only)")
            fields["max_depth"] = max_depth
        return gr.DiscoverHierarchyRequest(**fields)

    async def _pages(
        self, request: gr.DiscoverHierarchyRequest, timeout: float | UseDefault | None
    ) -> AsyncGenerator[gr.DiscoverHierarchyReply, None]:
        token = ""
        while True:
            request.page_token = token
            try:
                reply = await self._transport.unary(
                    self._stub.DiscoverHierarchy, request, timeout=timeout
                )
            except MxGatewayInvalidRequestError as exc:
                if not token:
                    raise
                raise GalaxyHierarchyChangedError(
                    "the Galaxy was redeployed while walking the hierarchy (page token "
                    f"rejected: {exc.message}); start the walk again",
                    grpc_code=exc.grpc_code,
                ) from exc
            token = reply.next_page_token
            yield reply
            if not token:
                return

    async def iter_hierarchy(
        self,
        *,
        timeout: float | UseDefault | None = DEFAULT,
        **filters: Unpack[HierarchyFilters],
    ) -> AsyncGenerator[gr.GalaxyObject, None]:
        """Yield the deployed objects depth first, one page at a time.

        The next page is requested only after every object of the current page was
        consumed, so memory stays bounded by one page. The keyword filters AND-combine; they
        are described once, in :class:`HierarchyFilters` (``root_*``, ``max_depth``) and
        :class:`GalaxyFilters` (``category_ids``, ``template_chain_contains``,
        ``tag_name_glob``, ``include_attributes``, ``alarm_bearing_only``,
        ``historized_only``, ``page_size``). ``timeout`` applies to each page request.

        Raises:
            GalaxyHierarchyChangedError: A redeploy made the next page token stale.
            MxGatewayNotFoundError: The root does not exist.
            MxGatewayPermissionError: The API key lacks ``metadata:read``.
        """
        request = self._hierarchy_request(filters, "iter_hierarchy")
        pages = self._pages(request, timeout)
        try:
            async for reply in pages:
                objects = reply.objects
                del reply  # only the objects are kept alive while the caller consumes them
                for obj in objects:
                    yield obj
                del objects
        finally:
            await pages.aclose()

    async def discover_hierarchy(
        self,
        *,
        timeout: float | UseDefault | None = DEFAULT,
        max_restarts: int = 3,
        **filters: Unpack[HierarchyFilters],
    ) -> list[gr.GalaxyObject]:
        """Every object of the walk (all pages) in one list; same filters as
        :meth:`iter_hierarchy`.

        A redeploy during the walk restarts it from the first page (at most
        ``max_restarts`` times, then :class:`GalaxyHierarchyChangedError`), so the list is
        always one consistent deploy. Use :meth:`iter_hierarchy` for large Galaxies.
        """
        request = self._hierarchy_request(filters, "discover_hierarchy")
        attempt = 0
        while True:
            result: list[gr.GalaxyObject] = []
            pages = self._pages(request, timeout)
            try:
                async for reply in pages:
                    result.extend(reply.objects)
                return result
            except GalaxyHierarchyChangedError:
                attempt += 1
                if attempt > max_restarts:
                    raise
                _log.info("Galaxy redeployed during discover_hierarchy; restarting the walk")
            finally:
                await pages.aclose()

    async def browse_children(
        self,
        *,
        parent_gobject_id: int | None = None,
        parent_tag_name: str | None = None,
        parent_contained_path: str | None = None,
        timeout: float | UseDefault | None = DEFAULT,
        **filters: Unpack[GalaxyFilters],
    ) -> list[tuple[gr.GalaxyObject, bool]]:
        """Direct children of one object (the Galaxy's roots when no parent is given).

        Returns ``(child, has_children)`` pairs, areas first, then by case-insensitive
        browse name; all pages are read. Filters as in :meth:`iter_hierarchy`. A redeploy
        between pages raises :class:`GalaxyHierarchyChangedError`.
        """
        fields = _common_filters(filters, GalaxyFilters, "browse_children")
        parent = _one_of(
            "parent", gobject_id=parent_gobject_id, tag_name=parent_tag_name,
            contained_path=parent_contained_path,
        )  # fmt: skip
        if parent is not None:
            fields[parent[0]] = parent[1]
        request = gr.BrowseChildrenRequest(**fields)
        out: list[tuple[gr.GalaxyObject, bool]] = []
        token = ""
        while True:
            request.page_token = token
            try:
                reply = await self._transport.unary(
                    self._stub.BrowseChildren, request, timeout=timeout
                )
            except MxGatewayInvalidRequestError as exc:
                if not token:
                    raise
                raise GalaxyHierarchyChangedError(
                    f"the Galaxy was redeployed while browsing (page token rejected: "
                    f"{exc.message}); browse again",
                    grpc_code=exc.grpc_code,
                ) from exc
            out.extend(zip(reply.children, reply.child_has_children, strict=True))
            token = reply.next_page_token
            if not token:
                return out

    # ----- deploy events ----------------------------------------------------------------
    def watch_deploy_events(
        self, last_seen_deploy_time: datetime | None = None
    ) -> DeployEventWatch:
        """Subscribe to deploy notifications: the current state first (skipped when it
        equals ``last_seen_deploy_time``, an aware datetime), then one event per deploy.

        Returns a :class:`DeployEventWatch` (an async iterator of :data:`DeployEvent`); the
        stream has no deadline and ends when closed, broken out of or cancelled.
        """
        request = gr.WatchDeployEventsRequest()
        if last_seen_deploy_time is not None:
            request.last_seen_deploy_time.CopyFrom(
                datetime_to_timestamp(last_seen_deploy_time, what="last_seen_deploy_time")
            )
        stream = self._transport.stream(self._stub.WatchDeployEvents, request)
        return DeployEventWatch(self, stream)
