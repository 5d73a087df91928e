"""`python -m bench [policy|latency|recall|all]`: print the figures the README quotes.
`python -m bench eval [--quick]`: run every evaluation and write bench/results/report.md (bench.eval).
`python -m bench load [--quick]`: the load and chaos suite, writes bench/results/load.md (bench.load).
`python -m bench ui [--turns 1000]`: the session inspector's load time on a long session (bench.ui).
`python -m bench cache-gap [--budgets 4000 16000]`: where the prompt-cache-priced cost goes above the
floor, request by request, by cause (bench.cache_gap).
`python -m bench intent [--verbose]`: the user-intent classifier's precision and recall on its
labelled set (bench.intent); `--verbose` lists the misses and false alarms.

policy   the policy engine's time per turn over the real traces, in process (bench.policy_time);
latency  the latency the gateway adds over calling the fake upstream directly (bench.latency);
recall   identifiers recovered through the recall tool on the real traces (bench.recall_replay), the
         agent speaking each wire format in turn (chat, messages, responses; `--wire` for some);
         `--knowledge perfect` for the upper bound of a model that knows the gateway's page ids.

Offline and loopback only; every process the latency bench starts is stopped before it returns.
`--json PATH` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.latency import BUDGET, REQUESTS, WARMUP, WIRES, BenchError, format_latency, run_latency
from bench.policy_time import BUDGETS, MODEL, format_policy, run_policy
from bench.recall_replay import format_recall, run_recall
from bench.traces import Trace, load_traces, traces_dir
from gateway.upstream.tokens import Tokenizers, prepare_offline

RECALL_BUDGET = 4000


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description="ClawVM Gateway benchmarks.")
    top.add_argument("what", nargs="?", default="all", choices=["policy", "latency", "recall", "all"])
    top.add_argument("--traces", type=Path, default=None, help="trace directory (default: bench.traces)")
    budgets = ", ".join(map(str, BUDGETS))
    top.add_argument("--budget", type=int, default=None, help=f"policy: {budgets}; latency: {BUDGET}")
    top.add_argument("--requests", type=int, default=REQUESTS, help="measured requests per path and series")
    top.add_argument("--warmup", type=int, default=WARMUP, help="discarded warm-up requests per path, series")
    top.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    top.add_argument(
        "--knowledge",
        choices=("honest", "perfect"),
        default="honest",
        help="recall: how the fake model recalls, from its prompt (honest) or perfect knowledge (upper bound)",
    )
    top.add_argument(
        "--wire", nargs="+", choices=WIRES, default=list(WIRES), help="recall: the wire formats the agent speaks"
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["eval"]:
        from bench.eval import main as run_eval

        return run_eval(given[1:])
    if given[:1] == ["load"]:
        from bench.load import main as run_load_suite

        return run_load_suite(given[1:])
    if given[:1] == ["ui"]:
        from bench.ui import main as run_ui_bench

        return run_ui_bench(given[1:])
    if given[:1] == ["cache-gap"]:
        from bench.cache_gap import main as run_cache_gap

        return run_cache_gap(given[1:])
    if given[:1] == ["intent"]:
        from bench.intent import main as run_intent

        return run_intent(given[1:])
    args = parser().parse_args(given)
    prepare_offline(os.environ)
    directory = args.traces or traces_dir(os.environ)
    traces = load_traces(directory)
    if not traces:
        print(f"bench: no traces in {directory}", file=sys.stderr)
        return 2
    try:
        figures = run(args, traces)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if figures.get("latency", {}).get("failures") else 0


def run(args: argparse.Namespace, traces: list[Trace]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if args.what in ("policy", "all"):
        counter = Tokenizers.from_env(os.environ).for_model(MODEL)
        report = run_policy(traces, counter, (args.budget,) if args.budget else BUDGETS)
        _print(format_policy(report))
        figures["policy"] = dataclasses.asdict(report)
    if args.what in ("recall", "all"):
        budget = args.budget or RECALL_BUDGET
        rows = run_recall(traces, budget, args.knowledge, args.wire)
        _print(format_recall(rows, budget))
        figures["recall"] = [dataclasses.asdict(r) for r in rows]
    if args.what in ("latency", "all"):
        latency = run_latency(traces, args.requests, args.warmup, args.budget or BUDGET)
        _print(format_latency(latency))
        figures["latency"] = {**dataclasses.asdict(latency), "failures": latency.failures}
    return figures


def _print(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
