"""Every other `/v1/*` endpoint (models, embeddings, files, ...): relayed to the tenant's upstream.

A GET is retried like a chat completion (gateway.upstream.retry); other methods are sent once, since files,
batches, threads and stored responses are not idempotent.

Before anything is sent:

- The path is checked segment by segment as the client sent it (`relayed_path`): a `.` or `..`
  segment (plain or percent-encoded), an empty segment, an encoded `/` or `\\`, a `%` left after
  decoding (double encoding), `?`, `#` or a control character is refused with 400, so a relayed
  request never leaves `/v1` nor the `api_base` path prefix.
- Only the stateless `SHARED_ROUTES` (models, embeddings, moderations, completions, audio, images)
  are relayed through a key tenants share. Every other route (`shared_route` is false: files,
  uploads, batches, stored responses, stored chat completions, fine-tuning, vector stores,
  assistants, threads, containers, evals, realtime sessions, organization, ..., any DELETE, and any
  route this list does not know) is refused with 403 unless the tenant brings its own upstream key
  or the operator allowed them (`UpstreamSettings.owns_account`): through a key shared by tenants,
  one tenant could read or delete another's objects. `POST /v1/responses` is not relayed here: it
  is a managed turn (gateway.wire.responses), sent with `store: false` through a shared key and its
  `previous_response_id` resolved by the gateway; stored responses (`GET`/`DELETE
  /v1/responses/{id}`, their `input_items`) stay account-level.
- The client's `openai-organization` / `openai-project` headers pass only with the tenant's own key
  (`forward_client_key` or a tenant `api_key`): with the operator's key they would pick the
  operator's organization or project.
"""

from __future__ import annotations

from collections.abc import Awaitable
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.errors import InvalidRequest, PermissionDenied
from gateway.api.http import read_body, respond, retries_counted, stream_faults_counted
from gateway.settings import Tenant
from gateway.turns.services import Services
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.retry import RetryPolicy, with_retries
from gateway.upstream.targets import retry_policy, upstream_target

PASSED_HEADERS = ("content-type", "accept", "openai-beta")
ACCOUNT_HEADERS = ("openai-organization", "openai-project")  # only with the tenant's own key
# Routes relayed through a shared key: stateless calls that store nothing on the upstream account.
SHARED_ROUTES: dict[str, frozenset[str]] = {
    "models": frozenset({"GET"}),
    "embeddings": frozenset({"POST"}),
    "moderations": frozenset({"POST"}),
    "completions": frozenset({"POST"}),
    "audio/speech": frozenset({"POST"}),
    "audio/transcriptions": frozenset({"POST"}),
    "audio/translations": frozenset({"POST"}),
    "images/generations": frozenset({"POST"}),
    "images/edits": frozenset({"POST"}),
    "images/variations": frozenset({"POST"}),
}
_NOT_IN_SEGMENT = frozenset("/\\%?#")


async def relay(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    path = relayed_path(request.scope.get("raw_path") or request.url.path.encode())
    if not tenant.upstream.owns_account and not shared_route(request.method, path):
        raise PermissionDenied(_account_level(request.method, path, tenant))
    body = await read_body(request, services.settings.server.max_body_bytes) if request.method != "GET" else None
    passed = PASSED_HEADERS + (ACCOUNT_HEADERS if tenant.upstream.own_key else ())
    headers = {name: request.headers[name] for name in passed if name in request.headers}
    target = upstream_target(tenant, request.headers)
    policy = retry_policy(tenant) if request.method == "GET" else RetryPolicy(retries=0)

    def attempt() -> Awaitable[UpstreamResponse]:
        return services.upstream.send(target, request.method, path, body or None, headers, request.url.query)

    upstream = await with_retries(attempt, policy, on_retry=retries_counted(services.metrics))
    log_content = services.settings.server.log_content
    return await respond(upstream, {}, stream_faults_counted(services.metrics), log_content=log_content)


def relayed_path(raw_path: bytes) -> str:
    """The path under `/v1` to relay (e.g. "/files/file-1"), from the request target as sent;
    `InvalidRequest` for any segment that could move it elsewhere (see the module docstring)."""
    raw = raw_path.split(b"?", 1)[0]
    segments = [_segment(part) for part in raw.split(b"/")[1:]]
    if not segments or segments[0] != "v1" or len(segments) < 2:
        raise InvalidRequest("a relayed path must be under /v1/", param="path")
    return "/" + "/".join(segments[1:])


def _segment(raw: bytes) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request path is not valid UTF-8 once percent-decoded", param="path") from None
    if text in ("", ".", ".."):
        raise InvalidRequest(
            "the request path has an empty, '.' or '..' segment (also percent-encoded); relayed paths "
            "must name a resource under /v1 directly",
            param="path",
        )
    if any(ch in _NOT_IN_SEGMENT or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise InvalidRequest(
            "the request path has an encoded '/', '\\\\', '%', '?', '#' or a control character in a segment",
            param="path",
        )
    return text


def shared_route(method: str, path: str) -> bool:
    """Whether `method path` (under /v1) is safe to relay through a key other tenants share."""
    route = path.strip("/")
    for prefix, methods in SHARED_ROUTES.items():
        if route == prefix or (prefix == "models" and route.startswith("models/")):
            return method in methods
    return False


def _account_level(method: str, path: str, tenant: Tenant) -> str:
    return (
        f"{method} /v1{path} is not relayed through the upstream key tenant {tenant.name!r} shares with others: "
        "account-level routes (files, uploads, batches, stored responses, fine-tuning, vector stores, "
        "assistants, ... and any DELETE) and routes unknown to this gateway would reach other tenants' objects. "
        "They are relayed for a tenant with its own upstream key (upstream.forward_client_key or a tenant "
        "upstream.api_key), or when the operator sets upstream.account_routes: true."
    )
