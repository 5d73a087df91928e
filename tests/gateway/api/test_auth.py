from __future__ import annotations

import hmac
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from gateway.api.auth import KeyRing, authenticate, client_key
from gateway.api.errors import AuthenticationFailed
from gateway.settings import Settings, load_settings

CONFIG = """
tenants:
  acme:
    api_keys: [sk-acme-1, sk-acme-2]
  beta:
    api_keys: [sk-beta]
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return load_settings(path, {})


@pytest.mark.parametrize(
    ("headers", "tenant"),
    [
        ({"Authorization": "Bearer sk-acme-1"}, "acme"),
        ({"authorization": "bearer sk-acme-2"}, "acme"),
        ({"Authorization": "Bearer   sk-beta  "}, "beta"),
        ({"api-key": "sk-beta"}, "beta"),
        ({"X-Api-Key": "sk-acme-1"}, "acme"),
    ],
)
def test_key_selects_tenant(settings: Settings, headers: dict[str, str], tenant: str) -> None:
    assert KeyRing(settings).authenticate(headers).name == tenant
    assert authenticate(settings, headers).name == tenant


def test_starlette_headers(settings: Settings) -> None:
    headers = Headers(raw=[(b"authorization", b"Bearer sk-beta")])
    assert KeyRing(settings).authenticate(headers).name == "beta"


def test_authorization_wins_over_other_headers(settings: Settings) -> None:
    headers = {"Authorization": "Bearer sk-acme-1", "x-api-key": "sk-beta"}
    assert authenticate(settings, headers).name == "acme"


def test_non_bearer_authorization_falls_through(settings: Settings) -> None:
    headers = {"Authorization": "Basic c2stYmV0YQ==", "x-api-key": "sk-beta"}
    assert authenticate(settings, headers).name == "beta"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}, {"api-key": "  "}],
)
def test_missing_key_is_rejected(settings: Settings, headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(settings, headers)
    assert caught.value.status_code == 401
    assert "Missing API key" in caught.value.message


@pytest.mark.parametrize("key", ["sk-wrong", "sk-acme", "sk-acme-1x", "SK-ACME-1", "x" * 5000, "ключ"])
def test_unknown_key_is_rejected_without_echo(settings: Settings, key: str) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(settings, {"Authorization": f"Bearer {key}"})
    assert key not in str(caught.value)
    assert key not in repr(caught.value)


def test_open_mode_accepts_anything() -> None:
    settings = load_settings(None, {})
    ring = KeyRing(settings)
    assert ring.authenticate({}).name == "default"
    assert ring.authenticate({"Authorization": "Bearer whatever"}).name == "default"
    assert ring.authenticate({"Authorization": "garbage"}) is settings.tenants[0]


def test_every_key_is_compared(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching the first key must not skip the others (no early exit)."""
    ring = KeyRing(settings)
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert ring.authenticate({"Authorization": "Bearer sk-acme-1"}).name == "acme"
    assert len(calls) == 3
    assert set(calls) == {32}  # digests: equal lengths whatever the key


def test_client_key() -> None:
    assert client_key({"Authorization": "Bearer abc"}) == "abc"
    assert client_key({"api-key": "def"}) == "def"
    assert client_key({"x-api-key": "ghi"}) == "ghi"
    assert client_key({"Authorization": "Token abc"}) is None
    assert client_key({}) is None
