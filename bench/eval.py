"""`python -m bench eval [--quick] [--out DIR]`: run every evaluation, then write the report.

Sections, each written as `DIR/<section>.json` as soon as it is done (DIR defaults to
bench/results), then `DIR/report.md` and its plots (bench.report):

- synthetic  the Tier-2 sweep, Table 4 and the ablation (bench.sim.sweep);
- policy     the policy engine's time per turn over the real traces (bench.policy_time);
- traces     every request of every real trace, direct and through the gateway, at 4,000, 8,000
             and 16,000 tokens (bench.peers.compare with those two peers), the fake model recalling
             honestly (from its prompt); then the gateway again with the perfect-knowledge model,
             an upper bound kept under `perfect_knowledge` for the side-by-side table;
- lifecycle  every harness injector over every trace (bench.lifecycle_replay);
- recall     the recall checks (bench.recall_replay) at 4,000 tokens, every request of every trace,
             the agent speaking each wire format (chat, Anthropic Messages, Responses) and the fake
             upstream answering in it, the fake model recalling honestly;
- peers      the peers side by side (bench.peers.compare); the full run installs a missing peer
             first (bench.peers.install), and one that cannot be installed is reported skipped;
             then direct, the passthrough and the gateway again at 4,000 tokens with a fake model
             that thinks PACED_FIRST_BYTE_S before answering (under `paced`);
- stress     the adversarial cases (bench.stress);
- growth     policy time and added latency at turns 10, 100 and 1,000 (bench.growth);
- latency    direct against through the gateway, every sample kept for the CDF (bench.latency).

`--quick` shrinks every section (fewer traces, turns and samples) to a CI-sized run; the full run
stays under 20 minutes on two cores. A progress bar goes to stderr. Offline and loopback only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from bench.fake_upstream import FakeUpstream, serve
from bench.harnesses import INJECTORS
from bench.intent_check import intents, load_labels
from bench.latency import REQUEST_TIMEOUT_S, interleave, latency_trace, start_servers, workloads
from bench.lifecycle_replay import BoundaryRecord
from bench.lifecycle_replay import run as run_boundary
from bench.peers.model import HONEST, PERFECT, TraceModel
from bench.report import bars, write_report
from bench.traces import Trace, load_traces, traces_dir
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import EmbeddedRedis
from gateway.upstream.tokens import Tokenizers, prepare_offline
from policies.tokens import TokenCounter

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("synthetic", "policy", "traces", "lifecycle", "recall", "peers", "stress", "growth", "latency")
RECALL_BUDGET = 4000
BUDGETS = (4000, 8000, 16000)  # the real traces, every request
PEER_BUDGETS = (4000, 16000)
PACED_BUDGET = 4000
PACED_PEERS = ("direct", "passthrough", "clawvm")
# The paced replay's think time: well past the gateway's save (a few ms; its p99 about 15), well
# short of a real model's first byte (0.3 to 2 s) so that the run stays short.
PACED_FIRST_BYTE_S = 0.05
LATENCY_BUDGET = 16000
LIFECYCLE_BUDGET = 16000
LIFECYCLE_BUDGETS = (LIFECYCLE_BUDGET, 8000, 4000)  # the full run replays the injectors at each; quick: the first
ALL_TURNS = 1_000_000
RUN_FILE = "run.json"  # the command that produced the sections' JSON
EXAMPLES = 3
BAR_WIDTH = 24

Json = dict[str, Any]
Tick = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each section runs."""

    quick: bool
    trace_count: int | None  # None: every trace
    trace_turns: int
    peer_turns: int
    peer_budgets: tuple[int, ...]
    latency_requests: int
    latency_warmup: int
    marks: tuple[int, ...]

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 2, 6, 3, (4000,), 12, 3, (10, 30, 60))
        return cls(False, None, ALL_TURNS, 40, PEER_BUDGETS, 200, 20, (10, 100, 1000))


# ---------------------------------------------------------------- progress


