"""Replay real traces through the running gateway with the agent's own boundaries injected.

The harness plays the agent: it sends each trace's prefix turn by turn, and at one turn (a
third of the way in) it does to its own history what a harness does (`bench.harnesses`): a
compaction, a pruning or a reset. From then on it keeps sending its rewritten history plus
the trace's new messages, as the real agent would. On the first request after the boundary
it checks what the model saw (the fake upstream's record):

- every system-prompt rule, and every rule and preference the user stated before the
  boundary, is in the prompt (whitespace aside): a miss is a post-compaction bootstrap fault;
- every sentence the user typed before it that `bench/data/intent_labels.tsv` labels as intent
  is there (at least 80% of its content words, `bench.intent`): each miss is a fault;
- the gateway reported the boundary (`x-clawvm-event`) and no post-compaction bootstrap or
  flush-miss fault (`x-clawvm-faults`);
- the request is valid (tool pairing) and within budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.checks import message_text, pairing_errors, system_rules
from bench.fake_upstream import FakeUpstream
from bench.harnesses import INJECTORS
from bench.intent import Label, missing_intents
from bench.traces import Trace
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

    @property
    def boundary_faults(self) -> list[str]:
        """Post-compaction bootstrap and flush-miss faults the gateway reported."""
        return [part for part in self.faults.replace(";", " ").split() if part.startswith(BOUNDARY_FAULTS)]

    @property
    def ok(self) -> bool:
        clean = self.status == 200 and not self.boundary_faults and not self.missing and not self.pairing_errors
        clean = clean and not self.missing_intent
        return clean and self.event == self.expected


def run(
    client: httpx.Client,
    url: str,
    fake: FakeUpstream,
    trace: Trace,
    injector: str,
    intent: Sequence[Label] = (),
) -> BoundaryRecord | None:
    """Replay `trace` with `injector` applied a third of the way in; the record of the first
    request after the boundary (None for a trace too short to hold one). `intent`: the trace's
    labelled user sentences (`bench.intent`), checked in that request."""
    turns = list(trace.turns())
    at = len(turns) // 3
    if at < 2:
        return None
    session = f"lifecycle-{trace.name}-{injector}"
    for prefix in turns[:at]:
        _send(client, url, trace, session, prefix)
    history = _inject(injector, turns[at - 1])
    after = history if injector == "reset" else [*history, *turns[at][len(turns[at - 1]) :]]
    expected = _expected(injector, turns[at - 1], history)
    sent = len(turns[at - 1]) if injector == "reset" else len(turns[at])  # trace messages the agent sent
    before = len(fake.requests)
    response = _send(client, url, trace, session, after)
    seen = fake.requests[-1].body["messages"] if len(fake.requests) > before else []
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
    )


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
    """Rules (system and user) and preferences stated in `original` that `seen` does not hold."""
    text = " ".join(" ".join(message_text(m).split()) for m in seen)
    wanted = [*system_rules(original), *user_state(original)]
    return [w for w in dict.fromkeys(wanted) if " ".join(w.split()).rstrip("…").strip() not in text]


def user_state(messages: Sequence[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for message in messages:
        if message.get("role") == "user":
            facts = extract_facts(Message(role="user", text=message_text(message)))
            found.extend(f.text for f in facts if f.type in (PageType.CONSTRAINT, PageType.PREFERENCE))
    return found


def _inject(name: str, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    injector = INJECTORS[name]
    return injector(history, RESET_PROMPT) if name == "reset" else injector(history)


def _send(client: httpx.Client, url: str, trace: Trace, session: str, messages: list[dict[str, Any]]) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if trace.tools:
        body["tools"] = trace.tools
    return client.post(url + "/chat/completions", json=body, headers={"x-clawvm-session": session})
