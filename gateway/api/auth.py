"""API key -> tenant.

The key comes from `Authorization: Bearer <key>`, else the `api-key` header (Azure-style
clients), else `x-api-key` (Anthropic-style clients). In an open setup (no tenants in
config.yaml) every request, with or without a key, belongs to the "default" tenant.

Otherwise the key is checked against every configured key in constant time: both sides are
hashed to SHA-256 digests (equal lengths, so `hmac.compare_digest` leaks nothing about
length) and every digest is compared, with no early exit, so timing does not reveal which
tenant matched or how far the scan got. Keys are never logged or echoed: the error says only
that a key is missing or not valid.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from gateway.api.errors import AuthenticationFailed
from gateway.settings import Settings, Tenant

KEY_HEADERS = ("api-key", "x-api-key")


class KeyRing:
    """The tenants' key digests, built once from `Settings` at start-up."""

    def __init__(self, settings: Settings) -> None:
        self._open = settings.open
        self._default = settings.tenants[0]
        self._entries = tuple((_digest(key), tenant) for tenant in settings.tenants for key in tenant.api_keys)

    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        if self._open:
            return self._default
        key = client_key(headers)
        if key is None:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        tenant = self._match(_digest(key))
        if tenant is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return tenant

    def _match(self, digest: bytes) -> Tenant | None:
        found: Tenant | None = None
        for candidate, tenant in self._entries:
            if hmac.compare_digest(candidate, digest):
                found = tenant
        return found


def authenticate(settings: Settings, headers: Mapping[str, str]) -> Tenant:
    """One-shot form of `KeyRing(settings).authenticate(headers)`; a server builds the
    `KeyRing` once and reuses it."""
    return KeyRing(settings).authenticate(headers)


def client_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries, from the first header that has one (names matched
    case-insensitively)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    bearer = _bearer(lowered.get("authorization", ""))
    if bearer:
        return bearer
    for name in KEY_HEADERS:
        value = lowered.get(name, "").strip()
        if value:
            return value
    return None


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
