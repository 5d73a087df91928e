"""What the user typed, through the running gateway: a preference and intents stated in turn 2
are in the forwarded prompt at every later turn, up to turn 200, across the agent's own
compaction (turn 80) and reset (turn 140), at a budget that pages the user's message out."""

from __future__ import annotations

import json

import httpx

from bench.fake_upstream import FakeUpstream

SYSTEM = {"role": "system", "content": "You are a shop assistant with tools."}
PREFERENCE = "I prefer short answers."
INTENTS = (
    "Before anything else I'd like the order history brought up to date.",
    "My name is Pat Lee and my e-mail is pat@example.com.",
    "the blue one, size M, no express shipping.",
)
STATED = (PREFERENCE, *INTENTS)
SUMMARY = "This session is being continued from a previous conversation that ran out of context. Summary: orders."
COMPACTION_AT, RESET_AT, LAST = 80, 140, 200


def step(turn: int) -> list[dict[str, object]]:
    """One agent turn: a lookup, its bulky result, and the user's next word."""
    call = {"id": f"c{turn}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"n": turn})}}
    rows = "\n".join(f"order {turn}-{i}: jacket, status shipped, warehouse {i % 7}" for i in range(40))
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{turn}", "content": rows},
        {"role": "assistant", "content": f"Checked batch {turn}."},
        {"role": "user", "content": "Next batch."},
    ]


def test_a_preference_and_intents_from_turn_2_are_in_the_prompt_at_turn_200_after_a_compaction_and_a_reset(
    start_gateway,
) -> None:
    fake = FakeUpstream()
    opening = [SYSTEM, {"role": "user", "content": "Hello, I need help with my orders."}]
    history = [*opening, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": " ".join(STATED)}]
    session, paged = "agent-1", 0
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with start_gateway(budget=4000, fake=fake) as gw, httpx.Client(timeout=60) as client:
        for turn in range(2, LAST + 1):
            if turn == COMPACTION_AT:
                history = [SYSTEM, {"role": "user", "content": SUMMARY}]
            elif turn == RESET_AT:
                history, session = [SYSTEM, {"role": "user", "content": "Start over on the next orders."}], "agent-2"
            elif turn > 2:
                history += step(turn)
            body = {"model": "gpt-4o", "messages": history, "tools": tools}
            answer = client.post(
                gw.url + "/chat/completions", json=body, headers={"x-clawvm-session": session, "x-clawvm-user": "pat"}
            )
            assert answer.status_code == 200, (turn, answer.text)
            if turn in (COMPACTION_AT, RESET_AT):
                assert answer.headers["x-clawvm-event"] == ("compaction" if turn == COMPACTION_AT else "reset")
            seen = " ".join(m.get("content") or "" for m in fake.requests[-1].body["messages"])
            missing = [s for s in STATED if s not in seen]
            assert not missing, (turn, missing)
            paged += turn < COMPACTION_AT and " ".join(STATED) not in seen
        assert paged > 10  # before the compaction, the budget had paged the user's message out
        assert len(history) > 200
