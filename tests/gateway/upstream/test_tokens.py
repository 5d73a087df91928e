from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.upstream.tokens import (
    MEMO_COUNT_CHARS,
    OFFLINE_ENCODINGS,
    TiktokenCounter,
    TokenizerError,
    Tokenizers,
    cache_file_name,
    count_tools,
    encoding_for_model,
    prepare_offline,
    tiktoken_cache_dir,
)
from gateway.wire.chat_tokens import count_messages
from policies.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    CharCounter,
    utf8_bytes,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    env: dict[str, str] = {}
    prepare_offline(env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
        tokenizers = Tokenizers()
        for name in sorted(OFFLINE_ENCODINGS):
            tokenizers.for_encoding(name)  # load while the variable is set
    return tokenizers


# ---------------------------------------------------------------- offline set-up


def test_cache_dir_holds_the_bundled_files() -> None:
    directory = tiktoken_cache_dir()
    assert directory.parts[-3:] == ("litellm", "litellm_core_utils", "tokenizers")
    for name in OFFLINE_ENCODINGS:
        assert (directory / cache_file_name(name)).is_file()
    assert cache_file_name("cl100k_base") == "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def test_prepare_offline_sets_variables() -> None:
    env: dict[str, str] = {}
    prepare_offline(env)
    assert env == {
        "TIKTOKEN_CACHE_DIR": str(tiktoken_cache_dir()),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }


def test_prepare_offline_keeps_a_configured_cache_dir() -> None:
    env = {"TIKTOKEN_CACHE_DIR": "/opt/tiktoken"}
    prepare_offline(env)
    assert env["TIKTOKEN_CACHE_DIR"] == "/opt/tiktoken"


def network_isolation() -> list[str]:
    """`unshare -n` when this machine allows it (then there is no network at all)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, check=False)
    return [unshare, "-n"] if probe.returncode == 0 else []


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    from gateway.upstream.tokens import Tokenizers, prepare_offline
    from gateway.wire.chat_tokens import count_messages
    prepare_offline(os.environ)
    tokenizers = Tokenizers.from_env(os.environ)
    names = []
    for model in ["gpt-4o", "gpt-4", "text-davinci-003", "gpt-oss-120b", "davinci", "my-llama"]:
        counter = tokenizers.for_model(model)
        names.append(counter.name)
        assert counter.count("hello world, how are you?") > 0
    assert "litellm" not in sys.modules, "litellm must not be imported"
    print(",".join(names))
    """
)


def test_encodings_load_without_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env["PYTHONPATH"] = str(REPO)
    command = [*network_isolation(), sys.executable, "-c", OFFLINE_SCRIPT]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "o200k_base,cl100k_base,p50k_base,o200k_harmony,cl100k_base,o200k_base"


def test_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tiktoken file for o200k_base is missing"):
        Tokenizers(tmp_path).for_model("gpt-4o")


def test_unavailable_encoding_is_an_error(tokenizers: Tokenizers) -> None:
    with pytest.raises(TokenizerError, match="not available offline"):
        tokenizers.for_model("gpt-4o", override_encoding="r50k_base")


def test_from_env_uses_the_configured_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizers.from_env({"TIKTOKEN_CACHE_DIR": str(tmp_path)}).for_encoding("cl100k_base")


