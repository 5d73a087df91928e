"""Lifecycle detection: start, resend, append, prune, compaction and reset, per rule and per
harness marker, with hints, evidence, real traces grown turn by turn, and properties."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.traces import load_traces, traces_dir
from gateway.wire.chat_json import parse_messages
from policies.lifecycle import MARKERS, MAX_RESET_TAIL, Boundary, Event, detect, is_pruned, summary_marker
from policies.pagetable import PageTable, ingest, known_prefix
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from tests.policies.strategies import Wire, requests, transcripts

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()
POLICY = TenantPolicy()
SYSTEM: Wire = {"role": "system", "content": "You are a coding agent. You must never push to main."}
LONG_RESULT = "\n".join(f"line {i}: src/module_{i}.py passed in {i * 7} ms" for i in range(120))
CC2 = (
    "This session is being continued from a previous conversation that ran out of context. "
    "The summary below covers the earlier portion of the conversation.\n\nSummary:\n1. Primary Request and Intent:"
)
CC1 = (
    "This session is being continued from a previous conversation that ran out of context. "
    "The conversation is summarized below:\nAnalysis:\nfine\n\nSummary:\n1. Primary Request and Intent:"
)
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n</system-reminder>"
)


def call(call_id: str, name: str = "Read") -> Wire:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def pair(call_id: str, result: str) -> list[Wire]:
    return [
        {"role": "assistant", "content": None, "tool_calls": [call(call_id)]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def session() -> list[Wire]:
    """system, user, two tool rounds, an answer."""
    return [
        SYSTEM,
        {"role": "user", "content": "Fix the failing parser test. Never use tabs."},
        *pair("c1", LONG_RESULT),
        *pair("c2", LONG_RESULT[::-1]),
        {"role": "assistant", "content": "Fixed: the tokenizer had an off-by-one error."},
    ]


def table_of(wire: Sequence[Wire], name: str = "s") -> PageTable:
    table = PageTable("tenant-lifecycle", name, "project")
    if wire:
        ingest(table, parse_messages(wire), POLICY, COUNTER)
    return table


def run(old: Sequence[Wire], new: Sequence[Wire], hint: str | None = None) -> Boundary:
    table = table_of(old)
    messages = parse_messages(new)
    return detect(table, messages, known_prefix(table, messages), hint)


def user(text: str) -> Wire:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------- start, resend, append


def test_an_empty_table_is_a_start() -> None:
    boundary = run([], session())
    assert boundary == Boundary(Event.START, 0, "", "first request of the session: 7 messages")


def test_a_first_request_holding_a_summary_is_a_compaction() -> None:
    boundary = run([], [SYSTEM, user(CC2), *pair("c9", "ok")])
    assert (boundary.event, boundary.harness, boundary.summary_at) == (Event.COMPACTION, "claude_code", 1)
    assert boundary.evidence.startswith("first request: message 1 (user) opens with Claude Code 2.x")


def test_the_same_transcript_again_is_a_resend() -> None:
    boundary = run(session(), session())
    assert (boundary.event, boundary.kept, boundary.harness) == (Event.RESEND, 7, "")


def test_new_messages_after_the_known_ones_are_an_append() -> None:
    boundary = run(session(), [*session(), user("Now run the whole suite.")])
    assert boundary == Boundary(Event.APPEND, 7, "", "1 new messages after 7 known")


class Untouchable(Sequence[Message]):
    """A transcript whose messages must not be read."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        raise AssertionError("the append path read a message")

    def __iter__(self) -> Iterator[Message]:
        raise AssertionError("the append path iterated the transcript")


def test_the_append_and_resend_paths_read_no_message() -> None:
    table = table_of(session())
    assert detect(table, Untouchable(9), 7).event is Event.APPEND
    assert detect(table, Untouchable(7), 7, hint="reset").event is Event.RESEND


# ---------------------------------------------------------------- prune


def cleared(wire: Sequence[Wire], positions: Sequence[int], text: str) -> list[Wire]:
    return [{**m, "content": text} if i in positions else m for i, m in enumerate(wire)]


