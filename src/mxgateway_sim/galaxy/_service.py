"""The simulator's ``GalaxyRepository`` service: hierarchy cache, deploy poller, servicer.

:class:`GalaxyService` owns the SQLite database path, the current
:class:`~mxgateway_sim.galaxy._cache.HierarchySnapshot` (rebuilt whenever
``galaxy.time_of_last_deploy`` changes), the deploy watchers and the gRPC servicer. Auth is
not handled here: the gateway's interceptor checks the ``metadata:read`` scope.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import secrets
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from mxgateway._logsafe import get_logger
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import galaxy_repository_pb2_grpc as gr_grpc
from mxgateway.values import datetime_to_timestamp, timestamp_to_datetime
from mxgateway_sim._catalog import TagCatalog, TagInfo
from mxgateway_sim._slicing import Slicer
from mxgateway_sim.galaxy._cache import Filters, GalaxyObjectRecord, HierarchySnapshot
from mxgateway_sim.galaxy._schema import create_galaxy, default_db_path
from mxgateway_sim.galaxy._source import GalaxySource, SqliteSource

__all__ = [
    "DEFAULT_PAGE_BYTES",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "GalaxyCatalog",
    "GalaxyService",
]

log = get_logger("mxgateway_sim.galaxy")

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
"""Most serialized bytes of the objects of one DiscoverHierarchy/BrowseChildren page, so that
every page fits the 4 MiB receive limit most gRPC clients have by default (64 KiB are left
for the rest of the reply). A page ends at ``page_size`` objects or at this budget, whichever
comes first; it always holds at least one object, so a walk always advances."""
WATCH_BUFFER = 64
"""Deploy events a slow watcher may have queued; older ones are dropped (a sequence gap)."""

_Ctx = grpc.aio.ServicerContext[Any, Any]


class GalaxyCatalog:
    """:class:`TagCatalog` over the service's current snapshot (follows redeploys)."""

    def __init__(self, service: GalaxyService) -> None:
        self._service = service

    @property
    def version(self) -> int:
        return self._service.snapshot.version

    def lookup(self, full_tag_reference: str) -> TagInfo | None:
        return self._service.snapshot.lookup(full_tag_reference)

    def all_tags(self) -> list[TagInfo]:
        # Built on demand, not cached: a 50,000-object galaxy has ~700,000 attributes, and
        # the snapshot already holds them compactly (shared per template package chain).
        return list(self._service.snapshot.iter_tags())

    def object_tag_names(self) -> list[str]:
        """Tag names of the deployed objects (cheaper than deriving them from all_tags)."""
        return [rec.tag_name for rec in self._service.snapshot.dfs]


def _conforms(catalog: GalaxyCatalog) -> TagCatalog:
    """Static check (mypy): GalaxyCatalog satisfies the runtime's TagCatalog protocol."""
    return catalog


class _Watcher:
    """One WatchDeployEvents subscriber: a bounded buffer that drops the oldest event."""

    def __init__(self, size: int) -> None:
        self.events: deque[gr.DeployEvent] = deque(maxlen=size)
        self.closed = False
        self.wakeup = asyncio.Event()

    def push(self, event: gr.DeployEvent) -> None:
        self.events.append(event)
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    async def next(self) -> gr.DeployEvent | None:
        while not self.events:
            if self.closed:
                return None
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.events.popleft()


