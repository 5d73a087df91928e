from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from bench.policy_time import (
    NOW,
    BudgetReport,
    PolicyReport,
    Summary,
    engine,
    format_policy,
    percentile,
    request_sizes,
    run_policy,
    summarize_ns,
    synthetic_session,
)
from bench.traces import Trace, load_traces, traces_dir
from gateway.settings import Overrides, load_settings
from gateway.turns.pipeline import _budget
from gateway.turns.services import ToolTokens
from gateway.upstream.models import ModelCatalog
from gateway.upstream.tokens import OFFLINE_ENCODINGS, TiktokenCounter, count_tools
from gateway.wire.base import WireRequest
from gateway.wire.chat import CHAT
from gateway.wire.chat_json import parse_messages
from policies.pagetable import PageTable
from policies.step import TurnInput, complete, forward
from policies.turn import plan_turn


@pytest.fixture(scope="module")
def counter(gpt4o_counter: TiktokenCounter) -> TiktokenCounter:
    return gpt4o_counter


@pytest.fixture(scope="module")
def small_trace() -> Trace:
    """The real trace with the fewest requests."""
    directory = traces_dir()
    traces = load_traces(directory) if directory.is_dir() else []
    if not traces:
        pytest.skip("shared/traces/real not found (set CLAWVM_TRACES)")
    return min(traces, key=lambda t: (len(list(t.turns())), t.name))


@pytest.fixture(scope="module")
def report(small_trace: Trace, counter: TiktokenCounter) -> PolicyReport:
    return run_policy([small_trace], counter, (4000, 16000), growth_turns=(2, 6), repeats=3)


def _positive(summary: Summary, count: int) -> None:
    assert summary.count == count
    assert 0 < summary.median_us <= summary.p95_us <= summary.p99_us <= summary.max_us


def test_report_has_one_entry_per_budget(report: PolicyReport) -> None:
    assert [b.budget for b in report.budgets] == [4000, 16000]
    assert report.model == "gpt-4o"
    assert report.encoding in OFFLINE_ENCODINGS


def test_every_turn_of_the_trace_is_timed(report: PolicyReport, small_trace: Trace) -> None:
    turns = len(list(small_trace.turns()))
    for budget in report.budgets:
        _positive(budget.total, turns)
        assert list(budget.per_trace_median_us) == [small_trace.name]
        assert budget.per_trace_median_us[small_trace.name] > 0


def test_the_split_is_reported_only_when_the_plan_carries_it(report: PolicyReport, small_trace: Trace) -> None:
    turns = len(list(small_trace.turns()))
    for budget in report.budgets:
        assert (budget.ingest is None) == (budget.assembly is None)
        for part in (budget.ingest, budget.assembly):
            if part is not None:
                assert part.count == turns
                assert part.max_us <= budget.total.max_us


def test_cost_growth_times_each_marked_turn(report: PolicyReport) -> None:
    assert report.growth_budget == 4000
    assert [(p.turn, p.messages) for p in report.growth] == [(2, 4), (6, 12)]
    for point in report.growth:
        assert len(point.samples_us) == 3
        assert all(sample > 0 for sample in point.samples_us)
        assert point.median_us == sorted(point.samples_us)[1]


def test_report_is_json_and_text(report: PolicyReport, small_trace: Trace) -> None:
    figures = json.loads(json.dumps(dataclasses.asdict(report)))
    assert figures["budgets"][0]["total"]["count"] == report.budgets[0].total.count
    text = "\n".join(format_policy(report))
    for needle in ("budget 4000:", "budget 16000:", "median", "p95", "max", small_trace.name, "cost growth"):
        assert needle in text


def test_budget_report_without_split_says_so() -> None:
    total = Summary(3, 1.0, 2.0, 2.0, 2.0)
    report = PolicyReport("m", "o200k_base", (BudgetReport(4000, total, None, None, {"t": 1.0}),), 4000, ())
    assert any("no ingest/assembly split" in line for line in format_policy(report))


