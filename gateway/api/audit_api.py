"""The audit API: a session's page table, decision trace, events and write-back journal; and
the Prometheus endpoint.

Tenant-authorised routes (the API key, as for every other route; keys are per tenant, so a
tenant reads only its own sessions and another tenant's session is simply unknown, 404):
- `GET /v1/clawvm/sessions/{session_id}`: the page table. Per page in transcript order: id,
  type, scope, the level it had in the last prompt, floor, pin, tokens at full and at that
  level, provenance; then the extracted facts with their parent; the fault tally.
- `GET /v1/clawvm/sessions/{session_id}/decisions`, `/events`, `/journal`: stream records,
  oldest first. Query: `after` (the last `id` seen, exclusive; default from the start) and
  `limit` (1..1000, default 100). `/journal?scope=project` reads the project's journal: the
  project of the `X-ClawVM-Project` header, else the session's own. `/journal?scope=user`
  reads the journal of the session's end user's part of its project (what that user stated:
  gateway.store.memory); for a session that names no user, the project's.
Each list answers `{"object": "list", "data": [...], "has_more": bool, "next_after": id}`.

The session id is the one the gateway reports in `X-ClawVM-Session` (a free-form id a client
sent is hashed, see gateway.turns.sessions); anything outside `SAFE_ID` is 400.

`GET /metrics` is NOT authenticated, like `/health`: it carries counts only (per tenant name,
no keys, ids or content). Keep it off public networks if tenant names are private.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.jsonio import JSONAnswer
from gateway.observability.audit import START, InvalidCursor
from gateway.store.memory import user_scope
from gateway.store.store import InvalidKeyError, Keys, StoreError, project_scope, session_scope
from gateway.store.tables import TableFormatError
from gateway.turns.services import Services, store_failure
from gateway.turns.sessions import SAFE_ID, safe_id
from policies.faults import Tally
from policies.pages import Fidelity, Page
from policies.pagetable import PageTable

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PROJECT_HEADER = "x-clawvm-project"
T = TypeVar("T")


async def metrics(request: Request) -> Response:
    """Prometheus text exposition. Unauthenticated, like /health (see the module doc)."""
    services: Services = request.state.services
    body, content_type = services.metrics.render()
    return Response(body, media_type=content_type)


async def session(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    table = await _table(services, tenant.name, session_id)
    later = await _guarded(services.audit.counts(tenant.name, session_id))
    return JSONAnswer(session_body(table, later))


async def decisions(request: Request) -> Response:
    return await _stream(request, "decisions")


async def events(request: Request) -> Response:
    return await _stream(request, "events")


async def journal(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    after, limit = _page(request)
    scope = request.query_params.get("scope", "session")
    if scope not in ("session", "project", "user"):
        raise InvalidRequest("Invalid scope: expected 'session', 'project' or 'user'.", param="scope")
    if scope == "project":
        table = await _table(services, tenant.name, session_id)
        key = Keys.of(tenant.name, project_scope(_project(request, table))).writeback
    elif scope == "user":
        key = Keys.of(tenant.name, user_scope(await _table(services, tenant.name, session_id))).writeback
    else:
        await _known(services, tenant.name, session_id)
        key = Keys.of(tenant.name, session_scope(session_id)).writeback
    rows = await _guarded(services.audit.read(key, after=after, count=limit + 1))
    return JSONAnswer(listing(rows, limit))


async def _stream(request: Request, which: str) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    session_id = _session_id(request)
    after, limit = _page(request)
    await _known(services, tenant.name, session_id)
    read = services.audit.decisions if which == "decisions" else services.audit.events
    rows = await _guarded(read(tenant.name, session_id, after=after, count=limit + 1))
    return JSONAnswer(listing(rows, limit))


def listing(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page of records; `rows` holds up to `limit + 1` (the extra one only says there is more)."""
    data = rows[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "next_after": data[-1]["id"] if data else None,
    }


def _session_id(request: Request) -> str:
    value = request.path_params["session_id"]
    if SAFE_ID.fullmatch(value) is None:
        raise InvalidRequest(
            "Invalid session id: use the id the gateway reports in X-ClawVM-Session "
            "(letters, digits and . _ : -, at most 96 characters).",
            param="session_id",
        )
    return value


