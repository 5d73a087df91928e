"""Peers side by side on the real traces: the same requests, fake upstream and budget, one run.

The harness plays the agent: for each trace it sends the requests the agent sent (`Trace.turns()`,
the first `turns` of each trace), and every request goes, byte for byte the same, to each peer
in turn: direct (the fake upstream itself), a plain passthrough (`bench.peers.passthrough`),
LiteLLM proxy trimming to the budget, Headroom's proxy, and the ClawVM gateway. The fake upstream
(in this process) answers with the trace's real next assistant message (`bench.peers.model`) and
records what the model saw. Budget-bound peers are started once per budget.

Per peer and budget, from what the model saw:

- errors: the agent got no 200 answer, or the model was never called;
- invalid: a request the model received that an OpenAI-compatible upstream would reject
  (`request_errors`: message shape and `bench.checks.pairing_errors`);
- over budget: the model's first prompt (messages and tools, tiktoken) exceeds the budget;
  for the gateway, those it declared physically insufficient are counted apart;
- faults: requests missing a system or user rule or a preference (`missing_state`), missing the
  current plan (the latest plan-carrying message, whitespace aside), intent sentences the user
  typed (`bench.intent_check`, from the hand-labelled `bench/data/intent_labels.tsv`), each missing one
  a fault; needed identifiers (evidence the real next answer uses that an earlier message holds)
  that the model did not see and could not get back through its recall, each one a fault (the
  fake model answers anyway: what it lacked is counted, not hidden); and answers the agent got
  that are empty or not the model's answer (altered);
- knowledge: how the fake model recalls (`bench.peers.model`): `honest` (the default: from what
  its prompt shows) or `perfect` (an upper bound that knows the gateway's page ids);
- tokens forwarded (the first prompt of each request) against sending everything (direct);
- prefix reuse: over every upstream request after a trace's first (recall follow-ups included),
  the tokens of each prompt's longest common prefix with the session's previous request
  (`reused_tokens`) over the prompts' tokens: the share of the input a provider prompt cache can
  read back; and the input cost priced with prompt caching (`bench.pricing`);
- added latency: per request, the peer's end-to-end time minus direct's for the same request
  (sent just before it); median and p99. "like-for-like" keeps the requests the model answered
  in one call (a recall round trip is a second model call, not proxy work). A peer that forwards
  less also gives the (fake) upstream less to parse. The fake answers at once by default, the
  harshest case for the gateway, whose save (`policies.step.complete` and the commit) then holds
  the answer back; with `--first-byte-ms` it thinks first, as a real model does, and the save runs
  while it thinks: what is left is the work before forwarding and the HTTP hop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.checks import message_text, pairing_errors
from bench.fake_upstream import FakeUpstream, serve
from bench.intent_check import Label, intents, load_labels, missing_intents
from bench.latency import HEADERS, REQUEST_TIMEOUT_S, encode, logged_timings, request_body, stage_medians_us
from bench.lifecycle_replay import missing_state
from bench.peers import install
from bench.peers.model import (
    HONEST,
    KNOWLEDGE,
    OK,
    Expected,
    TraceModel,
    answers_recall,
    expected_for,
    missing,
    visible,
)
from bench.peers.servers import Upstream, available, start_peer
from bench.policy_time import percentile
from bench.pricing import Price, openai_cost, price
from bench.traces import Trace, load_traces, traces_dir
from gateway.turns.stages import HEADER as STAGES_HEADER
from gateway.turns.stages import parse_header
from gateway.upstream.tokens import Tokenizers, compact_json, count_tools, prepare_offline
from gateway.wire.chat_json import parse_messages
from gateway.wire.chat_tokens import message_tokens
from policies.classify import is_plan
from policies.tokens import TokenCounter

PEERS = ("direct", "passthrough", "litellm", "headroom", "clawvm")
BUDGETS = (4000, 16000)
TURNS = 40  # requests replayed per trace (its first ones)
WARMUP = 5
OURS = "clawvm"
MEDIAN_BAR_US = 1000.0  # ours over direct
LITELLM_SHARE_BAR = 0.25  # ours at most this share of LiteLLM's added median
EXAMPLES = 4
SLOWEST = 5  # requests listed as the slowest, per peer and budget (`PeerFigures.slowest_us`)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MODEL = "gpt-4o"

Json = dict[str, Any]


# ---------------------------------------------------------------- what one request did


@dataclass(frozen=True, slots=True)
class Turn:
    trace: str
    number: int
    body: bytes  # what the agent sends, the same to every peer
    messages: list[Json]
    tools: list[Json]
    expected: Expected
    plan: str  # the current plan, whitespace-normalised ("" when there is none)
    everything: int  # tokens of the agent's request: messages and tools
    fresh: int = 0  # of those, the tokens its previous request did not have (all of them for the first)


@dataclass(frozen=True, slots=True)
class Exchange:
    status: int
    elapsed_ns: int
    prompts: tuple[Json, ...]  # the request bodies the model received, recall round trips included
    headers: dict[str, str]  # the peer's x-clawvm-* answer headers
    answer: Json | None = None  # the assistant message the agent got (choices[0].message)
    stages: dict[str, float] = field(default_factory=dict)  # the gateway's server-timing, µs by stage


def request_errors(body: Json) -> list[str]:
    """What an OpenAI-compatible upstream would reject about a chat request's messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["messages: missing or empty"]
    errors = [e for n, m in enumerate(messages) for e in message_errors(n, m)]
    return errors or pairing_errors(messages)


