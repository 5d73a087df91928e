"""Tokens of a chat `messages` array (`gateway.wire.chat_tokens`), framed as the policy core frames pages."""

from __future__ import annotations

from gateway.wire.chat_tokens import count_messages
from policies.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    NAME_OVERHEAD,
    REPLY_PRIMING,
    TOOL_CALL_OVERHEAD,
    CharCounter,
)


def test_count_messages_framing() -> None:
    counter = CharCounter()
    messages = [
        {"role": "system", "content": "x" * 40},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "efgh"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": '{"path":"a.py"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "y" * 9},
    ]
    expected = (
        (MESSAGE_OVERHEAD + 10)
        + (MESSAGE_OVERHEAD + NAME_OVERHEAD + 2 + 2 * IMAGE_TOKENS)
        + (MESSAGE_OVERHEAD + TOOL_CALL_OVERHEAD + 1 + 4)
        + (MESSAGE_OVERHEAD + 3)
        + REPLY_PRIMING
    )
    assert count_messages(counter, messages) == expected


def test_count_messages_tolerates_odd_shapes() -> None:
    counter = CharCounter()
    messages = [
        {"role": "assistant", "content": 5, "tool_calls": "nope"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}, "junk"]},
        {"role": "user", "content": [{"type": "input_audio"}, "raw"]},
    ]
    arguments = len('{"a":1}')
    audio = IMAGE_TOKENS  # every non-text part is charged like an image
    expected = MESSAGE_OVERHEAD * 3 + TOOL_CALL_OVERHEAD + 1 + (arguments + 3) // 4 + REPLY_PRIMING + audio
    assert count_messages(counter, messages) == expected


def test_empty_transcript_costs_the_priming() -> None:
    assert count_messages(CharCounter(), []) == REPLY_PRIMING