def _page(request: Request) -> tuple[str, int]:
    after = request.query_params.get("after") or START
    raw = request.query_params.get("limit")
    if raw is None:
        return after, DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"Invalid limit: expected an integer from 1 to {MAX_LIMIT}.", param="limit")
    return after, int(raw)


def _project(request: Request, table: PageTable) -> str:
    value = request.headers.get(PROJECT_HEADER, "").strip()
    return safe_id(value) if value else table.project


async def _table(services: Services, tenant: str, session_id: str) -> PageTable:
    try:
        table = await services.sessions.read(tenant, session_id)
    except InvalidKeyError as exc:
        raise InvalidRequest(f"Invalid session id: {exc}", param="session_id") from exc
    except TableFormatError as exc:
        message = f"the stored table of session {session_id} cannot be read: {exc}"
        raise ServiceUnavailable(message, code="backend_error") from exc
    except StoreError as exc:
        raise store_failure(exc, f"session {session_id}", code="backend_error") from exc
    if table is None:
        raise _unknown(session_id)
    return table


async def _known(services: Services, tenant: str, session_id: str) -> None:
    """404 unless the session has a stored table (one cheap read)."""
    version = await _guarded(services.sessions.store.table_version(tenant, session_scope(session_id)))
    if version == 0:
        raise _unknown(session_id)


async def _guarded(pending: Awaitable[T]) -> T:
    """Await a store call, with its failures in the OpenAI error shape."""
    try:
        return await pending
    except InvalidCursor as exc:
        raise InvalidRequest(str(exc), param="after") from exc
    except InvalidKeyError as exc:
        raise InvalidRequest(f"Invalid id: {exc}", param="session_id") from exc
    except StoreError as exc:
        raise store_failure(exc, "audit api", code="backend_error") from exc


def _unknown(session_id: str) -> NotFound:
    return NotFound(f"No session {session_id}.", param="session_id", code="no_match")


def session_body(table: PageTable, later: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The page table as JSON; `later` adds the tally counts observed after responses (recalls)."""
    """The JSON answer for one session's page table."""
    body: dict[str, Any] = {
        "object": "clawvm.session",
        "id": table.session,
        "project": table.project,
        "turn": table.turn,
        "version": table.version,
        "prompt_tokens": table.cost,
        "pages": [_page_row(table.pages[p], table.levels.get(p, Fidelity.NONE)) for p in table.order],
        "facts": [_fact_row(table, f) for f in _fact_ids(table)],
        "carried": list(table.carried),
        "restored": list(table.restored),
    }
    counts = dict(table.tally)
    for name, n in (later or {}).items():
        counts[name] = counts.get(name, 0) + n
    body["tally"] = tally_body(Tally.from_counts(counts))
    return body


def tally_body(tally: Tally) -> dict[str, Any]:
    return {
        "faults": dict(tally.faults),
        "alerts": tally.alerts,
        "hits": tally.hits,
        "insufficient": tally.insufficient,
        "thrash": tally.thrash,
    }


def _page_row(page: Page, level: Fidelity) -> dict[str, Any]:
    prov = page.provenance
    return {
        "id": page.id,
        "type": page.type.value,
        "scope": page.scope.value,
        "level": level.label,
        "floor": page.floor.label,
        "pin": page.pin.value,
        "tokens": {"full": page.tokens(Fidelity.FULL), "shown": _tokens(page, level)},
        "provenance": {"role": prov.role, "message_index": prov.message_index, "tool_name": prov.tool_name},
    }


def _tokens(page: Page, level: Fidelity) -> int:
    return 0 if level is Fidelity.NONE else page.tokens(level)


def _fact_ids(table: PageTable) -> list[str]:
    """Facts stated by the transcript's messages in order, then those carried across a boundary."""
    stated = (f for p in table.order for f in table.facts.get(p, ()))
    ordered = dict.fromkeys([*stated, *table.carried])
    return [f for f in ordered if f in table.pages and table.pages[f].extracted]


def _fact_row(table: PageTable, fact_id: str) -> dict[str, Any]:
    fact = table.pages[fact_id]
    return {
        "id": fact.id,
        "type": fact.type.value,
        "scope": fact.scope.value,
        "floor": fact.floor.label,
        "pin": fact.pin.value,
        "text": fact.reprs.full.text,
        "tokens": fact.tokens(fact.floor),
        "parent": fact.provenance.parent_id,
        "carried": fact_id in table.carried,
    }