def test_a_cleared_tool_result_is_a_prune_with_its_position() -> None:
    boundary = run(session(), cleared(session(), [3], "[Old tool result content cleared]"))
    assert (boundary.event, boundary.kept, boundary.pruned, boundary.harness) == (Event.PRUNE, 3, (3,), "")
    assert "shared placeholder" in boundary.evidence


def test_prune_and_append_in_one_request() -> None:
    new = [*cleared(session(), [3, 5], "[Old tool result content cleared]"), user("Thanks.")]
    boundary = run(session(), new)
    assert (boundary.event, boundary.pruned) == (Event.PRUNE, (3, 5))
    assert boundary.evidence.endswith(", 1 appended")


@pytest.mark.parametrize(
    ("placeholder", "harness"),
    [
        ("[Old tool result content cleared]", ""),
        ("[cleared]", "langchain"),
        ("<MASKED>", "openhands"),
        ("Old environment output: (120 lines omitted)", "swe_agent"),
        ("[[NOTE] This file read has been removed to save space in the context window. Refer to ...]", "cline"),
        (
            "[Compressed: message_3 \u2014 120 lines, text. Use litellm_content_retrieve tool to get full content.]",
            "litellm",
        ),
        ("[removed to save space]", "shape"),
        ("", "shape"),
    ],
)
def test_each_placeholder_is_a_prune_named_by_its_harness(placeholder: str, harness: str) -> None:
    boundary = run(session(), cleared(session(), [3], placeholder))
    assert (boundary.event, boundary.pruned, boundary.harness) == (Event.PRUNE, (3,), harness)


def soft_trimmed(text: str, head: int, tail: int) -> str:
    note = f"[Tool result trimmed: kept first {head} chars and last {tail} chars of {len(text)} chars.]"
    return f"{text[:head]}\n...\n{text[-tail:]}\n\n{note}"


def test_an_openclaw_soft_trim_is_a_prune() -> None:
    boundary = run(session(), cleared(session(), [3], soft_trimmed(LONG_RESULT, 1500, 1500)))
    assert (boundary.event, boundary.harness, boundary.pruned) == (Event.PRUNE, "openclaw", (3,))


def test_is_pruned_accepts_markers_and_head_tail_cuts() -> None:
    old = LONG_RESULT
    assert is_pruned(old, "[Old tool result content cleared]")
    assert is_pruned("", "[Old tool result content cleared]")
    assert is_pruned(old, old[:500] + "\n[... Observation truncated due to length ...]\n" + old[-500:])
    assert is_pruned(old, old[:800])
    assert is_pruned(old, old[:300] + "\n...\n" + old[-300:])
    assert is_pruned(old, old[-700:])
    assert is_pruned(old, f"Output too large. Showing first 10 and last 10 characters.\n{old[:10]}")


def test_is_pruned_refuses_what_is_not_a_cut() -> None:
    old = LONG_RESULT
    assert not is_pruned(old, old)
    assert not is_pruned(old, old + " and more")
    assert not is_pruned(old, old[:-5])  # hardly shorter: an edit, not a cut
    assert not is_pruned(old, old[1000:1900])  # a middle piece is neither a head nor a tail
    assert not is_pruned(old, "A completely different answer that is not bracketed at all, and is long " * 3)
    assert not is_pruned("short", "[x]")  # a "placeholder" is not much shorter than the result


def test_a_changed_non_tool_message_is_not_a_prune() -> None:
    new = cleared(session(), [1], "[Old tool result content cleared]")
    assert run(session(), new).event is Event.COMPACTION


def test_a_result_answering_another_call_is_not_a_prune() -> None:
    new = session()
    new[2] = {**new[2], "tool_calls": [call("other")]}
    new[3] = {"role": "tool", "tool_call_id": "other", "content": "[Old tool result content cleared]"}
    assert run(session(), new).event is Event.COMPACTION


