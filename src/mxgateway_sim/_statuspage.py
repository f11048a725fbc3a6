"""The status page: one server-rendered HTML page of a gateway's health, sessions and limits.

No script, no external asset (the styles are inline, the icon is empty), so it works on an
isolated plant network and under a strict Content-Security-Policy; a ``<meta refresh>``
reloads it. Every text that came from a caller or a configuration (client names, key ids,
fault messages) is HTML-escaped. The layout is one column of cards that reads on a phone;
wide tables scroll sideways inside their card.
"""

from __future__ import annotations

import html
import time

from mxgateway_sim._opstatus import GatewayStatus, SessionRow

__all__ = ["CONTENT_SECURITY_POLICY", "REFRESH_S", "render_status_page"]

REFRESH_S = 5
"""Seconds between the page's reloads."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_STYLE = """
:root{color-scheme:light dark;--bg:#f6f7f9;--card:#fff;--fg:#1d2330;--muted:#5b6475;
--line:#dde1e8;--ok:#17803d;--warn:#a15c00;--bad:#b42318}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1c2028;--fg:#e6e9ef;
--muted:#9aa3b2;--line:#2c323d;--ok:#4ac26b;--warn:#e0a030;--bad:#f97066}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--fg)}
header{padding:14px 16px 4px}
h1{font-size:1.25rem;margin:0 0 4px}
h2{font-size:1rem;margin:0 0 10px}
main{display:grid;gap:12px;padding:12px 16px 24px;
grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;
min-width:0}
section.wide{grid-column:1/-1}
.muted{color:var(--muted)}
.pill{display:inline-block;padding:1px 10px;border-radius:999px;font-weight:600;color:#fff}
.ok{background:var(--ok)}.warn{background:var(--warn)}.bad{background:var(--bad)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{color:var(--muted);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.name{max-width:16rem;overflow:hidden;text-overflow:ellipsis}
td.msg{white-space:normal;min-width:16rem}
code{font:.85rem ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
dl.limits{grid-template-columns:repeat(auto-fill,minmax(15rem,max-content) minmax(5rem,1fr))}
@media (max-width:700px){
table.cards thead{display:none}
table.cards tr{display:block;border-bottom:1px solid var(--line);padding:6px 0}
table.cards td{display:flex;justify-content:space-between;gap:12px;border:0;padding:2px 0;
white-space:normal;text-align:right;overflow-wrap:anywhere}
table.cards td::before{content:attr(data-label);color:var(--muted);text-align:left;flex:none}
table.cards td.name{max-width:none}
}
footer{padding:0 16px 20px;font-size:.85rem}
"""

_HEALTH_CLASS = {"serving": "ok", "stopping": "warn"}
_STATE_CLASS = {"ready": "ok", "opening": "warn", "closing": "warn", "faulted": "bad"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def _table(columns: list[tuple[str, str]], rows: list[list[str]]) -> str:
    """A table that turns into one card per row on a narrow screen (``data-label``).

    ``columns`` are (header, css class); cells are HTML already escaped.
    """
    head = "".join(f'<th class="{cls}">{_e(title)}</th>' for title, cls in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{cls}" data-label="{_e(title)}">{cell}</td>'
            for (title, cls), cell in zip(columns, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table class="cards"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


_SESSION_COLUMNS = [
    ("Session", ""),
    ("Key", ""),
    ("Client", "name"),
    ("Age", "num"),
    ("Items", "num"),
    ("Events", "num"),
    ("Rate", "num"),
    ("Queue", "num"),
    ("Streams", "num"),
    ("State", ""),
]


def _session_cells(row: SessionRow) -> list[str]:
    rate = "&ndash;" if row.event_rate is None else f"{row.event_rate:,.1f}/s"
    items = "&ndash;" if row.items is None else f"{row.items:,}"
    name = row.client_name or "(unnamed)"
    state = _STATE_CLASS.get(row.state, "warn")
    return [
        f"<code>{_e(row.prefix)}</code>",
        _e(row.key_id) or "&ndash;",
        f'<span title="{_e(name)}">{_e(name)}</span>',
        _duration(row.age_s),
        items,
        f"{row.events:,}",
        rate,
        f"{row.queue_events:,} / {_bytes(row.queue_bytes)}",
        str(row.subscribers),
        f'<span class="pill {state}">{_e(row.state)}</span>',
    ]


def _sessions(status: GatewayStatus) -> str:
    if not status.sessions:
        return '<p class="muted">No open sessions.</p>'
    rows = sorted(status.sessions, key=lambda r: -r.age_s)
    return _table(_SESSION_COLUMNS, [_session_cells(r) for r in rows])


def _faults(status: GatewayStatus) -> str:
    if not status.faults:
        return '<p class="muted">No session has faulted since the gateway started.</p>'
    columns = [("When", ""), ("Session", ""), ("Key", ""), ("Cause", ""), ("Message", "msg")]
    rows = [
        [
            _e(time.strftime("%H:%M:%S", time.localtime(f.when))),
            f"<code>{_e(f.session)}</code>",
            _e(f.key_id),
            _e(f.cause),
            _e(f.message),
        ]
        for f in status.faults
    ]
    return _table(columns, rows)


def _dl(pairs: list[tuple[str, str]], cls: str = "") -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="{cls}">{items}</dl>'


def render_status_page(status: GatewayStatus, refresh_s: int = REFRESH_S) -> str:
    """The page for ``status`` (a complete HTML document)."""
    health = _HEALTH_CLASS.get(status.health, "bad")
    ev = status.events
    stats = status.stats
    commands = sum(stats.commands.values())
    failed = sum(n for (_, code), n in stats.commands.items() if code != "ok")
    gateway = _dl(
        [
            ("Health", f'<span class="pill {health}" id="health">{_e(status.health)}</span>'),
            ("Uptime", _e(_duration(status.uptime_s))),
            ("Version", f"<code>{_e(status.version)}</code>"),
            ("Runtime", _e(f"{status.runtime} ({status.isolation} sessions)")),
            ("Galaxy", _e(status.galaxy)),
            ("Endpoint", f"<code>{_e(status.endpoint)}</code> ({_e(status.tls)})"),
        ]
    )
    activity = _dl(
        [
            ("Open sessions", f"{len(status.sessions):,}"),
            (
                "Opened / faulted",
                f"{stats.sessions_opened:,} / {sum(stats.sessions_faulted.values()):,}",
            ),
            ("Workers alive", f"{status.workers_alive:,}"),
            ("Commands / failed", f"{commands:,} / {failed:,}"),
            ("Events raised", f"{ev.raised:,}"),
            ("Events delivered", f"{ev.delivered + ev.drained:,}"),
            ("Events dropped / gaps", f"{ev.dropped:,} / {ev.gaps:,}"),
            ("Queued", f"{ev.queue_events:,} events, {_e(_bytes(ev.queue_bytes))}"),
            ("Replay rings", f"{ev.ring_events:,} events, {_e(_bytes(ev.ring_bytes))}"),
            (
                "Auth refusals",
                f"{sum(stats.authentication_failures.values()):,} unauthenticated, "
                f"{sum(stats.authorization_failures.values()):,} unauthorized",
            ),
        ]
    )
    limits = _dl([(flag, f"<code>{_e(value)}</code>") for flag, value in status.limits], "limits")
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">'
        '<link rel="icon" href="data:,">'
        f"<title>mxgw gateway: {_e(status.health)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<header><h1>MXAccess Gateway</h1>"
        f'<div class="muted">Status at {_e(now)}; refreshes every {int(refresh_s)} s. '
        'Metrics: <a href="/metrics">/metrics</a></div></header>'
        "<main>"
        f"<section><h2>Gateway</h2>{gateway}</section>"
        f"<section><h2>Activity</h2>{activity}</section>"
        f'<section class="wide" id="sessions"><h2>Sessions ({len(status.sessions)})</h2>'
        f"{_sessions(status)}</section>"
        f'<section class="wide" id="faults"><h2>Recent faults</h2>{_faults(status)}</section>'
        f'<section class="wide" id="limits"><h2>Limits in force</h2>{limits}</section>'
        "</main>"
        '<footer class="muted">Session ids are shown as their first 8 hex digits; full ids are '
        "logged at DEBUG only.</footer>"
        "</body></html>"
    )