class Progress:
    """A one-line bar on stderr: steps done of the total, the step under way, seconds so far."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()
        self.live = stream.isatty()

    def step(self, label: str) -> None:
        self.done = min(self.done + 1, self.total)
        self.show(label)

    def show(self, label: str) -> None:
        filled = BAR_WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {self.done}/{self.total} {label} ({elapsed:.0f} s)"
        self.stream.write(("\r\x1b[2K" + line) if self.live else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------- sections


def synthetic_section(plan: Plan, tick: Tick) -> Json:
    from bench.sim.sweep import run_ablation, run_sweep

    sweep = run_sweep()
    tick("synthetic: sweep")
    ablation = run_ablation()
    return {**sweep.to_json(), "ablation": [row.to_json() for row in ablation]}


def policy_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    from bench.policy_time import run_policy

    report = run_policy(traces, counter(), BUDGETS, growth_turns=())
    return dataclasses.asdict(report)


def traces_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    from bench.peers.compare import run_compare

    honest = run_compare(traces, BUDGETS, ("direct", "clawvm"), turns=plan.trace_turns, warmup=2)
    tick("traces: honest model")
    perfect = run_compare(traces, BUDGETS, ("clawvm",), turns=plan.trace_turns, warmup=2, knowledge=PERFECT)
    return {**honest.to_json(), "perfect_knowledge": perfect.to_json()}


def peers_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    """The full run installs the peers it lacks first (LiteLLM proxy and Headroom, from the package
    registry into bench/.peers, a few minutes once); a quick run compares the ones installed."""
    from bench.peers.compare import PEERS, run_compare
    from bench.peers.install import PACKAGES, InstallError, install

    if not plan.quick:
        for name in PACKAGES:
            try:
                install(name)
            except InstallError as exc:  # reported skipped by the comparison
                tick(f"peers: {name} not installed ({exc})")
    result = run_compare(traces, plan.peer_budgets, PEERS, turns=plan.peer_turns)
    tick("peers: at once")
    paced = run_compare(traces, (PACED_BUDGET,), PACED_PEERS, turns=plan.peer_turns, first_byte_s=PACED_FIRST_BYTE_S)
    return {**result.to_json(), "paced": paced.to_json()}


def lifecycle_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    """Every injector over every trace, each request from the boundary to the trace's end checked,
    with the honest fake model; then again with the perfect-knowledge one (the upper bound). At
    LIFECYCLE_BUDGET, then (full run) at each other budget of LIFECYCLE_BUDGETS, under `other_budgets`."""
    first, *others = (lifecycle_run(traces, budget, tick) for budget in LIFECYCLE_BUDGETS[: 1 if plan.quick else None])
    return {**first, "other_budgets": others}


def lifecycle_run(traces: Sequence[Trace], budget: int, tick: Tick) -> Json:
    honest = lifecycle_rows(traces, HONEST, tick, budget)
    perfect = lifecycle_rows(traces, PERFECT, lambda _: None, budget)
    return {"budget": budget, "injectors": honest, "perfect_knowledge": perfect}


def lifecycle_rows(traces: Sequence[Trace], knowledge: str, tick: Tick, budget: int = LIFECYCLE_BUDGET) -> Json:
    """One gateway at `budget` and an embedded store; the fake model recalls with `knowledge`."""
    found: dict[str, list[BoundaryRecord]] = {}
    said = intents(load_labels())
    model = TraceModel(knowledge)
    fake = FakeUpstream(model)
    with tempfile.TemporaryDirectory(prefix="clawvm-eval-") as data, EmbeddedRedis(Path(data)) as store:
        with serve(fake.app) as upstream:
            settings = load_settings(None, {}, Overrides(upstream=upstream, store=store, budget=budget))
            with serve(create_app(settings)) as url, httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
                for name in INJECTORS:
                    runs = (run_boundary(client, url, fake, t, name, said.get(t.name, []), model) for t in traces)
                    found[name] = [r for r in runs if r is not None]
                    tick(f"lifecycle {budget}: {name}")
    return {name: injector_row(rows) for name, rows in found.items()}


def injector_row(records: Sequence[BoundaryRecord]) -> Json:
    unclean = [r for r in records if not r.ok]
    return {
        "boundaries": len(records),
        "ok": len(records) - len(unclean),
        "missing": sum(len(r.missing) for r in records),
        "missing_intent": sum(len(r.missing_intent) for r in records),
        "later_requests": sum(r.later.requests for r in records if r.later),
        "later_intent_faults": sum(r.later.intent_faults for r in records if r.later),
        "later_evidence_faults": sum(r.later.evidence_faults for r in records if r.later),
        "later_answer_faults": sum(r.later.answer_faults for r in records if r.later),
        "boundary_faults": sum(len(r.boundary_faults) for r in records),
        "wrong_event": sum(1 for r in records if r.event != r.expected),
        "invalid": sum(1 for r in records if r.pairing_errors or r.status != 200),
        "examples": [_unclean(r) for r in unclean[:EXAMPLES]],
    }


def _unclean(record: BoundaryRecord) -> str:
    parts = [f"{record.trace}: status {record.status}, event {record.event or 'none'} (expected {record.expected})"]
    if record.missing:
        parts.append(f"missing {record.missing[0][:80]!r}")
    if record.missing_intent:
        parts.append(f"intent missing {record.missing_intent[0][:80]!r}")
    if record.later and record.later.examples:
        parts.append(record.later.examples[0])
    if record.boundary_faults:
        parts.append(f"faults {', '.join(record.boundary_faults)}")
    return "; ".join(parts)


def recall_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    """The recall checks in every wire format, side by side: per format the totals, per trace the rows."""
    from bench.latency import WIRES
    from bench.recall_replay import run_recall, summarise

    rows = run_recall(list(traces), RECALL_BUDGET, HONEST, WIRES)
    return {
        "budget": RECALL_BUDGET,
        "knowledge": HONEST,
        "wires": summarise(rows),
        "rows": [dataclasses.asdict(r) for r in rows],
    }


def stress_section(plan: Plan, tick: Tick) -> Json:
    from bench.stress import Sizes, run_stress

    sizes = Sizes.quick() if plan.quick else Sizes()
    return run_stress(sizes, lambda case: tick(f"stress: {case}")).to_json()


def growth_section(plan: Plan, tick: Tick) -> Json:
    from bench.growth import run_growth

    report = run_growth(counter(), plan.marks, progress=lambda part: tick(f"growth: {part}"))
    return {**report.to_json(), "ratios": report.ratios()}


def latency_section(traces: Sequence[Trace], plan: Plan, tick: Tick) -> Json:
    """bench.latency's four series, each request's time kept (µs) for the CDF."""
    trace = latency_trace(traces)
    series = []
    with tempfile.TemporaryDirectory(prefix="clawvm-eval-") as scratch, ExitStack() as stack:
        _, _, endpoints = start_servers(stack, Path(scratch), LATENCY_BUDGET)
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
            for work in (w for w in workloads(trace) if w.wire == "chat"):  # every format: python -m bench latency
                interleave(client, endpoints, work, range(plan.latency_warmup))
                measured = range(plan.latency_warmup, plan.latency_warmup + plan.latency_requests)
                direct, gateway = interleave(client, endpoints, work, measured)
                series.append(_series(work.name, work.stream, direct.times_ns, gateway.times_ns))
                series[-1]["failures"] = direct.failures + gateway.failures
    return {"trace": trace.name, "budget": LATENCY_BUDGET, "requests": plan.latency_requests, "series": series}


def _series(name: str, stream: bool, direct_ns: Sequence[int], gateway_ns: Sequence[int]) -> Json:
    direct = [round(ns / 1000, 1) for ns in direct_ns]
    gateway = [round(ns / 1000, 1) for ns in gateway_ns]
    direct_median, gateway_median = _median(direct), _median(gateway)
    return {
        "name": name,
        "stream": stream,
        "direct_us": direct,
        "gateway_us": gateway,
        "direct_median_us": direct_median,
        "gateway_median_us": gateway_median,
        "added_median_us": round(gateway_median - direct_median, 1),
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else round((ordered[middle - 1] + ordered[middle]) / 2, 1)


def counter() -> TokenCounter:
    return Tokenizers.from_env(os.environ).for_model("gpt-4o")


# ---------------------------------------------------------------- the run


STEPS = {"synthetic": 2, "traces": 2, "peers": 2, "lifecycle": len(INJECTORS), "stress": 6, "growth": 2}


def runners(traces: Sequence[Trace], plan: Plan) -> dict[str, Callable[[Tick], Json]]:
    return {
        "synthetic": lambda tick: synthetic_section(plan, tick),
        "policy": lambda tick: policy_section(traces, plan, tick),
        "traces": lambda tick: traces_section(traces, plan, tick),
        "lifecycle": lambda tick: lifecycle_section(traces, plan, tick),
        "recall": lambda tick: recall_section(traces, plan, tick),
        "peers": lambda tick: peers_section(traces, plan, tick),
        "stress": lambda tick: stress_section(plan, tick),
        "growth": lambda tick: growth_section(plan, tick),
        "latency": lambda tick: latency_section(traces, plan, tick),
    }


def run_eval(
    traces: Sequence[Trace], plan: Plan, out: Path, only: Sequence[str] = SECTIONS, stream: TextIO = sys.stderr
) -> dict[str, Json]:
    """Run the sections in `only` (in SECTIONS order), write each one's JSON to `out` as it ends."""
    out.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in SECTIONS if name in only]
    progress = Progress(sum(STEPS.get(name, 1) for name in chosen), stream)
    sections: dict[str, Json] = {}
    table = runners(traces, plan)
    for name in chosen:
        progress.show(f"{name} ...")
        sub = STEPS.get(name, 1)
        ticks = _Ticks(progress, sub)
        sections[name] = table[name](ticks)
        ticks.finish(name)
        write_json(out / f"{name}.json", sections[name])
    progress.close()
    return sections


