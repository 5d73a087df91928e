"""Context windows from litellm's bundled model map, read offline without importing litellm.

litellm ships `model_prices_and_context_window_backup.json` (≈4,200 entries). We read it
once (~25 ms) and answer two questions: how many input tokens a model accepts, and which
provider serves it. A model the map does not know is still served; its window comes from
config.yaml or `server.default_context_window`.

Which field is the window:
- `max_input_tokens` when present: it is the context window.
- `max_tokens` is a legacy field: litellm sets it to the max *output* when the provider
  gives one, else to the max input. It is used only when `max_input_tokens` is absent and
  the entry is a text-generation model (mode chat, completion or responses). Either way it
  is never larger than the real window (a reply has to fit in the context), so the budget
  it gives may be small but never makes the upstream reject the prompt; an arbitrary
  default could.
- Anything else (image, audio, embedding entries without a window) counts as unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from gateway.upstream.tokens import litellm_package_dir

if TYPE_CHECKING:
    from gateway.settings import ModelOverride

MAP_FILE = "model_prices_and_context_window_backup.json"
TEXT_MODES = frozenset({"chat", "completion", "responses"})
SPEC_ENTRY = "sample_spec"  # the map's field documentation, not a model
WindowSource = Literal["config", "model_map", "default"]


class ModelMapError(RuntimeError):
    """The bundled model map is missing or unreadable."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    context_window: int | None
    provider: str | None


class ModelCatalog:
    """Model name -> context window and provider, from litellm's bundled map."""

    def __init__(self, entries: Mapping[str, ModelInfo]) -> None:
        self._entries = MappingProxyType(dict(entries))

    @classmethod
    def load(cls, path: Path | None = None) -> ModelCatalog:
        source = path if path is not None else litellm_package_dir() / MAP_FILE
        return cls(parse_model_map(read_json(source)))

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, model: str) -> ModelInfo | None:
        for name in lookup_names(model):
            found = self._entries.get(name)
            if found is not None:
                return found
        return None

    def context_window(self, model: str) -> int | None:
        found = self.info(model)
        return found.context_window if found is not None else None

    def provider(self, model: str) -> str | None:
        found = self.info(model)
        return found.provider if found is not None else None


def lookup_names(model: str) -> tuple[str, ...]:
    """The exact name, then with provider prefixes stripped one by one, then "openai/<name>"."""
    parts = model.split("/")
    stripped = tuple("/".join(parts[i:]) for i in range(1, len(parts)))
    return (model, *stripped, f"openai/{model}")


def read_json(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelMapError(f"cannot read the model map {path}: {exc}") from exc


def parse_model_map(raw: object) -> dict[str, ModelInfo]:
    if not isinstance(raw, dict):
        raise ModelMapError("the model map is not a JSON object")
    return {name: entry_info(entry) for name, entry in raw.items() if isinstance(entry, dict) and name != SPEC_ENTRY}


def entry_info(entry: Mapping[str, object]) -> ModelInfo:
    provider = entry.get("litellm_provider")
    return ModelInfo(entry_window(entry), provider if isinstance(provider, str) else None)


def entry_window(entry: Mapping[str, object]) -> int | None:
    declared = entry.get("max_input_tokens")
    if declared is not None:
        return positive_int(declared)  # a malformed value means unknown, not a guess
    if entry.get("mode") in TEXT_MODES:
        return positive_int(entry.get("max_tokens"))
    return None


def positive_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def resolve_window(
    model: str,
    catalog: ModelCatalog,
    overrides: Mapping[str, ModelOverride],
    default_window: int,
) -> tuple[int, WindowSource]:
    """The context window for `model` and where it came from: config.yaml's `models`
    section wins, then litellm's model map, then `server.default_context_window`."""
    override = overrides.get(model)
    if override is not None and override.context_window is not None:
        return override.context_window, "config"
    window = catalog.context_window(model)
    if window is not None:
        return window, "model_map"
    return default_window, "default"
