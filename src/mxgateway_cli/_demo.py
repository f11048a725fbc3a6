"""``mxgw-py demo``: a guided tour on an embedded simulator, with no gateway and no flags.

It starts :class:`mxgateway_sim.GatewaySimulator` in this process on a free loopback port
with a freshly generated API key, then uses only the public client API against it: Galaxy
summary, open a session, add and advise a few tags found in the Galaxy, live data changes,
a write and its OnWriteComplete, a bulk read, close.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.rule import Rule

import mxgateway
from mxgateway.generated import galaxy_repository_pb2 as gr
from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_cli import _human, _plant
from mxgateway_cli._cmd_galaxy import rfc3339
from mxgateway_cli._cmd_session import event_line
from mxgateway_cli._context import Context
from mxgateway_cli._errors import CommandFailed
from mxgateway_cli._exit_codes import ExitCode
from mxgateway_cli._output import message_json
from mxgateway_cli._streaming import consume
from mxgateway_sim import GatewaySimulator

__all__ = ["DEMO_COMMANDS"]

_TAGS = 3
_WAIT = 10.0
_WRITABLE_CATEGORIES = range(4, 12)
_FREE_ACCESS = (0, 1)  # FreeAccess, Operate: writable without AuthenticateUser


def _is_scalar_number(attr: gr.GalaxyAttribute) -> bool:
    return attr.mx_data_type in (2, 3, 4) and not attr.is_array


def _is_writable(attr: gr.GalaxyAttribute) -> bool:
    return (
        _is_scalar_number(attr)
        and attr.mx_attribute_category in _WRITABLE_CATEGORIES
        and attr.security_classification in _FREE_ACCESS
    )


def _write_value(attr: gr.GalaxyAttribute) -> tuple[object, mxgateway.ValueType]:
    if attr.mx_data_type == 2:
        return 42, "int32"
    if attr.mx_data_type == 3:
        return 42.5, "float"
    return 42.5, "double"


_PIPED_RULE_WIDTH = 80


class _Tour:
    """Prints the tour for people, or collects it into one JSON document."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.doc: dict[str, Any] = {}
        self.names: dict[int, str] = {}
        """Item handle -> tag, for the event lines."""

    def section(self, title: str) -> None:
        if not self.ctx.json:
            out = self.ctx.out
            # Piped, the console is 4,096 columns wide (tables are never cut); a heading
            # rule that wide would be a line of 12 KB, so it keeps a terminal's width.
            width = None if out.stdout_is_tty else _PIPED_RULE_WIDTH
            out.console.print(Rule(title, align="left"), width=width)

    def say(self, text: str) -> None:
        if not self.ctx.json:
            self.ctx.out.console.print(text, soft_wrap=True, markup=False)


async def cmd_demo(ctx: Context) -> ExitCode:
    """Run the tour against an embedded simulator."""
    tour = _Tour(ctx)
    # A private Galaxy database: the tour never depends on (or changes) a shared one.
    with tempfile.TemporaryDirectory(prefix="mxgw-py-demo-") as scratch:
        await _tour(ctx, tour, GatewaySimulator(galaxy_db=Path(scratch) / "galaxy.db"))
    tour.section("done")
    tour.say(
        "the session is closed and the simulator stopped. Next: `mxgw-py read TAG`, "
        "`mxgw-py watch TAG` and `mxgw-py set TAG VALUE` against a gateway; "
        "`mxgw-py docs` prints the full reference, `mxgw-py COMMAND --help` each command's flags"
    )
    if ctx.json:
        ctx.out.emit(tour.doc)
    return ExitCode.OK


async def _tour(ctx: Context, tour: _Tour, simulator: GatewaySimulator) -> None:
    async with simulator as sim:
        tour.section("mxgw-sim")
        tour.say(f"embedded simulator listening on {sim.endpoint} (plaintext, generated API key)")
        ctx.out.add_secret(sim.api_key)
        options = mxgateway.ClientOptions(
            endpoint=sim.endpoint, api_key=sim.api_key, plaintext=True
        )
        async with await mxgateway.GalaxyRepositoryClient.connect(options=options) as galaxy:
            watched, writable = await _galaxy_tour(tour, galaxy)
        async with await mxgateway.GatewayClient.connect(options=options) as client:
            await _session_tour(tour, client, watched, writable)


async def _galaxy_tour(
    tour: _Tour, galaxy: mxgateway.GalaxyRepositoryClient
) -> tuple[list[str], gr.GalaxyAttribute | None]:
    tour.section("1. Galaxy Repository")
    ok = await galaxy.test_connection()
    last_deploy = rfc3339(await galaxy.get_last_deploy_time())
    objects = areas = attributes = 0
    rows: list[dict[str, Any]] = []
    watched: list[str] = []
    writable: gr.GalaxyAttribute | None = None
    async for obj in galaxy.iter_hierarchy():
        objects += 1
        areas += obj.is_area
        attributes += len(obj.attributes)
        if obj.is_area:
            continue
        numbers = [a for a in obj.attributes if _is_scalar_number(a)]
        if numbers and len(watched) < _TAGS:
            watched.append(numbers[0].full_tag_reference)
            rows.append(
                {
                    "object": obj.tag_name,
                    "template": obj.template_chain[0] if obj.template_chain else "",
                    "attributes": len(obj.attributes),
                    "tag": numbers[0].full_tag_reference,
                }
            )
        if writable is None:
            writable = next((a for a in obj.attributes if _is_writable(a)), None)
    tour.say(
        f"reachable={ok}  last deploy={last_deploy}  objects={objects}  areas={areas}  "
        f"attributes={attributes}"
    )
    if not tour.ctx.json:
        _human.print_rows(
            tour.ctx.out.console,
            rows,
            [
                ("object", "object"),
                ("template", "template"),
                ("attributes", "attributes"),
                ("tag", "tag to watch"),
            ],
            title="some deployed objects",
        )
    tour.doc["galaxy"] = {
        "ok": ok,
        "timeOfLastDeploy": last_deploy,
        "objectCount": objects,
        "areaCount": areas,
        "attributeCount": attributes,
    }
    if not watched:
        raise CommandFailed("the Galaxy has no numeric attribute to watch", ExitCode.ERROR)
    tour.doc["tags"] = watched
    return watched, writable