def test_the_tool_schemas_count_against_the_budget_as_in_the_gateway(
    small_trace: Trace, counter: TiktokenCounter
) -> None:
    bare, with_tools = engine(counter, 4000), engine(counter, 4000, small_trace.tools)
    assert bare.budget.cap == with_tools.budget.cap == 4000
    assert bare.budget.usable - with_tools.budget.usable == count_tools(counter, small_trace.tools)


@pytest.mark.parametrize("budget", [4000, 16000])
@pytest.mark.parametrize("tool_choice", ["auto", "none"])
def test_the_turn_budget_is_the_one_the_gateway_resolves_for_a_chat_request(
    small_trace: Trace, counter: TiktokenCounter, budget: int, tool_choice: str
) -> None:
    """The bench times turns under the budget the gateway assembles them under: with the recall
    tool's schema and its room taken out whenever the tool may be offered."""
    settings = load_settings(None, {}, Overrides(upstream="http://127.0.0.1:9/v1", budget=budget))
    services = SimpleNamespace(settings=settings, catalog=ModelCatalog.load(), tool_tokens=ToolTokens())
    body = {"model": "gpt-4o", "messages": [], "tools": list(small_trace.tools), "tool_choice": tool_choice}
    chat = WireRequest(body, "gpt-4o", [], False)
    gateway = _budget(services, settings.tenant("default"), chat, counter, CHAT)  # type: ignore[arg-type]
    offered = tool_choice != "none"
    bench = engine(counter, budget, small_trace.tools, offers_recall=offered)
    assert (bench.budget.cap, bench.budget.usable, bench.budget.tools) == (gateway.cap, gateway.usable, gateway.tools)
    assert bench.offers_recall is offered
    assert bench.input(PageTable(tenant="t", session="s", project="p"), []).offers_recall is offered


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0], 0.01) == 1.0


def test_summarize_converts_to_microseconds() -> None:
    summary = summarize_ns([3000, 1000, 2000, 10_000])
    assert summary == Summary(count=4, median_us=2.5, p95_us=10.0, p99_us=10.0, max_us=10.0)
    assert summarize_ns([]).count == 0


def test_synthetic_session_is_a_valid_deterministic_agent_loop(counter: TiktokenCounter) -> None:
    raw = synthetic_session(4)
    assert raw == synthetic_session(4)
    assert [m["role"] for m in raw] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    parse_messages(raw)  # valid pairing, or it raises
    result = raw[3]["content"]
    assert isinstance(result, str)
    assert 250 <= counter.count(result) <= 350
    assert list(request_sizes(3)) == [2, 4, 6]
    assert len(synthetic_session(3)) == 6


def test_forward_assembles_what_the_eager_ingest_does_on_every_real_request(counter: TiktokenCounter) -> None:
    """The deferred ingest changes no byte: every request of the real traces at 4k, 8k and 16k
    is assembled by `forward` as `plan_turn` (every page whole at ingest) assembles it, and once
    `complete` ran the table holds what the eager ingest made."""
    directory = traces_dir()
    traces = load_traces(directory) if directory.is_dir() else []
    if not traces:
        pytest.skip("shared/traces/real not found (set CLAWVM_TRACES)")
    for budget in (4000, 8000, 16000):
        for trace in traces:
            bound = engine(counter, budget, trace.tools)
            halves, eager = (PageTable(tenant="bench", session=trace.name, project=trace.name) for _ in range(2))
            for raw in trace.turns():
                messages = parse_messages(raw)
                turn = TurnInput(messages, bound.policy, counter, bound.budget, NOW)
                sent = forward(halves, turn)
                plan = plan_turn(eager, messages, bound.policy, counter, bound.budget)
                assert sent.messages == plan.messages, (trace.name, budget, len(messages))
                complete(halves, turn, sent)
            assert (halves.pages, halves.entries, halves.covering) == (eager.pages, eager.entries, eager.covering)