def message_errors(index: int, message: object) -> list[str]:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        return [f"messages[{index}]: not a message with a known role"]
    content, role = message.get("content"), message["role"]
    if content is not None and not isinstance(content, (str, list)):
        return [f"messages[{index}]: content is neither text nor parts"]
    if content is None and not (role == "assistant" and message.get("tool_calls")):
        return [f"messages[{index}]: {role} message without content"]
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        return [f"messages[{index}]: tool message without tool_call_id"]
    return []


def plan_text(messages: Sequence[Json]) -> str:
    """The current plan: the latest plan-carrying message's text (or plan call's arguments)."""
    parsed = parse_messages(list(messages))
    for message in reversed(parsed):
        if message.role not in ("system", "developer", "user") and is_plan(message):
            text = message.text or " ".join(c.arguments for c in message.tool_calls)
            return " ".join(text.split())
    return ""


def prompt_tokens(counter: TokenCounter, body: Json) -> int:
    messages = body.get("messages") or []
    return sum(message_tokens(counter, m) for m in messages) + count_tools(counter, body.get("tools"))


def reused_tokens(counter: TokenCounter, previous: Json | None, current: Json) -> int:
    """Tokens of `current`'s longest common prefix with `previous`, as a provider caches a prompt:
    the tools, then the messages, in order; inside the first item that differs, the tokens of
    the text the two share from its start (role, name, content, calls), less one for the token
    the difference may split."""
    if previous is None:
        return 0
    before, now = previous.get("tools") or [], current.get("tools") or []
    tools = _shared(counter, before, now, lambda tool: count_tools(counter, [tool]))
    if before != now:
        return tools
    earlier, messages = previous.get("messages") or [], current.get("messages") or []
    return tools + _shared(counter, earlier, messages, lambda message: message_tokens(counter, message))


def _shared(counter: TokenCounter, before: Sequence[Any], now: Sequence[Any], tokens: Callable[[Any], int]) -> int:
    """Tokens of `now`'s items equal to `before`'s from the start, then the shared head of the
    first item that differs (when `before` has one there)."""
    total = 0
    for index, item in enumerate(now):
        if index < len(before) and before[index] == item:
            total += tokens(item)
            continue
        if index < len(before):
            head = os.path.commonprefix([_serialized(before[index]), _serialized(item)])
            total += min(max(counter.count(head) - 1, 0), tokens(item)) if head else 0
        break
    return total


def _serialized(item: object) -> str:
    """An item as a provider lays it out: a message's role and name, its content, then its calls
    (a tool schema as compact JSON)."""
    if not isinstance(item, dict) or "role" not in item:
        return compact_json(item)
    content = item.get("content")
    text = content if isinstance(content, str) else compact_json(content)
    calls = compact_json(item["tool_calls"]) if item.get("tool_calls") else ""
    return f"{item['role']}\n{item.get('name') or ''}\n{item.get('tool_call_id') or ''}\n{text}\n{calls}"


def recovered(gaps: dict[str, str], prompts: Sequence[Json]) -> set[str]:
    """Identifiers among `gaps` that the results of the model's recall calls brought back."""
    follow_ups = [p.get("messages") or [] for p in prompts[1:] if answers_recall(p.get("messages") or [])]
    if not follow_ups:
        return set()
    results = visible([m for m in follow_ups[-1] if m.get("role") == "tool"])
    return {ident for ident in gaps if ident in results}