class _Ticks:
    """A section's sub-steps on the bar; whatever it did not tick is ticked when it ends."""

    def __init__(self, progress: Progress, steps: int) -> None:
        self.progress, self.left = progress, steps

    def __call__(self, label: str) -> None:
        if self.left > 1:
            self.left -= 1
            self.progress.step(label)

    def finish(self, name: str) -> None:
        for _ in range(self.left):
            self.progress.step(f"{name} done")
        self.left = 0


def write_json(path: Path, data: Json) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_sections(out: Path) -> dict[str, Json]:
    """The sections' JSON already in `out` (for a report from an earlier run)."""
    found = {}
    for name in SECTIONS:
        path = out / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def chosen_traces(traces: Sequence[Trace], plan: Plan) -> list[Trace]:
    """Every trace; a quick run takes the shortest ones."""
    if plan.trace_count is None:
        return list(traces)
    return sorted(traces, key=lambda t: (len(t.messages), t.name))[: plan.trace_count]


def read_command(out: Path) -> str:
    """The command of the run that wrote the JSON in `out` ("" when unknown)."""
    path = out / RUN_FILE
    if not path.is_file():
        return ""
    return str(json.loads(path.read_text(encoding="utf-8")).get("command", ""))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench eval", description="Run every evaluation; write the report.")
    top.add_argument("--quick", action="store_true", help="CI-sized run: fewer traces, turns and samples")
    top.add_argument("--out", type=Path, default=RESULTS, help=f"where JSON, report and plots go (default {RESULTS})")
    top.add_argument("--traces", type=Path, default=None, help="trace directory (default: bench.traces)")
    top.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run these sections only")
    top.add_argument("--report-only", action="store_true", help="rewrite the report from the JSON already in --out")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prepare_offline(os.environ)
    command = "python -m bench eval " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.report_only:
        sections = read_sections(args.out)
        command = read_command(args.out) or command
    else:
        traces = load_traces(args.traces or traces_dir(os.environ))
        if not traces:
            print("bench eval: no traces found (set CLAWVM_TRACES)", file=sys.stderr)
            return 2
        plan = Plan.of(args.quick)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / RUN_FILE, {"command": command.strip()})
        sections = run_eval(chosen_traces(traces, plan), plan, args.out, args.only)
        sections = {**read_sections(args.out), **sections}
    path = write_report(sections, args.out, command.strip())
    print(f"bench eval: wrote {path}", file=sys.stderr)
    return verdict(sections)


def verdict(sections: Mapping[str, Json]) -> int:
    """0, or 1 when a bar's figures are a measurement error (impossible or absent): such a run
    measured nothing that can be reported. Bars missed are findings, reported, and exit 0."""
    found = bars(sections)
    errors = [b for b in found if b.error]
    print(f"bench eval: {sum(b.met for b in found)} of {len(found)} bars met", file=sys.stderr)
    for bar in errors:
        print(f"bench eval: measurement error, {bar.name}: {bar.error}", file=sys.stderr)
    return 1 if errors else 0
