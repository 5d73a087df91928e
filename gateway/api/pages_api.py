"""`GET /v1/clawvm/pages/{page_id}`: one stored page, at the level asked, for people and tools.

Query: `level` (full, compressed, structured or pointer; default full), `session` (else the
`X-ClawVM-Session` header) and, for project pages, `project` (else `X-ClawVM-Project`), hashed by
`gateway.turns.sessions.safe_id` as the chat route does, so one id names one store key. The tenant comes
from the API key. A page id whose tenant tag (its head, see policies.pagetable) is not this
tenant's is refused with 403 `denied` without a lookup, so the answer says nothing about whether
such a page exists. The page is looked up in the session, then in the project if one is given; a
page neither holds is 404 `no_match`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.jsonio import JSONAnswer
from gateway.store.store import StoreError, project_scope, session_scope
from gateway.turns.services import Services, store_failure
from gateway.turns.sessions import safe_id
from policies.pages import LEVELS, Fidelity, Page, Provenance, Representation
from policies.pagetable import id_tag, tenant_tag

LEVEL_NAMES: dict[str, Fidelity] = {level.label: level for level in LEVELS}
SESSION_HEADER = "x-clawvm-session"
PROJECT_HEADER = "x-clawvm-project"


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
    scopes = _scopes(tenant.name, session, _param(request, "project", PROJECT_HEADER), page_id)
    found = await _fetch(services, tenant.name, scopes, page_id)
    return JSONAnswer(page_body(found, level))


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
    if id_tag(value) is None:
        raise InvalidRequest(
            "Invalid page id: expected 'p:' followed by 12 lowercase hex digits, optionally '~N'.",
            param="page_id",
        )
    return value


def _scopes(tenant: str, session: str, project: str | None, page_id: str) -> list[str]:
    """The store scopes that may hold the page, or 403 when its tag is not this tenant's."""
    if id_tag(page_id) != tenant_tag(tenant):
        raise PermissionDenied(f"Page {page_id} belongs to another tenant.", param="page_id", code="denied")
    return [session_scope(session), *([project_scope(project)] if project is not None else [])]


def _level(value: str | None) -> Fidelity:
    if value is None:
        return Fidelity.FULL
    level = LEVEL_NAMES.get(value)
    if level is None:
        raise InvalidRequest(f"Invalid level: expected one of {', '.join(LEVEL_NAMES)}.", param="level")
    return level


def _session(request: Request) -> str:
    session = _param(request, "session", SESSION_HEADER)
    if session is None:
        raise InvalidRequest(
            "Missing session: pass the 'session' query parameter or the X-ClawVM-Session header.", param="session"
        )
    return session


def _param(request: Request, name: str, header: str) -> str | None:
    """A query parameter, else a header, as a safe id; None when neither is given."""
    for value in (request.query_params.get(name), request.headers.get(header)):
        if value is not None and value.strip():
            return safe_id(value.strip())
    return None


async def _fetch(services: Services, tenant: str, scopes: list[str], page_id: str) -> Page:
    for scope_id in scopes:
        try:
            found = (await services.sessions.store.get_pages(tenant, scope_id, [page_id])).get(page_id)
        except StoreError as exc:
            raise store_failure(exc, f"page {page_id}", code="backend_error") from exc
        if found is not None:
            return found
    raise NotFound(f"No page {page_id} in {' or '.join(scopes)}.", param="page_id", code="no_match")


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
