"""`GET /v1/clawvm/pages/{page_id}`: one stored page, at the level asked, for people and tools.

Query: `level` (full, compressed, structured or pointer; default full) and `session` (else the
`X-ClawVM-Session` header), hashed by `gateway.sessions.safe_id` as the chat route does, so one id
names one store key. The tenant comes from the API key. A page of another tenant or session is
answered exactly as a missing one (404 `no_match`): the store keys are per tenant and session, so
the lookup never reaches another tenant's data.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.pipeline import Services
from gateway.sessions import safe_id
from gateway.store import StoreError, session_scope
from policies.pages import LEVELS, Fidelity, Page, Provenance, Representation

PAGE_ID = re.compile(r"p:[0-9a-f]{10}(?:~[1-9][0-9]{0,8})?")
LEVEL_NAMES: dict[str, Fidelity] = {level.label: level for level in LEVELS}
SESSION_HEADER = "x-clawvm-session"


class ProvenanceBody(TypedDict):
    role: str
    message_index: int
    tool_call_id: str | None
    tool_name: str | None
    tool_arguments: str | None
    parent_id: str | None


async def page(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    page_id = _page_id(request.path_params["page_id"])
    level = _level(request.query_params.get("level"))
    session = _session(request)
    found = await _fetch(services, tenant.name, session, page_id)
    return JSONResponse(page_body(found, level))


def page_body(found: Page, level: Fidelity) -> dict[str, Any]:
    """The JSON answer for one page at one level."""
    shown = found.reprs.at(level)
    return {
        "object": "clawvm.page",
        "id": found.id,
        "type": found.type.value,
        "scope": found.scope.value,
        "level": level.label,
        "text": shown.text,
        "tool_calls": _tool_calls(shown),
        "tokens": shown.tokens,
        "provenance": _provenance(found.provenance),
        "pin": found.pin.value,
        "floor": found.floor.label,
        "version": found.version,
        "levels": {name: found.tokens(each) for name, each in LEVEL_NAMES.items()},
    }


def _page_id(value: str) -> str:
    if PAGE_ID.fullmatch(value) is None:
        raise InvalidRequest(
            "Invalid page id: expected 'p:' followed by 10 lowercase hex digits, optionally '~N'.",
            param="page_id",
        )
    return value


def _level(value: str | None) -> Fidelity:
    if value is None:
        return Fidelity.FULL
    level = LEVEL_NAMES.get(value)
    if level is None:
        raise InvalidRequest(f"Invalid level: expected one of {', '.join(LEVEL_NAMES)}.", param="level")
    return level


def _session(request: Request) -> str:
    for value in (request.query_params.get("session"), request.headers.get(SESSION_HEADER)):
        if value is not None and value.strip():
            return safe_id(value.strip())
    raise InvalidRequest(
        "Missing session: pass the 'session' query parameter or the X-ClawVM-Session header.", param="session"
    )


async def _fetch(services: Services, tenant: str, session: str, page_id: str) -> Page:
    try:
        pages = await services.sessions.store.get_pages(tenant, session_scope(session), [page_id])
    except StoreError as exc:
        raise ServiceUnavailable(f"the page store is unavailable: {exc}", code="backend_error") from exc
    found = pages.get(page_id)
    if found is None:
        raise NotFound(f"No page {page_id} in session {session!r}.", param="page_id", code="no_match")
    return found


def _provenance(prov: Provenance) -> ProvenanceBody:
    return {
        "role": prov.role,
        "message_index": prov.message_index,
        "tool_call_id": prov.tool_call_id,
        "tool_name": prov.tool_name,
        "tool_arguments": prov.tool_arguments,
        "parent_id": prov.parent_id,
    }


def _tool_calls(shown: Representation) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in shown.tool_calls
    ]
