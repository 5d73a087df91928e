"""Token arithmetic: framing, and the per-ingest memo."""

from __future__ import annotations

from policies.tokens import CharCounter, CountOnce, at_most_bytes, count_once, framed, tool_calls_tokens, utf8_bytes
from policies.transcript import ToolCall
from tests.policies.strategies import RecordingCounter


def test_count_once_counts_each_distinct_text_once_with_the_wrapped_counts() -> None:
    recorder = RecordingCounter(CharCounter())
    memo = count_once(recorder)
    texts = ["alpha beta", "", "alpha beta", "gamma", "gamma", "alpha beta"]
    assert [memo.count(t) for t in texts] == [CharCounter().count(t) for t in texts]
    assert recorder.take() == ["alpha beta", "", "gamma"]


def test_count_once_keeps_an_existing_memo() -> None:
    memo = count_once(CharCounter())
    assert isinstance(memo, CountOnce)
    assert count_once(memo) is memo


def test_tool_calls_are_framed_and_counted_through_the_memo() -> None:
    recorder = RecordingCounter(CharCounter())
    memo = count_once(recorder)
    calls = (ToolCall("c1", "bash", '{"command":"ls"}'), ToolCall("c2", "bash", '{"command":"ls"}'))
    assert tool_calls_tokens(memo, calls) == 2 * (8 + 1 + 4)
    assert recorder.take() == ["bash", '{"command":"ls"}']
    assert framed(10, named=True) == 15


def test_a_counter_says_whether_bytes_bound_its_counts() -> None:
    assert at_most_bytes(CharCounter()) and at_most_bytes(count_once(CharCounter()))
    assert not at_most_bytes(RecordingCounter(CharCounter()))  # a counter that does not say is not taken at a bound


def test_utf8_bytes_bound_a_char_counter() -> None:
    for text in ("", "plain ascii", "déjà vu — 日本語", "emoji 🎉🎉", "lone \udc80 surrogate"):
        assert utf8_bytes(text) == len(text.encode("utf-8", "surrogatepass"))
        assert CharCounter().count(text) <= utf8_bytes(text)
