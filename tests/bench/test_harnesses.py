"""The harness injectors: their wire texts, lossy summaries, valid tool pairing, purity; and,
on every real trace, that the lifecycle detector names what each injector did."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import pytest

from bench.harnesses import (
    CLAUDE_CODE_SECTIONS,
    CLEARED,
    INJECTORS,
    claude_code_compact,
    langchain_summarize,
    openclaw_compact,
    plain_summary,
    prune_tool_results,
    reset,
    soft_trim,
)
from bench.traces import Trace, load_traces, traces_dir
from gateway.wire.chat_json import content_text, parse_messages
from policies.lifecycle import Boundary, Event, detect
from policies.pagetable import PageTable, ingest, known_prefix
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from tests.policies.strategies import Wire

COUNTER = CharCounter()
POLICY = TenantPolicy()
SYSTEM: Wire = {"role": "system", "content": "You are a coding agent. You must never push to main."}
ASK = "Fix the failing parser test in src/parser.py. You must never use tabs. I prefer short answers."
PLAN = "Plan:\n1. Read the test.\n2. Fix the tokenizer.\n3. Run the suite."
TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []
NEW_PROMPT = "Start over: list my open tickets."


def pair(call_id: str, name: str, result: str) -> list[Wire]:
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def session() -> list[Wire]:
    return [
        SYSTEM,
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": PLAN},
        *pair("c1", "Read", "x" * 5000),
        *pair("c2", "Bash", "short output"),
        *pair("c3", "Edit", "File written."),
        {"role": "assistant", "content": "Done: the tokenizer is fixed."},
    ]


def text(message: Wire) -> str:
    return content_text(message.get("content"))


# ---------------------------------------------------------------- compaction injectors


def test_claude_code_compact_is_the_2x_continuation_with_a_lossy_summary() -> None:
    out = claude_code_compact(session())
    assert [m["role"] for m in out] == ["system", "user"]
    assert out[0] == SYSTEM
    summary = text(out[1])
    assert summary.startswith(
        "This session is being continued from a previous conversation that ran out of context. "
        "The summary below covers the earlier portion of the conversation.\n\nSummary:\n1. Primary Request and Intent:"
    )
    for number, title in enumerate(CLAUDE_CODE_SECTIONS, 1):
        assert f"\n{number}. {title}:\n" in summary or summary.endswith(f"{number}. {title}:")
    assert "Fix the failing parser test in src/parser.py." in summary
    assert "Read, Bash, Edit" in summary
    for lost in ("never use tabs", "short answers", "Fix the tokenizer", "never push"):
        assert lost not in summary  # rules, preferences and plans are what the gateway must restore
    assert "Recent messages are preserved verbatim." not in summary
    assert "Resume directly \u2014 do not acknowledge the summary" in summary


def test_claude_code_compact_version_1() -> None:
    summary = text(claude_code_compact(session(), version=1)[1])
    assert summary.startswith(
        "This session is being continued from a previous conversation that ran out of context. "
        "The conversation is summarized below:\nAnalysis:\n"
    )
    assert "\n\nSummary:\n1. Primary Request and Intent:" in summary
    assert summary.endswith("Continue with the last task that you were asked to work on.")


def test_claude_code_compact_keeps_the_tail_verbatim() -> None:
    wire = session()
    out = claude_code_compact(wire, keep_recent=3)
    assert out[2:] == wire[-3:]
    assert "Recent messages are preserved verbatim." in text(out[1])


@pytest.mark.parametrize("keep", range(0, 10))
def test_a_kept_tail_never_starts_with_an_orphan_tool_result(keep: int) -> None:
    for injector in (claude_code_compact, openclaw_compact, langchain_summarize, plain_summary):
        out = injector(session(), keep_recent=keep)
        parse_messages(out)  # raises on a tool result whose call was cut
        assert len(out) - 2 <= keep
        assert all(m["role"] != "tool" for m in out[2:3])


def test_claude_code_compact_puts_the_summary_after_the_claude_md_block() -> None:
    reminder = (
        "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n</system-reminder>"
    )
    wire = [SYSTEM, {"role": "user", "content": f"{reminder}\n{ASK}"}, *session()[2:]]
    out = claude_code_compact(wire)
    parts = out[1]["content"]
    assert [p["text"] for p in parts][0] == reminder
    assert parts[1]["text"].startswith("This session is being continued")
    assert "Fix the failing parser test in src/parser.py." in parts[1]["text"]


def test_openclaw_compact_wraps_the_pi_headers_in_summary_tags() -> None:
    out = openclaw_compact(session(), keep_recent=3)
    body = text(out[1])
    assert body.startswith(
        "The conversation history before this point was compacted into the following summary:\n\n<summary>\n## Goal\n"
    )
    for header in ("## Constraints & Preferences", "## Progress", "### Done", "## Key Decisions", "## Next Steps"):
        assert header in body
    assert body.endswith("\n</summary>")
    assert "never use tabs" not in body
    assert out[2:] == session()[-3:]
    assert openclaw_compact(session(), keep_recent=2)[2:] == session()[-1:]  # the orphan result goes too


def test_langchain_and_plain_summaries() -> None:
    lang = langchain_summarize(session(), keep_recent=0)
    assert text(lang[1]).startswith("Here is a summary of the conversation to date:\n\n## SESSION INTENT\n")
    plain = plain_summary(session())
    assert plain[1]["role"] == "system"
    assert text(plain[1]).startswith("Summary of the conversation so far: Fix the failing parser test")
    assert plain_summary(session(), role="user")[1]["role"] == "user"


# ---------------------------------------------------------------- pruning and reset


def test_prune_tool_results_clears_all_but_the_newest() -> None:
    out = prune_tool_results(session(), keep_recent=1)
    results = [m["content"] for m in out if m["role"] == "tool"]
    assert results == [CLEARED, CLEARED, "File written."]
    custom = prune_tool_results(session(), keep_recent=0, placeholder="[cleared]")
    assert [m["content"] for m in custom if m["role"] == "tool"] == ["[cleared]"] * 3
    assert prune_tool_results(session()) == session()  # five kept: nothing to clear


def test_soft_trim_keeps_head_and_tail_of_long_results() -> None:
    wire = session()
    wire[4] = {**wire[4], "content": "".join(f"{i:05d}" for i in range(1200))}  # 6000 chars
    out = soft_trim(wire, head=10, tail=5, min_chars=4000)
    original = wire[4]["content"]
    assert out[4]["content"] == (
        f"{original[:10]}\n...\n{original[-5:]}\n\n"
        "[Tool result trimmed: kept first 10 chars and last 5 chars of 6000 chars.]"
    )
    assert out[6] == wire[6]
    assert soft_trim(wire, min_chars=7000) == wire


def test_reset_keeps_the_instructions_and_one_new_prompt() -> None:
    assert reset(session(), NEW_PROMPT) == [SYSTEM, {"role": "user", "content": NEW_PROMPT}]
    assert reset(session()[1:], NEW_PROMPT) == [{"role": "user", "content": NEW_PROMPT}]


def test_injectors_are_registered_pure_and_deterministic() -> None:
    assert set(INJECTORS) == {
        "claude_code_compact",
        "openclaw_compact",
        "langchain_summarize",
        "plain_summary",
        "prune_tool_results",
        "soft_trim",
        "reset",
    }
    wire = session()
    frozen = copy.deepcopy(wire)
    for name, injector in INJECTORS.items():
        args = (NEW_PROMPT,) if name == "reset" else ()
        first, second = injector(wire, *args), injector(wire, *args)
        assert json.dumps(first) == json.dumps(second)
        assert first is not wire
        for message in first:
            message["content"] = "mutated"
        assert wire == frozen, name


# ---------------------------------------------------------------- real traces through the detector

EXPECTED = {
    "claude_code_compact": "claude_code",
    "openclaw_compact": "openclaw",
    "langchain_summarize": "langchain",
    "plain_summary": "langmem",  # a system "Summary of the conversation so far: " is LangMem's shape
}


def table_of(wire: Sequence[Wire], name: str) -> PageTable:
    table = PageTable("tenant-harnesses", name, "project")
    ingest(table, parse_messages(wire), POLICY, COUNTER)
    return table


def detected(table: PageTable, wire: Sequence[Wire]) -> Boundary:
    messages = parse_messages(wire)
    return detect(table, messages, known_prefix(table, messages))


def cut_points(trace: Trace) -> tuple[list[Wire], list[Wire]]:
    """The transcript the table holds (mid-session) and the agent's next request."""
    turns = list(trace.turns())
    middle = len(turns) // 2
    return turns[middle], turns[min(middle + 1, len(turns) - 1)]


