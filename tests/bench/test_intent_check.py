"""bench.intent_check: every labelled user intent stays in every later prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.intent_check import LABELS, Label, content_words, covered, intents, load_labels, missing_intents
from bench.traces import traces_dir

SENTENCE = "Keep the boots from #W7773202 until Friday."
LABEL = Label("retail", 3, SENTENCE, "intent")


def prompt(*texts: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": t} for t in texts]


def test_content_words_drop_stop_words_and_case() -> None:
    assert content_words(SENTENCE) == {"keep", "boots", "w7773202", "friday"}


def test_a_sentence_shown_whole_is_no_miss() -> None:
    assert missing_intents([LABEL], 4, prompt("hello", f"user said: {SENTENCE}")) == []


def test_a_sentence_missing_from_the_prompt_is_a_miss() -> None:
    assert missing_intents([LABEL], 4, prompt("Order #W7773202 shipped.")) == [SENTENCE]


def test_eighty_percent_of_its_content_words_is_enough_and_less_is_not() -> None:
    assert covered(SENTENCE, content_words(SENTENCE))
    assert not covered(SENTENCE, {"keep", "boots", "w7773202"})  # 3 of 4: 75%
    five = "alpha bravo charlie delta echo"
    assert covered(five, {"alpha", "bravo", "charlie", "delta"})  # 4 of 5: 80%
    assert not covered(five, {"alpha", "bravo", "charlie"})  # 3 of 5


def test_a_sentence_the_agent_has_not_sent_yet_is_not_due() -> None:
    assert missing_intents([LABEL], 3, prompt("nothing")) == []


def test_tool_call_arguments_count_as_shown() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "note", "arguments": json.dumps({"t": SENTENCE})}}
    assert missing_intents([LABEL], 4, [{"role": "assistant", "content": None, "tool_calls": [call]}]) == []


def test_only_intent_labels_are_checked() -> None:
    other = Label("retail", 1, "Thanks, that's all.", "other")
    assert intents([LABEL, other]) == {"retail": [LABEL]}


def test_a_file_without_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.tsv"
    path.write_text("a\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        load_labels(path)


def test_every_labelled_sentence_is_what_that_user_message_says() -> None:
    directory = traces_dir()
    if not directory.is_dir():
        pytest.skip("shared/traces/real not found (set CLAWVM_TRACES)")
    labels = load_labels(LABELS)
    assert len(labels) >= 200 and {x.label for x in labels} == {"intent", "none"}
    for label in labels:
        message = json.loads((directory / f"{label.trace}.json").read_text(encoding="utf-8"))["messages"][label.message]
        assert message["role"] == "user"
        assert label.sentence in " ".join(message["content"].split()), label
