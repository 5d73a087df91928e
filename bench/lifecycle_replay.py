"""Replay real traces through the running gateway with the agent's own boundaries injected.

The harness plays the agent: it sends each trace's prefix turn by turn, and at one turn (a
third of the way in) it does to its own history what a harness does (`bench.harnesses`): a
compaction, a pruning or a reset. From then on it keeps sending its rewritten history plus
the trace's new messages, as the real agent would. On the first request after the boundary
it checks what the model saw (the fake upstream's record):

- every system-prompt rule, and every rule, preference and intent the user stated before the
  boundary, is in the prompt (whitespace aside): a miss is a post-compaction bootstrap fault;
- every sentence the user typed before it that `bench/data/intent_labels.tsv` labels as intent
  is there (at least 80% of its content words, `bench.intent_check`): each miss is a fault;
- the gateway reported the boundary (`x-clawvm-event`) and no post-compaction bootstrap or
  flush-miss fault (`x-clawvm-faults`);
- the request is valid (tool pairing) and within budget.

With a fake model (`bench.peers.model.TraceModel`, honest by default) it then goes on to the end
of the trace, the agent sending its rewritten history plus the trace's later messages, and checks
every later request too: intent sentences missing (each a fault), identifiers the real next
answer needs that the model neither saw nor got back through its recall (evidence faults), and
answers the agent got empty or altered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.checks import message_text, pairing_errors, system_rules
from bench.fake_upstream import FakeUpstream
from bench.harnesses import INJECTORS
from bench.intent_check import Label, missing_intents
from bench.latency import PATHS, request_body
from bench.peers.model import TraceModel, expected_for, missing
from bench.traces import Trace
from bench.wire_bodies import canonical_answer, chat_answer
from policies.classify import extract_facts
from policies.pages import PageType
from policies.transcript import Message

MODEL = "gpt-4o"
RESET_PROMPT = "Let's start over: summarise where the work stands and continue."
BOUNDARY_FAULTS = ("post_compaction_bootstrap", "flush_miss")
EXPECTED = {"prune_tool_results": "prune", "soft_trim": "prune", "reset": "reset"}  # else "compaction"


@dataclass(frozen=True)
class BoundaryRecord:
    trace: str
    injector: str
    turn: int
    status: int
    event: str  # what the gateway reported
    faults: str  # the x-clawvm-faults header
    missing: tuple[str, ...]  # rules and preferences the model did not see
    pairing_errors: tuple[str, ...]
    expected: str  # the event the gateway should report
    missing_intent: tuple[str, ...] = ()  # labelled intent sentences the model did not see
    later: Later | None = None  # every request from the boundary on, when a fake model answered

    @property
    def boundary_faults(self) -> list[str]:
        """Post-compaction bootstrap and flush-miss faults the gateway reported."""
        return [part for part in self.faults.replace(";", " ").split() if part.startswith(BOUNDARY_FAULTS)]

    @property
    def ok(self) -> bool:
        clean = self.status == 200 and not self.boundary_faults and not self.missing and not self.pairing_errors
        clean = clean and not self.missing_intent and not (self.later and self.later.faults)
        return clean and self.event == self.expected


@dataclass
class Later:
    """What the model saw from the boundary to the end of the trace."""

    requests: int = 0
    intent_faults: int = 0
    evidence_needed: int = 0
    evidence_faults: int = 0
    answer_faults: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def faults(self) -> int:
        return self.intent_faults + self.evidence_faults + self.answer_faults

    def note(self, text: str) -> None:
        if len(self.examples) < 3:
            self.examples.append(text)


def run(
    client: httpx.Client,
    url: str,
    fake: FakeUpstream,
    trace: Trace,
    injector: str,
    intent: Sequence[Label] = (),
    model: TraceModel | None = None,
    wire: str = "chat",
) -> BoundaryRecord | None:
    """Replay `trace` with `injector` applied a third of the way in; the record of the first
    request after the boundary (None for a trace too short to hold one). `intent`: the trace's
    labelled user sentences (`bench.intent_check`), checked in that request. With `model` (the fake
    upstream's responder), every later request to the end of the trace is checked too. `wire`: the
    format the agent speaks (`bench.wire_bodies`); `fake.requests` then holds what the model got
    as chat requests (`bench.wire_replay.ChatView`)."""
    turns = list(trace.turns())
    at = len(turns) // 3
    if at < 2:
        return None
    session = f"lifecycle-{trace.name}-{injector}"
    for prefix in turns[:at]:
        _expect(model, trace, prefix)
        _send(client, url, trace, session, prefix, wire)
    history = _inject(injector, turns[at - 1])
    after = history if injector == "reset" else [*history, *turns[at][len(turns[at - 1]) :]]
    expected = _expected(injector, turns[at - 1], history)
    sent = len(turns[at - 1]) if injector == "reset" else len(turns[at])  # trace messages the agent sent
    before = len(fake.requests)
    _expect(model, trace, turns[at - 1] if injector == "reset" else turns[at])
    response = _send(client, url, trace, session, after, wire)
    seen = fake.requests[before].body["messages"] if len(fake.requests) > before else []
    later = None
    if model is not None:
        later = Later()
        _judge(later, model, fake.requests[before:], response, trace, injector, sent, intent, wire)
        for turn in turns[at + 1 :]:
            before = len(fake.requests)
            model.expect(expected_for(turn, trace.messages[len(turn)]))
            answer = _send(client, url, trace, session, [*history, *turn[len(turns[at - 1]) :]], wire)
            _judge(later, model, fake.requests[before:], answer, trace, injector, len(turn), intent, wire)
    return BoundaryRecord(
        trace=trace.name,
        injector=injector,
        turn=at,
        status=response.status_code,
        event=response.headers.get("x-clawvm-event", ""),
        faults=response.headers.get("x-clawvm-faults", ""),
        missing=tuple(missing_state(turns[at - 1], seen)),
        pairing_errors=tuple(pairing_errors(seen)),
        expected=expected,
        missing_intent=tuple(missing_intents(intent, sent, seen)),
        later=later,
    )


def _expect(model: TraceModel | None, trace: Trace, sent: list[dict[str, Any]]) -> None:
    if model is not None:
        model.expect(expected_for(sent, trace.messages[len(sent)]))


def _judge(
    later: Later,
    model: TraceModel,
    requests: Sequence[Any],
    response: httpx.Response,
    trace: Trace,
    injector: str,
    sent: int,
    intent: Sequence[Label],
    wire: str = "chat",
) -> None:
    """One request after the boundary: its first prompt, the model's recall round trips, the answer."""
    from bench.peers.compare import altered, recovered

    later.requests += 1
    prompts = [r.body for r in requests if r.body]
    seen = prompts[0].get("messages") or [] if prompts else []
    said = missing_intents(intent, sent, seen)
    later.intent_faults += len(said)
    if said:
        later.note(f"{trace.name} ({injector}) request with {sent} messages: intent missing: {said[0][:70]}")
    gaps = missing(model.expected.needs, seen)
    lost = [i for i in gaps if i not in recovered(gaps, prompts)]
    later.evidence_needed += len(model.expected.needs)
    later.evidence_faults += len(lost)
    if lost:
        later.note(f"{trace.name} ({injector}) request with {sent} messages: evidence lost: {', '.join(lost[:3])}")
    expected, got = model.expected.answer, _answer(response, wire)
    if wire != "chat":  # a format that carries call arguments as objects keeps their values, not their spacing
        expected, got = canonical_answer(expected) or expected, canonical_answer(got)
    if altered(expected, got):
        later.answer_faults += 1
        later.note(f"{trace.name} ({injector}) request with {sent} messages: answer empty or altered")


def _expected(injector: str, original: list[dict[str, Any]], history: list[dict[str, Any]]) -> str:
    """The event the gateway should report: none when the injector changed nothing (no result
    long or old enough to prune); a reset of a transcript with no system prompt is, by the
    detector's rule (never guess a reset), a compaction."""
    if history == original:
        return ""
    if injector == "reset" and original[0].get("role") not in ("system", "developer"):
        return "compaction"
    return EXPECTED.get(injector, "compaction")


def missing_state(original: Sequence[dict[str, Any]], seen: Sequence[dict[str, Any]]) -> list[str]:
    """Rules (system and user), preferences and intents stated in `original` that `seen` does not hold."""
    text = " ".join(" ".join(message_text(m).split()) for m in seen)
    wanted = [*system_rules(original), *user_state(original)]
    return [w for w in dict.fromkeys(wanted) if " ".join(w.split()).rstrip("…").strip() not in text]


USER_STATE = (PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT)


def user_state(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The rules, preferences and intents the user stated in `messages`."""
    found: list[str] = []
    for message in messages:
        if message.get("role") == "user":
            facts = extract_facts(Message(role="user", text=message_text(message)))
            found.extend(f.text for f in facts if f.type in USER_STATE)
    return found


def _inject(name: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    injector = INJECTORS[name]
    return injector(history, RESET_PROMPT) if name == "reset" else injector(history)


def _answer(response: httpx.Response, wire: str) -> dict[str, Any] | None:
    """The assistant message the agent got, as a chat message."""
    try:
        return chat_answer(wire, response.json())
    except ValueError:
        return None


def _send(
    client: httpx.Client, url: str, trace: Trace, session: str, messages: list[dict[str, Any]], wire: str = "chat"
) -> httpx.Response:
    if wire != "chat":
        body = request_body(messages, trace.tools, False, session, wire)
        headers = {"x-clawvm-session": session, "anthropic-version": "2023-06-01"}
        return client.post(url + PATHS[wire], json=body, headers=headers)
    body = {"model": MODEL, "messages": messages}
    if trace.tools:
        body["tools"] = trace.tools
    return client.post(url + "/chat/completions", json=body, headers={"x-clawvm-session": session})