def instructions(wire: Sequence[Wire]) -> int:
    return next((i for i, m in enumerate(wire) if m["role"] not in ("system", "developer")), len(wire))


needs_traces = pytest.mark.skipif(not TRACES, reason="no real traces")


@needs_traces
@pytest.mark.parametrize("trace", TRACES, ids=lambda t: t.name)
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("keep", [0, 4])
def test_each_compaction_on_a_real_trace_is_detected(trace: Trace, name: str, keep: int) -> None:
    held, following = cut_points(trace)
    table = table_of(held, f"{trace.name}-{name}-{keep}")
    out = INJECTORS[name](following, keep_recent=keep)
    boundary = detected(table, out)
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, EXPECTED[name])
    assert boundary.summary_at == instructions(following)
    assert boundary.evidence.isascii() and boundary.evidence.isprintable()


@needs_traces
@pytest.mark.parametrize("trace", TRACES, ids=lambda t: t.name)
@pytest.mark.parametrize("version", [1, 2])
def test_both_claude_code_versions_are_detected_on_a_real_trace(trace: Trace, version: int) -> None:
    held, following = cut_points(trace)
    boundary = detected(table_of(held, f"{trace.name}-cc{version}"), claude_code_compact(following, version=version))
    assert (boundary.event, boundary.harness) == (Event.COMPACTION, "claude_code")
    assert f"Claude Code {version}.x continuation summary" in boundary.evidence