class GalaxyService:
    """The Galaxy Repository of the simulator (open with :meth:`open`, end with :meth:`close`)."""

    def __init__(
        self,
        db_path: Path | None,
        snapshot: HierarchySnapshot,
        poll_interval: float,
        watch_buffer: int,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        source: GalaxySource | None = None,
    ) -> None:
        self.db_path = db_path
        """The SQLite file (None when the repository is elsewhere: see ``source``)."""
        if source is None:
            if db_path is None:
                raise ValueError("a Galaxy needs a database path or a source")
            source = SqliteSource(db_path)
        self.source = source
        self.poll_interval = poll_interval
        self.page_bytes = page_bytes
        self._snapshot = snapshot
        self._sequence = 1  # the state loaded at start is event #1
        self._nonce = secrets.token_hex(4)
        self._watchers: set[_Watcher] = set()
        self._watch_buffer = watch_buffer
        self._refresh_lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._closed = False
        self.catalog = GalaxyCatalog(self)
        self.servicer = GalaxyRepositoryServicer(self)

    @classmethod
    async def open(
        cls,
        db_path: Path | None = None,
        *,
        objects: int | None = None,
        seed: int = 0,
        poll_interval: float = 2.0,
        watch_buffer: int = WATCH_BUFFER,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        source: GalaxySource | None = None,
    ) -> GalaxyService:
        """Open (creating and seeding when missing) the Galaxy at ``db_path`` and start polling.

        ``source`` reads another repository instead (a real ZB on SQL Server:
        :func:`~mxgateway_sim.galaxy.sql_server_source`); ``db_path``/``objects`` are unused.

        ``db_path=None`` uses :func:`default_db_path`. ``objects=N`` seeds a synthetic galaxy of
        N objects instead of the default plant; it only matters when the file is created.
        ``page_bytes`` bounds the serialized objects of one page (:data:`DEFAULT_PAGE_BYTES`).
        """
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if isinstance(page_bytes, bool) or not isinstance(page_bytes, int) or page_bytes < 1:
            raise ValueError("page_bytes must be a positive int")
        if source is not None:
            try:
                snapshot = await asyncio.to_thread(source.load, 1)
            except Exception as exc:  # the driver's errors: unreachable, login, schema
                raise ValueError(f"cannot read the {source.description}: {exc}") from exc
            svc = cls(None, snapshot, poll_interval, watch_buffer, page_bytes, source)
            svc._poller = asyncio.get_running_loop().create_task(svc._poll_loop())
            return svc
        path = Path(db_path) if db_path is not None else default_db_path(objects, seed)
        if not path.exists():
            try:
                await asyncio.to_thread(create_galaxy, path, objects=objects, seed=seed)
            except sqlite3.Error as exc:  # sqlite's text never names the file
                raise ValueError(f"cannot create the Galaxy database {path}: {exc}") from exc
        try:
            snapshot = await asyncio.to_thread(SqliteSource(path).load, 1)
        except sqlite3.Error as exc:
            raise ValueError(f"{path} is not a readable Galaxy database: {exc}") from exc
        svc = cls(path, snapshot, poll_interval, watch_buffer, page_bytes)
        svc._poller = asyncio.get_running_loop().create_task(svc._poll_loop())
        return svc

    @property
    def snapshot(self) -> HierarchySnapshot:
        """The current hierarchy cache."""
        return self._snapshot

    @property
    def sequence(self) -> int:
        """Sequence of the current deploy state (1 for the state loaded at start)."""
        return self._sequence

    async def close(self) -> None:
        """Stop the poller and end every deploy watch stream (idempotent)."""
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for w in list(self._watchers):
            w.close()

    async def refresh(self) -> bool:
        """Check ``time_of_last_deploy`` now; reload the cache when it changed.

        Returns True when a new deploy was detected. Raises when the database is unreachable.
        """
        async with self._refresh_lock:
            present, when = await asyncio.to_thread(self.source.deploy_time)
            current = self._snapshot.time_of_last_deploy
            if (when if present else None) == current:
                return False
            snap = await asyncio.to_thread(self.source.load, self._snapshot.version + 1)
            self._snapshot = snap
            self._sequence += 1
            event = self.state_event()
            log.info(
                "galaxy redeploy detected: %d objects, %d attributes (cache version %d)",
                snap.object_count,
                snap.attribute_count,
                snap.version,
            )
            for w in list(self._watchers):
                w.push(event)
            return True

    async def _poll_loop(self) -> None:
        failing = False
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
                failing = False
            except Exception as exc:  # the database may be locked, missing or corrupt
                if not failing:
                    log.warning("galaxy poll failed (cache kept): %s", exc)
                failing = True

    def state_event(self) -> gr.DeployEvent:
        """The current deploy state as a DeployEvent."""
        snap = self._snapshot
        event = gr.DeployEvent(
            sequence=self._sequence,
            object_count=snap.object_count,
            attribute_count=snap.attribute_count,
        )
        if snap.time_of_last_deploy is not None:
            event.time_of_last_deploy.CopyFrom(datetime_to_timestamp(snap.time_of_last_deploy))
            event.time_of_last_deploy_present = True
        return event

    def subscribe(self) -> tuple[_Watcher, gr.DeployEvent]:
        """Register a watcher and return it with the current state (atomically)."""
        w = _Watcher(self._watch_buffer)
        if self._closed:
            w.close()
        else:
            self._watchers.add(w)
        return w, self.state_event()

    @property
    def watcher_count(self) -> int:
        """Number of open WatchDeployEvents streams."""
        return len(self._watchers)

    def unsubscribe(self, watcher: _Watcher) -> None:
        self._watchers.discard(watcher)

    def test_connection(self) -> bool:
        """``SELECT 1`` against the repository (blocking); False when unreachable."""
        return self.source.test_connection()

    # ----- page tokens ------------------------------------------------------------------
    def make_token(self, kind: str, version: int, signature: str, offset: int) -> str:
        raw = json.dumps([kind, self._nonce, version, signature, offset], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def parse_token(self, token: str, kind: str, version: int, signature: str) -> int:
        """Offset encoded in ``token``; ValueError with the reason when it does not apply."""
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            t_kind, nonce, t_version, t_sig, offset = data
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ValueError("page_token is malformed") from exc
        if t_kind != kind or nonce != self._nonce or not isinstance(offset, int) or offset < 0:
            raise ValueError("page_token was not issued for this call by this server")
        if t_version != version:
            raise ValueError(
                f"page_token is stale: the Galaxy was redeployed (cache sequence {t_version} "
                f"-> {version}); restart the walk"
            )
        if t_sig != signature:
            raise ValueError("page_token does not match the request: filters changed between pages")
        return offset


def _signature(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _filters(request: gr.DiscoverHierarchyRequest | gr.BrowseChildrenRequest) -> Filters:
    return Filters(
        category_ids=frozenset(request.category_ids),
        template_chain_contains=frozenset(t.casefold() for t in request.template_chain_contains),
        tag_name_glob=request.tag_name_glob,
        alarm_bearing_only=request.alarm_bearing_only,
        historized_only=request.historized_only,
    )


async def _page_size(requested: int, context: _Ctx) -> int:
    if requested < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


async def _fill_page(
    out: Any,
    snap: HierarchySnapshot,
    records: Iterable[GalaxyObjectRecord],
    *,
    budget: int,
    include_attributes: bool,
    f: Filters | None,
    extra: int = 0,
) -> int:
    """Add objects to a reply's repeated field ``out`` while their serialized size (plus
    ``extra`` bytes each) stays within ``budget``; at least one. Returns how many. Gives
    the event loop back between objects once a slice is used up (a 4 MiB page is many
    objects' worth of work)."""
    used = count = 0
    slicer = Slicer()
    for rec in records:
        await slicer.checkpoint()
        obj = out.add()  # filled in place: no copy of a large object
        snap.fill_proto(obj, rec, include_attributes=include_attributes, f=f)
        size = obj.ByteSize()
        # field tag (1 byte) + length varint + body
        used += 1 + max(1, (size.bit_length() + 6) // 7) + size + extra
        if used > budget and count:
            del out[-1]
            break
        count += 1
    return count


async def _resolve(
    snap: HierarchySnapshot,
    request: Message,
    oneof: str,
    context: _Ctx,
) -> GalaxyObjectRecord | None:
    """The object the request's ``oneof`` (``root``, ``parent``) names by id, tag name or
    contained path (None: not given); NOT_FOUND when it is not deployed."""
    which = request.WhichOneof(oneof)
    if which is None:
        return None
    value = getattr(request, which)
    rec: GalaxyObjectRecord | None
    if which.endswith("gobject_id"):
        rec = snap.by_id.get(int(value))
    elif which.endswith("tag_name"):
        rec = snap.by_tag.get(str(value).casefold())
    else:
        rec = snap.resolve_path(str(value))
    if rec is None:
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"{oneof} {value!r} is not a deployed object"
        )
    return rec


class GalaxyRepositoryServicer(gr_grpc.GalaxyRepositoryServicer):
    """Translates GalaxyRepository RPCs to the service's snapshot (no auth here)."""

    def __init__(self, service: GalaxyService) -> None:
        self._svc = service

    async def _offset(
        self, token: str, kind: str, snap: HierarchySnapshot, sig: str, context: _Ctx
    ) -> int:
        """Where the page of ``token`` starts in the listing of ``kind`` (``d``: discover,
        ``b``: browse) and ``sig`` (0 without a token); a token of another listing or
        snapshot is INVALID_ARGUMENT, with the snapshot's cache sequence."""
        if not token:
            return 0
        try:
            return self._svc.parse_token(token, kind, snap.version, sig)
        except ValueError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                str(exc),
                trailing_metadata=(("cache-sequence", str(snap.version)),),
            )
            raise  # abort raises; not reached

    async def TestConnection(
        self, request: gr.TestConnectionRequest, context: _Ctx
    ) -> gr.TestConnectionReply:
        ok = await asyncio.to_thread(self._svc.test_connection)
        return gr.TestConnectionReply(ok=ok)

    async def GetLastDeployTime(
        self, request: gr.GetLastDeployTimeRequest, context: _Ctx
    ) -> gr.GetLastDeployTimeReply:
        when = self._svc.snapshot.time_of_last_deploy
        reply = gr.GetLastDeployTimeReply()
        if when is not None:
            reply.time_of_last_deploy.CopyFrom(datetime_to_timestamp(when))
            reply.time_of_last_deploy_present = True
        return reply

    async def DiscoverHierarchy(
        self, request: gr.DiscoverHierarchyRequest, context: _Ctx
    ) -> gr.DiscoverHierarchyReply:
        snap = self._svc.snapshot
        size = await _page_size(request.page_size, context)
        root = await _resolve(snap, request, "root", context)
        max_depth = request.max_depth if request.HasField("max_depth") else None
        if max_depth is not None and max_depth < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_depth must not be negative")
        include = request.include_attributes if request.HasField("include_attributes") else True
        f = _filters(request)
        sig = _signature(root.gobject_id if root else 0, max_depth, f, include)
        offset = await self._offset(request.page_token, "d", snap, sig, context)
        walk = await snap.walk_sliced(root, max_depth, f)
        reply = gr.DiscoverHierarchyReply(total_object_count=len(walk), cache_sequence=snap.version)
        end = offset + await _fill_page(
            reply.objects,
            snap,
            (snap.dfs[i] for i in walk[offset : offset + size]),
            budget=self._svc.page_bytes,
            include_attributes=include,
            f=f,
        )
        if end < len(walk):
            reply.next_page_token = self._svc.make_token("d", snap.version, sig, end)
        return reply

    async def BrowseChildren(
        self, request: gr.BrowseChildrenRequest, context: _Ctx
    ) -> gr.BrowseChildrenReply:
        snap = self._svc.snapshot
        size = await _page_size(request.page_size, context)
        parent = await _resolve(snap, request, "parent", context)
        include = request.include_attributes if request.HasField("include_attributes") else True
        f = _filters(request)
        sig = _signature(parent.gobject_id if parent else 0, f, include)
        offset = await self._offset(request.page_token, "b", snap, sig, context)
        ids = await snap.children_of_sliced(parent, f)
        reply = gr.BrowseChildrenReply(total_child_count=len(ids))
        records = [snap.by_id[cid] for cid in ids[offset : offset + size]]
        count = await _fill_page(
            reply.children,
            snap,
            records,
            budget=self._svc.page_bytes,
            include_attributes=include,
            f=None,
            extra=1,  # its child_has_children entry
        )
        reply.child_has_children.extend(bool(rec.children) for rec in records[:count])
        end = offset + count
        if end < len(ids):
            reply.next_page_token = self._svc.make_token("b", snap.version, sig, end)
        return reply

    async def WatchDeployEvents(
        self, request: gr.WatchDeployEventsRequest, context: _Ctx
    ) -> AsyncIterator[gr.DeployEvent]:
        seen: datetime | None = None
        if request.HasField("last_seen_deploy_time"):
            try:
                seen = timestamp_to_datetime(request.last_seen_deploy_time)
            except (OverflowError, ValueError, OSError):  # no datetime can hold it
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "last_seen_deploy_time is outside the range of a timestamp "
                    "(0001-01-01 to 9999-12-31)",
                )
        watcher, current = self._svc.subscribe()
        try:
            skip = False
            if seen is not None and current.time_of_last_deploy_present:
                skip = seen == timestamp_to_datetime(current.time_of_last_deploy)
            if not skip:
                yield current
            while True:
                event = await watcher.next()
                if event is None:
                    return
                yield event
        finally:
            self._svc.unsubscribe(watcher)