# ---------------------------------------------------------------- per peer and budget


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0
    invalid: int = 0
    over_budget: int = 0
    declared_insufficient: int = 0
    rule_faults: int = 0
    plan_faults: int = 0
    intent_faults: int = 0
    answer_faults: int = 0
    evidence_needed: int = 0
    evidence_faults: int = 0
    recalled: int = 0
    recall_round_trips: int = 0
    forwarded: int = 0
    everything: int = 0
    reused: int = 0  # prefix tokens shared with the session's previous upstream request
    reusable: int = 0  # prompt tokens of the upstream requests that have a previous one
    upstream_tokens: int = 0  # every upstream request's prompt tokens, recall follow-ups included
    openai_cost: float = 0.0  # their input cost priced by bench.pricing, in uncached-token units
    anthropic_cost: float = 0.0
    openai_floor: float = 0.0  # the OpenAI-priced cost had every request read all but the agent's new tokens
    reuse_ceiling: int = 0  # of `reusable`: all but the agent's new tokens (the most any prefix could share)
    sessions: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # per trace, per request
    added_ns: list[int] = field(default_factory=list)
    single_added_ns: list[int] = field(default_factory=list)
    overhead_us: list[int] = field(default_factory=list)
    policy_us: list[int] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)  # the gateway's server-timing, per request
    timed: list[Slow] = field(default_factory=list)  # each request answered in one model call, for `slowest`
    examples: list[str] = field(default_factory=list)
    previous: Json | None = None  # the last upstream request of the current trace

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)


@dataclass(frozen=True, slots=True)
class Slow:
    """One request's added time (like for like: one model call) and its gateway stages."""

    request: str  # trace#number
    added_us: float
    stages_us: dict[str, float]


@dataclass(frozen=True, slots=True)
class PeerFigures:
    peer: str
    budget: int
    requests: int
    errors: int
    invalid: int
    over_budget: int
    declared_insufficient: int
    rule_faults: int
    plan_faults: int
    intent_faults: int
    answer_faults: int
    evidence_needed: int
    evidence_faults: int
    recalled: int
    recall_round_trips: int
    tokens_forwarded: int
    tokens_everything: int
    prefix_reuse: float  # shared-prefix tokens over prompt tokens, upstream requests after each trace's first
    upstream_tokens: int  # prompt tokens of every upstream request, recall follow-ups included
    openai_cost: float  # input cost priced with prompt caching (bench.pricing), uncached-token units
    anthropic_cost: float
    openai_floor: float  # the same requests, each reading all but the agent's new tokens from the cache
    reuse_ceiling: float  # the prefix reuse of the same requests had each shared all but the agent's new tokens
    added_median_us: float
    added_p99_us: float
    like_for_like_median_us: float  # requests answered in one model call
    like_for_like_p99_us: float
    overhead_header_median_us: float | None  # x-clawvm-overhead-us (the gateway only)
    policy_header_median_us: float | None  # x-clawvm-policy-us
    examples: tuple[str, ...]
    stages_median_us: dict[str, float] = field(default_factory=dict)  # each stage's median (the gateway only)
    slowest_us: tuple[Slow, ...] = ()  # the SLOWEST requests that added most, like for like (the tail's anatomy)
    session_costs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # per trace, per agent request: its (OpenAI, Anthropic)-priced cost, recall follow-ups included

    @property
    def faults(self) -> int:
        return self.rule_faults + self.plan_faults + self.intent_faults + self.answer_faults + self.evidence_faults


@dataclass(frozen=True, slots=True)
class CompareResult:
    traces: tuple[str, ...]
    turns_per_trace: int
    budgets: tuple[int, ...]
    peers: tuple[str, ...]
    rows: tuple[PeerFigures, ...]
    skipped: dict[str, str]  # peer -> why it did not run
    knowledge: str = HONEST  # how the fake model recalled (bench.peers.model)
    first_byte_s: float = 0.0  # the fake model's think time before each answer's first byte

    def row(self, peer: str, budget: int) -> PeerFigures | None:
        return next((r for r in self.rows if r.peer == peer and r.budget == budget), None)

    def to_json(self) -> Json:
        data = dataclasses.asdict(self)
        for row, figures in zip(data["rows"], self.rows, strict=True):
            row["faults"] = figures.faults
        data["bars"] = {str(b): bars(self, b) for b in self.budgets}
        return data


