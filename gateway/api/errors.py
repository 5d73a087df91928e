"""Errors the gateway answers with, in OpenAI's JSON shape.

Every failure a client can see is a `GatewayError`. It carries the HTTP status and the four fields of
OpenAI's error object, so that SDKs built for OpenAI (which dispatch on the status code, then read
`error.message`/`error.code`) behave exactly as they would against OpenAI.

Hierarchy:

    GatewayError
    ├── InvalidRequest ............ 400 invalid_request_error
    │   └── ContextLengthExceeded . 400 invalid_request_error, code context_length_exceeded
    ├── AuthenticationFailed ...... 401 invalid_request_error, code invalid_api_key
    ├── PermissionDenied .......... 403 permission_error
    ├── NotFound .................. 404 invalid_request_error
    ├── PayloadTooLarge ........... 413 invalid_request_error
    ├── HeadersTooLarge ........... 431 invalid_request_error, code request_header_fields_too_large
    ├── RateLimited ............... 429 rate_limit_error, code rate_limit_exceeded
    ├── UpstreamError ............. 502 api_error (an upstream failure relayed to the client)
    │   ├── UpstreamUnreachable ... 502 api_error, code upstream_unreachable (no response began)
    │   └── UpstreamTimeout ....... 504 api_error, code upstream_timeout
    ├── ServiceUnavailable ........ 503 api_error
    └── ClientDisconnected ........ 499 (nginx's "client closed request": counted, never seen)

Routes of Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) answer in
Anthropic's shape instead, `{"type": "error", "error": {"type", "message"}}` with Anthropic's type
names (`anthropic_error_body`), whoever raised the error: a route, or a middleware before any
route (`error_response_for` picks the shape by path: 401, 413, 429, 431, 500, ...).

`from_status` picks the class for a status an upstream reported, keeping that status when no class
owns it (an upstream 500 stays a 500, as an `UpstreamError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from starlette.responses import JSONResponse

from gateway.jsonio import JSONAnswer


class ErrorObject(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(TypedDict):
    error: ErrorObject


class GatewayError(Exception):
    """Base class. Class attributes are defaults; the constructor can override any of them."""

    status_code: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class InvalidRequest(GatewayError):
    status_code = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationFailed(GatewayError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    type = "permission_error"


class NotFound(GatewayError):
    status_code = 404
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status_code = 413
    type = "invalid_request_error"


class HeadersTooLarge(GatewayError):
    status_code = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class RateLimited(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status_code = 502
    type = "api_error"


class UpstreamUnreachable(UpstreamError):
    """No response began: connection refused, reset or closed before the status line (safe to retry)."""

    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status_code = 503
    type = "api_error"


class ClientDisconnected(GatewayError):
    """The agent hung up before its answer: the upstream call was cancelled. Only metrics see it."""

    status_code = 499
    type = "invalid_request_error"
    code = "client_disconnected"


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    408: UpstreamTimeout,
    413: PayloadTooLarge,
    431: HeadersTooLarge,
    429: RateLimited,
    503: ServiceUnavailable,
    504: UpstreamTimeout,
}


def from_status(status: int, message: str, *, code: str | None = None) -> GatewayError:
    """The error for a status an upstream reported; unowned 4xx/5xx statuses are kept as they are."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(message, code=code)
    if 400 <= status < 500:
        return InvalidRequest(message, code=code, status_code=status)
    return UpstreamError(message, code=code, status_code=status if status >= 500 else None)


ANTHROPIC_PATH = "/v1/messages"
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_body(exc: GatewayError) -> dict[str, Any]:
    """Anthropic's error shape: `{"type": "error", "error": {"type", "message"}}`."""
    kind = ANTHROPIC_TYPES.get(exc.status_code, "api_error" if exc.status_code >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def anthropic_path(path: str) -> bool:
    """A route of Anthropic's Messages API, whose errors come in Anthropic's shape."""
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def error_response_for(path: str, exc: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """`exc` in the shape of the API `path` belongs to: Anthropic's on its routes, else OpenAI's."""
    body = anthropic_error_body(exc) if anthropic_path(path) else error_body(exc)
    return JSONAnswer(body, status_code=exc.status_code, headers=headers)


def error_body(exc: GatewayError) -> ErrorBody:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def error_response(exc: GatewayError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONAnswer(error_body(exc), status_code=exc.status_code, headers=headers)
