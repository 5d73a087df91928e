from __future__ import annotations

import json

import pytest

from gateway.api import errors
from gateway.api.errors import (
    AuthenticationFailed,
    ContextLengthExceeded,
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
    error_body,
    error_response,
    from_status,
)


@pytest.mark.parametrize(
    ("cls", "status", "kind", "code"),
    [
        (InvalidRequest, 400, "invalid_request_error", None),
        (ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded"),
        (AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
        (PermissionDenied, 403, "permission_error", None),
        (NotFound, 404, "invalid_request_error", None),
        (PayloadTooLarge, 413, "invalid_request_error", None),
        (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
        (UpstreamError, 502, "api_error", None),
        (UpstreamTimeout, 504, "api_error", "upstream_timeout"),
        (ServiceUnavailable, 503, "api_error", None),
    ],
)
def test_each_error_carries_its_status_type_and_code(
    cls: type[GatewayError], status: int, kind: str, code: str | None
) -> None:
    exc = cls("boom")
    assert (exc.status_code, exc.type, exc.code, exc.param, exc.message) == (status, kind, code, None, "boom")
    assert str(exc) == "boom"


def test_the_tree_nests_where_a_caller_would_catch_broadly() -> None:
    assert issubclass(ContextLengthExceeded, InvalidRequest)
    assert issubclass(UpstreamTimeout, UpstreamError)
    assert all(issubclass(c, GatewayError) for c in _error_classes())


def test_module_docstring_shows_every_error_class() -> None:
    doc = errors.__doc__ or ""
    assert all(c.__name__ in doc for c in _error_classes())


def test_constructor_overrides_param_code_and_status_per_instance() -> None:
    exc = InvalidRequest("bad temperature", param="temperature", code="invalid_value", status_code=422)
    assert (exc.param, exc.code, exc.status_code) == ("temperature", "invalid_value", 422)
    assert (InvalidRequest.code, InvalidRequest("x").status_code) == (None, 400)


def test_error_body_is_openai_shaped() -> None:
    exc = ContextLengthExceeded("too long", param="messages")
    assert error_body(exc) == {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def test_error_response_sets_status_body_and_headers() -> None:
    response = error_response(RateLimited("slow down"), headers={"Retry-After": "3"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(bytes(response.body)) == error_body(RateLimited("slow down"))


@pytest.mark.parametrize(
    ("status", "cls", "relayed"),
    [
        (400, InvalidRequest, 400),
        (401, AuthenticationFailed, 401),
        (403, PermissionDenied, 403),
        (404, NotFound, 404),
        (408, UpstreamTimeout, 504),
        (413, PayloadTooLarge, 413),
        (422, InvalidRequest, 422),
        (429, RateLimited, 429),
        (500, UpstreamError, 500),
        (502, UpstreamError, 502),
        (503, ServiceUnavailable, 503),
        (504, UpstreamTimeout, 504),
        (529, UpstreamError, 529),
        (200, UpstreamError, 502),
    ],
)
def test_from_status_picks_the_class_and_keeps_unowned_statuses(
    status: int, cls: type[GatewayError], relayed: int
) -> None:
    exc = from_status(status, "upstream said no", code="some_code")
    assert type(exc) is cls
    assert (exc.status_code, exc.message, exc.code) == (relayed, "upstream said no", "some_code")


def _error_classes() -> list[type[GatewayError]]:
    found = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, GatewayError)]
    return [c for c in found if c is not GatewayError]


def test_headers_too_large_is_431_in_openai_shape() -> None:
    exc = HeadersTooLarge("The request line and headers exceed the limit.")
    assert error_body(exc) == {
        "error": {
            "message": "The request line and headers exceed the limit.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_fields_too_large",
        }
    }
    assert error_response(exc).status_code == 431 and type(from_status(431, "x")) is HeadersTooLarge


def test_anthropic_routes_get_anthropics_shape_and_type_names() -> None:
    import json as _json

    from gateway.api.errors import anthropic_path, error_response_for

    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert anthropic_path(path)
        answer = _json.loads(error_response_for(path, RateLimited("slow down")).body)
        assert answer == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert not anthropic_path("/v1/messagesx") and not anthropic_path("/v1/chat/completions")
    assert _json.loads(error_response_for("/v1/chat/completions", RateLimited("x")).body)["error"]["code"]
    kinds = {exc.status_code: exc for exc in (PayloadTooLarge("x"), ServiceUnavailable("x"), UpstreamTimeout("x"))}
    shaped = {s: _json.loads(error_response_for("/v1/messages", e).body)["error"]["type"] for s, e in kinds.items()}
    assert shaped == {413: "request_too_large", 503: "api_error", 504: "timeout_error"}
