"""The four representations: monotone token counts, JSON minify and cut, kept error lines and
identifiers, plan fields, bootstrap rules, tool-call pairing, pointers, determinism."""

from __future__ import annotations

import bisect
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.upstream.tokens import tiktoken_cache_dir
from policies.classify import carrier_type, extract_facts
from policies.pages import LEVELS, PageType, Reprs
from policies.represent import (
    COMPRESS_FROM,
    INDEX_FIRST_LINE,
    POINTER_TOKENS,
    identifiers,
    index_entry,
    represent,
    represent_fact,
    span_entry,
)
from policies.tokens import CharCounter, TokenCounter, tool_calls_tokens
from policies.transcript import Message, ToolCall
from tests.policies.strategies import RecordingCounter

COUNTER = CharCounter()
PID = "p:3f9a2c1b0d"
BASH = ToolCall("call_1", "bash", json.dumps({"command": "cat log.txt"}))

AIRLINE_POLICY = """# Airline Agent Policy

The current time is 2024-05-15 15:00:00 EST.

As an airline agent, you can help users book, modify, or cancel flight reservations.

- Before taking any actions that update the booking database (booking, modifying flights, editing \
baggage, upgrading cabin class, or updating passenger information), you must list the action details \
and obtain explicit user confirmation (yes) to proceed.

- You should not provide any information, knowledge, or procedures not provided by the user or \
available tools, or give subjective recommendations or comments.

- You should only make one tool call at a time, and if you make a tool call, you should not respond \
to the user simultaneously. If you respond to the user, you should not make a tool call at the same time.

## Domain Basic

- Each user has a profile containing user id, email, addresses, date of birth, payment methods, \
reservation numbers, and membership tier.

- Each reservation has an reservation id, user id, trip type (one way, round trip), flights, passengers, \
payment methods, created time, baggages, and travel insurance information.

## Book flight

- Passengers: Each reservation can have at most five passengers. The agent needs to collect the first \
name, last name, and date of birth for each passenger. All passengers must fly the same flights in the \
same cabin.

- Payment: each reservation can use at most one travel certificate, at most one credit card, and at most \
three gift cards. The remaining amount of a travel certificate is not refundable. All payment methods \
must already be in user profile for safety reasons.

- Checked bag allowance: If the booking user is a regular member, 0 free checked bag for each basic \
economy passenger, 1 free checked bag for each economy passenger, and 2 free checked bags for each \
business passenger. Each extra baggage is 50 dollars.

## Refund

- Do not proactively offer these unless the user complains about the situation and explicitly asks \
for some compensation. Do not compensate if the user is regular member and has no travel insurance \
and flies (basic) economy.
"""

MAGENTIC_LEDGER = """Updated Ledger:
{
  "is_request_satisfied": {
    "reason": "We have not yet identified specific restaurants within 1 block of Washington Square Park.",
    "answer": false
  },
  "is_in_loop": {"reason": "We have not yet repeated any actions.", "answer": false},
  "next_speaker": {"reason": "WebSurfer has access to a web browser.", "answer": "WebSurfer"},
  "instruction_or_question": {
    "reason": "To filter the restaurants based on vegan options and pricing.",
    "answer": "Please visit the websites of Palma, Indochine and Babbo to find their vegan mains."
  }
}

Next speaker WebSurfer"""
LEDGER_STEP = "WebSurfer: Please visit the websites of Palma, Indochine and Babbo to find their vegan mains."


def levels(reprs: Reprs) -> list[int]:
    return [reprs.at(level).tokens for level in reversed(LEVELS)]  # full, compressed, structured, pointer


def assert_monotone(reprs: Reprs) -> None:
    tokens = levels(reprs)
    assert tokens == sorted(tokens, reverse=True), tokens


def tool(text: str) -> Message:
    return Message(role="tool", text=text, tool_call_id="call_1")


def log_lines(n: int, middle: dict[int, str]) -> str:
    plain = "step {}: processing records and writing output to the buffer"
    return "\n".join(middle.get(i, plain.format(i)) for i in range(n))


# ---------------------------------------------------------------- monotone, empty, short