def _median_us(values_ns: Sequence[int]) -> float:
    return round(statistics.median(values_ns) / 1000, 1) if values_ns else 0.0


def _p99_us(values_ns: Sequence[int]) -> float:
    return round(percentile(sorted(values_ns), 0.99) / 1000, 1) if values_ns else 0.0


def _header_median(values: Sequence[int]) -> float | None:
    return round(float(statistics.median(values)), 1) if values else None


def figures(peer: str, budget: int, tally: Tally, logged: Sequence[dict[str, float]] = ()) -> PeerFigures:
    """The peer's figures; `logged`: the gateway's timings log, a turn's stages per line."""
    return PeerFigures(
        peer=peer,
        budget=budget,
        requests=tally.requests,
        errors=tally.errors,
        invalid=tally.invalid,
        over_budget=tally.over_budget,
        declared_insufficient=tally.declared_insufficient,
        rule_faults=tally.rule_faults,
        plan_faults=tally.plan_faults,
        intent_faults=tally.intent_faults,
        answer_faults=tally.answer_faults,
        evidence_needed=tally.evidence_needed,
        evidence_faults=tally.evidence_faults,
        recalled=tally.recalled,
        recall_round_trips=tally.recall_round_trips,
        tokens_forwarded=tally.forwarded,
        tokens_everything=tally.everything,
        prefix_reuse=round(tally.reused / tally.reusable, 4) if tally.reusable else 0.0,
        upstream_tokens=tally.upstream_tokens,
        openai_cost=round(tally.openai_cost, 1),
        anthropic_cost=round(tally.anthropic_cost, 1),
        openai_floor=round(tally.openai_floor, 1),
        reuse_ceiling=round(tally.reuse_ceiling / tally.reusable, 4) if tally.reusable else 0.0,
        added_median_us=_median_us(tally.added_ns),
        added_p99_us=_p99_us(tally.added_ns),
        like_for_like_median_us=_median_us(tally.single_added_ns),
        like_for_like_p99_us=_p99_us(tally.single_added_ns),
        overhead_header_median_us=_header_median(tally.overhead_us),
        policy_header_median_us=_header_median(tally.policy_us),
        examples=tuple(tally.examples),
        stages_median_us=stage_medians_us(tally.stages, logged),
        slowest_us=tuple(sorted(tally.timed, key=lambda slow: (-slow.added_us, slow.request))[:SLOWEST]),
        session_costs={name: list(costs) for name, costs in tally.sessions.items()},
    )


# ---------------------------------------------------------------- judging one exchange