def changed_tool_positions(before: Sequence[Wire], after: Sequence[Wire], known: int) -> set[int]:
    return {i for i in range(known) if before[i]["role"] == "tool" and before[i] != after[i]}


@needs_traces
@pytest.mark.parametrize("trace", TRACES, ids=lambda t: t.name)
@pytest.mark.parametrize(("name", "harness"), [("prune_tool_results", ""), ("soft_trim", "openclaw")])
def test_pruning_a_real_trace_is_detected(trace: Trace, name: str, harness: str) -> None:
    held, following = cut_points(trace)
    table = table_of(held, f"{trace.name}-{name}")
    out = INJECTORS[name](following)
    boundary = detected(table, out)
    changed = changed_tool_positions(following, out, len(held))
    if not changed:
        assert boundary.event is Event.APPEND
        return
    assert (boundary.event, boundary.harness) == (Event.PRUNE, harness)
    assert boundary.pruned and set(boundary.pruned) <= changed
    ingest(table, parse_messages(out), POLICY, COUNTER, pruned=boundary.pruned)
    assert table.restored  # the detector's positions are the ones ingest restores


@needs_traces
@pytest.mark.parametrize("trace", TRACES, ids=lambda t: t.name)
def test_resetting_a_real_trace_is_a_reset_only_after_instructions(trace: Trace) -> None:
    held, following = cut_points(trace)
    boundary = detected(table_of(held, f"{trace.name}-reset"), reset(following, NEW_PROMPT))
    if instructions(held):
        assert (boundary.event, boundary.harness, boundary.kept) == (Event.RESET, "shape", instructions(held))
    else:  # no instruction message to tell "same agent": unsure, so never a reset
        assert (boundary.event, boundary.harness) == (Event.COMPACTION, "shape")