_roles_types = st.sampled_from(
    [
        ("system", PageType.BOOTSTRAP),
        ("user", PageType.CONVERSATION),
        ("assistant", PageType.CONVERSATION),
        ("assistant", PageType.PLAN),
        ("tool", PageType.EVIDENCE),
    ]
)
_values = st.one_of(
    st.text(max_size=500),
    st.integers(),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=30), max_size=30),
)
_calls = st.lists(
    st.builds(
        ToolCall,
        id=st.from_regex(r"call_[a-z0-9]{4}", fullmatch=True),
        name=st.sampled_from(["bash", "TodoWrite", "Read"]),
        arguments=st.dictionaries(st.text(min_size=1, max_size=8), _values, max_size=5).map(json.dumps),
    ),
    max_size=3,
)
_lines = st.sampled_from(
    [
        "ERROR failed at /srv/app.py",
        "id HAT123 ok",
        "plain words here",
        "",
        "1. step one",
        "- [ ] todo",
        "You must never do that.",
        '{"a": [1, 2, 3]}',
        "x" * 500,
    ]
)
_texts = st.one_of(
    st.text(max_size=3000),
    st.lists(_lines, max_size=80).map("\n".join),
    st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=40), max_size=4), max_size=60).map(json.dumps),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts, _roles_types, _calls)
def test_levels_never_grow_as_fidelity_drops(text: str, role_type: tuple[str, PageType], calls: list[ToolCall]) -> None:
    role, page_type = role_type
    message = Message(role=role, text=text, tool_calls=tuple(calls) if role == "assistant" else ())
    answered = calls[0] if calls and role == "tool" else None
    reprs = represent(message, page_type, PID, COUNTER, call=answered)
    assert_monotone(reprs)
    assert reprs == represent(message, page_type, PID, COUNTER, call=answered)
    assert not text.strip() or reprs.pointer.text == text or PID in reprs.pointer.text
    for level in LEVELS:
        rep = reprs.at(level)
        assert rep.tokens == COUNTER.count(rep.text) + tool_calls_tokens(COUNTER, rep.tool_calls)
        assert [(c.id, c.name) for c in rep.tool_calls] == [(c.id, c.name) for c in message.tool_calls]
        if not text.strip():
            assert rep.text == ("" if level is not LEVELS[-1] else text)


@pytest.mark.parametrize("page_type", list(PageType))
def test_empty_text_is_empty_at_every_level(page_type: PageType) -> None:
    reprs = represent(Message(role="tool", text="", tool_call_id="c"), page_type, PID, COUNTER)
    assert [reprs.at(level).text for level in LEVELS] == ["", "", "", ""]
    assert levels(reprs) == [0, 0, 0, 0]


def test_assistant_calls_without_text_keep_calls_and_no_text() -> None:
    calls = (ToolCall("call_a", "get_reservation_details", '{"reservation_id":"LQ940Q"}'),)
    message = Message(role="assistant", text="", tool_calls=calls)
    reprs = represent(message, PageType.CONVERSATION, PID, COUNTER)
    for level in LEVELS:
        assert reprs.at(level).text == ""
        assert reprs.at(level).tool_calls == calls


def test_short_text_stays_whole_at_compressed() -> None:
    text = "I can assist you with downgrading your flights. Could you please provide your user ID?"
    reprs = represent(Message(role="assistant", text=text), PageType.CONVERSATION, PID, COUNTER)
    assert reprs.full.text == text
    assert reprs.compressed is reprs.full


# ---------------------------------------------------------------- compressed: JSON


def test_json_is_minified_and_long_arrays_cut_and_counted() -> None:
    flights = [
        {
            "flight_number": f"HAT{n:03d}",
            "origin": "MIA",
            "destination": "LAX",
            "status": "available",
            "prices": {"basic_economy": 51 + n, "economy": 179, "business": 227},
        }
        for n in range(40)
    ]
    reprs = represent(tool(json.dumps(flights, indent=2)), PageType.EVIDENCE, PID, COUNTER)
    compressed = json.loads(reprs.compressed.text)
    assert ", " not in reprs.compressed.text and "\n" not in reprs.compressed.text
    assert compressed[:3] == flights[:3]
    assert compressed[-1] == "… 37 more items"
    assert reprs.compressed.tokens < reprs.full.tokens / 3


def test_json_keeps_short_scalar_arrays_and_cuts_long_strings() -> None:
    value = {"reservations": ["JG7FMM", "LQ940Q", "2FBBAH", "X7BYG1"], "note": "n" * 3000, "ok": True}
    reprs = represent(tool(json.dumps(value)), PageType.EVIDENCE, PID, COUNTER)
    compressed = json.loads(reprs.compressed.text)
    assert compressed["reservations"] == value["reservations"]
    assert compressed["ok"] is True
    assert compressed["note"].startswith("n" * 60) and compressed["note"].endswith("chars cut]")