@dataclass(frozen=True, slots=True)
class Judge:
    counter: TokenCounter
    budget: int
    intents: dict[str, list[Label]] = field(default_factory=dict)  # trace -> its labelled intent sentences

    def record(self, tally: Tally, turn: Turn, exchange: Exchange, direct_ns: int | None) -> None:
        tally.requests += 1
        if exchange.status != 200 or not exchange.prompts:
            tally.errors += 1
            tally.note(f"{turn.trace}#{turn.number}: status {exchange.status}, {len(exchange.prompts)} model calls")
            return
        self._latency(tally, turn, exchange, direct_ns)
        self._validity(tally, turn, exchange)
        self._size(tally, turn, exchange)
        self._faults(tally, turn, exchange)

    def _latency(self, tally: Tally, turn: Turn, exchange: Exchange, direct_ns: int | None) -> None:
        if direct_ns is not None:
            added = exchange.elapsed_ns - direct_ns
            tally.added_ns.append(added)
            if len(exchange.prompts) == 1:
                tally.single_added_ns.append(added)
                tally.timed.append(Slow(f"{turn.trace}#{turn.number}", round(added / 1000, 1), dict(exchange.stages)))
        for name, values in (("x-clawvm-overhead-us", tally.overhead_us), ("x-clawvm-policy-us", tally.policy_us)):
            if exchange.headers.get(name, "").isdigit():
                values.append(int(exchange.headers[name]))
        if exchange.stages:
            tally.stages.append(exchange.stages)

    def _validity(self, tally: Tally, turn: Turn, exchange: Exchange) -> None:
        problems = [e for prompt in exchange.prompts for e in request_errors(prompt)]
        if problems:
            tally.invalid += 1
            tally.note(f"{turn.trace}#{turn.number}: invalid: {problems[0]}")

    def _size(self, tally: Tally, turn: Turn, exchange: Exchange) -> None:
        first = exchange.prompts[0]
        tokens = prompt_tokens(self.counter, first)
        tally.forwarded += tokens
        tally.everything += turn.everything
        if tokens > self.budget:
            tally.over_budget += 1
            tally.declared_insufficient += 1 if "x-clawvm-insufficient" in exchange.headers else 0
        new = min(turn.fresh, tokens)  # the first call cannot reuse what the agent just added
        if tally.previous is not None:  # counted in `reusable` (below): at most all but the new tokens shared
            tally.reuse_ceiling += tokens - new
        before = tally.upstream_tokens
        costs = [self._price(tally, prompt) for prompt in exchange.prompts]
        tally.reuse_ceiling += tally.upstream_tokens - before - tokens  # the recall follow-ups, whole
        tally.openai_floor += openai_cost(tokens - new, tokens) + sum(c.openai for c in costs[1:])
        spent = (round(sum(c.openai for c in costs), 1), round(sum(c.anthropic for c in costs), 1))
        tally.sessions.setdefault(turn.trace, []).append(spent)

    def _price(self, tally: Tally, prompt: Json) -> Price:
        """One upstream request against the session's previous one: its reuse and its price."""
        tokens = prompt_tokens(self.counter, prompt)
        prefix = reused_tokens(self.counter, tally.previous, prompt)
        if tally.previous is not None:
            tally.reused += prefix
            tally.reusable += tokens
        tally.previous = prompt
        cost = price(prefix, tokens)
        tally.upstream_tokens += tokens
        tally.openai_cost += cost.openai
        tally.anthropic_cost += cost.anthropic
        return cost

    def _faults(self, tally: Tally, turn: Turn, exchange: Exchange) -> None:
        seen = exchange.prompts[0].get("messages") or []
        lost = missing_state(turn.messages, seen)
        if lost:
            tally.rule_faults += 1
            tally.note(f"{turn.trace}#{turn.number}: rule or preference missing: {lost[0][:80]}")
        if turn.plan and turn.plan not in " ".join(visible(seen).split()):
            tally.plan_faults += 1
            tally.note(f"{turn.trace}#{turn.number}: plan missing: {turn.plan[:60]}")
        said = missing_intents(self.intents.get(turn.trace, []), len(turn.messages), seen)
        if said:
            tally.intent_faults += len(said)
            tally.note(f"{turn.trace}#{turn.number}: user intent missing: {said[0][:80]}")
        self._evidence(tally, turn, exchange, seen)
        if altered(turn.expected.answer, exchange.answer):
            tally.answer_faults += 1
            tally.note(f"{turn.trace}#{turn.number}: answer empty or altered: {str(exchange.answer)[:80]}")

    def _evidence(self, tally: Tally, turn: Turn, exchange: Exchange, seen: list[Json]) -> None:
        gaps = missing(turn.expected.needs, seen)
        back = recovered(gaps, exchange.prompts)
        tally.evidence_needed += len(turn.expected.needs)
        tally.recalled += len(back)
        tally.recall_round_trips += len(exchange.prompts) - 1
        lost = [ident for ident in gaps if ident not in back]
        tally.evidence_faults += len(lost)
        if lost:
            tally.note(f"{turn.trace}#{turn.number}: evidence not seen nor recalled: {', '.join(lost[:3])}")


def altered(expected: Json, got: Json | None) -> bool:
    """The agent's answer is empty, or not the one the model gave (its text or its calls)."""
    if got is None:
        return True
    if not message_text(got) and not got.get("tool_calls"):
        return True
    return (message_text(got) or None) != expected.get("content") or _calls(got) != _calls(expected)


