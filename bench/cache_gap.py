"""`python -m bench cache-gap`: where the gateway's prompt-cache-priced cost goes above the floor.

The same replay as the evaluation's traces section (`bench.peers.compare`: every request of the 12
real traces, direct and the gateway, the honest fake model), priced the same way
(`bench.pricing`). The floor prices each agent request's first upstream call as if it read from
the cache all but the tokens the agent added since its previous request, and its recall
follow-ups at what they cost; so the gap between our cost and the floor is, request by request,
the first call's cost minus that price. This module measures that gap and says where each
request's prefix broke against the session's previous upstream request:

- `recall follow-up`: the previous agent request's first call shares more with this one than
  its last recall follow-up does (the follow-up changed what comes before the newest turn, or
  withdrew the recall tool on the last round);
- `tools block`: the tools differ (the recall tool offered or withdrawn), which breaks everything
  after them; when the messages would have shared less anyway, the rest goes to their cause;
- `low-water step`: the prompt is smaller than the previous one with the agent's new tokens
  appended (a re-plan paged out);
- `span stub`, `evidence index`, `retained state`: a gateway-written message is the first that
  differs, in a request that did not shrink;
- `degraded page`: a page the gateway sent below full is the first that differs;
- `newest turn`: the first difference lies in the previous request's newest turn (from its last
  user message on), e.g. a result that was paged while newest and is shown otherwise now;
- `client message`: a message the agent sent, forwarded as sent, moved or went;
- `at floor`: the request costs what the floor says;
- `rounding`: no token lost against the floor, the 128-token steps of the cache differ;
- `below floor`: requests that cost less than the floor (negative: a newest result the gateway
  paged is not all forwarded).

It measures; it tunes nothing. The causes are read from the two requests' bytes only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cache_report import figures as cost_figures
from bench.fake_upstream import FakeUpstream, serve
from bench.intent_check import intents, load_labels
from bench.peers.compare import (
    OURS,
    Exchange,
    Harness,
    Judge,
    Tally,
    Turn,
    _client,
    _counter,
    _shared,
    figures,
    prepare_turns,
    prompt_tokens,
    reused_tokens,
    run_budget,
)
from bench.peers.model import HONEST, TraceModel
from bench.peers.servers import Upstream, start_peer
from bench.pricing import openai_cost
from bench.traces import Trace, load_traces, traces_dir
from gateway.upstream.tokens import compact_json, count_tools
from gateway.wire.chat_tokens import message_tokens
from policies.render import INDEX_HEADER, RETAINED_HEADER, SPAN_HEADER
from policies.tokens import TokenCounter

Json = dict[str, Any]
BUDGETS = (4000, 16000)
EVERY = 100_000  # requests per trace: all of them
MARKERS = (  # a gateway-written message's head -> its cause
    (INDEX_HEADER.split("{", 1)[0], "evidence index"),
    (RETAINED_HEADER.split("{", 1)[0], "retained state"),
    (SPAN_HEADER.split("{", 1)[0], "span stub"),
)
CAUSES = (
    "recall follow-up",
    "tools block",
    "low-water step",
    "span stub",
    "evidence index",
    "retained state",
    "degraded page",
    "newest turn",
    "client message",
    "rounding",
    "at floor",
    "below floor",
)


@dataclass(slots=True)
class Cause:
    requests: int = 0
    lost: int = 0  # prefix tokens the floor reads from the cache and we did not
    cost: float = 0.0  # OpenAI-priced cost above the floor, uncached-token units


@dataclass(slots=True)
class Gap:
    """One budget's gap, cause by cause, over every agent request of the gateway."""

    budget: int
    causes: dict[str, Cause] = field(default_factory=lambda: {c: Cause() for c in CAUSES})
    follow_ups: int = 0  # recall follow-up calls: priced in our cost and the floor alike
    follow_up_cost: float = 0.0
    shrinks: int = 0  # requests smaller than an append would make them (low-water steps), whatever broke first
    examples: list[str] = field(default_factory=list)

    def add(self, cause: str, lost: int, cost: float, where: str) -> None:
        entry = self.causes[cause]
        entry.requests += 1
        entry.lost += lost
        entry.cost += cost
        if cost > 0 and len(self.examples) < 12:
            self.examples.append(f"{where}: {cause}, {lost} tokens lost, +{cost:.0f}")


