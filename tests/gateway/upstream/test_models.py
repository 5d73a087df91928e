from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from gateway.settings import ModelOverride
from gateway.upstream.models import ModelCatalog, ModelMapError, lookup_names, resolve_window


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.load()


def test_bundled_map_loads(catalog: ModelCatalog) -> None:
    assert len(catalog) > 1000


@pytest.mark.parametrize(
    ("model", "window"),
    [("gpt-4o", 128000), ("gpt-3.5-turbo", 16385), ("openai/gpt-4o", 128000), ("gpt-4", 8192)],
)
def test_known_windows(catalog: ModelCatalog, model: str, window: int) -> None:
    assert catalog.context_window(model) == window


def test_provider(catalog: ModelCatalog) -> None:
    assert catalog.provider("gpt-4o") == "openai"
    assert catalog.provider("openai/gpt-4o") == "openai"
    assert catalog.provider("my-local-llama") is None


def test_unknown_model(catalog: ModelCatalog) -> None:
    assert catalog.context_window("my-local-llama") is None
    assert catalog.context_window("sample_spec") is None  # the map's field documentation


def test_lookup_names() -> None:
    assert lookup_names("gpt-4o") == ("gpt-4o", "openai/gpt-4o")
    assert lookup_names("openrouter/openai/gpt-4o") == (
        "openrouter/openai/gpt-4o",
        "openai/gpt-4o",
        "gpt-4o",
        "openai/openrouter/openai/gpt-4o",
    )


def write_map(tmp_path: Path, entries: dict[str, object]) -> ModelCatalog:
    path = tmp_path / "map.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return ModelCatalog.load(path)


def test_window_field_rules(tmp_path: Path) -> None:
    catalog = write_map(
        tmp_path,
        {
            "sample_spec": {"max_input_tokens": "docs", "mode": "chat"},
            "exact": {"max_input_tokens": 1000, "max_tokens": 10, "mode": "chat", "litellm_provider": "p"},
            "legacy-chat": {"max_tokens": 4096, "mode": "chat"},
            "legacy-completion": {"max_tokens": 2048, "mode": "completion"},
            "legacy-image": {"max_tokens": 77, "mode": "image_generation"},
            "null-input": {"max_input_tokens": None, "max_tokens": 512, "mode": "chat"},
            "bad-input": {"max_input_tokens": "lots", "max_tokens": 512, "mode": "chat"},
            "zero": {"max_input_tokens": 0, "mode": "chat"},
            "flag": {"max_input_tokens": True, "mode": "chat"},
            "nothing": {"mode": "chat"},
            "openai/only-prefixed": {"max_input_tokens": 300},
            "not-an-object": 5,
        },
    )
    assert catalog.context_window("exact") == 1000
    assert catalog.provider("exact") == "p"
    assert catalog.context_window("legacy-chat") == 4096
    assert catalog.context_window("legacy-completion") == 2048
    assert catalog.context_window("legacy-image") is None
    assert catalog.context_window("null-input") == 512
    assert catalog.context_window("bad-input") is None
    assert catalog.context_window("zero") is None
    assert catalog.context_window("flag") is None
    assert catalog.context_window("nothing") is None
    assert catalog.context_window("only-prefixed") == 300
    assert catalog.context_window("vendor/exact") == 1000
    assert catalog.context_window("not-an-object") is None
    assert catalog.context_window("sample_spec") is None


def test_bad_map_files(tmp_path: Path) -> None:
    with pytest.raises(ModelMapError):
        ModelCatalog.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelMapError):
        ModelCatalog.load(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ModelMapError):
        ModelCatalog.load(tmp_path / "list.json")


def test_resolve_window(catalog: ModelCatalog) -> None:
    overrides = MappingProxyType(
        {"gpt-4o": ModelOverride(context_window=50000), "my-llama": ModelOverride(32768), "enc-only": ModelOverride()}
    )
    assert resolve_window("gpt-4o", catalog, overrides, 128000) == (50000, "config")
    assert resolve_window("my-llama", catalog, overrides, 128000) == (32768, "config")
    assert resolve_window("gpt-3.5-turbo", catalog, overrides, 128000) == (16385, "model_map")
    assert resolve_window("enc-only", catalog, overrides, 9999) == (9999, "default")
    assert resolve_window("totally-unknown", catalog, {}, 64000) == (64000, "default")