def _calls(message: Json) -> list[tuple[str, str]]:
    functions = [c.get("function") or {} for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    return [(str(f.get("name")), str(f.get("arguments"))) for f in functions]


# ---------------------------------------------------------------- running


def prepare_turns(trace: Trace, limit: int, counter: TokenCounter) -> Iterator[Turn]:
    """The first `limit` requests of `trace`, each with what the model should answer."""
    previous: Json | None = None
    for number, messages in enumerate(trace.turns()):
        if number >= limit:
            return
        body = request_body(messages, trace.tools, False, f"peers-{trace.name}")
        expected = expected_for(messages, trace.messages[len(messages)])
        everything = prompt_tokens(counter, body)
        fresh = everything - reused_tokens(counter, previous, body)
        plan = plan_text(messages)
        yield Turn(trace.name, number, encode(body), messages, trace.tools, expected, plan, everything, fresh)
        previous = body


@dataclass(slots=True)
class Harness:
    client: httpx.Client
    fake: FakeUpstream
    model: TraceModel

    def send(self, api_base: str, body: bytes, expected: Expected) -> Exchange:
        self.model.expect(expected)
        self.fake.requests.clear()
        started = time.perf_counter_ns()
        response = self.client.post(api_base + "/chat/completions", content=body, headers=HEADERS)
        elapsed = time.perf_counter_ns() - started
        prompts = tuple(r.body for r in self.fake.requests if r.path.endswith("/chat/completions") and r.body)
        self.fake.requests.clear()
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith("x-clawvm-")}
        stages = parse_header(response.headers.get(STAGES_HEADER, ""))
        return Exchange(response.status_code, elapsed, prompts, headers, answer_of(response), stages)


def answer_of(response: httpx.Response) -> Json | None:
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, LookupError, TypeError):
        return None
    return message if isinstance(message, dict) else None


def warmup_body(number: int) -> bytes:
    return encode(request_body([{"role": "user", "content": f"warm-up request {number}"}], [], False, "peers-warmup"))


def run_budget(
    harness: Harness, bases: dict[str, str], turns: Sequence[Turn], judge: Judge, warmup: int
) -> dict[str, Tally]:
    """Every turn to direct first, then to each other peer; warm-up requests first, not counted."""
    for number in range(warmup):
        body = warmup_body(number)  # each different: no peer may answer one from a cache
        for base in bases.values():
            harness.send(base, body, OK)
    tallies = {name: Tally() for name in bases}
    for turn in turns:
        if turn.number == 0:
            for tally in tallies.values():
                tally.previous = None
        direct = harness.send(bases["direct"], turn.body, turn.expected)
        judge.record(tallies["direct"], turn, direct, direct.elapsed_ns)
        for name, base in bases.items():
            if name != "direct":
                judge.record(tallies[name], turn, harness.send(base, turn.body, turn.expected), direct.elapsed_ns)
    return tallies


def run_compare(
    traces: Sequence[Trace],
    budgets: Sequence[int] = BUDGETS,
    peers: Sequence[str] = PEERS,
    *,
    turns: int = TURNS,
    warmup: int = WARMUP,
    root: Path = install.ROOT,
    knowledge: str = HONEST,
    first_byte_s: float = 0.0,
) -> CompareResult:
    """Replay the first `turns` requests of every trace through every peer at every budget, the
    fake model recalling with `knowledge` (HONEST by default; PERFECT is the upper bound) and
    answering after `first_byte_s` (0: at once; a real model thinks for seconds)."""
    names = ("direct", *(p for p in dict.fromkeys(peers) if p != "direct"))
    skipped = {p: f"not installed (python -m bench.peers.install {p})" for p in names if not available(p, root)}
    running = tuple(p for p in names if p not in skipped)
    counter = _counter()
    prepared = [t for trace in traces for t in prepare_turns(trace, turns, counter)]
    model = TraceModel(knowledge)
    fake = FakeUpstream(model, first_byte_delay=first_byte_s)
    labels = intents(load_labels())
    rows: list[PeerFigures] = []
    with serve(fake.app) as api_base, _client() as client, tempfile.TemporaryDirectory(prefix="clawvm-peers-") as tmp:
        harness = Harness(client, fake, model)
        for budget in budgets:
            with ExitStack() as stack:
                directory = Path(tmp) / str(budget)
                bases = {p: start_peer(p, stack, directory, Upstream(api_base), budget, root) for p in running}
                tallies = run_budget(harness, bases, prepared, Judge(counter, budget, labels), warmup)
            logged = logged_timings(directory / OURS / "clawvm.log")  # once its gateway stopped: every turn's
            rows += [figures(name, budget, tallies[name], logged if name == OURS else ()) for name in running]
    names_run = tuple(t.name for t in traces)
    return CompareResult(names_run, turns, tuple(budgets), running, tuple(rows), skipped, knowledge, first_byte_s)


def _counter() -> TokenCounter:
    """tiktoken reads its files from the directory `TIKTOKEN_CACHE_DIR` names in this process's
    environment, hence the write (as `python -m bench` does)."""
    prepare_offline(os.environ)
    return Tokenizers.from_env(os.environ).for_model(MODEL)


