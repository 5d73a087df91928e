"""policies.faults: the six faults, alerts, insufficiency, the thrash index and the decision trace."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policies import faults
from policies.assembler import Decision
from policies.duplicates import ALERT, FAULT, Duplicate
from policies.faults import Action, FaultEvent, FaultKind, Reason, Tally, TraceRecord
from policies.pages import Fidelity

F = Fidelity


def test_kind_values_are_the_papers_names() -> None:
    assert [k.value for k in FaultKind] == [
        "refetch",
        "duplicate_tool",
        "pinned_invariant_miss",
        "post_compaction_bootstrap",
        "silent_recall",
        "flush_miss",
        "duplicate_signature",
        "physical_insufficiency",
    ]
    assert len(faults.FAULTS) == 6
    assert FaultKind.DUPLICATE_SIGNATURE.value == ALERT and FaultKind.DUPLICATE_TOOL.value == FAULT


def test_thrash_counts_faults_and_alerts_over_hits_plus_one() -> None:
    tally = Tally(faults={"refetch": 2, "flush_miss": 1}, alerts=3, hits=5, insufficient=4)
    assert tally.thrash == 6 / 6
    assert Tally().thrash == 0.0
    assert Tally(alerts=1).thrash == 1.0  # non-zero at zero faults


def test_add_sorts_events_into_faults_alerts_and_insufficiency() -> None:
    events = [
        FaultEvent(FaultKind.REFETCH, "p:a", "x"),
        FaultEvent(FaultKind.REFETCH, "p:b", "x"),
        FaultEvent(FaultKind.SILENT_RECALL, "c1", "x"),
        FaultEvent(FaultKind.DUPLICATE_SIGNATURE, "p:c", "x"),
        faults.insufficiency(900, 800),
    ]
    tally = faults.add(Tally(faults={"refetch": 1}, hits=2), events, hits=3)
    assert tally == Tally(faults={"refetch": 3, "silent_recall": 1}, alerts=1, hits=5, insufficient=1)
    assert tally.fault_count == 4


def test_counts_round_trip_through_the_tables_flat_map() -> None:
    tally = Tally(faults={"refetch": 2, "duplicate_tool": 1}, alerts=3, hits=7, insufficient=1)
    counts = tally.counts()
    assert counts == {
        "duplicate_signature": 3,
        "duplicate_tool": 1,
        "hits": 7,
        "physical_insufficiency": 1,
        "refetch": 2,
    }
    assert list(counts) == sorted(counts)
    assert Tally.from_counts(counts) == tally
    assert Tally().counts() == {}
    assert Tally.from_counts({"bogus": 9, "flush_miss": 0}) == Tally()


def test_pinned_miss_when_absent_or_below_floor() -> None:
    required = {"p:sys": F.STRUCTURED, "p:rule": F.STRUCTURED, "p:plan": F.STRUCTURED}
    shown = {"p:sys": F.FULL, "p:rule": F.POINTER}
    found = faults.pinned_misses(required, shown, insufficient=False)
    assert found == [
        FaultEvent(FaultKind.PINNED_INVARIANT_MISS, "p:rule", "shown at pointer, floor structured"),
        FaultEvent(FaultKind.PINNED_INVARIANT_MISS, "p:plan", "absent, floor structured"),
    ]


def test_no_pinned_miss_when_the_minimum_set_did_not_fit() -> None:
    assert faults.pinned_misses({"p:sys": F.STRUCTURED}, {}, insufficient=True) == []


def test_post_boundary_misses_name_the_event() -> None:
    found = faults.post_boundary_misses("compaction", {"p:sys": F.STRUCTURED}, {}, insufficient=False)
    assert found == [
        FaultEvent(FaultKind.POST_COMPACTION_BOOTSTRAP, "p:sys", "after compaction: absent, floor structured")
    ]
    assert faults.post_boundary_misses("reset", {"p:sys": F.STRUCTURED}, {"p:sys": F.STRUCTURED}, False) == []


def test_flush_misses_are_dirty_pages_not_committed_in_id_order() -> None:
    found = faults.flush_misses({"p:b", "p:a", "p:c"}, ["p:c"])
    assert [e.page_id for e in found] == ["p:a", "p:b"]
    assert {e.kind for e in found} == {FaultKind.FLUSH_MISS}


def test_silent_recall_is_an_empty_answer_without_a_reason_code() -> None:
    outcomes = [
        ("c1", "ok", "the text"),
        ("c2", "no_match", ""),
        ("c3", "denied", ""),
        ("c4", "backend_error", " "),
        ("c5", "", ""),
        ("c6", "weird", "\n"),
        ("c7", "ok", ""),
    ]
    found = faults.silent_recalls(outcomes)
    assert [(e.page_id, e.detail) for e in found] == [
        ("c5", "empty answer, code none"),
        ("c6", "empty answer, code weird"),
        ("c7", "empty answer, code ok"),
    ]


def test_refetch_is_a_second_recall_of_a_page_degraded_again() -> None:
    levels = {"p:a": F.POINTER, "p:b": F.FULL, "p:c": F.COMPRESSED}
    found = faults.refetches(["p:a", "p:b", "p:c", "p:a", "p:d"], {"p:a", "p:b", "p:d"}, levels)
    assert found == [
        FaultEvent(FaultKind.REFETCH, "p:a", "recalled again, shown at pointer"),
        FaultEvent(FaultKind.REFETCH, "p:d", "recalled again, shown at none"),
    ]


def test_duplicates_become_faults_and_alerts_in_order() -> None:
    found = [
        Duplicate(FAULT, "call_9", "p:ev1", F.POINTER),
        Duplicate(ALERT, "call\x00x", "p:ev2", F.FULL),
    ]
    events = faults.from_duplicates(found)
    assert [(e.kind, e.page_id, e.is_fault) for e in events] == [
        (FaultKind.DUPLICATE_TOOL, "p:ev1", True),
        (FaultKind.DUPLICATE_SIGNATURE, "p:ev2", False),
    ]
    assert events[0].detail == "call call_9 repeats it, result shown at pointer"
    assert events[1].detail == "call call?x repeats it, result shown at full"


def test_event_records_are_flat_and_typed() -> None:
    assert FaultEvent(FaultKind.FLUSH_MISS, "p:a", "d").record() == {
        "type": "fault",
        "kind": "flush_miss",
        "page_id": "p:a",
        "detail": "d",
    }
    assert FaultEvent(FaultKind.DUPLICATE_SIGNATURE, "p:a", "d").record()["type"] == "alert"
    assert faults.insufficiency(10, 5).record() == {
        "type": "limit",
        "kind": "physical_insufficiency",
        "page_id": "",
        "detail": "minimum set 10 tokens exceeds budget 5",
    }


def test_decision_reasons_cover_degrade_evict_upgrade_and_dropped_pages() -> None:
    previous = {"p:a": F.FULL, "p:b": F.FULL, "p:c": F.POINTER, "p:d": F.COMPRESSED, "p:gone": F.FULL}
    levels = {"p:a": F.COMPRESSED, "p:b": F.POINTER, "p:c": F.FULL, "p:d": F.COMPRESSED, "p:new": F.STRUCTURED}
    decisions = [Decision("p:a", F.COMPRESSED, "budget"), Decision("p:new", F.STRUCTURED, "floor")]
    trace = faults.decision_reasons(previous, levels, decisions)
    assert trace == [
        TraceRecord("p:a", Action.DEGRADE, F.FULL, F.COMPRESSED, "budget"),
        TraceRecord("p:b", Action.EVICT, F.FULL, F.POINTER, "budget"),
        TraceRecord("p:c", Action.UPGRADE, F.POINTER, F.FULL, "budget"),
        TraceRecord("p:new", Action.DEGRADE, F.FULL, F.STRUCTURED, "floor"),
        TraceRecord("p:gone", Action.EVICT, F.FULL, F.NONE, "compacted_by_agent"),
    ]
    assert trace[-1].record() == {
        "page_id": "p:gone",
        "action": "evict",
        "from": "full",
        "to": "none",
        "reason": "compacted_by_agent",
    }


def test_causes_win_over_the_assemblers_reasons() -> None:
    previous = {"p:a": F.POINTER, "p:b": F.FULL, "p:gone": F.FULL}
    levels = {"p:a": F.FULL, "p:b": F.POINTER}
    decisions = [Decision("p:b", F.POINTER, "floor")]
    causes = {"p:a": Reason.RECALLED, "p:b": Reason.PRUNED_BY_AGENT, "p:gone": Reason.PRUNED_BY_AGENT}
    trace = faults.decision_reasons(previous, levels, decisions, causes)
    assert [(t.page_id, t.reason) for t in trace] == [
        ("p:a", "recalled"),
        ("p:b", "pruned_by_agent"),
        ("p:gone", "pruned_by_agent"),
    ]


def test_a_decision_for_another_level_does_not_lend_its_reason() -> None:
    trace = faults.decision_reasons({"p:a": F.FULL}, {"p:a": F.COMPRESSED}, [Decision("p:a", F.POINTER, "floor")])
    assert trace[0].reason == "budget"


def test_unchanged_levels_leave_no_trace() -> None:
    levels = {"p:a": F.POINTER, "p:b": F.FULL}
    assert faults.decision_reasons(levels, dict(levels), [Decision("p:a", F.POINTER, "kept")]) == []


def test_printable_cuts_long_and_odd_text() -> None:
    assert faults.printable("é\nok") == "??ok"
    cut = faults.printable("x" * 500)
    assert len(cut) == faults.DETAIL_CHARS and cut.endswith("...")


levels_st = st.dictionaries(st.sampled_from([f"p:{i}" for i in range(8)]), st.sampled_from(list(F)), max_size=8)


@given(levels_st, levels_st)
def test_trace_is_deterministic_and_every_record_is_a_real_change(previous, levels) -> None:
    trace = faults.decision_reasons(previous, levels, [])
    assert trace == faults.decision_reasons(dict(previous), dict(levels), [])
    for rec in trace:
        assert rec.before != rec.after
        assert rec.after == levels.get(rec.page_id, F.NONE)
        assert (rec.action is Action.UPGRADE) == (rec.after > rec.before)
