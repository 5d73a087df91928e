"""bench.recall_replay in every wire format: the agent speaks chat, Anthropic Messages and
Responses in turn, the fake upstream answers in the same one, and the recall checks come out
as chat's, with every request the model received valid."""

from __future__ import annotations

from bench.recall_replay import RecallRow, format_recall, run_recall, summarise
from bench.traces import Trace
from bench.wire_bodies import chat_of_messages, chat_of_responses

WIRES = ("chat", "messages", "responses")
NEEDING = ("taubench-airline-004", "magentic-one-797f7a5b")  # each needs identifiers recalled at 4,000


def test_every_format_loses_what_chat_loses_with_valid_requests(traces: list[Trace]) -> None:
    chosen = [t for t in traces if t.name in NEEDING]
    rows = run_recall(chosen, 4000, wires=WIRES)
    totals = summarise(rows)
    assert list(totals) == list(WIRES)
    chat = totals["chat"]
    assert chat["needed"] > 0 and chat["recalls"] > 0
    for wire, total in totals.items():
        assert total["requests"] >= sum(len(list(t.turns())) for t in chosen) > 0, wire
        assert total["invalid"] == 0, wire
        assert total["needed"] > 0 and total["recovered"] + total["lost"] == total["needed"], wire
        assert total["lost"] == chat["lost"], (wire, total, chat)  # what is needed differs: each format's prompt
    lines = format_recall(rows, 4000)
    assert any(line.startswith("  messages: ") and "0 invalid" in line for line in lines)


def test_summarise_adds_up_each_format_apart() -> None:
    rows = [
        RecallRow("a", 3, 2, ((4, "X"),), 2, (4,), "chat", 10, 0),
        RecallRow("b", 1, 1, (), 1, (), "chat", 5, 0),
        RecallRow("a", 3, 3, (), 2, (), "messages", 11, 1),
    ]
    assert summarise(rows) == {
        "chat": {"needed": 4, "recovered": 3, "lost": 1, "recalls": 3, "requests": 15, "invalid": 0},
        "messages": {"needed": 3, "recovered": 3, "lost": 0, "recalls": 2, "requests": 11, "invalid": 1},
    }


def test_the_translations_carry_the_end_user_the_fake_model_reads_its_turn_from() -> None:
    messages = {"model": "m", "metadata": {"user_id": "t#7"}, "messages": [{"role": "user", "content": "hi"}]}
    assert chat_of_messages(messages)["user"] == "t#7"
    assert chat_of_responses({"model": "m", "user": "t#7", "input": "hi"})["user"] == "t#7"
    assert "user" not in chat_of_responses({"model": "m", "input": "hi"})
