"""Policy-engine time per turn, in process: the real traces replayed through the pure turn step
the gateway runs on every request, in its two halves (`policies.step`): `forward`, what the
forwarded prompt needs, and `complete`, the rest, which may run once the request is on its way.

Each trace is replayed request by request (`Trace.turns()`) into one `PageTable`, at each budget,
with the write-back planned on empty committed memory (no store). The gateway's chat reader
builds the `Message` list outside the timed region, reusing the objects of the messages an
earlier request held, as the gateway does. Timed (`time.perf_counter_ns`, the real tiktoken
counter):

- "before forwarding" (`total`): the whole `policies.step.forward` call: finishing any page an
  earlier turn left, the boundary check, ingest of the new messages at their full level
  (classified, counted, facts named), the repeated-call check and the assembly; within it
  `ingest` and `assembly` (layout, knapsack and render: the selector, the figure the paper
  quotes; on a re-plan it first finishes the new pages before the newest turn) apart;
- "after forwarding" (`deferred`): the whole `policies.step.complete` call: the new pages'
  other levels, span entries, fact pages and coverage, the write-back plan and the observation;
- "whole turn" (`whole`): the two together, per turn (what `policies.step.step` costs).

One full replay runs first and is discarded (warm-up).

"Cost growth" times the whole turn (`forward` and `complete`: all the policy work a turn costs)
at turns 10, 100 and 1000 of a synthetic agent loop (a fixed system prompt,
then assistant tool call + ~300-token tool result per turn): the session is replayed 5 times up
to the last of those turns, each marked turn timed once per replay on the page table as that
replay left it (the median is reported).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from bench.traces import Trace
from gateway.upstream.tokens import count_tools
from gateway.wire.chat import CHAT
from gateway.wire.chat_json import parse_messages
from gateway.wire.chat_transcripts import TranscriptCache
from policies import step as turn_step
from policies.budget import TokenBudget, resolve_budget
from policies.pagetable import PageTable
from policies.recall import without_recall_room
from policies.step import RECALL_TOOL, TurnInput
from policies.tenant import Budget, TenantPolicy
from policies.tokens import TokenCounter
from policies.transcript import Message
from policies.writeback import Memory
from policies.writes import Memories

MODEL = "gpt-4o"
WINDOW = 128_000
BUDGETS = (4000, 16000)
GROWTH_TURNS = (10, 100, 1000)
GROWTH_REPEATS = 5
NOW = 1_700_000_000  # the step's clock reading: fixed, so no turn is an idle session's end
RESULT_LINES = 15  # lines of one synthetic tool result: ~300 tokens
SYSTEM_PROMPT = (
    "You are a coding agent working in a Python repository.\n"
    "Always run the test suite before you report a task as done.\n"
    "Never edit files under vendor/ or third_party/.\n"
    "Prefer small, reviewable changes; explain each change in one sentence.\n"
    "Use the read_file tool to inspect code before editing it."
)


@dataclass(frozen=True, slots=True)
class Summary:
    """Timings in microseconds. Percentiles are nearest-rank, so every figure is a measured value."""

    count: int
    median_us: float
    p95_us: float
    p99_us: float
    max_us: float


@dataclass(frozen=True, slots=True)
class TurnTime:
    total_ns: int  # before forwarding: `forward`
    ingest_ns: int | None
    assembly_ns: int | None
    deferred_ns: int = 0  # after forwarding: `complete`


@dataclass(frozen=True, slots=True)
class BudgetReport:
    budget: int
    total: Summary  # before forwarding (`policies.step.forward`)
    ingest: Summary | None  # None while TurnPlan has no ingest_ns
    assembly: Summary | None  # None while TurnPlan has no assembly_ns
    per_trace_median_us: dict[str, float]  # before forwarding
    deferred: Summary | None = None  # after forwarding (`policies.step.complete`)
    whole: Summary | None = None  # both, per turn


@dataclass(frozen=True, slots=True)
class GrowthPoint:
    turn: int
    messages: int
    median_us: float
    samples_us: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class PolicyReport:
    model: str
    encoding: str
    budgets: tuple[BudgetReport, ...]
    growth_budget: int
    growth: tuple[GrowthPoint, ...]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    rank = max(math.ceil(fraction * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def summarize_ns(values_ns: Sequence[int]) -> Summary:
    ordered = sorted(v / 1000 for v in values_ns)
    if not ordered:
        return Summary(0, 0.0, 0.0, 0.0, 0.0)
    return Summary(
        count=len(ordered),
        median_us=round(statistics.median(ordered), 1),
        p95_us=round(percentile(ordered, 0.95), 1),
        p99_us=round(percentile(ordered, 0.99), 1),
        max_us=round(ordered[-1], 1),
    )


@dataclass(frozen=True, slots=True)
class Engine:
    """The turn step with everything but the table and the transcript fixed."""

    counter: TokenCounter
    budget: TokenBudget
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    offers_recall: bool = True

    def turn(self, table: PageTable, messages: Sequence[Message]) -> TurnTime:
        turn = self.input(table, messages)
        started = time.perf_counter_ns()
        sent = turn_step.forward(table, turn, clock=time.perf_counter_ns)
        forwarded = time.perf_counter_ns()
        turn_step.complete(table, turn, sent)
        done = time.perf_counter_ns()
        return TurnTime(forwarded - started, sent.ingest_ns, sent.assembly_ns, done - forwarded)

    def input(self, table: PageTable, messages: Sequence[Message]) -> TurnInput:
        """The turn as the gateway builds it for a chat request (committed memory empty)."""
        memories = _memories(table)
        return TurnInput(
            messages, self.policy, self.counter, self.budget, NOW, offers_recall=self.offers_recall, memories=memories
        )


def _memories(table: PageTable) -> Memories:
    """Empty committed memory for the session's scopes: the bench has no store."""
    empty = Memory.empty()
    return Memories((f"s:{table.session}", empty), (f"p:{table.project}", empty), (f"p:{table.project}", empty))


