from __future__ import annotations

import copy

import pytest

from gateway import jsonio
from gateway.turns.services import ToolTokens
from gateway.upstream.tokens import TiktokenCounter, count_tools
from gateway.wire.chat import CHAT
from gateway.wire.chat_transcripts import TranscriptCache
from gateway.wire.messages import MESSAGES

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    }
]


class Counting:
    """A real tiktoken counter that tells how many texts it counted."""

    def __init__(self, counter: TiktokenCounter, name: str | None = None) -> None:
        self.inner, self.name, self.texts = counter, name or counter.name, 0

    def count(self, text: str) -> int:
        self.texts += 1
        return self.inner.count(text)


@pytest.fixture
def tiktoken_counter(gpt4o_counter: TiktokenCounter) -> TiktokenCounter:
    return gpt4o_counter


def test_tools_are_counted_once_by_identity_or_by_content(tiktoken_counter: TiktokenCounter) -> None:
    counter, tools = Counting(tiktoken_counter), ToolTokens()
    expected = count_tools(tiktoken_counter, TOOLS)
    assert tools.count(counter, TOOLS) == expected  # type: ignore[arg-type]
    assert tools.count(counter, TOOLS) == expected  # type: ignore[arg-type]
    assert tools.count(counter, copy.deepcopy(TOOLS)) == expected  # type: ignore[arg-type]
    assert counter.texts == 1


def test_changed_tools_and_another_encoding_are_counted_again(tiktoken_counter: TiktokenCounter) -> None:
    counter, tools = Counting(tiktoken_counter), ToolTokens()
    changed = copy.deepcopy(TOOLS)
    changed[0]["function"]["description"] = "Read any file of the repository, whole or in part."
    first = tools.count(counter, TOOLS)  # type: ignore[arg-type]
    assert tools.count(counter, changed) == count_tools(tiktoken_counter, changed) != first  # type: ignore[arg-type]
    other = Counting(tiktoken_counter, name="another-encoding")
    assert tools.count(other, TOOLS) == first  # type: ignore[arg-type]
    assert (counter.texts, other.texts) == (2, 1)
    assert tools.count(counter, []) == tools.count(counter, None) == 0  # type: ignore[arg-type]


def test_a_body_read_by_its_appended_bytes_keeps_the_tools_of_the_body_it_extends(
    tiktoken_counter: TiktokenCounter,
) -> None:
    """What makes the identity hit the common case: an agent's next request."""
    messages = [{"role": "user", "content": "x" * 20_000}]
    first = jsonio.dumps({"model": "gpt-4o", "tools": TOOLS, "messages": messages})
    later = jsonio.dumps(
        {"model": "gpt-4o", "tools": TOOLS, "messages": [*messages, {"role": "assistant", "content": "ok"}]}
    )
    cache = TranscriptCache()
    before = CHAT.parse(first, cache.parser("t\x1fs"))
    after = CHAT.parse(later, cache.parser("t\x1fs"))
    assert after.body["tools"] is before.body["tools"]
    counter, tools = Counting(tiktoken_counter), ToolTokens()
    tools.count(counter, before.body["tools"])  # type: ignore[arg-type]
    tools.count(counter, after.body["tools"])  # type: ignore[arg-type]
    assert counter.texts == 1


def test_the_recall_tool_is_counted_once_per_encoding_and_wire(tiktoken_counter: TiktokenCounter) -> None:
    counter, tools = Counting(tiktoken_counter), ToolTokens()
    chat = tools.recall(counter, CHAT, "clawvm_recall")  # type: ignore[arg-type]
    assert chat == count_tools(tiktoken_counter, [CHAT.recall_tool("clawvm_recall")])
    assert tools.recall(counter, CHAT, "clawvm_recall") == chat  # type: ignore[arg-type]
    messages = tools.recall(counter, MESSAGES, "clawvm_recall")  # type: ignore[arg-type]
    assert messages == count_tools(tiktoken_counter, [MESSAGES.recall_tool("clawvm_recall")])
    assert counter.texts == 2


def test_the_caches_stay_within_their_capacity(tiktoken_counter: TiktokenCounter) -> None:
    counter, tools = Counting(tiktoken_counter), ToolTokens(capacity=2)
    lists = [[{**TOOLS[0], "index": i}] for i in range(3)]
    for tool_list in lists:
        tools.count(counter, tool_list)  # type: ignore[arg-type]
    tools.count(counter, lists[0])  # dropped first: counted again
    assert counter.texts == 4