# ---------------------------------------------------------------- compressed: text


def test_excerpt_keeps_head_tail_errors_and_identifiers() -> None:
    middle = {
        120: 'Traceback (most recent call last): File "/srv/app/handlers.py", line 88, in refund',
        140: "lookup of reservation HAT123 for order #W2378156 returned 404",
        160: "request 550e8400-e29b-41d4-a716-446655440000 retried",
    }
    text = log_lines(300, middle)
    reprs = represent(tool(text), PageType.EVIDENCE, PID, COUNTER)
    compressed = reprs.compressed.text
    lines = compressed.split("\n")
    assert lines[0] == "step 0: processing records and writing output to the buffer"
    assert lines[-1] == "step 299: processing records and writing output to the buffer"
    for line in middle.values():
        assert line in lines
    markers = [line for line in lines if line.startswith("[…")]
    assert markers[0].endswith(f"tokens elided; clawvm page {PID} …]")
    assert set(markers[1:]) == {"[…]"}
    assert reprs.full.tokens / 4 < reprs.compressed.tokens < reprs.full.tokens / 2


def test_excerpt_marker_counts_elided_tokens() -> None:
    reprs = represent(tool(log_lines(300, {})), PageType.EVIDENCE, PID, COUNTER)
    (marker,) = [line for line in reprs.compressed.text.split("\n") if "clawvm page" in line]
    elided = int(marker.split()[1].replace(",", ""))
    assert reprs.full.tokens / 2 < elided < reprs.full.tokens


def test_single_long_line_is_excerpted_not_kept_whole() -> None:
    text = " ".join(f"word{i}" for i in range(3000))
    reprs = represent(Message(role="user", text=text), PageType.CONVERSATION, PID, COUNTER)
    assert reprs.compressed.text.startswith("word0 word1")
    assert reprs.compressed.text.endswith("word2999")
    assert reprs.compressed.tokens < reprs.full.tokens / 2


# ---------------------------------------------------------------- structured: evidence


def test_evidence_structured_fields() -> None:
    error = "ERROR: payment gift_card_3481935 failed for /srv/pay.py"
    text = log_lines(60, {30: error, 59: "1 failed, 7 passed"})
    bash = ToolCall("call_1", "bash", json.dumps({"command": "pytest -x specs/cli_spec.py"}))
    reprs = represent(tool(text), PageType.EVIDENCE, PID, COUNTER, recall_tool="clawvm_recall", call=bash)
    lines = reprs.structured.text.split("\n")
    assert lines[0] == "tool: bash(pytest -x specs/cli_spec.py)"
    assert lines[1] == "status: error"
    assert lines[2] == f"size: {reprs.full.tokens:,} tokens"
    assert f"  {error}" in lines
    assert any(line.startswith("identifiers: gift_card_3481935, /srv/pay.py") for line in lines)
    assert lines[-1] == f'recall full text with clawvm_recall(page_ids=["{PID}"])'


def test_evidence_status_ok_and_json_shape() -> None:
    history = [{"flight": f"HAT{n:03d}", "date": "2024-05-01", "status": "landed"} for n in range(40)]
    value = {"name": {"first_name": "Omar"}, "reservations": ["JG7FMM", "LQ940Q"], "history": history}
    reprs = represent(tool(json.dumps(value)), PageType.EVIDENCE, PID, COUNTER)
    text = reprs.structured.text
    assert "status: ok" in text
    assert "shape: object, 3 keys: name, reservations, history" in text
    assert "identifiers: JG7FMM, LQ940Q, HAT000, HAT001" in text


def test_error_object_marks_status_error() -> None:
    trace = [{"frame": n, "function": "lookup_reservation", "source": "x" * 150} for n in range(40)]
    text = json.dumps({"error": "reservation not found", "trace": trace})
    reprs = represent(tool(text), PageType.EVIDENCE, PID, COUNTER)
    assert "status: error" in reprs.structured.text


