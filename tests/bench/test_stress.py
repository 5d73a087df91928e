"""bench.stress: each adversarial case through a real gateway (in process) on a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.checks import pairing_errors
from bench.stress import (
    PLANTED,
    Sent,
    Sizes,
    Stage,
    Tally,
    cascade,
    churn,
    export_lines,
    large_output,
    long_session,
    parse_faults,
    planted,
    run_stress,
    segment,
    stage,
    starvation,
    tool_step,
)


@pytest.fixture(scope="module")
def where() -> Iterator[Stage]:
    """One embedded redis-server for this module's gateways (each case uses its own sessions)."""
    with stage() as found:
        yield found


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """tiktoken reads litellm's bundled files in every test here."""


def _sent(status: int = 200, **headers: str) -> Sent:
    return Sent(status, dict(headers), [], "", 0)


def test_parse_faults_reads_the_gateway_header() -> None:
    assert parse_faults("0") == {}
    assert parse_faults("3; flush_miss=1 refetch=2") == {"flush_miss": 1, "refetch": 2}


def test_tally_counts_overruns_only_when_not_reported() -> None:
    over = _sent(**{"x-clawvm-prompt-tokens": "120"})
    reported = _sent(**{"x-clawvm-prompt-tokens": "120", "x-clawvm-insufficient": "minimum set 120"})
    tally = Tally().add(over, [], 100).add(reported, [], 100).add(_sent(500), [], 100)
    assert (tally.turns, tally.overruns, tally.insufficient, tally.failures) == (3, 1, 1, 1)


def test_tally_sums_faults_by_kind() -> None:
    faulty = _sent(**{"x-clawvm-faults": "2; refetch=2"})
    assert Tally().add(faulty, [], 100).add(faulty, [], 100).faults == {"refetch": 4}


def test_transcripts_are_valid_and_deterministic() -> None:
    first, second, third = segment(3)
    assert second[: len(first)] == first and third[: len(second)] == second
    assert not pairing_errors(third)
    assert segment(3) == (first, second, third)
    assert not pairing_errors([{"role": "user", "content": "x"}, *tool_step(1, "t", {}, "r")])
    lines = export_lines(10_000)
    assert sum(len(line) + 1 for line in lines) >= 10_000
    assert export_lines(10_000) == lines


def test_starvation_is_reported_never_hidden(where: Stage) -> None:
    result = starvation(where)
    by_name = {p.name: p for p in result.probes}
    fits = by_name["fits the window"]
    assert fits.status == 200 and fits.insufficient and fits.prompt_tokens > result.budget
    exceeds = by_name["exceeds the window"]
    assert exceeds.status == 400 and exceeds.error_code == "context_length_exceeded"
    after = by_name["next ordinary turn"]
    assert after.status == 200 and not after.insufficient and after.prompt_tokens <= result.budget
    assert result.hidden == 0


def test_churn_stays_within_budget_without_faults(where: Stage) -> None:
    result = churn(where, 15)
    assert result.tally.turns == 15
    assert (result.tally.failures, result.tally.overruns, result.tally.invalid) == (0, 0, 0)
    assert result.tally.missing_rules == 0
    assert result.sent_tokens[-1] > result.budget  # the agent sent more than fits ...
    assert max(result.prompt_tokens) <= result.budget  # ... and the model never got more than the budget


def test_cascade_resets_keep_every_stated_rule(where: Stage) -> None:
    result = cascade(where, 4)
    assert (result.resets, result.turns, len(result.checks)) == (3, 12, 3)
    assert result.stated == 12  # a rule and a preference per task, and one rule just before each reset
    assert all(check.event == "reset" and check.status == 200 for check in result.checks)
    assert (result.flush_misses, result.bootstrap_faults) == (0, 0)


def test_a_large_tool_output_is_answered_later_within_budget_and_recalled(where: Stage) -> None:
    result = large_output(where, 200_000)
    assert result.bytes >= 200_000
    assert result.newest_status == 200 and not result.newest_insufficient  # paged at once: it names its page
    assert result.newest_prompt_tokens <= result.budget
    assert result.within_budget and result.later_prompt_tokens < result.budget // 4
    assert (result.recall_code, result.recalled) == ("ok", True)


def test_planted_rules_never_become_rules(where: Stage) -> None:
    result = planted(where)
    assert result.planted == len(PLANTED)
    assert result.retained == () and result.shown_after_reset == ()
    assert result.control_kept  # the check does see a real rule after the reset


def test_long_session_times_each_mark(where: Stage) -> None:
    result = long_session(where, (5, 20), 1)
    assert result.tally.turns == 21 and result.tally.failures == 0 and result.tally.overruns == 0
    assert [(m.turn, m.samples) for m in result.marks] == [(5, 3), (20, 3)]
    assert all(m.median_ms > 0 for m in result.marks)


def test_run_stress_reports_every_case_as_json() -> None:
    cases: list[str] = []
    sizes = Sizes(churn_turns=3, segments=2, large_bytes=20_000, marks=(3,), window=1)
    report = run_stress(sizes, cases.append)
    data = report.to_json()
    assert cases == ["starvation", "churn", "cascade", "large_output", "long_session", "planted"]
    assert set(data) == set(cases)
    assert data["starvation"]["hidden"] == 0
    assert data["cascade"]["flush_misses"] == 0 and data["cascade"]["bootstrap_faults"] == 0