async def _session_tour(
    tour: _Tour,
    client: mxgateway.GatewayClient,
    watched: list[str],
    writable: gr.GalaxyAttribute | None,
) -> None:
    ctx = tour.ctx
    tour.section("2. Session")
    async with await client.open_session(client_session_name="mxgw-py-demo") as session:
        tour.say(f"opened {session.session_id}")
        server_handle = await session.register("mxgw-py-demo")
        tags = list(watched)
        if writable is not None and writable.full_tag_reference not in tags:
            tags.append(writable.full_tag_reference)
        results = await session.subscribe_bulk(server_handle, tags)
        handles = {r.tag_address: r.item_handle for r in results if r.was_successful}
        tour.names = {handle: tag for tag, handle in handles.items()}
        for r in results:
            tour.say(
                f"  add+advise {r.tag_address}: "
                + (f"item handle {r.item_handle}" if r.was_successful else r.error_message)
            )
        tour.doc["session"] = {
            "registered": server_handle != 0,
            "advised": [r.tag_address for r in results if r.was_successful],
        }

        tour.section("3. Live data changes")
        changes: list[dict[str, Any]] = []

        def on_change(event: mxgateway.Event) -> int:
            if not isinstance(event, mxgateway.DataChange):
                return 0
            changes.append(message_json(event.raw))
            tour.say("  " + event_line(event.raw, tour.names))
            return 1

        # One event stream for the tour (the session's one subscriber), replayed from the
        # start so the first values come first; the write below reads its outcome from it.
        async with session.events(0) as events:
            await consume(events, on_change, max_items=ctx.args.events, timeout=_WAIT)
            tour.doc["dataChanges"] = len(changes)
            if not changes:
                raise CommandFailed("no data change arrived from the simulator", ExitCode.TIMEOUT)
            if writable is not None and writable.full_tag_reference in handles:
                await _write_tour(tour, session, events, server_handle, handles, writable)

        tour.section("5. Bulk read")
        reads = await session.read_bulk(server_handle, tags)
        for row in reads:
            value = _plant.value_text(row.value) if row.HasField("value") else "(no value)"
            tour.say(
                f"  {row.tag_address} = {value}  {_plant.quality_text(row.quality)}"
                + ("  (cached)" if row.was_cached else "")
            )
        tour.doc["readBulk"] = [
            {"tagAddress": row.tag_address, "wasSuccessful": row.was_successful} for row in reads
        ]

        tour.section("6. Close")
        reply = await session.close()
        if reply is not None:
            tour.say(
                f"closed: released {reply.released_advise_count} advises, "
                f"{reply.released_item_count} items, "
                f"{reply.released_registration_count} registrations"
            )
            tour.doc["closeSession"] = {
                "finalState": mxgateway.enum_name(pb.SessionState, reply.final_state, short=False),
                "releasedAdviseCount": reply.released_advise_count,
                "releasedItemCount": reply.released_item_count,
                "releasedRegistrationCount": reply.released_registration_count,
            }


async def _write_tour(
    tour: _Tour,
    session: mxgateway.Session,
    events: mxgateway.EventStream,
    server_handle: int,
    handles: dict[str, int],
    writable: gr.GalaxyAttribute,
) -> None:
    tour.section("4. Write and its outcome")
    reference = writable.full_tag_reference
    item_handle = handles[reference]
    value, value_type = _write_value(writable)
    completion: mxgateway.WriteComplete | None = None
    refused = ""
    # As upstream, the reply only says the write was accepted; wait=True waits for the
    # OnWriteComplete that says whether it took effect (read from the tour's open stream).
    try:
        completion = await session.write(
            server_handle, item_handle, value, value_type=value_type, wait=True, wait_timeout=_WAIT
        )
    except mxgateway.MxAccessError as exc:
        refused = str(exc)
    tour.say(f"  wrote {value!r} ({value_type}) to {reference}")
    if completion is not None:
        tour.say("  " + event_line(completion.raw, tour.names))
    else:
        tour.say(f"  refused: {refused}")
    arrived: list[mxgateway.DataChange] = []

    # Then the data change carrying the written value, so the bulk read that follows
    # (served from the advise cache) shows it.
    def on_event(event: mxgateway.Event) -> int:
        if (
            isinstance(event, mxgateway.DataChange)
            and event.item_handle == item_handle
            and event.value == value
        ):
            arrived.append(event)
            tour.say("  " + event_line(event.raw, tour.names))
            return 1
        return 0

    if completion is not None:
        await consume(events, on_event, max_items=1, timeout=_WAIT)
    tour.doc["write"] = {
        "tag": reference,
        "type": value_type,
        "writeCompleteReceived": completion is not None or bool(refused),
        "writtenValueArrived": bool(arrived),
        "succeeded": completion is not None and completion.succeeded,
    }
    if refused:
        tour.doc["write"]["error"] = refused


DEMO_COMMANDS = {"demo": cmd_demo}