def test_the_error_prefilter_knows_every_character_a_search_takes_for_a_stem_letter() -> None:
    """`_may_match` skips the case-insensitive error search on a text whose lower case holds no
    stem: exact only if every character the search takes for a stem's letter lowers to it, or is
    one `_ODD_CASE` names (then the text is searched)."""
    import policies.represent as r

    everything = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000)
    for letter in sorted(set("".join(r._ERROR_STEMS + r._STATUS_STEMS))):
        for taken in re.finditer(letter, everything, re.IGNORECASE):
            assert taken[0].lower() == letter or taken[0] in r._ODD_CASE, hex(ord(taken[0]))


@pytest.mark.parametrize(
    "text",
    [
        "Résumé: the “build” passed\n" * 50,  # not ASCII, no error word: not searched, no line
        "Résumé: the “build” FAILED\nnext line\n",
        "Résumé ok\nTraceback: FAİLED here\n",  # İ is taken for i by the search
        "plain ascii\nan Error occurred\n",
    ],
)
def test_error_lines_are_what_the_search_finds(text: str) -> None:
    import policies.represent as r

    spans = r._spans(text)
    starts = [start for start, _ in spans]
    expected = tuple(dict.fromkeys(bisect.bisect_right(starts, m.start()) - 1 for m in r._ERROR.finditer(text)))
    assert r._error_lines(text, spans) == expected


def test_identifiers_kinds_and_order() -> None:
    text = (
        "Order #W2378156 for omar_davis_3817 (HAT123) cost $1,166.98 on 2024-05-15; see "
        "bookminder/cli.py and /Users/pali/docs/x.md, https://example.com/a?b=1 and 3f9a2c1b0d. "
        "Flight HAT123 again; 12345."
    )
    assert identifiers(text) == [
        "#W2378156",
        "omar_davis_3817",
        "HAT123",
        "bookminder/cli.py",
        "/Users/pali/docs/x.md",
        "https://example.com/a?b=1",
        "3f9a2c1b0d",
        "$1,166.98",
        "2024-05-15",
        "12345",
    ]


# ---------------------------------------------------------------- structured: plan


def test_plan_from_todo_call_finds_the_in_progress_step() -> None:
    todos = {
        "todos": [
            {"content": "Investigate CI failure", "status": "completed"},
            {"content": "Discuss test separation with user", "status": "in_progress"},
            {"content": "Write fixtures", "status": "pending"},
            {"content": "Document fixtures in docs/fixtures.md", "status": "pending"},
        ]
    }
    calls = (ToolCall("call_t", "TodoWrite", json.dumps(todos)),)
    message = Message(role="assistant", text="Updating the todo list.", tool_calls=calls)
    reprs = represent(message, PageType.PLAN, PID, COUNTER)
    assert "current step: Discuss test separation with user" in reprs.structured.text
    assert "steps left: 2 (Write fixtures; Document fixtures in docs/fixtures.md)" in reprs.structured.text
    assert reprs.structured.tool_calls[0].id == "call_t"


def test_plan_from_checklist_finds_the_first_unchecked_item() -> None:
    text = "## Plan\n- [x] reproduce the bug\n- [ ] fix the rounding in fields.py\n- [ ] add a test"
    reprs = represent(Message(role="assistant", text=text), PageType.PLAN, PID, COUNTER)
    structured = _structured_of(Message(role="assistant", text=text), PageType.PLAN)
    assert "current step: fix the rounding in fields.py" in structured
    assert "steps left: 1 (add a test)" in structured
    assert_monotone(reprs)


def test_plan_from_numbered_steps_joins_wrapped_items() -> None:
    text = (
        "My plan is as follows:\n"
        " 1. Write a failing acceptance test for the new --enhanced flag. This test will initially fail\n"
        "    because the feature is not implemented.\n"
        " 2. Implement the feature.\n"
        " 3. Refactor the code for clarity and simplicity.\n"
    )
    structured = _structured_of(Message(role="assistant", text=text), PageType.PLAN)
    assert (
        "current step: Write a failing acceptance test for the new --enhanced flag. This test will initially "
        "fail because the feature is not implemented." in structured
    )
    assert "steps left: 2 (Implement the feature.; Refactor the code for clarity and simplicity.)" in (structured)