def test_detect_and_ingest_agree_on_pruned_results_and_their_restoring() -> None:
    table = table_of(session(), "restore")
    pruned_wire = cleared(session(), [3], "[Old tool result content cleared]")
    messages = parse_messages(pruned_wire)
    boundary = detect(table, messages, known_prefix(table, messages))
    ingest(table, messages, POLICY, COUNTER, pruned=boundary.pruned)
    assert table.restored  # the original evidence page is kept at position 3
    messages = parse_messages(pruned_wire)
    assert detect(table, messages, known_prefix(table, messages)).event is Event.RESEND
    whole = parse_messages(session())  # the agent sends the whole result again
    again = detect(table, whole, known_prefix(table, whole))
    assert (again.event, again.pruned) == (Event.PRUNE, ())
    assert "sent whole again" in again.evidence


# ---------------------------------------------------------------- summary markers


MARKER_SAMPLES = [
    (CC2, "claude_code", "Claude Code 2.x continuation summary"),
    (
        "This session is being continued from a previous conversation that ran out of context. Details:",
        "claude_code",
        "Claude Code continuation summary",
    ),
    (
        "The following is a summary of a branch that this conversation came back from:\n\n<summary>\nx</summary>",
        "openclaw",
        "OpenClaw/pi branch summary",
    ),
    (CC1, "claude_code", "Claude Code 1.x continuation summary"),
    ("\n" + CC1 + "\n...use /newtask to start fresh", "cline", "Cline continuation summary"),
    (
        "The conversation history before this point was compacted into the following summary:\n\n<summary>\n",
        "openclaw",
        "OpenClaw/pi compaction summary",
    ),
    (
        "Another language model started to solve this problem and produced a summary of its thinking "
        "process. You also have access to the state of the tools",
        "codex",
        "Codex compaction summary",
    ),
    (
        "You are resuming an in-progress task after context compaction. Here is the summary:",
        "codex",
        "Codex handoff summary",
    ),
    ("Here is a summary of the conversation to date:\n\n## SUMMARY", "langchain", "LangChain summary"),
    ("Summary of the conversation so far: the user asked", "langmem", "LangMem summary"),
    (
        "You are in the middle of a conversation that has been summarized.\n\nThe full history",
        "deepagents",
        "deepagents summary",
    ),
    ("I spoke to you previously about a number of things.\nI asked you", "aider", "Aider summary"),
    ("<state_snapshot>\n<overall_goal>x</overall_goal>", "gemini_cli", "Gemini CLI state snapshot"),
    ("What did we do so far?", "opencode", "opencode compaction question"),
    (
        "Your context was compacted. The previous message contains a summary of the conversation so far.\n",
        "goose",
        "Goose compaction acknowledgement",
    ),
    ("[Historical tool call summary] read two files", "goose", "Goose tool-call summary"),
    (
        "The user has accepted the condensed conversation summary you generated. This summary",
        "cline",
        "Cline condensed summary",
    ),
    ("Conversation summary: we fixed the parser.", "plain", "plain conversation summary"),
    ("**Summary of the Conversation so far:**\nwe fixed it", "plain", "plain conversation summary"),
    ("## Conversation summary\n- fixed", "plain", "plain conversation summary"),
    ("SUMMARY OF THE CONVERSATION SO FAR:", "plain", "plain conversation summary"),
]


def test_every_marker_has_a_sample() -> None:
    assert {m.description for m in MARKERS} == {description for _, _, description in MARKER_SAMPLES}


@pytest.mark.parametrize(("text", "harness", "description"), MARKER_SAMPLES)
def test_summary_marker_knows_each_harness(text: str, harness: str, description: str) -> None:
    assert summary_marker(text) == (harness, description)


@pytest.mark.parametrize(
    "text",
    [
        "Please read this. Here is a summary of the conversation to date: nothing yet.",
        "As I said, This session is being continued from a previous conversation that ran out of context.",
        "The conversation summary: is it right?",  # not at the start of a block
        "Conversation summary is what I want next.",  # no colon, not a heading line
        "What did we do so far? Tell me in a list.",
        "Let us talk about <state_snapshot> tags.",
    ],
)
def test_a_phrase_inside_a_paragraph_is_not_a_marker(text: str) -> None:
    assert summary_marker(text) is None


