"""Property tests of `plan_turn` over random agent sessions replayed turn by turn.

Every request of a generated session goes through ONE page table, as an agent's would; the
output is checked as the upstream will see it (`to_wire`), with the gateway's own counting.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.harnesses import INJECTORS
from bench.traces import load_traces, traces_dir
from gateway.upstream.tokens import count_tools
from gateway.wire.chat_json import parse_messages, to_wire
from gateway.wire.chat_tokens import count_messages
from policies.budget import TokenBudget, resolve_budget
from policies.classify import extract_facts
from policies.layout import INDEX_LISTED
from policies.lifecycle import detect
from policies.pages import Fidelity, Page, PageType
from policies.pagetable import PageTable, current_plan, known_prefix, paged_out
from policies.render import render
from policies.tenant import Budget, TenantPolicy
from policies.tokens import CharCounter, TokenCounter
from policies.transcript import Message
from policies.turn import TurnPlan, _Entries, assemble_turn, build_layout, ingest_turn, plan_turn
from tests.policies.strategies import (
    IMAGE_PART,
    RecordingCounter,
    Session,
    Wire,
    aligned,
    budgets,
    bulk_text,
    content_text,
    newest_turn_of,
    replay,
    requests,
    sessions,
    tiktoken_counter,
    tool_results,
    transcripts,
)
from tests.policies.test_pagetable import RULE, after_compaction, working_session

PAGE_ID = re.compile(r"p:[0-9a-f]{12}(?:~\d+)?")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def normalised(text: str) -> str:
    return " ".join(text.split())


def output_text(output: Sequence[Wire]) -> str:
    return normalised("\n".join(content_text(m) for m in output))


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- invariant checks


def assert_pairing(request: Sequence[Wire], output: Sequence[Wire]) -> None:
    """Every tool_calls entry answered right after its message, in order; no orphan tool message."""
    sent = {c["id"]: c["function"]["arguments"] for m in request for c in m.get("tool_calls") or ()}
    position = 0
    while position < len(output):
        message = output[position]
        assert message["role"] != "tool", f"orphan tool message at {position}: {message}"
        calls = message.get("tool_calls") or []
        position += 1
        if not calls:
            continue
        assert message["role"] == "assistant"
        ids = [c["id"] for c in calls]
        answers = []
        while position < len(output) and output[position]["role"] == "tool":
            answers.append(output[position]["tool_call_id"])
            position += 1
        assert answers == ids, f"calls {ids} answered by {answers}"
        for call in calls:
            assert call["id"] in sent
            arguments = call["function"]["arguments"]
            assert isinstance(arguments, str)
            if is_json(sent[call["id"]]):
                assert is_json(arguments), f"{call['id']}: arguments no longer JSON: {arguments!r}"


def assert_order_kept(request: Sequence[Wire], output: Sequence[Wire]) -> None:
    """Messages forwarded as sent keep their original relative order."""
    where = {id(m): i for i, m in enumerate(request)}
    positions = [where[id(m)] for m in output if id(m) in where]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)


def assert_newest_turn_intact(request: Sequence[Wire], output: Sequence[Wire]) -> None:
    """The newest turn is sent as the agent sent it, byte for byte, except a tool result too big
    to send whole: that one is paged (same call id, a shorter text naming its page)."""
    tail = newest_turn_of(request)
    assert tail, "a request always has a newest turn"
    for sent, got in zip(tail, output[-len(tail) :], strict=True):
        if sent["role"] == "tool" and got != sent:
            assert got["tool_call_id"] == sent["tool_call_id"] and PAGE_ID.search(content_text(got))
            continue
        assert json.dumps(got) == json.dumps(sent)


def assert_within_budget(plan: TurnPlan, output: Sequence[Wire], usable: int, counter: TokenCounter = COUNTER) -> None:
    """Within budget whenever the minimum set fits; the accounting never under-counts."""
    counted = count_messages(counter, output)
    assert plan.assembly.tokens >= counted, "the accounting under-counts the rendered prompt"
    if not plan.assembly.insufficient:
        assert counted <= usable


def assert_pointers_resolve(table: PageTable, output: Sequence[Wire]) -> None:
    for message in output:
        for page_id in PAGE_ID.findall(content_text(message)):
            assert page_id in table.pages, f"{page_id} is named in the prompt but not in the page table"


def assert_system_rules_kept(request: Sequence[Wire], output: Sequence[Wire]) -> None:
    if request[0]["role"] not in ("system", "developer"):
        return
    text = output_text(output)
    instruction = Message(role=request[0]["role"], text=content_text(request[0]))
    for fact in extract_facts(instruction):
        if fact.type is PageType.CONSTRAINT:
            needle = normalised(fact.text).rstrip("…").strip()
            assert needle in text, f"system rule lost: {needle!r}"


def assert_constraints_kept(pages: Mapping[str, Page], order: Sequence[str], output: Sequence[Wire]) -> None:
    """Every constraint of a message still in the transcript is in the prompt (its parent's text or restated)."""
    text = output_text(output)
    live = set(order)
    for page in pages.values():
        if page.type is PageType.CONSTRAINT and page.provenance.parent_id in live:
            body = normalised(page.reprs.full.text.split(": ", 1)[1]).rstrip("…").strip()
            assert body in text, f"constraint {page.id} lost: {body!r}"


# ---------------------------------------------------------------- properties over sessions


@PROPERTY
@given(sessions())
def test_tool_calls_stay_paired(session: Session) -> None:
    for turn in replay(session, COUNTER).turns:
        assert_pairing(turn.request, turn.output)
        assert_order_kept(turn.request, turn.output)


@PROPERTY
@given(sessions())
def test_system_message_comes_first(session: Session) -> None:
    for turn in replay(session, COUNTER).turns:
        if turn.request[0]["role"] in ("system", "developer"):
            assert turn.output[0]["role"] == turn.request[0]["role"]
            assert turn.plan.messages[0].text.strip() or not content_text(turn.request[0]).strip()


@PROPERTY
@given(sessions())
def test_newest_turn_is_forwarded_unchanged(session: Session) -> None:
    for turn in replay(session, COUNTER).turns:
        assert_newest_turn_intact(turn.request, turn.output)


@PROPERTY
@given(sessions())
def test_prompt_fits_the_budget_whenever_the_minimum_does(session: Session) -> None:
    for turn in replay(session, COUNTER).turns:
        assert_within_budget(turn.plan, turn.output, session.budget.usable)


@PROPERTY
@given(sessions())
def test_replay_is_deterministic(session: Session) -> None:
    first = [json.dumps(t.output) for t in replay(session, COUNTER).turns]
    second = [json.dumps(t.output) for t in replay(session, COUNTER).turns]
    assert first == second


@PROPERTY
@given(sessions())
def test_every_named_page_resolves_and_system_rules_survive(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        assert_pointers_resolve(result.table, turn.output)
        assert_system_rules_kept(turn.request, turn.output)


FOLDED_RULE = Session(
    wire=[
        {
            "role": "user",
            "content": "Never use tabs for indentation in this project. Log: " + "alpha beta gamma " * 100,
        },
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Now fix the parser."},
    ],
    budget=resolve_budget(Budget(max_prompt_tokens=100), 128_000, "model_map", 0),
)


@PROPERTY
@example(FOLDED_RULE)
@given(sessions())
def test_every_constraint_stays_in_the_prompt(session: Session) -> None:
    """Constraints are hard-pinned at structured: resident in their parent or restated."""
    for turn in replay(session, COUNTER).turns:
        assert_constraints_kept(turn.pages_after, turn.order, turn.output)


@PROPERTY
@given(sessions())
def test_degraded_pages_name_their_id_or_lose_nothing(session: Session) -> None:
    """A page shown as a pointer or folded into a span stub can be recalled by its id."""
    result = replay(session, COUNTER)
    for turn in result.turns:
        text = "\n".join(content_text(m) for m in turn.output)
        for page_id, level in turn.plan.assembly.levels.items():
            page = result.table.pages[page_id]
            if level is Fidelity.POINTER and page.reprs.pointer.text != page.reprs.full.text:
                assert page_id in text, f"{page_id} at pointer level is not named in the prompt"


# ---------------------------------------------------------------- incremental ingest


@PROPERTY
@given(sessions())
def test_a_turn_counts_only_new_messages(session: Session) -> None:
    """Per-turn work follows new content: replaying turn by turn counts exactly the texts a
    single ingest of the whole transcript counts (which counts each distinct text once; a turn
    counts a text again only when a later turn's pages state it again), and a repeated request
    counts nothing."""
    recorder = RecordingCounter(COUNTER)
    result = replay(session, recorder)
    incremental = Counter(recorder.take())
    whole = parse_messages(requests(session.wire)[-1])
    plan_turn(PageTable("tenant", "session", "project"), whole, TenantPolicy(), recorder, session.budget)
    counted = Counter(recorder.take())
    assert set(counted) == set(incremental)
    assert set(counted.values()) <= {1}
    plan_turn(result.table, whole, TenantPolicy(), recorder, session.budget)
    assert recorder.take() == []


@PROPERTY
@given(sessions())
def test_old_texts_are_never_recounted(session: Session) -> None:
    recorder = RecordingCounter(COUNTER)
    table = PageTable("t", "s", "p")
    for request in requests(session.wire):
        before = set(table.pages)
        plan = plan_turn(table, parse_messages(request), TenantPolicy(), recorder, session.budget)
        counted = recorder.take()
        old_ids = before - {p.id for p in plan.ingest.new_pages}
        assert plan.ingest.kind == "append"
        for text in counted:
            assert not set(PAGE_ID.findall(text)) & old_ids, f"an old page's text was counted again: {text[:80]!r}"
        if not plan.ingest.new_pages:
            assert counted == []


@PROPERTY
@given(sessions())
def test_page_table_grows_only_by_new_messages(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        ingest = turn.plan.ingest
        added = set(turn.pages_after) - set(turn.pages_before)
        assert added == {p.id for p in ingest.new_pages}
        new_messages = set(turn.order[ingest.kept :])
        for page_id in added:
            page = turn.pages_after[page_id]
            assert page_id in new_messages or page.provenance.parent_id in new_messages
        for page_id, page in turn.pages_before.items():
            assert turn.pages_after[page_id] is page, f"{page_id} was rebuilt"
        assert len(turn.order) == len(turn.request)


def test_page_table_keeps_the_order_of_an_appended_prefix() -> None:
    wire = [
        {"role": "system", "content": "You must never push to main."},
        {"role": "user", "content": "Fix the test."},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks."},
    ]
    budget = resolve_budget(Budget(max_prompt_tokens=10_000), 128_000, "model_map", 0)
    table = PageTable("t", "s", "p")
    plan_turn(table, parse_messages(wire[:2]), TenantPolicy(), COUNTER, budget)
    first = list(table.order)
    plan = plan_turn(table, parse_messages(wire), TenantPolicy(), COUNTER, budget)
    assert table.order[:2] == first
    assert plan.ingest.kind == "append"
    assert plan.ingest.kept == 2
    assert len(table.order) == 4


def test_a_resent_request_changes_nothing_and_ages_nothing() -> None:
    """A client retry sends the same transcript again: same prompt, no new pages, no ageing."""
    wire = [
        {"role": "system", "content": "You must never push to main."},
        {"role": "user", "content": bulk_text(3, 3000)},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks."},
    ]
    budget = resolve_budget(Budget(max_prompt_tokens=300), 128_000, "model_map", 0)
    table = PageTable("t", "s", "p")
    first = plan_turn(table, parse_messages(wire), TenantPolicy(), COUNTER, budget)
    turn, pages = table.turn, dict(table.pages)
    again = plan_turn(table, parse_messages(wire), TenantPolicy(), COUNTER, budget)
    assert first.changed
    assert not again.changed
    assert again.ingest.new_pages == ()
    assert (table.turn, table.pages) == (turn, pages)
    assert json.dumps(to_wire(again.messages)) == json.dumps(to_wire(first.messages))


# ---------------------------------------------------------------- budget changes and rewrites


def assert_invariants(
    table: PageTable, request: Sequence[Wire], plan: TurnPlan, usable: int, counter: TokenCounter = COUNTER
) -> None:
    output = to_wire(plan.messages)
    assert_pairing(request, output)
    assert_order_kept(request, output)
    assert_newest_turn_intact(request, output)
    assert_pointers_resolve(table, output)
    assert_system_rules_kept(request, output)
    assert_within_budget(plan, output, usable, counter)


@PROPERTY
@given(transcripts(), st.lists(budgets(), min_size=1, max_size=4))
def test_invariants_hold_when_the_budget_changes_between_turns(wire: list[Wire], drawn: list[TokenBudget]) -> None:
    table = PageTable("t", "s", "p")
    for number, request in enumerate(requests(wire)):
        budget = drawn[number % len(drawn)]
        plan = plan_turn(table, parse_messages(request), TenantPolicy(), COUNTER, budget)
        assert_invariants(table, request, plan, budget.usable)


def compacted(wire: Sequence[Wire], cut: int) -> list[Wire]:
    """What a client sends after compacting its history: a summary replaces messages up to a user turn."""
    head = [wire[0]] if wire[0]["role"] in ("system", "developer") else []
    users = [i for i, m in enumerate(wire) if m["role"] == "user" and i > 0]
    start = users[cut % len(users)] if users else len(wire)
    return [*head, {"role": "user", "content": "Summary of the work so far: the parser was fixed."}, *wire[start:]]


@PROPERTY
@given(sessions(), st.integers(0, 10))
def test_a_rewritten_history_is_planned_validly(session: Session, cut: int) -> None:
    result = replay(session, COUNTER)
    before = dict(result.table.pages)
    request = compacted(requests(session.wire)[-1], cut)
    plan = plan_turn(result.table, parse_messages(request), TenantPolicy(), COUNTER, session.budget)
    assert_invariants(result.table, request, plan, session.budget.usable)
    assert before.items() <= result.table.pages.items(), "pages of dropped messages stay recallable"
    assert len(result.table.order) == len(request)


COMPACTED_MIDDLE = (
    Session(
        wire=[
            {"role": "system", "content": "You are a careful coding agent."},
            {"role": "user", "content": "Can you fix the failing test in parser.py?"},
            {"role": "user", "content": "Look at the logs and tell me what broke last night."},
            {"role": "assistant", "content": "Done. The parser now handles empty input."},
        ],
        budget=resolve_budget(Budget(max_prompt_tokens=10_000), 128_000, "model_map", 0),
    ),
    1,
)


@PROPERTY
@example(*COMPACTED_MIDDLE)
@given(sessions(), st.integers(0, 10))
def test_a_rewrite_is_detected_at_the_first_changed_message(session: Session, cut: int) -> None:
    result = replay(session, COUNTER)
    request = compacted(requests(session.wire)[-1], cut)
    plan = plan_turn(result.table, parse_messages(request), TenantPolicy(), COUNTER, session.budget)
    assert plan.ingest.kind == "rewrite"
    assert plan.ingest.kept == (0 if request[0]["role"] == "user" else 1)
    summary = result.table.pages[result.table.order[plan.ingest.kept]]
    assert summary.reprs.full.text == content_text(request[plan.ingest.kept])


# ---------------------------------------------------------------- images


WITH_IMAGES = Session(
    wire=[{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, IMAGE_PART, IMAGE_PART]}],
    budget=resolve_budget(Budget(max_prompt_tokens=100), 128_000, "model_map", 0),
)


@PROPERTY
@example(WITH_IMAGES)
@given(sessions(images=True))
def test_image_parts_are_accounted(session: Session) -> None:
    for turn in replay(session, COUNTER).turns:
        assert_within_budget(turn.plan, turn.output, session.budget.usable)


# ---------------------------------------------------------------- physical insufficiency


@settings(max_examples=25, deadline=None)
@given(transcripts(max_rounds=3), st.data())
def test_an_oversized_newest_tool_result_is_paged_not_refused(wire: list[Wire], data: st.DataObject) -> None:
    huge = data.draw(tool_results("call_huge"))
    huge["content"] = "x" * 20_000 + content_text(huge)
    call = {"id": "call_huge", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    request = [*wire, {"role": "assistant", "content": None, "tool_calls": [call]}, huge]
    budget = resolve_budget(Budget(max_prompt_tokens=data.draw(st.integers(0, 4000))), 128_000, "model_map", 0)
    table = PageTable("t", "s", "p")
    plan = plan_turn(table, parse_messages(request), TenantPolicy(), COUNTER, budget)
    output = to_wire(plan.messages)
    assert output[-1]["tool_call_id"] == "call_huge" and table.order[-1] in content_text(output[-1])
    assert len(content_text(output[-1])) < len(huge["content"])
    assert plan.assembly.insufficient == (plan.assembly.minimum > budget.usable)
    assert_newest_turn_intact(request, output)
    assert_pairing(request, output)
    assert_pointers_resolve(table, output)


def test_insufficiency_clears_when_the_budget_allows() -> None:
    request = [{"role": "user", "content": "word " * 2000}]
    table = PageTable("t", "s", "p")
    small = resolve_budget(Budget(max_prompt_tokens=1000), 128_000, "model_map", 0)
    large = resolve_budget(Budget(max_prompt_tokens=10_000), 128_000, "model_map", 0)
    assert plan_turn(table, parse_messages(request), TenantPolicy(), COUNTER, small).assembly.insufficient
    assert not plan_turn(table, parse_messages(request), TenantPolicy(), COUNTER, large).assembly.insufficient


# ---------------------------------------------------------------- with a real tokenizer


@pytest.fixture(scope="module")
def tiktoken() -> TokenCounter:
    return tiktoken_counter()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions(max_rounds=3))
def test_invariants_hold_with_tiktoken(tiktoken: TokenCounter, session: Session) -> None:
    result = replay(session, tiktoken)
    for turn in result.turns:
        assert_invariants(result.table, turn.request, turn.plan, session.budget.usable, tiktoken)


def test_real_traces_keep_every_invariant(tiktoken: TokenCounter) -> None:
    """The shared real sessions, turn by turn, at a tight, a middling and a roomy budget."""
    directory = traces_dir()
    if not directory.is_dir():
        pytest.skip(f"no real traces at {directory} (set CLAWVM_TRACES)")
    for trace in load_traces(directory):
        for cap in (2_000, 8_000, 32_000):
            tools = count_tools(tiktoken, trace.tools)
            budget = resolve_budget(Budget(max_prompt_tokens=cap), 128_000, "model_map", tools)
            result = replay(Session(trace.messages, budget), tiktoken)
            assert result.table.plan == current_plan(result.table.order, result.table.pages)
            for turn in result.turns:
                assert_invariants(result.table, turn.request, turn.plan, budget.usable, tiktoken)
                assert_constraints_kept(result.table.pages, turn.order, turn.output)
                aligned(turn.request, turn.output, turn.order)


# -- boundaries: reinstatement and restored evidence -----------------------------------------

WIDE = TokenBudget(cap=20_000, usable=20_000, hard_limit=100_000, source="config")


def test_after_a_compaction_the_dropped_rules_preference_and_plan_are_forwarded() -> None:
    table = PageTable("t", "s", "p")
    plan_turn(table, parse_messages(working_session()), TenantPolicy(), COUNTER, WIDE)
    plan = plan_turn(table, parse_messages(after_compaction()), TenantPolicy(), COUNTER, WIDE)
    text = "\n".join(m.text for m in plan.messages)
    assert RULE in text and "I prefer small commits." in text
    assert "Fix the parser." in text  # the plan, at its structured floor or better
    assert plan.messages[-1].text == after_compaction()[-1]["content"]  # the newest turn stays last, untouched


def test_restored_evidence_is_forwarded_as_it_was_when_the_budget_allows() -> None:
    table = PageTable("t", "s", "p")
    wire = working_session()
    plan_turn(table, parse_messages(wire), TenantPolicy(), COUNTER, WIDE)
    pruned = [*wire[:4], {**wire[4], "content": "[Old tool result content cleared]"}, *wire[5:]]
    pruned.append({"role": "user", "content": "Now fix it."})
    messages = parse_messages(pruned)
    result = ingest_turn(table, messages, TenantPolicy(), COUNTER, pruned=(4,))
    plan = assemble_turn(table, messages, result, TenantPolicy(), WIDE)
    tool = next(m for m in plan.messages if m.role == "tool")
    assert tool.text == wire[4]["content"] and tool.tool_call_id == "c1"
    assert to_wire(plan.messages)[4]["content"] == wire[4]["content"]


# -- boundaries: the evidence index ----------------------------------------------------------

INDEX_HEAD = "[clawvm evidence index: "


def reading_session(modules: int) -> list[Wire]:
    """A system prompt, a request, then one `read_file` round per module, then a question."""
    wire: list[Wire] = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Find the slow module."},
    ]
    for n in range(modules):
        call = {"id": f"c{n}", "type": "function"}
        call["function"] = {"name": "read_file", "arguments": json.dumps({"path": f"src/m{n}.py"})}
        wire.append({"role": "assistant", "content": f"Reading module {n}.", "tool_calls": [call]})
        body = "\n".join(f"line {i} of module {n}: value = {n * 1000 + i}" for i in range(60))
        wire.append({"role": "tool", "tool_call_id": f"c{n}", "content": body})
    wire.append({"role": "assistant", "content": "All modules read."})
    return wire


def cross(table: PageTable, wire: Sequence[Wire], budget: TokenBudget, counter: TokenCounter = COUNTER) -> TurnPlan:
    """One request as the gateway handles it: the boundary detected, then ingest and assembly."""
    messages = parse_messages(wire)
    boundary = detect(table, messages, known_prefix(table, messages))
    policy = TenantPolicy()
    result = ingest_turn(table, messages, policy, counter, pruned=boundary.pruned, kept=boundary.kept)
    return assemble_turn(table, messages, result, policy, budget)


def index_message(output: Sequence[Wire]) -> tuple[int, str]:
    found = [(i, content_text(m)) for i, m in enumerate(output) if content_text(m).startswith(INDEX_HEAD)]
    assert len(found) == 1, "one evidence index"
    return found[0]


def tool_pages(table: PageTable) -> list[str]:
    return [p for p, page in table.pages.items() if page.type is PageType.EVIDENCE]


def budget_of(usable: int) -> TokenBudget:
    return TokenBudget(cap=usable, usable=usable, hard_limit=10**6, source="config")


def boundary(kind: str, wire: list[Wire]) -> list[Wire]:
    if kind == "reset":
        return INJECTORS["reset"](wire, "Start again: which module is slow?")
    return [*INJECTORS[kind](wire), {"role": "user", "content": "Go on: which module is slow?"}]


@pytest.mark.parametrize("counter_name", ["chars", "tiktoken"])
@pytest.mark.parametrize("usable", [1_500, 20_000])
@pytest.mark.parametrize("kind", ["claude_code_compact", "openclaw_compact", "reset"])
def test_after_a_compaction_or_reset_every_dropped_result_is_listed_in_the_index(
    kind: str, usable: int, counter_name: str, tiktoken: TokenCounter
) -> None:
    counter = tiktoken if counter_name == "tiktoken" else COUNTER
    table = PageTable("t", "s", "p")
    wire = reading_session(6)
    cross(table, wire[:2], budget_of(usable), counter)
    cross(table, wire, budget_of(usable), counter)
    plan = cross(table, boundary(kind, wire), budget_of(usable), counter)
    output = to_wire(plan.messages)
    position, text = index_message(output)
    assert position == 1 and output[0]["role"] == "system", "right after the instructions"
    dropped = [p for p in tool_pages(table) if p not in table.in_order]
    assert len(dropped) >= 4 and text.startswith(f"{INDEX_HEAD}{len(dropped)} tool results")
    for page_id in dropped:
        n = int(re.match(r"line 0 of module (\d+)", table.pages[page_id].reprs.full.text).group(1))
        assert f'{page_id} read_file(src/m{n}.py): "line 0 of module {n}: value = {n * 1000}"' in text
    assert_invariants(table, boundary(kind, wire), plan, usable, counter)


def test_the_newest_dropped_results_come_back_when_the_budget_allows() -> None:
    wire = reading_session(6)
    texts = {}
    for usable in (1_500, 20_000):
        table = PageTable("t", "s", "p")
        cross(table, wire, budget_of(usable))
        plan = cross(table, boundary("claude_code_compact", wire), budget_of(usable))
        texts[usable] = index_message(to_wire(plan.messages))[1]
        assert plan.assembly.tokens >= count_messages(COUNTER, to_wire(plan.messages))
    assert "line 59 of module 5: value = 5059" not in texts[1_500]  # listed only
    assert "line 59 of module 5: value = 5059" in texts[20_000]  # the newest, whole


def test_after_a_reset_only_the_dropped_results_the_new_request_names_come_back() -> None:
    """Starting over is not going on: old tool output comes back only when asked for by name."""
    wire = reading_session(6)
    for prompt, back in (("Start again: which module is slow?", set()), ("Start again from src/m2.py.", {2})):
        table = PageTable("t", "s", "p")
        cross(table, wire, budget_of(20_000))
        plan = cross(table, INJECTORS["reset"](wire, prompt), budget_of(20_000))
        text = index_message(to_wire(plan.messages))[1]
        assert {n for n in range(6) if f"line 59 of module {n}:" in text} == back
        assert all(f"read_file(src/m{n}.py)" in text for n in range(6))  # all listed all the same


def test_a_dropped_result_the_last_turn_names_comes_back_first() -> None:
    wire = reading_session(6)
    table = PageTable("t", "s", "p")
    cross(table, wire, budget_of(3_000))
    asked = [*INJECTORS["claude_code_compact"](wire), {"role": "user", "content": "What did src/m1.py hold?"}]
    cross(table, asked, budget_of(3_000))
    levels = {table.pages[p].provenance.tool_arguments: table.levels[p] for p in tool_pages(table)}
    named = levels.pop(json.dumps({"path": "src/m1.py"}))
    assert named > Fidelity.POINTER
    assert all(named >= level for level in levels.values())


def compacted_reading(modules: int, usable: int) -> tuple[PageTable, list[Wire], tuple[int, str]]:
    """A reading session compacted by Claude Code: the table, the history sent, the index shown."""
    wire = reading_session(modules)
    table = PageTable("t", "s", "p")
    cross(table, wire, budget_of(usable))
    history = boundary("claude_code_compact", wire)
    return table, history, index_message(to_wire(cross(table, history, budget_of(usable)).messages))


def test_the_index_is_the_same_bytes_on_every_turn_until_it_changes() -> None:
    table, history, first = compacted_reading(6, 2_000)
    for n in range(4):
        history = [*history, {"role": "assistant", "content": f"Answer {n}."}, {"role": "user", "content": "More?"}]
        assert index_message(to_wire(cross(table, history, budget_of(2_000)).messages)) == first


def test_a_prune_after_a_compaction_keeps_the_index_entries_and_the_pruned_results_addressable() -> None:
    table, history, before = compacted_reading(4, 2_000)
    later = reading_session(10)[-13:]  # six more rounds, then the assistant's last words
    history = [*history, *later[:-1]]
    cross(table, history, budget_of(2_000))
    pruned = [*boundary("prune_tool_results", history)[:-1], {"role": "user", "content": "Next?"}]
    plan = cross(table, pruned, budget_of(2_000))
    assert table.restored, "the pruned results are restored in place"
    output = to_wire(plan.messages)
    entries = [line for line in before[1].split("\n") if PAGE_ID.match(line) and " read_file(" in line]
    assert len(entries) == 4 and all(line in index_message(output)[1].split("\n") for line in entries)
    text = "\n".join(content_text(m) for m in output)
    for page_id in table.restored:
        assert page_id in text or table.levels[page_id] is Fidelity.FULL
    assert_invariants(table, pruned, plan, 2_000)


def test_the_index_lists_its_newest_pages_and_names_the_older_as_one_range() -> None:
    wire = reading_session(INDEX_LISTED + 9)
    table = PageTable("t", "s", "p")
    cross(table, wire, budget_of(2_000))
    plan = cross(table, boundary("reset", wire), budget_of(2_000))
    text = index_message(to_wire(plan.messages))[1]
    index = paged_out(table)
    listed = [p for p in index if table.levels[p] is Fidelity.POINTER]
    lines = text.split("\n")[1:]
    first, last = listed[0], listed[-INDEX_LISTED - 1]
    assert lines[0].startswith(f"{first}..{last} ({index.index(last) - index.index(first) + 1} older pages")
    assert [line.split(" ", 1)[0] for line in lines[1:] if PAGE_ID.match(line)] == [
        p for p in index if p not in listed[:-INDEX_LISTED]
    ]
    assert plan.assembly.tokens >= count_messages(COUNTER, to_wire(plan.messages))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transcripts(max_rounds=6), st.integers(0, 40), st.data())
def test_render_reads_span_entries_as_it_lists_them(wire: list[Wire], kept: int, data: st.DataObject) -> None:
    """A re-plan hands `render` the span entries as a lookup (`_Entries`), not a copy of them all:
    the rendering is the one every page's entry would give."""
    table = PageTable("t", "s", "p")
    ingest_turn(table, parse_messages(wire), TenantPolicy(), COUNTER)
    shorter = [r for r in requests(wire) if len(r) < len(wire)]
    if shorter and kept:
        ingest_turn(table, parse_messages(shorter[kept % len(shorter)]), TenantPolicy(), COUNTER)
    layout = build_layout(table)
    levels = {p: data.draw(st.sampled_from([Fidelity.POINTER, Fidelity.FULL])) for p in (*layout.order, *layout.index)}
    entries = {p: table.entries[p][0] for p in (*layout.order, *layout.index)}
    assert render(layout, levels, _Entries(table, layout), "clawvm_recall") == render(
        layout, levels, entries, "clawvm_recall"
    )
    assert dict(_Entries(table, layout)) == entries
