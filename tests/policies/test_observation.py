"""The pure fault observer (policies.observation), on real planned turns: a compaction whose prompt
lacks a rule, flush misses, the decision trace and residency, and recall outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.wire.chat_json import parse_messages
from policies.budget import TokenBudget
from policies.faults import FaultKind
from policies.lifecycle import Event, detect
from policies.observation import Observation, TurnFacts, observe, recall_events, recall_hits, residency
from policies.observer import state_of
from policies.pages import Fidelity, PageType
from policies.pagetable import PageTable, known_prefix, set_level
from policies.recall import Recalled
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from policies.turn import TurnPlan, plan_turn
from tests.policies.test_pagetable import RULE, Wire, working_session

BUDGET = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")
SUMMARY = "This session is being continued from a previous conversation that ran out of context. Summary: a fix."


@dataclass
class Compaction:
    """A session planned once, then a compaction turn planned on it."""

    table: PageTable
    plan: TurnPlan
    event: Event
    before: dict[str, Fidelity]
    dirty: list[str]

    def facts(
        self,
        messages: Sequence[Message] | None = None,
        dirty: Sequence[str] | None = None,
        committed: frozenset[str] = frozenset(),
    ) -> TurnFacts:
        shown = self.plan.messages if messages is None else messages
        lost = self.dirty if dirty is None else dirty
        return TurnFacts(self.event, shown, self.plan.assembly, self.before, lost, committed, ())

    def id_of(self, kind: PageType) -> str:
        return next(p for p in self.table.carried if self.table.pages[p].type is kind)


def planned(table: PageTable, wire: Sequence[Wire]) -> TurnPlan:
    table.turn += 1
    return plan_turn(table, parse_messages(wire), TenantPolicy(), CharCounter(), BUDGET)


def compaction() -> Compaction:
    table = PageTable("t", "s", "p")
    planned(table, working_session())
    wire = [working_session()[0], {"role": "user", "content": SUMMARY}]
    messages = parse_messages(wire)
    boundary = detect(table, messages, known_prefix(table, messages))
    dirty = state_of(table, range(boundary.kept, len(table.order)))
    before = dict(table.levels)
    return Compaction(table, planned(table, wire), boundary.event, before, dirty)


def without(messages: Sequence[Message], sentence: str) -> list[Message]:
    return [replace(m, text=m.text.replace(sentence, "")) for m in messages]


def kinds(observation: Observation) -> list[str]:
    return [e.kind.value for e in observation.faults]


# ---------------------------------------------------------------- boundaries


def test_a_compaction_whose_prompt_lacks_a_rule_is_a_post_compaction_fault() -> None:
    turn = compaction()
    assert turn.event is Event.COMPACTION
    rule = turn.id_of(PageType.CONSTRAINT)
    observation = observe(turn.table, turn.facts(without(turn.plan.messages, RULE)))
    assert kinds(observation) == ["post_compaction_bootstrap"]
    assert observation.faults[0].page_id == rule
    assert observation.header() == "1; post_compaction_bootstrap=1"
    assert observation.events == [e.record() for e in observation.faults]
    assert observation.events[0]["type"] == "fault"
    assert turn.table.tally == {"post_compaction_bootstrap": 1}


def test_a_compaction_whose_prompt_holds_the_state_has_no_fault() -> None:
    turn = compaction()
    assert RULE in "\n".join(m.text for m in turn.plan.messages)  # the retained-state block
    observation = observe(turn.table, turn.facts())
    assert observation.faults == [] and observation.header() == "0"
    assert turn.table.tally == {}


def test_the_tally_adds_up_across_turns() -> None:
    turn = compaction()
    lacking = turn.facts(without(turn.plan.messages, RULE))
    observe(turn.table, lacking)
    observe(turn.table, lacking)
    assert turn.table.tally == {"post_compaction_bootstrap": 2}


def test_dropped_state_neither_committed_nor_held_is_a_flush_miss() -> None:
    turn = compaction()
    preference = turn.id_of(PageType.PREFERENCE)
    assert preference in turn.dirty
    turn.table.carried.remove(preference)  # as if the rewrite had not carried it
    observation = observe(turn.table, turn.facts())
    assert kinds(observation) == ["flush_miss"] and observation.faults[0].page_id == preference
    assert observation.header() == "1; flush_miss=1"


def test_dropped_state_that_was_committed_is_no_flush_miss() -> None:
    turn = compaction()
    preference = turn.id_of(PageType.PREFERENCE)
    turn.table.carried.remove(preference)
    observation = observe(turn.table, turn.facts(committed=frozenset({preference})))
    assert observation.faults == []


def test_dropped_state_still_carried_is_no_flush_miss_even_uncommitted() -> None:
    turn = compaction()
    assert set(turn.dirty) <= set(turn.table.carried)
    assert observe(turn.table, turn.facts(committed=frozenset())).faults == []


def test_a_dropped_plan_superseded_by_a_current_one_is_settled() -> None:
    turn = compaction()
    old_plan = turn.id_of(PageType.PLAN)
    wire = [
        working_session()[0],
        {"role": "user", "content": SUMMARY},
        {"role": "assistant", "content": "Plan:\n1. Bisect.\n2. Patch.\n3. Ship."},
    ]
    turn.plan = planned(turn.table, wire)
    assert old_plan not in turn.table.carried and old_plan not in turn.table.in_order
    observation = observe(turn.table, turn.facts(dirty=[old_plan]))
    assert "flush_miss" not in kinds(observation)


def test_two_faults_are_summed_up_in_the_header_by_kind() -> None:
    turn = compaction()
    preference = turn.id_of(PageType.PREFERENCE)
    turn.table.carried.remove(preference)
    observation = observe(turn.table, turn.facts(without(turn.plan.messages, RULE)))
    assert sorted(kinds(observation)) == ["flush_miss", "post_compaction_bootstrap"]
    assert observation.header() == "2; flush_miss=1 post_compaction_bootstrap=1"


def test_a_boundary_turn_traces_its_decisions_and_residency() -> None:
    turn = compaction()
    observation = observe(turn.table, turn.facts())
    assert observation.decisions and all(d["turn"] == turn.table.turn for d in observation.decisions)
    evicted = {d["page_id"] for d in observation.decisions if d["to"] == "none"}
    assert evicted == set(turn.before) - set(turn.table.levels)
    assert {d["reason"] for d in observation.decisions if d["page_id"] in evicted} == {"compacted_by_agent"}
    assert observation.residency == residency(turn.table)


def test_an_appending_turn_that_keeps_the_plan_records_no_decisions() -> None:
    table = PageTable("t", "s", "p")
    planned(table, working_session())
    plan = planned(table, [*working_session(), {"role": "user", "content": "Thanks."}])
    assert not plan.assembly.replanned  # the append fast path
    facts = TurnFacts(Event.APPEND, plan.messages, plan.assembly, dict(table.levels), [], frozenset(), ())
    observation = observe(table, facts)
    assert observation.decisions == [] and observation.residency is None and observation.faults == []


# ---------------------------------------------------------------- residency and recalls


def test_residency_counts_pages_per_type_and_level() -> None:
    table = PageTable("t", "s", "p")
    planned(table, working_session())
    set_level(table, table.order[4], Fidelity.POINTER)  # the tool result
    counts = residency(table)
    assert counts[("evidence", "pointer")] == 1
    assert counts[("bootstrap", "full")] == 1 and counts[("plan", "full")] == 1
    assert sum(counts.values()) == len(table.levels)


def test_an_empty_ok_recall_is_silent_and_every_recall_is_traced() -> None:
    outcomes = [
        Recalled("ok", "", 0, ("p:aaa000000001",)),
        Recalled("no_match", "", 0, ("p:aaa000000002",)),
        Recalled("ok", "the page text", 3, ("p:aaa000000003",)),
    ]
    observation = recall_events(outcomes)
    assert kinds(observation) == ["silent_recall"]
    assert observation.faults[0].page_id == "p:aaa000000001"
    assert observation.decisions == [
        {"kind": "recall", "code": "ok", "pages": ["p:aaa000000001"], "tokens": 0},
        {"kind": "recall", "code": "no_match", "pages": ["p:aaa000000002"], "tokens": 0},
        {"kind": "recall", "code": "ok", "pages": ["p:aaa000000003"], "tokens": 3},
    ]
    assert observation.events == [e.record() for e in observation.faults]
    assert recall_hits(outcomes) == 2


def test_a_page_served_again_after_an_earlier_recall_is_a_refetch() -> None:
    outcomes = [Recalled("ok", "text", 1, ("p:aaa000000003",)), Recalled("denied", "", 0, ("p:aaa000000004",))]
    observation = recall_events(outcomes, earlier={"p:aaa000000003", "p:aaa000000004"})
    assert kinds(observation) == [FaultKind.REFETCH.value]
    assert observation.faults[0].page_id == "p:aaa000000003"
    assert observation.header() == "1; refetch=1"