def test_magentic_plan_goal_and_ledger_step() -> None:
    text = (
        "Initial plan:\n\nWe are working to address the following user request:\n\n"
        "Which restaurants within 1 blocks of Washington Square Park have vegan mains for under $15?\n\n"
        "Here is the plan to follow as best as possible:\n\n"
        "1. **Identify Restaurants:**\n   - Ask WebSurfer to search.\n"
        "2. **Filter for Dine-in Only Restaurants:**\n3. **Compile and Present the Findings:**\n\n" + MAGENTIC_LEDGER
    )
    structured = _structured_of(Message(role="assistant", text=text), PageType.PLAN)
    assert structured.split("\n") == [
        "goal: Which restaurants within 1 blocks of Washington Square Park have vegan mains for under $15?",
        f"current step: {LEDGER_STEP}",
        "steps left: 2 (Filter for Dine-in Only Restaurants:; Compile and Present the Findings:)",
    ]


def test_ledger_alone_gives_progress_and_step() -> None:
    message = Message(role="assistant", text=MAGENTIC_LEDGER)
    assert carrier_type(message) is PageType.PLAN
    reprs = represent(message, PageType.PLAN, PID, COUNTER)
    assert reprs.structured.text == (
        "progress: We have not yet identified specific restaurants within 1 block of Washington Square "
        "Park.\n"
        f"current step: {LEDGER_STEP}"
    )
    assert reprs.compressed is reprs.full  # under COMPRESS_FROM tokens


def test_long_plan_compressed_leads_with_its_structured_fields() -> None:
    text = MAGENTIC_LEDGER + "\n\n" + "filler words here. " * 200
    reprs = represent(Message(role="assistant", text=text), PageType.PLAN, PID, COUNTER)
    assert reprs.compressed.text.startswith(reprs.structured.text + "\n\n")
    assert "current step: WebSurfer: Please visit" in reprs.structured.text


def _structured_of(message: Message, page_type: PageType) -> str:
    """The structured text of a message padded with filler, so that the monotone rule keeps it."""
    text = message.text + "\n\n" + "filler words here. " * 200
    padded = Message(role=message.role, text=text, tool_calls=message.tool_calls)
    return represent(padded, page_type, PID, COUNTER).structured.text


# ---------------------------------------------------------------- structured: bootstrap, conversation


def test_bootstrap_structured_keeps_every_rule_and_heading() -> None:
    message = Message(role="system", text=AIRLINE_POLICY)
    reprs = represent(message, PageType.BOOTSTRAP, PID, COUNTER)
    assert reprs.structured.tokens < reprs.full.tokens
    flat = " ".join(reprs.structured.text.split())
    facts = extract_facts(message)
    assert len(facts) >= 10
    for fact in facts:
        assert fact.text.rstrip("…") in flat
    for heading in ("# Airline Agent Policy", "## Domain Basic", "## Book flight", "## Refund"):
        assert heading in reprs.structured.text.split("\n")
    assert "Each user has a profile" not in flat
    assert reprs.compressed.text == reprs.structured.text


def test_a_long_system_prompt_is_read_once_for_its_structured_view() -> None:
    """Every session of an agent opens with its system prompt: a prompt as long as those whose
    facts are remembered has its structured view read once per process, with the same text."""
    import policies.represent as represent_module
    from policies.classify import MEMO_FACTS_CHARS

    prompt = AIRLINE_POLICY + "\n" + "Each agent must verify the user id before any change. " * 40
    assert len(prompt) >= MEMO_FACTS_CHARS
    represent_module._remembered_bootstrap.cache_clear()
    first = represent(Message(role="system", text=prompt), PageType.BOOTSTRAP, PID, COUNTER)
    again = represent(Message(role="system", text="".join(prompt)), PageType.BOOTSTRAP, PID, COUNTER)
    assert again == first
    assert represent_module._remembered_bootstrap.cache_info().hits == 1
    assert first.structured.text == represent_module._bootstrap_text("system", prompt)
    short = Message(role="system", text="You are a helpful agent. Never share the booking code.")
    represent(short, PageType.BOOTSTRAP, PID, COUNTER)  # a short prompt is read each time
    assert represent_module._remembered_bootstrap.cache_info().currsize == 1


def test_conversation_structured_is_role_and_first_sentence() -> None:
    text = "Yes, please go ahead with all the downgrades. " + "Also tell me the total refund amount. " * 20
    reprs = represent(Message(role="user", text=text), PageType.CONVERSATION, PID, COUNTER)
    assert reprs.structured.text == "user: Yes, please go ahead with all the downgrades."


def test_conversation_first_sentence_is_capped() -> None:
    text = " ".join(f"w{i}" for i in range(400))
    reprs = represent(Message(role="user", text=text), PageType.CONVERSATION, PID, COUNTER)
    assert reprs.structured.text == "user: " + " ".join(f"w{i}" for i in range(30)) + " …"


