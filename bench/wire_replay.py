"""The real traces through the gateway in every wire format: the bench's agent speaks Chat
Completions, the Anthropic Messages API and the OpenAI Responses API in turn, with the same
conversation (`bench.wire_bodies`), and its fake model answers in the same format.

One gateway (embedded store, one budget) in front of one fake server of the three APIs
(`bench.fake_apis`); the model is the honest one (`bench.peers.model.TraceModel`): it reads the
prompt it gets (translated back to chat), recalls what it misses from what that prompt shows,
and answers with the trace's real next message, translated into the format. Each request is
judged exactly as the peers comparison judges it (`bench.peers.compare.Judge`: invalid requests,
over budget, rule, plan, intent, answer and evidence faults, recalls), so the three formats'
rows compare like for like. Tool-call arguments are compared as canonical JSON (the Messages
API carries them as objects).

`python -m bench.wire_replay [--budget 4000] [--turns 40] [--json out.json]`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.eval import injector_row
from bench.fake_anthropic import FakeAnthropic
from bench.fake_apis import app
from bench.fake_responses import FakeResponses
from bench.fake_upstream import FakeUpstream, serve
from bench.harnesses import INJECTORS
from bench.intent_check import intents, load_labels
from bench.latency import HEADERS, PATHS, WIRES, encode, request_body
from bench.lifecycle_replay import run as run_boundary
from bench.peers.compare import Exchange, Judge, PeerFigures, Tally, Turn, figures, prepare_turns
from bench.peers.model import Expected, TraceModel
from bench.traces import Trace, load_traces, traces_dir
from bench.wire_bodies import (
    anthropic_reply,
    canonical_answer,
    chat_answer,
    chat_of_messages,
    chat_of_responses,
    responses_reply,
)
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import EmbeddedRedis
from gateway.upstream.tokens import Tokenizers, prepare_offline

BUDGET = 4000
LIFECYCLE_BUDGET = 16000  # as `bench eval`'s lifecycle section
TURNS = 40
MODEL = "gpt-4o"
TIMEOUT_S = 120.0
Json = dict[str, Any]


@dataclass(slots=True)
class Fakes:
    """The three fakes, each answering with the one model (through a translation): a chat
    responder (`TraceModel` here, `bench.recall_replay.RecallingModel` there)."""

    model: Any
    chat: FakeUpstream
    messages: FakeAnthropic
    responses: FakeResponses

    @classmethod
    def of(cls, model: Callable[[Json], Json]) -> Fakes:
        messages = FakeAnthropic(lambda body: anthropic_reply(model(chat_of_messages(body))))
        responses = FakeResponses(lambda body: responses_reply(model(chat_of_responses(body))))
        return cls(model, FakeUpstream(model), messages, responses)

    def prompts(self, wire: str) -> tuple[Json, ...]:
        """What the model received since the last `clear`, as chat requests."""
        if wire == "messages":
            return tuple(chat_of_messages(r.body) for r in self.messages.requests if r.body)
        if wire == "responses":
            return tuple(chat_of_responses(r.body) for r in self.responses.requests if r.body)
        return tuple(r.body for r in self.chat.requests if r.body)

    def clear(self) -> None:
        self.chat.requests.clear()
        self.messages.requests.clear()
        self.responses.requests.clear()


@dataclass(frozen=True, slots=True)
class Seen:
    body: Json


class ChatView:
    """`requests` as `bench.lifecycle_replay` reads a fake's: what the model of `wire` received,
    every request since the view was made, as chat requests."""

    def __init__(self, fakes: Fakes, wire: str) -> None:
        self.fakes = fakes
        self.wire = wire

    @property
    def requests(self) -> list[Seen]:
        return [Seen(body) for body in self.fakes.prompts(self.wire)]


def canonical_turn(turn: Turn) -> Turn:
    """The turn with its expected answer's call arguments in canonical JSON."""
    answer = canonical_answer(turn.expected.answer) or {}
    return dataclasses.replace(turn, expected=Expected(answer, turn.expected.needs))


def send(client: httpx.Client, base: str, fakes: Fakes, wire: str, turn: Turn) -> Exchange:
    body = encode(request_body(turn.messages, turn.tools, False, f"wires-{wire}-{turn.trace}", wire))
    fakes.model.expect(turn.expected)
    fakes.clear()
    response = client.post(base + PATHS[wire], content=body, headers=HEADERS)
    try:
        answer = chat_answer(wire, response.json()) if response.status_code == 200 else None
    except ValueError:
        answer = None
    headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-clawvm-")}
    exchange = Exchange(response.status_code, 0, fakes.prompts(wire), headers, answer)
    fakes.clear()
    return exchange


