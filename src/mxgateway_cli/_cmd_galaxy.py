"""Galaxy Repository commands: ``galaxy-test-connection``, ``-last-deploy``, ``-discover``,
``-watch``.

``galaxy-discover`` walks the hierarchy with ``iter_hierarchy``, which fetches one page at a
time, and writes each object as it arrives, so memory stays bounded by one page whatever
the size of the Galaxy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.values import datetime_to_timestamp
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._gateway import galaxy_client
from mxgateway_cli._output import message_json
from mxgateway_cli._parsing import parse_aware_datetime
from mxgateway_cli._streaming import print_stream, stream_document

__all__ = ["GALAXY_COMMANDS", "rfc3339"]


def rfc3339(value: datetime | None) -> str | None:
    """An aware datetime as protobuf-JSON timestamp text (``...Z``), None stays None."""
    if value is None:
        return None
    return datetime_to_timestamp(value).ToJsonString()


async def cmd_test_connection(ctx: Context) -> ExitCode:
    """``TestConnection``: exit 0 when the gateway reaches the Galaxy DB, else UNAVAILABLE."""
    async with galaxy_client(ctx) as galaxy:
        ok = await galaxy.test_connection()
    if ctx.json:
        ctx.out.emit({"ok": ok})
    else:
        ctx.out.write(f"galaxy repository: {'reachable' if ok else 'NOT reachable'}\n")
    if not ok:
        raise CommandFailed(
            "the gateway cannot reach the Galaxy Repository database", ExitCode.UNAVAILABLE
        )
    return ExitCode.OK


async def cmd_last_deploy(ctx: Context) -> ExitCode:
    """``GetLastDeployTime``: ``timeOfLastDeploy`` is null when never deployed."""
    async with galaxy_client(ctx) as galaxy:
        when = await galaxy.get_last_deploy_time()
    text = rfc3339(when)
    if ctx.json:
        ctx.out.emit({"timeOfLastDeploy": text})
    else:
        ctx.out.write(f"last deploy: {text or 'never'}\n")
    return ExitCode.OK


def _object_line(obj: gr.GalaxyObject) -> str:
    kind = "area" if obj.is_area else (obj.template_chain[0] if obj.template_chain else "")
    path = obj.hierarchical_name or obj.tag_name
    return f"{obj.tag_name}  [{kind}]  {path}  ({len(obj.attributes)} attributes)"


class _Spinner:
    """A transient "discovering: N objects" spinner on stderr; rich.progress is imported
    only when it is shown."""

    def __init__(self, ctx: Context, show: bool) -> None:
        self._progress: Any = None
        if show:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("discovering: {task.completed} objects"),
                TimeElapsedColumn(),
                console=ctx.out.err_console,
                transient=True,
            )
        self._task: Any = None

    def __enter__(self) -> _Spinner:
        if self._progress is not None:
            self._progress.__enter__()
            self._task = self._progress.add_task("discover", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


def _attribute_line(attr: gr.GalaxyAttribute) -> str:
    """An attribute as it is referenced: arrays with ``[]`` (MXAccess refuses a bare array
    reference), so the text can be copied into ``read``/``watch``."""
    suffix = "[]" if attr.is_array else ""
    return f"    {attr.full_tag_reference}{suffix}  {attr.data_type_name}{suffix}"


async def cmd_discover(ctx: Context) -> ExitCode:
    """``DiscoverHierarchy`` page by page; one JSON document, NDJSON, or lines."""
    a = ctx.args
    objects = attributes = 0
    # The spinner only when stdout goes elsewhere (a file, a pipe): on a shared terminal the
    # objects' lines are the progress, and a spinner would be glued to them.
    show_progress = ctx.out.stderr_is_tty and not ctx.out.stdout_is_tty and not ctx.out.ndjson
    with stream_document(ctx.out, "objects", enabled=ctx.json) as writer:
        async with galaxy_client(ctx) as galaxy:
            with _Spinner(ctx, show_progress) as progress:
                async for obj in galaxy.iter_hierarchy(
                    root_gobject_id=a.root_id,
                    root_tag_name=a.root_tag_name,
                    root_contained_path=a.root_path,
                    max_depth=a.max_depth,
                    category_ids=a.category_id,
                    template_chain_contains=a.template,
                    tag_name_glob=a.tag_glob,
                    include_attributes=False if a.no_attributes else None,
                    alarm_bearing_only=a.alarm_only,
                    historized_only=a.historized_only,
                    page_size=a.page_size,
                ):
                    objects += 1
                    attributes += len(obj.attributes)
                    if ctx.json:
                        writer.add(message_json(obj))
                    else:
                        ctx.out.write(_object_line(obj) + "\n")
                        for attr in obj.attributes:
                            ctx.out.write(_attribute_line(attr) + "\n")
                    progress.advance()
        if ctx.json:
            writer.close({"objectCount": objects, "attributeCount": attributes})
    if not ctx.json:
        ctx.out.write(f"{objects} objects, {attributes} attributes\n")
    return ExitCode.OK


def _deploy_line(event: gr.DeployEvent) -> str:
    """A deploy event for people: its sequence, deploy time and counts."""
    when = (
        event.time_of_last_deploy.ToJsonString() if event.time_of_last_deploy_present else "never"
    )
    return (
        f"#{event.sequence} deploy={when} objects={event.object_count} "
        f"attributes={event.attribute_count}"
    )


async def cmd_watch(ctx: Context) -> ExitCode:
    """``WatchDeployEvents`` until ``--max-events`` or ``--timeout`` (exit 0)."""
    a = ctx.args
    last_seen = None if a.last_seen is None else parse_aware_datetime(a.last_seen, "--last-seen")
    with stream_document(ctx.out, "events", enabled=ctx.json) as writer:
        async with galaxy_client(ctx, window=True) as galaxy:
            await print_stream(
                ctx.out,
                writer if ctx.json else None,
                galaxy.watch_deploy_events(last_seen_deploy_time=last_seen),
                _deploy_line,
                max_items=a.max_events,
                timeout=a.timeout,
            )
    return ExitCode.OK


GALAXY_COMMANDS = {
    "galaxy-test-connection": cmd_test_connection,
    "galaxy-last-deploy": cmd_last_deploy,
    "galaxy-discover": cmd_discover,
    "galaxy-watch": cmd_watch,
}