def _client() -> httpx.Client:
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    return httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S * 4, limits=limits)


# ---------------------------------------------------------------- the report


def bars(result: CompareResult, budget: int) -> Json:
    """The latency bars for our gateway at `budget`, judged like for like (one model call)."""
    ours, litellm = result.row(OURS, budget), result.row("litellm", budget)
    if ours is None:
        return {}
    judged: Json = {"median_over_direct_us": ours.like_for_like_median_us, "median_bar_us": MEDIAN_BAR_US}
    errors = _measurement_errors(ours)
    judged["median_bar_met"] = not errors and ours.like_for_like_median_us <= MEDIAN_BAR_US
    if litellm is not None:
        limit = round(litellm.like_for_like_median_us * LITELLM_SHARE_BAR, 1)
        errors += _measurement_errors(litellm)
        judged["litellm_bar_us"] = limit
        judged["litellm_bar_met"] = not errors and ours.like_for_like_median_us <= limit
    if errors:
        judged["measurement_errors"] = errors
    return judged


def _measurement_errors(row: PeerFigures) -> list[str]:
    """Why `row`'s like-for-like median is no measurement: no request answered, or an added
    median that is not a positive finite time (a median of no samples is 0.0; a negative added
    time is impossible). A bar judged from such a figure is not met."""
    if row.requests - row.errors <= 0:
        return [f"{row.peer}: nothing measured ({row.requests} requests, {row.errors} errors)"]
    median = row.like_for_like_median_us
    if not math.isfinite(median) or median <= 0:
        return [f"{row.peer}: like-for-like added median {median} µs is impossible"]
    return []


def format_compare(result: CompareResult) -> list[str]:
    lines = [
        f"peers side by side: the same requests, fake upstream (real next answers, {result.knowledge} recall, "
        f"{_pace(result.first_byte_s)}) and budget",
        f"  traces: {len(result.traces)}, first {result.turns_per_trace} requests of each; peers: "
        + ", ".join(result.peers),
    ]
    lines += [f"  {peer}: skipped, {why}" for peer, why in result.skipped.items()]
    for budget in result.budgets:
        lines += _budget_lines(result, budget)
    return lines


def _pace(first_byte_s: float) -> str:
    """How soon the fake model answers, in words."""
    return f"first byte after {first_byte_s * 1000:g} ms" if first_byte_s > 0 else "answering at once"


def _budget_lines(result: CompareResult, budget: int) -> list[str]:
    rows = [r for r in result.rows if r.budget == budget]
    head = f"  {'peer':<12}{'reqs':>5}{'err':>5}{'inval':>6}{'over':>6}{'rules':>6}{'plan':>5}"
    head += f"{'intent':>7}{'answer':>7}{'evid':>6}"
    head += f"{'recall':>7}{'tokens':>11}{'of all':>7}{'reuse':>7}{'added med':>11}{'p99':>10}{'1-call med':>11}"
    lines = [f"budget {budget}:", head]
    lines += [_row_line(r) for r in rows]
    lines += _ratio_lines(result, budget)
    lines += _bar_lines(result, budget)
    for row in rows:
        if row.stages_median_us:
            stages = ", ".join(f"{name} {spent:,.0f}" for name, spent in row.stages_median_us.items())
            lines.append(f"  {row.peer} stage medians, µs (complete, commit: the save; after: once answered): {stages}")
        if row.slowest_us and row.stages_median_us:  # the gateway's: with its stages
            slowest = "; ".join(f"{slow.request} {slow.added_us / 1000:,.1f} ms" for slow in row.slowest_us)
            lines.append(f"  {row.peer} slowest, like for like: {slowest}")
        lines += [f"    {row.peer}: {example}" for example in row.examples]
    return lines


def _row_line(r: PeerFigures) -> str:
    share = r.tokens_forwarded / r.tokens_everything if r.tokens_everything else 0.0
    over = f"{r.over_budget}" + (f"({r.declared_insufficient}d)" if r.declared_insufficient else "")
    return (
        f"  {r.peer:<12}{r.requests:>5}{r.errors:>5}{r.invalid:>6}{over:>6}{r.rule_faults:>6}{r.plan_faults:>5}"
        f"{r.intent_faults:>7}{r.answer_faults:>7}{r.evidence_faults:>6}{r.recalled:>7}{r.tokens_forwarded:>11}{share:>7.1%}{r.prefix_reuse:>7.1%}"
        f"{r.added_median_us:>9.0f}µs{r.added_p99_us:>8.0f}µs{r.like_for_like_median_us:>9.0f}µs"
    )