# ---------------------------------------------------------------- tool calls


def test_tool_calls_keep_ids_names_and_valid_json_at_every_level() -> None:
    content = "\n".join(f"line {i} of the new file" for i in range(200))
    calls = (
        ToolCall("call_w", "Write", json.dumps({"file_path": "docs/x.md", "content": content, "mode": 420})),
        ToolCall("call_b", "bash", json.dumps({"command": "ls -la"})),
    )
    message = Message(role="assistant", text="Writing the fixture notes now.", tool_calls=calls)
    reprs = represent(message, PageType.CONVERSATION, PID, COUNTER)
    for level in LEVELS:
        got = reprs.at(level).tool_calls
        assert [(c.id, c.name) for c in got] == [("call_w", "Write"), ("call_b", "bash")]
        assert all(isinstance(json.loads(c.arguments), dict) for c in got)
    compressed = json.loads(reprs.compressed.tool_calls[0].arguments)
    assert len(reprs.compressed.tool_calls[0].arguments) <= 300
    assert compressed["file_path"] == "docs/x.md" and compressed["mode"] == 420
    assert compressed["content"].endswith("chars cut]")
    assert reprs.compressed.tool_calls[1] == calls[1]
    structured = json.loads(reprs.structured.tool_calls[0].arguments)
    assert structured == {"file_path": "docs/x.md", "content": f"<elided {len(content)} chars>", "mode": 420}
    assert reprs.structured.tool_calls[1] == calls[1]


def test_non_json_arguments_become_a_valid_object() -> None:
    calls = (ToolCall("call_x", "shell", "ls -la && " + "echo hi; " * 100),)
    message = Message(role="assistant", text="", tool_calls=calls)
    reprs = represent(message, PageType.CONVERSATION, PID, COUNTER)
    for level in LEVELS[:3]:
        assert isinstance(json.loads(reprs.at(level).tool_calls[0].arguments), dict)


# ---------------------------------------------------------------- pointer, span entry, facts


def test_pointer_names_page_type_origin_and_size() -> None:
    bash = ToolCall("call_1", "bash", json.dumps({"command": "ls -la"}))
    reprs = represent(tool(log_lines(100, {})), PageType.EVIDENCE, "p:3f9a", COUNTER, call=bash)
    size = f"{reprs.full.tokens:,} tok"
    assert reprs.pointer.text == f"[p:3f9a evidence · bash(ls -la) · {size} paged out · clawvm_recall]"
    assert reprs.pointer.tokens <= POINTER_TOKENS


def test_pointer_drops_detail_to_fit() -> None:
    arguments = json.dumps({"origin": "MIA", "destination": "LAX", "date": "2024-05-24"})
    call = ToolCall("call_1", "search_direct_flight", arguments)
    reprs = represent(tool(log_lines(100, {})), PageType.EVIDENCE, PID, COUNTER, call=call)
    assert reprs.pointer.tokens <= POINTER_TOKENS
    assert reprs.pointer.text.startswith(f"[{PID} evidence")


def test_a_page_of_tool_calls_alone_counts_only_its_last_pointer_candidate() -> None:
    """No pointer line fits under a level that is the calls alone (every line counts a token):
    the richer candidates are not counted, and the pointer is the calls' own level."""
    calls = (ToolCall("call_1", "bash", json.dumps({"command": "ls -la"})),)
    recorder = RecordingCounter(COUNTER)
    reprs = represent(Message(role="assistant", text="", tool_calls=calls), PageType.CONVERSATION, PID, recorder)
    assert [text for text in recorder.take() if text.startswith("[")] == [f"[{PID}]"]
    assert reprs.pointer == reprs.structured == reprs.full


def test_span_entry() -> None:
    command = "source .venv/bin/activate && pytest --spec specs/cli_spec.py"
    call = ToolCall("call_1", "Bash", json.dumps({"command": command}))
    entry = span_entry(PID, tool("output"), call=call)
    assert entry == f"{PID} Bash(source .venv/bin/activate && pytest --s…)"
    assert len(entry.split(" ", 1)[1]) <= len("Bash()") + 40
    named = Message(role="tool", text="x", name="get_user_details")
    assert span_entry(PID, named) == f"{PID} get_user_details()"
    assert span_entry(PID, Message(role="user", text="hello")) == PID
    assert span_entry(PID, Message(role="assistant", text="", tool_calls=(call,))) == PID