def test_a_marker_at_a_paragraph_start_counts() -> None:
    assert summary_marker("Some preamble.\n\nHere is a summary of the conversation to date:\n\nx") == (
        "langchain",
        "LangChain summary",
    )
    assert summary_marker(f"{REMINDER}\n{CC2}") == ("claude_code", "Claude Code 2.x continuation summary")


def test_claude_code_merges_the_summary_after_its_reminder_part() -> None:
    merged = {"role": "user", "content": [{"type": "text", "text": REMINDER}, {"type": "text", "text": CC2}]}
    boundary = run(session(), [SYSTEM, merged, *pair("c9", "ok")])
    assert (boundary.event, boundary.harness, boundary.summary_at) == (Event.COMPACTION, "claude_code", 1)
    assert "message 1 (user) part 1 has Claude Code 2.x continuation summary at a paragraph start" in (
        boundary.evidence
    )


def test_a_marker_in_a_tool_result_does_not_count() -> None:
    new = [SYSTEM, user("Read the log."), *pair("c9", CC2), {"role": "assistant", "content": "It is a summary."}]
    boundary = run(session(), new)
    assert (boundary.event, boundary.harness, boundary.summary_at) == (Event.COMPACTION, "shape", None)


def test_goose_acknowledgement_counts_only_from_the_assistant() -> None:
    ack = "Your context was compacted. The previous message contains a summary of the conversation so far."
    as_assistant = run(session(), [SYSTEM, user("We fixed the parser."), {"role": "assistant", "content": ack}])
    assert (as_assistant.event, as_assistant.harness, as_assistant.summary_at) == (Event.COMPACTION, "goose", 2)
    as_user = run(session(), [SYSTEM, user(ack)])
    assert as_user.harness != "goose"


def test_opencode_question_needs_the_assistant_summary_after_it() -> None:
    summary = {"role": "assistant", "content": "We fixed the parser and ran the suite."}
    boundary = run(
        session(), [SYSTEM, user("What did we do so far?"), summary, user("Continue if you have next steps")]
    )
    assert (boundary.event, boundary.harness, boundary.summary_at) == (Event.COMPACTION, "opencode", 1)
    alone = run(session(), [SYSTEM, user("What did we do so far?")])
    assert alone.harness != "opencode"


def test_langmem_wording_in_a_user_message_is_a_plain_summary() -> None:
    boundary = run(session(), [SYSTEM, user("Summary of the conversation so far: we fixed it.")])
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "plain")
    system = run(session(), [SYSTEM, {"role": "system", "content": "Summary of the conversation so far: fixed."}])
    assert (system.event, system.harness) == (Event.COMPACTION, "langmem")


def test_a_compaction_keeping_the_tail_finds_the_summary() -> None:
    tail = session()[4:]
    boundary = run(session(), [SYSTEM, user(CC2), *tail])
    assert (boundary.event, boundary.kept, boundary.summary_at) == (Event.COMPACTION, 1, 1)


# ---------------------------------------------------------------- reset


def test_same_instructions_and_a_new_short_transcript_is_a_reset() -> None:
    boundary = run(session(), [SYSTEM, user("Let's start a new feature: export to CSV.")])
    assert (boundary.event, boundary.kept, boundary.harness) == (Event.RESET, 1, "shape")
    assert boundary.evidence.startswith("same 1 instruction messages, then 1 new: ")


def test_a_reset_transcript_may_hold_up_to_the_limit() -> None:
    new = [SYSTEM, user("New task."), *pair("c9", "ok")]
    assert len(new) - 1 == MAX_RESET_TAIL
    assert run(session(), new).event is Event.RESET
    longer = [*new, {"role": "assistant", "content": "Done."}]
    assert run(session(), longer).event is Event.COMPACTION


def test_no_instructions_means_no_reset() -> None:
    old = session()[1:]
    boundary = run(old, [user("Something else entirely.")])
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "shape")


def test_other_instructions_mean_no_reset() -> None:
    boundary = run(session(), [{"role": "system", "content": "You are a travel agent."}, user("Book a flight.")])
    assert boundary.event is Event.COMPACTION