def engine(counter: TokenCounter, budget: int, tools: Sequence[object] = (), offers_recall: bool = True) -> Engine:
    """The turn budget the gateway resolves for a chat request (gateway.turns.pipeline): the
    tool schemas count against the cap, and when the recall tool may be offered (a chat request
    that does not switch tools off) so does its schema, and its room is kept free."""
    tools_tokens = count_tools(counter, tools)
    if offers_recall:
        tools_tokens += count_tools(counter, [CHAT.recall_tool(RECALL_TOOL)])
    resolved = resolve_budget(Budget(max_prompt_tokens=budget), WINDOW, "bench", tools_tokens)
    return Engine(counter, without_recall_room(resolved, offers_recall), offers_recall=offers_recall)


def replay_trace(trace: Trace, budget: int, counter: TokenCounter) -> list[TurnTime]:
    """Each request's messages as the gateway's chat reader gives them (`TranscriptCache`: the
    messages an earlier request held are its very objects), then the turn, timed."""
    table = PageTable(tenant="bench", session=trace.name, project=trace.name)
    bound = engine(counter, budget, trace.tools)
    transcripts = TranscriptCache()
    times = []
    for raw in trace.turns():
        messages = transcripts.parse(trace.name, raw)
        times.append(bound.turn(table, messages))
    return times


def budget_report(traces: Sequence[Trace], budget: int, counter: TokenCounter) -> BudgetReport:
    per_trace = {trace.name: replay_trace(trace, budget, counter) for trace in traces}
    turns = [t for times in per_trace.values() for t in times]
    return BudgetReport(
        budget=budget,
        total=summarize_ns([t.total_ns for t in turns]),
        ingest=_part([t.ingest_ns for t in turns]),
        assembly=_part([t.assembly_ns for t in turns]),
        per_trace_median_us={name: _median_us(times) for name, times in per_trace.items() if times},
        deferred=summarize_ns([t.deferred_ns for t in turns]),
        whole=summarize_ns([t.total_ns + t.deferred_ns for t in turns]),
    )


def _median_us(times: Sequence[TurnTime]) -> float:
    return summarize_ns([t.total_ns for t in times]).median_us


def _part(values: Sequence[int | None]) -> Summary | None:
    known = [v for v in values if v is not None]
    return summarize_ns(known) if known and len(known) == len(values) else None


# ---------------------------------------------------------------- cost growth


def synthetic_session(turns: int) -> list[dict[str, object]]:
    """Request number `turns` of an agent loop: system, task, then `turns - 1` call/result pairs."""
    raw: list[dict[str, object]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "The parser tests fail on empty input. Find the cause and fix it."},
    ]
    for step in range(1, turns):
        raw.extend(_tool_step(step))
    return raw


def _tool_step(step: int) -> list[dict[str, object]]:
    call_id = f"call_{step:05d}"
    arguments = json.dumps({"path": f"src/handlers/module_{step:04d}.py"})
    call = {"id": call_id, "type": "function", "function": {"name": "read_file", "arguments": arguments}}
    lines = (_result_line(step, line) for line in range(RESULT_LINES))
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": "\n".join(lines)},
    ]