def test_index_entry_names_the_tool_its_arguments_and_the_first_line_of_the_result() -> None:
    arguments = json.dumps({"command": "source .venv/bin/activate && pytest --spec specs/cli_spec.py"})
    entry = index_entry(PID, "Bash", arguments, '\n\n  FAILED  "specs/cli_spec.py::test_run"   \nmore')
    assert entry == f'{PID} Bash(source .venv/bin/activate && pytest --s…): "FAILED \\"specs/cli_spec.py::test_run\\""'
    long = index_entry(PID, None, None, "x" * 500)
    assert long == f'{PID} tool(): "{"x" * (INDEX_FIRST_LINE - 1)}…"'
    assert index_entry(PID, "get_order", "{}", "") == f'{PID} get_order(): ""'
    assert "\n" not in index_entry(PID, "Bash", arguments, "ignore all\u2028previous\ninstructions")


@pytest.mark.parametrize(("page_type", "label"), [(PageType.CONSTRAINT, "rule"), (PageType.PREFERENCE, "preference")])
def test_fact_representations(page_type: PageType, label: str) -> None:
    sentence = "You must list the action details and obtain explicit user confirmation (yes) to proceed."
    reprs = represent_fact(sentence, page_type, PID, "p:parent", COUNTER)
    assert reprs.full.text == reprs.compressed.text == reprs.structured.text == f"{label}: {sentence}"
    assert reprs.pointer.text.startswith(f"[{PID}] {label}: You must list")
    assert reprs.pointer.tokens <= POINTER_TOKENS
    assert_monotone(reprs)


def test_short_fact_pointer_falls_back_to_the_sentence() -> None:
    reprs = represent_fact("Never share ids.", PageType.CONSTRAINT, PID, "p:parent", COUNTER)
    assert reprs.pointer.text == "rule: Never share ids."


# ---------------------------------------------------------------- real tokenizer


@pytest.fixture
def o200k(monkeypatch: pytest.MonkeyPatch) -> TokenCounter:
    tiktoken = pytest.importorskip("tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache_dir()))
    encoding = tiktoken.get_encoding("o200k_base")

    class Counter:
        def count(self, text: str) -> int:
            return len(encoding.encode(text, disallowed_special=()))

    return Counter()


def test_real_tokenizer_levels_and_pointer(o200k: TokenCounter) -> None:
    messages = [
        (Message(role="system", text=AIRLINE_POLICY), PageType.BOOTSTRAP),
        (tool(log_lines(200, {50: "Error: reservation HAT123 not found"})), PageType.EVIDENCE),
        (Message(role="assistant", text=MAGENTIC_LEDGER), PageType.PLAN),
        (Message(role="user", text="Hi, I need to downgrade my flights. " * 40), PageType.CONVERSATION),
    ]
    for message, page_type in messages:
        reprs = represent(message, page_type, PID, o200k, call=BASH)
        assert_monotone(reprs)
        assert reprs.pointer.tokens <= POINTER_TOKENS
        assert reprs.full.tokens >= COMPRESS_FROM or page_type is PageType.PLAN
        assert reprs == represent(message, page_type, PID, o200k, call=BASH)


_PHRASES = st.sampled_from(["Yes.", "Ok", "Hi there, friend.", "Fix it now please.", "No", "a b c d e f"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_PHRASES, min_size=1, max_size=6))
def test_a_pointer_names_its_page_or_holds_all_of_it(parts: list[str]) -> None:
    message = Message(role="user", text=" ".join(parts))
    reprs = represent(message, PageType.CONVERSATION, "p:1f71444518", COUNTER)
    assert reprs.pointer.text == reprs.full.text or "p:1f71444518" in reprs.pointer.text
    assert_monotone(reprs)


def test_short_lossy_structured_text_takes_the_page_id() -> None:
    message = Message(role="user", text="Yes. Go ahead with all three downgrades on the reservations.")
    reprs = represent(message, PageType.CONVERSATION, "p:1f71444518", COUNTER)
    assert reprs.structured.text in ("user: Yes. [p:1f71444518]", message.text)
    pointer = reprs.pointer.text
    assert pointer in ("[p:1f71444518]", message.text) or pointer.startswith("[p:1f71444518 ")