# ---------------------------------------------------------------- model -> encoding


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("azure/gpt-4.1-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),
        ("gpt-oss-120b", "o200k_harmony"),
        ("davinci", "cl100k_base"),  # r50k_base is not bundled
        ("gpt2", "cl100k_base"),
        ("my-local-llama", "o200k_base"),
        ("meta-llama/Llama-3.1-8B-Instruct", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding


def test_counters_are_cached_per_encoding(tokenizers: Tokenizers) -> None:
    first = tokenizers.for_model("gpt-4o")
    assert tokenizers.for_model("gpt-4.1") is first
    assert tokenizers.for_model("my-llama", override_encoding="cl100k_base") is tokenizers.for_model("gpt-4")
    assert first.name == "o200k_base"


# ---------------------------------------------------------------- counting


def test_counter_counts(tokenizers: Tokenizers) -> None:
    counter = tokenizers.for_model("gpt-4o")
    assert counter.count("") == 0
    assert counter.count("hello world, how are you?") == 7


def test_special_token_text_is_plain_text(tokenizers: Tokenizers) -> None:
    for name in sorted(OFFLINE_ENCODINGS):
        counter = tokenizers.for_encoding(name)
        assert counter.count("before <|endoftext|> after <|fim_prefix|>") > 3


def test_counter_is_deterministic(tokenizers: Tokenizers) -> None:
    text = "déjà vu — 日本語のテキスト\n" * 50
    counter = tokenizers.for_model("gpt-4o")
    assert counter.count(text) == counter.count(text) == TiktokenCounter.count(counter, text)


class CountingEncoding:
    """A tiktoken encoding that counts its calls."""

    def __init__(self, encoding: object) -> None:
        self.encoding, self.calls = encoding, 0
        self.name = "counted"

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return self.encoding.encode_ordinary(text)  # type: ignore[attr-defined]


def test_a_short_text_is_counted_once_and_counts_the_same(tokenizers: Tokenizers) -> None:
    """A rule sentence or a pointer line that every session counts again is encoded once; a text
    longer than MEMO_COUNT_CHARS (a tool result) is encoded every time, never kept."""
    plain = tokenizers.for_model("gpt-4o")
    encoding = CountingEncoding(plain._encoding)
    counter = TiktokenCounter(encoding)  # type: ignore[arg-type]
    short = "Never refund a ticket without the booking code."
    assert counter.count(short) == counter.count("".join(short)) == plain._counted(short)
    assert encoding.calls == 1
    long = "x = 1\n" * (MEMO_COUNT_CHARS // 6 + 1)
    assert len(long) > MEMO_COUNT_CHARS
    assert counter.count(long) == counter.count(long) == plain._counted(long)
    assert encoding.calls == 3
    assert counter.count("") == 0


def test_a_text_never_counts_more_tokens_than_its_utf8_bytes(tokenizers: Tokenizers) -> None:
    """The bound the append fast path judges by before counting (policies.tokens.at_most_bytes)."""
    texts = [
        "",
        "hello world, how are you?",
        "déjà vu — 日本語のテキスト 한국어 العربية",
        "emoji 🎉👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
        "lone \udc80 surrogate \ud800",
        "before <|endoftext|> after <|fim_prefix|>",
        "\x00\x01\x7f\u200b" * 40,
        "".join(chr(c) for c in range(0x20, 0x3000, 7)),
        " " * 300 + "\n" * 300,
    ]
    for name in sorted(OFFLINE_ENCODINGS):
        counter = tokenizers.for_encoding(name)
        assert counter.at_most_bytes is True
        for text in texts:
            assert counter.count(text) <= utf8_bytes(text)


def test_count_one_user_message(tokenizers: Tokenizers) -> None:
    counter = tokenizers.for_model("gpt-4o")
    messages = [{"role": "user", "content": "hello world, how are you?"}]
    assert count_messages(counter, messages) == MESSAGE_OVERHEAD + 7 + REPLY_PRIMING


def test_count_tools() -> None:
    counter = CharCounter()
    tool = {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}}
    same_tool_reordered = {"function": {"parameters": {"type": "object"}, "name": "read"}, "type": "function"}
    compact = '{"function":{"name":"read","parameters":{"type":"object"}},"type":"function"}'
    assert count_tools(counter, None) == 0
    assert count_tools(counter, []) == 0
    assert count_tools(counter, [tool]) == (len(compact) + 3) // 4 + 8
    assert count_tools(counter, [tool, same_tool_reordered]) == 2 * count_tools(counter, [tool])


def test_count_tools_with_tiktoken(tokenizers: Tokenizers) -> None:
    counter = tokenizers.for_model("gpt-4o")
    tool = {"type": "function", "function": {"name": "grep", "description": "Search files."}}
    assert count_tools(counter, [tool]) > 8