def test_an_extra_instruction_message_means_no_reset() -> None:
    boundary = run(session(), [SYSTEM, {"role": "developer", "content": "Be terse."}, user("Hi.")])
    assert boundary.event is Event.COMPACTION


def test_keeping_more_than_the_instructions_is_never_a_reset() -> None:
    boundary = run(session(), [*session()[:2], user("Different follow-up.")])
    assert (boundary.event, boundary.kept) == (Event.COMPACTION, 2)


def test_a_marker_wins_over_a_reset_shape() -> None:
    boundary = run(session(), [SYSTEM, user(CC2)])
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "claude_code")


def test_claude_code_clear_keeps_its_reminder_block() -> None:
    old = [user(f"{REMINDER}\nFix the parser."), *pair("c1", LONG_RESULT), {"role": "assistant", "content": "Done."}]
    boundary = run(old, [user(f"{REMINDER}\nNow write the docs.")])
    assert (boundary.event, boundary.harness, boundary.kept) == (Event.RESET, "claude_code", 0)
    other = run(old, [user("<system-reminder>\nanother project\n</system-reminder>\nNow write the docs.")])
    assert other.event is Event.COMPACTION


def test_claude_code_clear_with_a_system_prompt() -> None:
    old = [SYSTEM, user(f"{REMINDER}\nFix the parser."), *pair("c1", LONG_RESULT)]
    boundary = run(old, [SYSTEM, user(f"{REMINDER}\nNow write the docs.")])
    assert boundary.event is Event.RESET


# ---------------------------------------------------------------- shapes and Cline


def test_messages_dropped_from_the_middle_are_a_compaction_by_shape() -> None:
    wire = session()
    new = [*wire[:2], *wire[4:]]
    boundary = run(wire, new)
    assert (boundary.event, boundary.harness, boundary.kept) == (Event.COMPACTION, "shape", 2)
    assert boundary.evidence == "diverged at message 2 (assistant): 7 known, 5 incoming"


def test_a_shorter_transcript_is_a_compaction() -> None:
    boundary = run(session(), session()[:4])
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "shape")
    assert boundary.evidence == "diverged at message 4 (end): 7 known, 4 incoming"


def test_cline_truncation_notice_is_a_compaction_by_cline() -> None:
    notice = (
        "[NOTE] Some previous conversation history with the user has been removed to maintain optimal "
        "context window length. The initial user task has been retained for continuity."
    )
    wire = session()
    new = [*wire[:2], {"role": "assistant", "content": notice}, wire[-1]]
    boundary = run(wire, new)
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "cline")
    assert "Cline's truncation notice" in boundary.evidence


# ---------------------------------------------------------------- hints


def test_a_reset_hint_never_overrides_a_marker() -> None:
    boundary = run(session(), [SYSTEM, user(CC2)], hint="reset")
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "claude_code")


def test_a_reset_hint_never_resets_a_transcript_that_keeps_more_than_the_instructions() -> None:
    boundary = run(session(), [*session()[:2], user("Different follow-up.")], hint="reset")
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "shape")


def test_a_reset_hint_decides_an_ambiguous_shape() -> None:
    long_new = [SYSTEM, user("New task."), *pair("c8", "ok"), *pair("c9", "ok")]
    assert run(session(), long_new).event is Event.COMPACTION
    boundary = run(session(), long_new, hint=" Reset ")
    assert (boundary.event, boundary.harness) == (Event.RESET, "hint")
    assert boundary.evidence.startswith("reset hint, 1 instruction messages kept; diverged at message 1")


def test_a_reset_hint_agreeing_with_the_shape_leaves_the_harness() -> None:
    boundary = run(session(), [SYSTEM, user("New task.")], hint="reset")
    assert (boundary.event, boundary.harness) == (Event.RESET, "shape")


def test_a_compaction_hint_turns_a_reset_into_a_compaction() -> None:
    boundary = run(session(), [SYSTEM, user("New task.")], hint="compaction")
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "hint")
    assert boundary.evidence.startswith("compaction hint on a reset shape: same 1 instruction messages")