@dataclass(slots=True)
class Recorder:
    """A `Judge` that also keeps every exchange of the gateway, in order."""

    judge: Judge
    seen: list[tuple[int, Turn, Exchange]] = field(default_factory=list)

    def record(self, tally: Tally, turn: Turn, exchange: Exchange, direct_ns: int | None) -> None:
        self.judge.record(tally, turn, exchange, direct_ns)
        self.seen.append((id(tally), turn, exchange))


def messages_shared(counter: TokenCounter, before: Json, now: Json) -> int:
    """Tokens of the messages `now` shares with `before` from the start (tools aside)."""
    return _shared(
        counter, before.get("messages") or [], now.get("messages") or [], lambda m: message_tokens(counter, m)
    )


def first_difference(before: Sequence[Any], now: Sequence[Any]) -> int:
    for index, (a, b) in enumerate(zip(before, now, strict=False)):
        if a != b:
            return index
    return min(len(before), len(now))


def gateway_kind(message: Json) -> str | None:
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    return next((cause for head, cause in MARKERS if text.startswith(head)), None)


def newest_start(messages: Sequence[Json]) -> int:
    """Where the newest turn of a prompt starts: its last user message (the whole prompt if none)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user" and gateway_kind(messages[index]) is None:
            return index
    return 0


def cause_of(before: Json, now: Json, sent: set[str], shrank: bool) -> str:
    """What the first message of `now` that differs from `before` is."""
    earlier, messages = before.get("messages") or [], now.get("messages") or []
    k = first_difference(earlier, messages)
    candidates = [
        m for m in (earlier[k] if k < len(earlier) else None, messages[k] if k < len(messages) else None) if m
    ]
    kinds = [kind for m in candidates if (kind := gateway_kind(m))]
    if shrank:
        return "low-water step"
    if kinds:
        return kinds[0]
    if any(compact_json(m) not in sent for m in candidates):
        return "degraded page"
    if k >= newest_start(earlier):
        return "newest turn"
    return "client message"


def attribute(counter: TokenCounter, budget: int, seen: Sequence[tuple[Turn, Exchange]]) -> Gap:
    gap = Gap(budget)
    first: Json | None = None  # the previous agent request's first upstream call
    last: Json | None = None  # the session's previous upstream request
    for turn, exchange in seen:
        if turn.number == 0:
            first = last = None
        if exchange.status != 200 or not exchange.prompts:
            continue
        now = exchange.prompts[0]
        tokens = prompt_tokens(counter, now)
        new = min(turn.fresh, tokens)
        if last is not None and first is not None:
            prefix = reused_tokens(counter, last, now)
            cost = openai_cost(prefix, tokens) - openai_cost(tokens - new, tokens)
            lost = max(tokens - new - prefix, 0)
            where = f"{turn.trace}#{turn.number}"
            if cost <= 0:
                gap.add("below floor" if cost < 0 else "at floor", 0, cost, where)
            elif lost == 0:
                gap.add("rounding", 0, cost, where)
            else:
                _split(counter, gap, turn, (first, last, now), (tokens, new, prefix, lost, cost), where)
        for before, call in zip(exchange.prompts, exchange.prompts[1:], strict=False):
            gap.follow_ups += 1
            gap.follow_up_cost += openai_cost(reused_tokens(counter, before, call), prompt_tokens(counter, call))
        first, last = now, exchange.prompts[-1]
    return gap


def _split(
    counter: TokenCounter,
    gap: Gap,
    turn: Turn,
    prompts: tuple[Json, Json, Json],
    sizes: tuple[int, int, int, int, float],
    where: str,
) -> None:
    """One request's loss: what the previous request's recall follow-up broke first (measured
    against that request's first call), then the tools, the rest to the messages' first difference."""
    first, base, now = prompts
    tokens, new, prefix, lost, cost = sizes
    shrank = tokens - new < prompt_tokens(counter, first)
    gap.shrinks += shrank
    share = cost / lost
    if first is not base:
        follow = min(max(reused_tokens(counter, first, now) - prefix, 0), lost)
        if follow:
            gap.add("recall follow-up", follow, share * follow, where)
            base, prefix, lost = first, prefix + follow, lost - follow
    tools_lost = 0
    if (base.get("tools") or []) != (now.get("tools") or []):
        whole = count_tools(counter, now.get("tools")) + messages_shared(counter, base, now)
        tools_lost = min(max(whole - prefix, 0), lost)
        if tools_lost:
            gap.add("tools block", tools_lost, share * tools_lost, where)
    rest = lost - tools_lost
    if rest:
        sent = {compact_json(m) for m in turn.messages}
        gap.add(cause_of(base, now, sent, shrank), rest, share * rest, where)


def run_gap(traces: Sequence[Trace], budgets: Sequence[int], turns: int = EVERY) -> list[tuple[Json, Json, Gap]]:
    """(our figures, direct's, the gap) per budget: one replay each, the honest model."""
    counter = _counter()
    prepared = [t for trace in traces for t in prepare_turns(trace, turns, counter)]
    model = TraceModel(HONEST)
    fake = FakeUpstream(model)
    labels = intents(load_labels())
    out = []
    with serve(fake.app) as api_base, _client() as client, tempfile.TemporaryDirectory(prefix="clawvm-gap-") as tmp:
        harness = Harness(client, fake, model)
        for budget in budgets:
            with ExitStack() as stack:
                directory = Path(tmp) / str(budget)
                bases = {p: start_peer(p, stack, directory, Upstream(api_base), budget) for p in ("direct", OURS)}
                recorder = Recorder(Judge(counter, budget, labels))
                tallies = run_budget(harness, bases, prepared, recorder, 2)  # type: ignore[arg-type]
            ours = id(tallies[OURS])
            seen = [(turn, exchange) for tally, turn, exchange in recorder.seen if tally == ours]
            rows = (dataclasses.asdict(figures(name, budget, tallies[name])) for name in ("direct", OURS))
            direct, mine = rows
            out.append((mine, direct, attribute(counter, budget, seen)))
    return out


def format_gap(results: Sequence[tuple[Json, Json, Gap]]) -> list[str]:
    lines = []
    for mine, direct, gap in results:
        f = cost_figures(mine, direct)
        faults = f"faults {mine['rule_faults'] + mine['plan_faults'] + mine['intent_faults']}"
        faults += f"+{mine['answer_faults'] + mine['evidence_faults']}"
        lines += [
            f"budget {gap.budget:,}: tokens {f['tokens']:.2f} of direct, "
            f"prefix reuse {100 * mine['prefix_reuse']:.1f}%, "
            f"OpenAI {f['openai']:.3f}, Anthropic {f['anthropic']:.3f}, floor {f['floor']:.3f} "
            f"(gap {f['openai'] - f['floor']:.3f}); {faults}, invalid {mine['invalid']}, "
            f"over budget {mine['over_budget']}; low-water steps: {gap.shrinks}; recall follow-ups: "
            f"{gap.follow_ups}, {gap.follow_up_cost / direct['openai_cost']:.3f} of direct (in the floor too)",
            f"  {'cause':<16}{'requests':>9}{'tokens lost':>13}{'of direct':>11}",
        ]
        for name, cause in gap.causes.items():
            if cause.requests:
                share = cause.cost / direct["openai_cost"]
                lines.append(f"  {name:<16}{cause.requests:>9}{cause.lost:>13,}{share:>11.3f}")
        total = sum(c.cost for c in gap.causes.values()) / direct["openai_cost"]
        lines += [f"  {'sum':<16}{'':>9}{'':>13}{total:>11.3f}", *(f"  e.g. {e}" for e in gap.examples), ""]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m bench cache-gap", description=__doc__.split("\n", 1)[0])
    top.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    top.add_argument("--turns", type=int, default=EVERY, help="requests per trace (default: all)")
    top.add_argument("--traces", type=Path, default=None, help="trace directory (default: bench.traces)")
    args = top.parse_args(argv)
    traces = load_traces(args.traces or traces_dir(os.environ))
    if not traces:
        print("bench cache-gap: no traces", file=sys.stderr)
        return 2
    print("\n".join(format_gap(run_gap(traces, args.budgets, args.turns))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