def _ratio_lines(result: CompareResult, budget: int) -> list[str]:
    ours = result.row(OURS, budget)
    if ours is None:
        return []
    lines = [f"  {OURS} against each (ours / theirs):"]
    for other in (r for r in result.rows if r.budget == budget and r.peer != OURS):
        tokens = _ratio(ours.tokens_forwarded, other.tokens_forwarded)
        latency = _ratio(ours.like_for_like_median_us, other.like_for_like_median_us) if other.peer != "direct" else "—"
        openai = _ratio(ours.openai_cost, other.openai_cost)
        anthropic = _ratio(ours.anthropic_cost, other.anthropic_cost)
        lines.append(
            f"    vs {other.peer:<12} tokens {tokens}, cost {openai} (OpenAI-priced) {anthropic} (Anthropic-priced), "
            f"added latency {latency}, "
            f"faults {ours.faults} vs {other.faults}, invalid {ours.invalid} vs {other.invalid}, "
            f"over budget {ours.over_budget} vs {other.over_budget}"
        )
    return lines


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs > 0 else "n/a"


def _bar_lines(result: CompareResult, budget: int) -> list[str]:
    judged = bars(result, budget)
    if not judged:
        return []
    ours = result.row(OURS, budget)
    assert ours is not None
    lines = [
        f"  bar: {OURS} adds {judged['median_over_direct_us']:.0f} µs median over direct (like for like), "
        f"at most {MEDIAN_BAR_US:.0f} µs: {'met' if judged['median_bar_met'] else 'MISSED'}"
    ]
    if "litellm_bar_us" in judged:
        lines.append(
            f"  bar: at most a quarter of LiteLLM proxy's ({judged['litellm_bar_us']:.0f} µs): "
            f"{'met' if judged['litellm_bar_met'] else 'MISSED'}"
        )
    lines += [f"  measurement error: {error}" for error in judged.get("measurement_errors", [])]
    if not judged["median_bar_met"] or not judged.get("litellm_bar_met", True):
        lines.append("  why: " + _why(result, budget, ours))
    return lines


def _why(result: CompareResult, budget: int, ours: PeerFigures) -> str:
    """What the added time is made of: the HTTP hop (the passthrough's added time) and the
    gateway's own time as it reports it."""
    parts = []
    hop = result.row("passthrough", budget)
    if hop is not None:
        parts.append(f"an HTTP hop alone adds {hop.like_for_like_median_us:.0f} µs median (the passthrough)")
    if ours.overhead_header_median_us is not None:
        parts.append(f"the gateway reports {ours.overhead_header_median_us:.0f} µs median inside it")
    if ours.policy_header_median_us is not None:
        parts.append(f"of which {ours.policy_header_median_us:.0f} µs policy (ingest and assembly)")
    return "; ".join(parts) or "no breakdown available"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.peers.compare`: print the comparison (and write it as JSON with --json)."""
    parser = argparse.ArgumentParser(description="Peers side by side on the real traces.")
    parser.add_argument(
        "--traces", type=Path, default=None, help="trace directory (default: bench.traces, CLAWVM_TRACES)"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--turns", type=int, default=TURNS, help="requests replayed per trace (its first ones)")
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--knowledge",
        choices=KNOWLEDGE,
        default=HONEST,
        help="how the fake model recalls: honest (from its prompt; default) or perfect (upper bound)",
    )
    parser.add_argument(
        "--first-byte-ms",
        type=float,
        default=0.0,
        help="the fake model's think time before each answer (default 0: at once, the harshest case)",
    )
    args = parser.parse_args(argv)
    if args.first_byte_ms < 0 or not math.isfinite(args.first_byte_ms):
        parser.error("--first-byte-ms must be a finite number of milliseconds, 0 or more")
    directory = args.traces or traces_dir(os.environ)
    traces = load_traces(directory)
    if not traces:
        print(f"bench.peers.compare: no traces in {directory}", file=sys.stderr)
        return 2
    chosen = {"turns": args.turns, "warmup": args.warmup, "knowledge": args.knowledge}
    result = run_compare(traces, args.budgets, args.peers, **chosen, first_byte_s=args.first_byte_ms / 1000)
    print("\n".join(format_compare(result)), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