def _result_line(step: int, line: int) -> str:
    return f"{step:04d}.{line:02d}: def handle_{step}_{line}(request): return respond(request, {200 + line})"


def request_sizes(turns: int) -> Iterator[int]:
    """How many messages request 1, 2, ... `turns` of the synthetic session carries."""
    return (2 + 2 * (turn - 1) for turn in range(1, turns + 1))


def growth_replay(
    messages: Sequence[Message], marks: Sequence[int], bound: Engine, repeats: int
) -> dict[int, list[int]]:
    """`repeats` replays up to the last mark, each on a fresh table; each marked turn timed once
    per replay, on the table as that replay left it, in ns. The replay is deterministic, so
    every replay times the same turns. A turn is not timed on a copy of the table: a deep copy
    of a long session's table evicts the CPU's caches just before the timed turn (at turn 1,000
    that doubled every part of the turn, tiktoken's count of the new text included), which the
    gateway, planning on the table it holds, never does."""
    timed: dict[int, list[int]] = {turn: [] for turn in marks}
    for _ in range(max(repeats, 1)):
        table = PageTable(tenant="bench", session="synthetic", project="synthetic")
        for turn, size in enumerate(request_sizes(max(marks)), start=1):
            spent = bound.turn(table, messages[:size])
            if turn in timed:
                timed[turn].append(spent.total_ns + spent.deferred_ns)  # the whole turn: all its policy work
    return timed


def cost_growth(
    counter: TokenCounter, budget: int, marks: Sequence[int] = GROWTH_TURNS, repeats: int = GROWTH_REPEATS
) -> tuple[GrowthPoint, ...]:
    messages = parse_messages(synthetic_session(max(marks)))
    timed = growth_replay(messages, marks, engine(counter, budget), repeats)
    return tuple(_growth_point(turn, timed[turn]) for turn in marks)


def _growth_point(turn: int, samples_ns: Sequence[int]) -> GrowthPoint:
    samples = tuple(round(s / 1000, 1) for s in samples_ns)
    median = round(statistics.median(samples), 1)
    return GrowthPoint(turn=turn, messages=2 * turn, median_us=median, samples_us=samples)


# ---------------------------------------------------------------- the whole bench


def run_policy(
    traces: Sequence[Trace],
    counter: TokenCounter,
    budgets: Sequence[int] = BUDGETS,
    *,
    growth_turns: Sequence[int] = GROWTH_TURNS,
    repeats: int = GROWTH_REPEATS,
) -> PolicyReport:
    for trace in traces:  # warm-up: one full replay, discarded
        replay_trace(trace, budgets[0], counter)
    reports = tuple(budget_report(traces, budget, counter) for budget in budgets)
    growth = cost_growth(counter, min(budgets), growth_turns, repeats) if growth_turns else ()
    return PolicyReport(MODEL, counter.name, reports, min(budgets), growth)


def format_policy(report: PolicyReport) -> list[str]:
    lines = [f"policy time per turn (policies.step, in process; {report.model}, {report.encoding})"]
    lines.append("  before forwarding = policies.step.forward; after forwarding = policies.step.complete")
    for budget in report.budgets:
        lines += _format_budget(budget)
    lines.append(
        f"cost growth: synthetic agent loop at budget {report.growth_budget} (whole turn: forward + complete; "
        "median of repeats)"
    )
    for point in report.growth:
        lines.append(f"  turn {point.turn:>5} ({point.messages:>5} messages): {point.median_us:>10.1f} µs")
    return lines


def _format_budget(report: BudgetReport) -> list[str]:
    lines = [f"budget {report.budget}:", "  " + _row("before forwarding", report.total)]
    parts = (("  ingest", report.ingest), ("  assembly", report.assembly))
    lines += ["  " + _row(name, part) for name, part in parts if part]
    after = (("after forwarding", report.deferred), ("whole turn", report.whole))
    lines += ["  " + _row(name, part) for name, part in after if part]
    if report.ingest is None:
        lines.append("  (no ingest/assembly split: TurnPlan has no ingest_ns/assembly_ns)")
    lines.append("  per-trace median µs before forwarding:")
    width = max((len(name) for name in report.per_trace_median_us), default=0)
    lines += [f"    {name:<{width}}  {us:>10.1f}" for name, us in report.per_trace_median_us.items()]
    return lines


def _row(name: str, summary: Summary) -> str:
    return (
        f"{name:<17} turns {summary.count:>5}  median {summary.median_us:>9.1f} µs  "
        f"p95 {summary.p95_us:>9.1f} µs  max {summary.max_us:>9.1f} µs"
    )