@contextmanager
def gateway(fakes: Fakes, budget: int, store: str | None = None) -> Iterator[str]:
    """A gateway in front of the three fakes, on `store` (else an embedded store of its own);
    yields its /v1 base."""
    with tempfile.TemporaryDirectory(prefix="clawvm-wires-") as scratch, ExitStack() as stack:
        store = store or stack.enter_context(EmbeddedRedis(Path(scratch)))
        with serve(app(fakes.chat, fakes.messages, fakes.responses)) as upstream:
            config = Path(scratch) / "config.yaml"
            config.write_text(f"upstream:\n  anthropic_base: {json.dumps(upstream.removesuffix('/v1'))}\n")
            settings = load_settings(config, {}, Overrides(upstream=upstream, store=store, budget=budget))
            with serve(create_app(settings)) as url:
                yield url


def run(
    traces: Sequence[Trace], budget: int = BUDGET, turns: int = TURNS, wires: Sequence[str] = WIRES
) -> list[PeerFigures]:
    prepare_offline(os.environ)
    counter = Tokenizers.from_env(os.environ).for_model(MODEL)
    prepared = [canonical_turn(t) for trace in traces for t in prepare_turns(trace, turns, counter)]
    judge = Judge(counter, budget, intents(load_labels()))
    fakes = Fakes.of(TraceModel())
    rows = []
    with gateway(fakes, budget) as base, httpx.Client(trust_env=False, timeout=TIMEOUT_S) as client:
        for wire in wires:
            tally = Tally()
            for turn in prepared:
                if turn.number == 0:
                    tally.previous = None
                judge.record(tally, turn, send(client, base, fakes, wire, turn), None)
            rows.append(figures(wire, budget, tally))
    return rows


def run_lifecycle(traces: Sequence[Trace], budget: int = LIFECYCLE_BUDGET, wires: Sequence[str] = WIRES) -> list[Json]:
    """Every harness injector over every trace (`bench.lifecycle_replay`) in each wire format, the
    honest model answering to each trace's end: one row per format and injector."""
    said = intents(load_labels())
    fakes = Fakes.of(TraceModel())
    rows = []
    with gateway(fakes, budget) as base, httpx.Client(trust_env=False, timeout=TIMEOUT_S) as client:
        for wire in wires:
            view = ChatView(fakes, wire)
            for injector in INJECTORS:
                records = []
                for trace in traces:
                    fakes.clear()  # the view converts what it holds on every read: one trace at a time
                    found = run_boundary(
                        client, base, view, trace, injector, said.get(trace.name, []), fakes.model, wire
                    )  # type: ignore[arg-type]
                    records += [found] if found is not None else []
                fakes.clear()
                rows.append({"wire": wire, "injector": injector, **injector_row(records)})
    return rows


def format_rows(rows: Sequence[PeerFigures]) -> list[str]:
    lines = [
        "wire format | requests | errors | invalid | over budget | faults (rule/plan/intent/answer/evidence) | recalls"
    ]
    for r in rows:
        faults = f"{r.faults} ({r.rule_faults}/{r.plan_faults}/{r.intent_faults}/{r.answer_faults}/{r.evidence_faults})"
        lines.append(
            f"{r.peer} | {r.requests} | {r.errors} | {r.invalid} | {r.over_budget} | {faults} | {r.recall_round_trips}"
        )
    lines += [f"  {r.peer} e.g. {example}" for r in rows for example in r.examples[:3]]
    return lines


def format_lifecycle(rows: Sequence[Json]) -> list[str]:
    keys = [k for k in rows[0] if k not in ("wire", "injector")] if rows else []
    lines = ["wire | injector | " + " | ".join(keys)]
    lines += [f"{r['wire']} | {r['injector']} | " + " | ".join(str(r[k]) for k in keys) for r in rows]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The real traces through the gateway in all three wire formats.")
    parser.add_argument("--budget", type=int, default=BUDGET)
    parser.add_argument("--turns", type=int, default=TURNS, help="requests replayed per trace")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--lifecycle", action="store_true", help="the harness injectors instead (budget 16,000)")
    args = parser.parse_args(argv)
    traces = load_traces(traces_dir())
    if args.lifecycle:
        lifecycle = run_lifecycle(traces)
        print("\n".join(format_lifecycle(lifecycle)), flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(lifecycle, indent=2) + "\n", encoding="utf-8")
        return 0
    rows = run(traces, args.budget, args.turns)
    print("\n".join(format_rows(rows)), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.errors or r.invalid for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