def test_a_prune_hint_accepts_any_new_text_of_the_same_call() -> None:
    new = cleared(session(), [3], "This result was moved to the archive, ask for it by call id if needed. " * 2)
    assert run(session(), new).event is Event.COMPACTION
    boundary = run(session(), new, hint="prune")
    assert (boundary.event, boundary.harness, boundary.pruned) == (Event.PRUNE, "hint", (3,))


def test_a_prune_hint_does_not_prune_other_messages() -> None:
    new = cleared(session(), [1], "[Old tool result content cleared]")
    assert run(session(), new, hint="prune").event is Event.COMPACTION


@pytest.mark.parametrize("hint", [None, "", "bogus", "session_end", "append"])
def test_unknown_hints_are_ignored(hint: str | None) -> None:
    assert run(session(), [SYSTEM, user("New task.")], hint=hint).event is Event.RESET


def test_hints_do_not_touch_start_or_append() -> None:
    assert run([], session(), hint="compaction").event is Event.START
    assert run(session(), [*session(), user("More.")], hint="reset").event is Event.APPEND


# ---------------------------------------------------------------- evidence


def test_evidence_is_one_ascii_line_with_a_short_escaped_excerpt() -> None:
    secret = "Summary of the conversation so far:\n caf\u00e9 \U0001f680 " + "x" * 100 + "TAIL-NOT-SHOWN"
    boundary = run(session(), [SYSTEM, user(secret)])
    assert boundary.event is Event.COMPACTION
    assert boundary.evidence.isascii() and boundary.evidence.isprintable()
    assert "\n" not in boundary.evidence
    assert "TAIL-NOT-SHOWN" not in boundary.evidence
    assert "\\n" in boundary.evidence  # the newline is escaped, not dropped
    reset = run(session(), [SYSTEM, user("Nouvelle t\u00e2che:\n" + "y" * 80)])
    assert reset.event is Event.RESET
    assert reset.evidence.isascii() and reset.evidence.isprintable() and "y" * 41 not in reset.evidence


# ---------------------------------------------------------------- real traces and properties


TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


@pytest.mark.skipif(not TRACES, reason="no real traces")
@pytest.mark.parametrize("trace", TRACES, ids=lambda t: t.name)
def test_a_real_trace_growing_turn_by_turn_is_always_an_append(trace) -> None:  # type: ignore[no-untyped-def]
    table = PageTable("tenant-lifecycle-trace", trace.name, "project")
    events = []
    for wire in trace.turns():
        messages = parse_messages(wire)
        events.append(detect(table, messages, known_prefix(table, messages)).event)
        ingest(table, messages, POLICY, COUNTER)
    assert events[0] is Event.START
    assert set(events[1:]) == {Event.APPEND}


@PROPERTY
@given(transcripts(), st.data())
def test_appending_messages_is_an_append(wire: list[Wire], data: st.DataObject) -> None:
    cuts = requests(wire)
    before = data.draw(st.integers(0, len(cuts) - 1))
    table = table_of(cuts[before], "property-append")
    messages = parse_messages([*wire, user("One more thing.")])
    boundary = detect(table, messages, known_prefix(table, messages))
    assert boundary.event is Event.APPEND
    assert boundary.kept == len(cuts[before])


@PROPERTY
@given(transcripts(), st.data())
def test_a_transcript_that_keeps_more_than_the_instructions_is_never_a_reset(
    wire: list[Wire], data: st.DataObject
) -> None:
    table = table_of(wire, "property-reset")
    instructions = next((i for i, m in enumerate(wire) if m["role"] not in ("system", "developer")), len(wire))
    cuts = [c for c in requests(wire) if len(c) > instructions]
    kept = data.draw(st.sampled_from(cuts)) if cuts else [*wire[: instructions + 1]]
    tail = data.draw(st.lists(st.sampled_from(("New task.", "Start over.", "Hi!")), min_size=1, max_size=3))
    new = [*kept, *(user(t) for t in tail)]
    messages = parse_messages(new)
    boundary = detect(table, messages, known_prefix(table, messages))
    assert boundary.kept > instructions
    assert boundary.event is not Event.RESET
