"""Offline token counting with tiktoken and litellm's bundled BPE files.

tiktoken downloads its BPE files on first use unless `TIKTOKEN_CACHE_DIR` points at a copy.
litellm ships cl100k_base, o200k_base and p50k_base (o200k_harmony reuses o200k's file) in
its package directory; `prepare_offline` points tiktoken there without importing litellm
(the import costs ~3 s and rewrites `TIKTOKEN_CACHE_DIR` itself). It is called by the CLI
and the app at start-up, never at import. `Tokenizers` refuses to load an encoding whose
file is not in the cache directory, so a missing file is a clear error, not a download.

`count_tools` counts a request's tool schemas as the policy core does (`policies.tokens`); a chat
`messages` array is counted by the chat adapter (`gateway.wire.chat_tokens`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping, MutableMapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from policies.tokens import TokenCounter

if TYPE_CHECKING:
    import tiktoken

BLOB_BASE = "https://openaipublic.blob.core.windows.net/encodings/"
# encoding -> the BPE file tiktoken reads for it (its cache key is the sha1 of the URL)
ENCODING_FILES: Mapping[str, str] = {
    "cl100k_base": "cl100k_base.tiktoken",
    "o200k_base": "o200k_base.tiktoken",
    "o200k_harmony": "o200k_base.tiktoken",
    "p50k_base": "p50k_base.tiktoken",
}
OFFLINE_ENCODINGS = frozenset(ENCODING_FILES)
DEFAULT_ENCODING = "o200k_base"  # for models tiktoken does not know
FALLBACK_ENCODING = "cl100k_base"  # for encodings whose files are not bundled (r50k_base, gpt2)
TOOL_OVERHEAD = 8
MEMO_COUNT_CHARS = 512  # texts up to this long have their counts remembered (`TiktokenCounter`) ...
MEMO_COUNTS = 16_384  # ... the most recently counted this many of them, per encoding (8M characters at most)
MODEL_ENCODINGS = 1024  # model names whose encoding is remembered (`encoding_for_model`)


class TokenizerError(RuntimeError):
    """An encoding cannot be loaded offline (its BPE file is missing)."""


def litellm_package_dir() -> Path:
    """litellm's installed package directory, located without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("litellm is not installed: its bundled tokenizer files are needed offline")
    return Path(next(iter(spec.submodule_search_locations)))


def tiktoken_cache_dir() -> Path:
    return litellm_package_dir() / "litellm_core_utils" / "tokenizers"


def prepare_offline(env: MutableMapping[str, str]) -> None:
    """Point tiktoken at litellm's bundled files and keep litellm and HF off the network."""
    env.setdefault("TIKTOKEN_CACHE_DIR", str(tiktoken_cache_dir()))
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["HF_HUB_OFFLINE"] = "1"


def cache_file_name(encoding: str) -> str:
    """The file name tiktoken looks for in its cache directory for `encoding`."""
    return hashlib.sha1((BLOB_BASE + ENCODING_FILES[encoding]).encode()).hexdigest()


class TiktokenCounter:
    """`policies.tokens.TokenCounter` over one tiktoken encoding.

    `encode_ordinary` treats special-token text such as "<|endoftext|>" as plain text,
    so counting never raises on what an agent happens to paste. Every token stands for at least
    one byte of the text's UTF-8 (a lone surrogate is counted as U+FFFD, three bytes, as
    `policies.tokens.utf8_bytes` counts it): `at_most_bytes`.

    A text of up to MEMO_COUNT_CHARS characters is counted once while it is among the
    MEMO_COUNTS most recently counted: the sentences of a system prompt's rules, tool names, the
    pointer lines of pages, counted again by every session of an agent and every turn of one.
    """

    at_most_bytes = True

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self._remembered = lru_cache(maxsize=MEMO_COUNTS)(self._counted)

    @property
    def name(self) -> str:
        return self._encoding.name

    def count(self, text: str) -> int:
        if len(text) <= MEMO_COUNT_CHARS:
            return self._remembered(text)
        return self._counted(text)

    def _counted(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))


class Tokenizers:
    """One `TiktokenCounter` per encoding, loaded on first use.

    `cache_dir` must be the directory tiktoken reads (the `TIKTOKEN_CACHE_DIR` that
    `prepare_offline` set); it defaults to litellm's bundled directory.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._cache_dir = cache_dir if cache_dir is not None else tiktoken_cache_dir()
        self._counters: dict[str, TiktokenCounter] = {}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Tokenizers:
        configured = env.get("TIKTOKEN_CACHE_DIR")
        return cls(Path(configured) if configured else None)

    def for_model(self, model: str, override_encoding: str | None = None) -> TiktokenCounter:
        name = override_encoding if override_encoding is not None else encoding_for_model(model)
        return self.for_encoding(name)

    def for_encoding(self, name: str) -> TiktokenCounter:
        counter = self._counters.get(name)
        if counter is None:
            counter = TiktokenCounter(self._load(name))
            self._counters[name] = counter
        return counter

    def _load(self, name: str) -> tiktoken.Encoding:
        if name not in ENCODING_FILES:
            available = ", ".join(sorted(ENCODING_FILES))
            raise TokenizerError(f"encoding {name!r} is not available offline; use one of {available}")
        path = self._cache_dir / cache_file_name(name)
        if not path.is_file():
            raise TokenizerError(f"the tiktoken file for {name} is missing: expected {path}")
        import tiktoken

        return tiktoken.get_encoding(name)


@lru_cache(maxsize=MODEL_ENCODINGS)
def encoding_for_model(model: str) -> str:
    """The offline encoding for `model`: tiktoken's choice, provider prefixes stripped; the
    answers for the MODEL_ENCODINGS most recent models are remembered (asked on every request)."""
    from tiktoken.model import encoding_name_for_model

    for candidate in (model, model.rsplit("/", 1)[-1]):
        try:
            return offline_encoding(encoding_name_for_model(candidate))
        except KeyError:
            continue
    return DEFAULT_ENCODING


def offline_encoding(name: str) -> str:
    return name if name in OFFLINE_ENCODINGS else FALLBACK_ENCODING


def count_tools(counter: TokenCounter, tools: Sequence[object] | None) -> int:
    """Tokens the tool schemas cost: each tool's compact, key-sorted JSON plus 8."""
    if not tools:
        return 0
    return sum(counter.count(compact_json(tool)) + TOOL_OVERHEAD for tool in tools)


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
