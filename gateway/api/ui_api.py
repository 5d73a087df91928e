"""The session inspector: `GET /ui` (static files in the package, no build step, nothing from a CDN)
and the JSON it reads, beside the audit API (gateway.api.audit_api).

The page itself holds no data and needs no key; every route below does, as every other route:
the tenant's API key (`Authorization: Bearer`, `api-key` or `x-api-key`), typed into the page's
login field (kept in the tab's sessionStorage) or added by a proxy in front. A tenant sees only
its own sessions: another tenant's session id is simply unknown (404), another tenant's page
id is refused (403) without a lookup.

- `GET /v1/clawvm/sessions`: the tenant's sessions, most recently active first: turns, tokens
  received and forwarded, faults, lifecycle events, last activity. Query: `limit` (1..1000,
  default 100), `offset`.
- `GET /v1/clawvm/sessions/{id}/timeline`: everything the session view shows, in one answer: the
  kept turn records (tokens against the budget, prefix reused, events, the write-back committed and
  rejected with its codes), the fidelity heat map, recalls with reason codes, lifecycle events and
  faults with evidence, each attributed to a turn. The write-back journal's every record, with its
  detail, stays at `/v1/clawvm/sessions/{id}/journal` (gateway.api.audit_api).
- `GET /v1/clawvm/sessions/{id}/prompts/{prompt_id}`: one kept request as the agent sent it and
  as the model saw it, with the message-level diff.
- `GET /v1/clawvm/sessions/{id}/pages/{page_id}`: one page: type, scope, pin, provenance, its four
  representations, the decisions about it with reason codes, its level at every kept turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.audit_api import _guarded, _page_row, _session_id, _table, tally_body
from gateway.api.errors import InvalidRequest, NotFound
from gateway.api.pages_api import LEVEL_NAMES, _fetch, _page_id, _scopes, page_body
from gateway.jsonio import JSONAnswer
from gateway.observability.inspector import TurnLog
from gateway.observability.timeline import after_turn, event_turns, heat_map, level_history, prompt_diff, stream_ms
from gateway.store.memory import user_scope
from gateway.store.store import Keys, StoreError, project_scope, session_scope
from gateway.turns.services import Services
from policies.faults import Tally
from policies.pages import Fidelity, Page
from policies.pagetable import PageTable

STATIC = Path(__file__).resolve().parent.parent / "ui"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page runs only its own script and style, talks only to this origin, and is never framed.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
STREAM_READ = 1000  # newest entries of each audit stream the session and page views read
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


async def index(request: Request) -> Response:
    return _static("index.html", "text/html; charset=utf-8")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound(f"Unknown route {request.method} {request.url.path}")
    return _static(name, ASSETS[name])


def _static(name: str, media_type: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)


async def sessions(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    limit = _bounded(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _bounded(request, "offset", 0, 0, 10**9)
    rows = await _guarded(_log(services).sessions(tenant.name, offset, limit + 1))
    return JSONAnswer({"object": "list", "data": rows[:limit], "has_more": len(rows) > limit})


async def timeline(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    table = await _table(services, tenant.name, session_id)
    return JSONAnswer(await timeline_body(services, tenant.name, table))


async def timeline_body(services: Services, tenant: str, table: PageTable) -> dict[str, Any]:
    log, audit = _log(services), services.audit
    session = table.session
    records = await _guarded(log.turns(tenant, session))
    later = await _guarded(audit.counts(tenant, session))
    keys = Keys.of(tenant, session_scope(session))
    decisions = await _guarded(audit.newest(keys.decisions, count=STREAM_READ))
    events = await _guarded(audit.newest(keys.events, count=STREAM_READ))
    heat = heat_map(records, {p: i for i, p in enumerate(table.order)})
    types = await _types(services, tenant, table, heat.pages)
    times = [int(r.get("at", 0)) for r in records]
    counts = dict(table.tally)
    for name, n in later.items():
        counts[name] = counts.get(name, 0) + n
    return {
        "object": "clawvm.timeline",
        "id": session,
        "project": table.project,
        "turn": table.turn,
        "prompt_tokens": table.cost,
        "tally": tally_body(Tally.from_counts(counts)),
        "retention": {"turns": log.settings.turns, "prompts": log.settings.prompts},
        "turns": [_turn_row(r) for r in records],
        "heat": {
            "columns": heat.columns,
            "pages": [{"id": p, **types.get(p, {"type": "?", "role": "", "index": -1})} for p in heat.pages],
            "rows": heat.rows,
        },
        "recalls": [
            {**d, "turn_index": after_turn(times, stream_ms(d["id"]))} for d in decisions if d.get("kind") == "recall"
        ],
        "events": [{**e, "turn_index": i} for e, i in zip(events, event_turns(records, events), strict=True)],
    }


async def prompt(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    prompt_id = request.path_params["prompt_id"]
    await _table(services, tenant.name, session_id)
    found = await _guarded(_log(services).prompt(tenant.name, session_id, prompt_id))
    if found is None:
        raise NotFound(
            f"No kept prompt {prompt_id} in session {session_id}: only the newest "
            f"{_log(services).settings.prompts} requests' prompts are kept (ui.prompts).",
            param="prompt_id",
            code="no_match",
        )
    received, forwarded = found.get("received") or [], found.get("forwarded") or []
    return JSONAnswer(
        {
            "object": "clawvm.prompt",
            "id": prompt_id,
            "session": session_id,
            "received": received,
            "forwarded": forwarded,
            "diff": prompt_diff(received, forwarded),
        }
    )


async def page(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    page_id = _page_id(request.path_params["page_id"])
    table = await _table(services, tenant.name, session_id)
    extra = list(dict.fromkeys([project_scope(table.project), user_scope(table)]))
    scopes = _scopes(tenant.name, session_id, None, page_id) + extra
    found = table.pages.get(page_id) or await _fetch(services, tenant.name, scopes, page_id)
    records = await _guarded(_log(services).turns(tenant.name, session_id))
    history = level_history(records, page_id)
    key = Keys.of(tenant.name, session_scope(session_id)).decisions
    decisions = await _guarded(services.audit.newest(key, count=STREAM_READ))
    times = [int(r.get("at", 0)) for r in records]
    about = [
        {**d, "turn": d["turn"] if "turn" in d else _turn_at(records, after_turn(times, stream_ms(d["id"])))}
        for d in decisions
        if d.get("page_id") == page_id or page_id in (d.get("pages") or ())
    ]
    return JSONAnswer(
        {
            **page_body(found, Fidelity.FULL),
            "object": "clawvm.page_view",
            "session": session_id,
            "in_table": _page_row(found, table.levels.get(page_id, Fidelity.NONE)) if page_id in table.pages else None,
            "representations": {name: _shown(found, level) for name, level in LEVEL_NAMES.items()},
            "decisions": about,
            "history": [{"turn": r.get("turn"), "level": history[i]} for i, r in enumerate(records)],
        }
    )


def _shown(found: Page, level: Fidelity) -> dict[str, Any]:
    body = page_body(found, level)
    return {"text": body["text"], "tokens": body["tokens"], "tool_calls": body["tool_calls"]}


def _turn_at(records: list[dict[str, Any]], index: int) -> int | None:
    return records[index].get("turn") if 0 <= index < len(records) else None


def _turn_row(record: dict[str, Any]) -> dict[str, Any]:
    """A turn record without its level changes (the heat map carries them)."""
    return {k: v for k, v in record.items() if k not in ("levels", "key")}


async def _types(services: Services, tenant: str, table: PageTable, pages: list[str]) -> dict[str, dict[str, Any]]:
    """Type, role and transcript position of each heat-map page: from the table, else the store."""
    out: dict[str, dict[str, Any]] = {}
    position = {p: i for i, p in enumerate(table.order)}
    missing = []
    for page_id in pages:
        found = table.pages.get(page_id)
        if found is None:
            missing.append(page_id)
            continue
        out[page_id] = {"type": found.type.value, "role": found.provenance.role, "index": position.get(page_id, -1)}
    if missing:
        try:
            stored = await services.sessions.store.get_pages(tenant, session_scope(table.session), missing)
        except StoreError:
            stored = {}
        for page_id, found in stored.items():
            out[page_id] = {"type": found.type.value, "role": found.provenance.role, "index": -1}
    return out


def _log(services: Services) -> TurnLog:
    if services.inspector is None:
        raise NotFound("The session inspector is not set up on this gateway.", code="no_match")
    return services.inspector


def _bounded(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"Invalid {name}: expected an integer from {low} to {high}.", param=name)
    return int(raw)
