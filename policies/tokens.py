"""Token arithmetic the selector relies on.

The core never loads a tokenizer: callers inject a `TokenCounter` (tiktoken in the gateway,
anything deterministic in tests). The framing constants follow OpenAI's published chat
accounting: every message costs a few tokens beyond its text, and the reply is primed.
"""

from __future__ import annotations

from typing import Protocol

from policies.transcript import ToolCall

MESSAGE_OVERHEAD = 4  # <|start|>role ... <|end|> plus a separator
NAME_OVERHEAD = 1
TOOL_CALL_OVERHEAD = 8  # id, type, function wrapper around name + arguments
REPLY_PRIMING = 3
IMAGE_TOKENS = 85  # OpenAI's flat charge for a low-detail image: counted for every non-text part


class TokenCounter(Protocol):
    """Counts a text's tokens; a text that is not empty counts at least one. A counter whose
    tokens are each at least one UTF-8 byte of the text (a BPE over bytes, as tiktoken's) says
    so with a true `at_most_bytes` attribute: a text's bytes then bound its count (`utf8_bytes`),
    which lets an append that fits by that bound be sent before it is counted."""

    def count(self, text: str) -> int: ...


def at_most_bytes(counter: TokenCounter) -> bool:
    """Whether `counter` never counts a text above its UTF-8 bytes (see `TokenCounter`)."""
    inner = counter.counter if isinstance(counter, CountOnce) else counter
    return getattr(inner, "at_most_bytes", False) is True


def utf8_bytes(text: str) -> int:
    """The UTF-8 length of `text` (a lone surrogate as three bytes): at least its tokens under a
    counter `at_most_bytes`."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def tool_calls_tokens(counter: TokenCounter, calls: tuple[ToolCall, ...]) -> int:
    return sum(TOOL_CALL_OVERHEAD + counter.count(c.name) + counter.count(c.arguments) for c in calls)


def framed(text_tokens: int, *, named: bool = False) -> int:
    """Tokens of one whole message whose text (and tool calls) count `text_tokens`."""
    return MESSAGE_OVERHEAD + text_tokens + (NAME_OVERHEAD if named else 0)


class CountOnce:
    """A `TokenCounter` that counts each distinct text once, then answers from its memo: one
    turn's pages count the same tool names, arguments and pointer lines at several levels.
    Made per ingest (policies.pagetable) and dropped with it, so the memo stays one turn's size;
    the counts are the wrapped counter's, so nothing it decides changes."""

    __slots__ = ("counter", "counts")

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.counts: dict[str, int] = {}

    def count(self, text: str) -> int:
        tokens = self.counts.get(text)
        if tokens is None:
            tokens = self.counts[text] = self.counter.count(text)
        return tokens


def count_once(counter: TokenCounter) -> TokenCounter:
    """`counter` with a fresh memo (an existing memo is kept)."""
    return counter if isinstance(counter, CountOnce) else CountOnce(counter)


class CharCounter:
    """A deterministic stand-in: one token per four characters, rounded up."""

    at_most_bytes = True  # a character is at least one byte

    def count(self, text: str) -> int:
        return (len(text) + 3) // 4
