"""Hypothesis strategies for the policy-core property tests, and the replay they share.

A generated session is an OpenAI `messages` array (wire dicts): an optional system prompt with
rule sentences, user turns with rules and preferences, assistant messages with 0..3 parallel
tool calls each answered by tool results of random size (JSON or text), plans as numbered
steps or TodoWrite calls. Large texts are built from a drawn seed and size (cheap to draw,
still shrinkable). `replay` sends the transcript the way an agent does: one request per
assistant reply (the prefix before it), plus the whole transcript when it ends on a request.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st

from gateway.upstream.tokens import Tokenizers, prepare_offline
from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import TokenBudget, resolve_budget
from policies.pages import Page
from policies.pagetable import PageTable
from policies.tenant import Budget, TenantPolicy
from policies.tokens import TokenCounter
from policies.turn import TurnPlan, plan_turn

Wire = dict[str, Any]

SYSTEM_OPENERS = (
    "You are a careful coding agent working in a small Python repository.",
    "You are a customer service agent for an airline.",
    "You help the user manage a personal library of books.",
)
SYSTEM_RULES = (
    "You must never push directly to the main branch.",
    "Always run the full test suite before you report success.",
    "Do not modify files outside the repository root.",
    "Only use the tools that are provided to you.",
    "You should ask for explicit confirmation before deleting any data.",
    "Never reveal the contents of the credentials file to anyone.",
    "Make sure every answer names the file it relies on.",
    "Each reservation can have at most five passengers.",
)
SYSTEM_FILLER = (
    "The project is a small web service with a command line client.",
    "The team works in short iterations and reviews every change.",
    "Background: the service stores its data in a local database.",
)
HEADINGS = ("## Tools", "# Policy", "## Domain basics")
USER_RULES = (
    "Never use tabs for indentation in this project.",
    "You must keep the public API of the parser stable.",
    "Do not touch the database schema under any condition.",
)
USER_PREFERENCES = (
    "I prefer short answers with code first.",
    "Please always reply in British English.",
    "Call me Sam from now on.",
    "Use pytest, not unittest.",
)
USER_ASKS = (
    "Can you fix the failing test in parser.py?",
    "Look at the logs and tell me what broke last night.",
    "What is the status of ticket #4521?",
    "Thanks, that looks right.",
    "ok",
    "Now refactor the loader module and explain the change.",
)
ASSISTANT_REPLIES = (
    "Done. The parser now handles empty input.",
    "I looked at the logs: the worker ran out of memory at 02:14.",
    "The ticket is still open and assigned to the storage team.",
    "",
)
PLAN_STEPS = (
    "Read the failing test and the parser module.",
    "Reproduce the failure locally.",
    "Fix the off-by-one error in the tokenizer.",
    "Run the whole test suite.",
    "Summarise the change for the user.",
)
TOOL_NAMES = ("read_file", "Bash", "edit_file", "grep", "get_reservation_details", "WebFetch")
WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "parser",
    "loader",
    "worker",
    "request",
    "value",
    "config",
    "session",
    "commit",
    "branch",
    "module",
    "handler",
    "result",
    "cache",
    "queue",
    "token",
    "page",
    "café",
    "naïve",
    "日本語",
    "données",
    "🚀",
    "Ωmega",
)
REMINDERS = (
    "Reminder: you must keep every answer under ten lines.",
    "The user switched to the staging environment.",
)
IMAGE_PART: Wire = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


# ---------------------------------------------------------------- deterministic bulk text


def bulk_text(seed: int, size: int) -> str:
    """Log-like lines (paths, numbers, the odd error) of about `size` characters."""
    rng = random.Random(seed)
    lines: list[str] = []
    used = 0
    while used < size:
        line = _log_line(rng)
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)[:size]


def _log_line(rng: random.Random) -> str:
    kind = rng.randrange(6)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 12)))
    if kind == 0:
        return f"src/{rng.choice(WORDS)}/mod_{rng.randrange(100)}.py:{rng.randrange(1, 900)}: {words}"
    if kind == 1:
        return f"ERROR: {words} failed with exit code {rng.randrange(1, 9)}"
    if kind == 2:
        return f"{rng.randrange(10**6)} {words} {rng.randrange(1000)}.{rng.randrange(100)}"
    return words


def bulk_json(seed: int, size: int, indent: bool) -> str:
    """A JSON array of records of about `size` characters."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    used = 2
    while used < size:
        record = {
            "id": rng.randrange(10**6),
            "name": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6))),
            "path": f"src/{rng.choice(WORDS)}.py",
            "status": rng.choice(("ok", "pending", "failed")),
        }
        records.append(record)
        used += len(json.dumps(record)) + 2
    return json.dumps(records, indent=2 if indent else None)


# ---------------------------------------------------------------- messages


@dataclass(slots=True)
class _Ids:
    """Call ids unique within one transcript."""

    next: int = 0

    def take(self) -> str:
        self.next += 1
        return f"call_{self.next:04d}"


@st.composite
def system_prompts(draw: st.DrawFn) -> Wire:
    parts = [draw(st.sampled_from(SYSTEM_OPENERS))]
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            parts.append("\n" + draw(st.sampled_from(HEADINGS)))
        picks = draw(st.lists(st.sampled_from(SYSTEM_RULES + SYSTEM_FILLER), min_size=1, max_size=4))
        parts.extend(f"- {p}" if draw(st.booleans()) else p for p in picks)
    if draw(st.booleans()):
        parts.append(bulk_text(draw(st.integers(0, 999)), draw(st.integers(0, 3000))))
    role = draw(st.sampled_from(("system", "system", "developer")))
    return {"role": role, "content": "\n".join(parts)}


@st.composite
def user_messages(draw: st.DrawFn, turn: int, images: bool = False) -> Wire:
    pool = USER_ASKS + USER_RULES + USER_PREFERENCES
    sentences = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
    text = " ".join(sentences)
    if draw(st.integers(0, 4)) == 0:
        text += "\n\n" + bulk_text(draw(st.integers(0, 999)), draw(st.integers(100, 4000)))
    if draw(st.booleans()):
        text += f" (turn {turn})"
    message: Wire = {"role": "user", "content": text}
    if draw(st.integers(0, 5)) == 0:
        message["content"] = [{"type": "text", "text": text}]
    if images and draw(st.integers(0, 2)) == 0:
        message["content"] = [{"type": "text", "text": text}, IMAGE_PART]
    if draw(st.integers(0, 7)) == 0:
        message["name"] = "sam"
    return message


@st.composite
def arguments(draw: st.DrawFn, name: str) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return "ls -la src && cat setup.cfg"  # not JSON: passed through as given
    if kind == 1:
        return "{}"
    if kind == 2:
        return json.dumps({"content": bulk_text(draw(st.integers(0, 999)), draw(st.integers(300, 2000)))})
    key = "command" if name == "Bash" else "path"
    return json.dumps({key: f"src/{draw(st.sampled_from(WORDS))}.py", "limit": draw(st.integers(1, 500))})


@st.composite
def tool_results(draw: st.DrawFn, call_id: str) -> Wire:
    kind = draw(st.integers(0, 4))
    seed, size = draw(st.integers(0, 9999)), draw(st.integers(0, 6000))
    if kind == 0:
        content = bulk_json(seed, size, indent=draw(st.booleans()))
    elif kind == 1:
        content = "" if draw(st.booleans()) else "File written."
    else:
        content = bulk_text(seed, size)
    message: Wire = {"role": "tool", "tool_call_id": call_id, "content": content}
    if draw(st.integers(0, 5)) == 0:
        message["content"] = [{"type": "text", "text": content}]
    if draw(st.integers(0, 5)) == 0:
        message["name"] = "tool_output"
    return message


def todo_call(call_id: str, steps: Sequence[str], active: int) -> Wire:
    todos = [
        {"content": s, "status": "completed" if i < active else "in_progress" if i == active else "pending"}
        for i, s in enumerate(steps)
    ]
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "TodoWrite", "arguments": json.dumps({"todos": todos})},
    }


@st.composite
def tool_rounds(draw: st.DrawFn, ids: _Ids) -> list[Wire]:
    """An assistant message with 1..3 parallel calls, then their results in call order."""
    calls: list[Wire] = []
    for _ in range(draw(st.integers(1, 3))):
        call_id = ids.take()
        if draw(st.integers(0, 6)) == 0:
            steps = draw(st.lists(st.sampled_from(PLAN_STEPS), min_size=3, max_size=5, unique=True))
            calls.append(todo_call(call_id, steps, draw(st.integers(0, len(steps) - 1))))
            continue
        name = draw(st.sampled_from(TOOL_NAMES))
        function = {"name": name, "arguments": draw(arguments(name))}
        calls.append({"id": call_id, "type": "function", "function": function})
    content = draw(st.sampled_from((None, None, "Let me check.", "")))
    assistant: Wire = {"role": "assistant", "content": content, "tool_calls": calls}
    results = [draw(tool_results(c["id"])) for c in calls]
    return [assistant, *results]


@st.composite
def assistant_texts(draw: st.DrawFn) -> Wire:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        steps = draw(st.lists(st.sampled_from(PLAN_STEPS), min_size=3, max_size=5, unique=True))
        header = draw(st.sampled_from(("Plan:", "I will:", "## Plan", "Next steps:")))
        text = "\n".join([header, *(f"{i}. {s}" for i, s in enumerate(steps, 1))])
    elif kind == 1:
        text = bulk_text(draw(st.integers(0, 999)), draw(st.integers(200, 3000)))
    else:
        text = draw(st.sampled_from(ASSISTANT_REPLIES))
    return {"role": "assistant", "content": text}


@st.composite
def transcripts(draw: st.DrawFn, max_rounds: int = 5, images: bool = False) -> list[Wire]:
    """A valid `messages` array (it may end on the model's reply; `requests` cuts before it).
    `images` adds image parts to some user messages."""
    ids = _Ids()
    messages: list[Wire] = []
    if draw(st.integers(0, 3)) > 0:
        messages.append(draw(system_prompts()))
    rounds = draw(st.integers(1, max_rounds))
    for turn in range(rounds):
        if turn and draw(st.integers(0, 6)) == 0:
            messages.append({"role": "system", "content": draw(st.sampled_from(REMINDERS))})
        messages.append(draw(user_messages(turn, images)))
        for _ in range(draw(st.integers(0, 3))):
            messages.extend(draw(tool_rounds(ids)) if draw(st.integers(0, 2)) else [draw(assistant_texts())])
        if turn < rounds - 1 and draw(st.booleans()):
            messages.append(draw(assistant_texts()))
    return messages


@st.composite
def budgets(draw: st.DrawFn) -> TokenBudget:
    """Tiny to huge budgets, against a known model window."""
    tokens = draw(st.one_of(st.integers(0, 400), st.integers(400, 6000), st.integers(6000, 400_000)))
    window = draw(st.sampled_from((16_384, 128_000, 1_000_000)))
    tools = draw(st.sampled_from((0, 0, 150)))
    return resolve_budget(Budget(max_prompt_tokens=tokens), window, "model_map", tools)


@dataclass(frozen=True, slots=True)
class Session:
    wire: list[Wire]
    budget: TokenBudget


@st.composite
def sessions(draw: st.DrawFn, max_rounds: int = 5, images: bool = False) -> Session:
    return Session(draw(transcripts(max_rounds, images)), draw(budgets()))


# ---------------------------------------------------------------- replay


def requests(wire: Sequence[Wire]) -> list[list[Wire]]:
    """What the agent sends: the prefix before each assistant message, then the whole transcript."""
    out = [list(wire[:i]) for i, m in enumerate(wire) if m["role"] == "assistant" and i > 0]
    if wire and wire[-1]["role"] != "assistant":
        out.append(list(wire))
    return out


@dataclass(frozen=True, slots=True)
class Turn:
    request: list[Wire]
    plan: TurnPlan
    output: list[Wire]
    pages_before: dict[str, Page]
    pages_after: dict[str, Page]
    order: tuple[str, ...]  # the table's message pages after the turn


@dataclass(slots=True)
class Replay:
    table: PageTable
    turns: list[Turn] = field(default_factory=list)


def replay(
    session: Session,
    counter: TokenCounter,
    policy: TenantPolicy | None = None,
    table: PageTable | None = None,
) -> Replay:
    """Plan every request of `session` through one page table."""
    result = Replay(table if table is not None else PageTable("tenant", "session", "project"))
    for request in requests(session.wire):
        before = dict(result.table.pages)
        plan = plan_turn(result.table, parse_messages(request), policy or TenantPolicy(), counter, session.budget)
        after = dict(result.table.pages)
        result.turns.append(Turn(request, plan, to_wire(plan.messages), before, after, tuple(result.table.order)))
    return result


def newest_turn_of(request: Sequence[Wire]) -> list[Wire]:
    """The newest turn as the design defines it: what follows the model's last message (its
    tool-call message included); with no assistant message yet, the last user message on.
    A request that ends on the model's own text (a prefill) keeps that message."""
    for index in range(len(request) - 1, -1, -1):
        if request[index]["role"] == "assistant":
            last = request[index].get("tool_calls") or index == len(request) - 1
            return list(request[index:] if last else request[index + 1 :])
    users = [i for i, m in enumerate(request) if m["role"] == "user"]
    return list(request[users[-1] :] if users else request[-1:])


@dataclass(slots=True)
class RecordingCounter:
    """A TokenCounter wrapper that records every text it is asked to count."""

    inner: TokenCounter
    seen: list[str] = field(default_factory=list)

    def count(self, text: str) -> int:
        self.seen.append(text)
        return self.inner.count(text)

    def take(self) -> list[str]:
        texts, self.seen = self.seen, []
        return texts


def tiktoken_counter(encoding: str = "o200k_base") -> TokenCounter:
    """A real tiktoken counter, loaded offline from litellm's bundled files.

    The environment is changed only while the encoding loads (tiktoken reads it then)."""
    wanted = dict(os.environ)
    prepare_offline(wanted)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("TIKTOKEN_CACHE_DIR", "LITELLM_LOCAL_MODEL_COST_MAP", "HF_HUB_OFFLINE"):
            patch.setenv(key, wanted[key])
        return Tokenizers.from_env(os.environ).for_encoding(encoding)


# ---------------------------------------------------------------- reading an assembled prompt

SPAN_STUB = re.compile(r"\[clawvm: (\d+) earlier messages paged out")
RETAINED_STATE = "[clawvm retained state"


def content_text(message: Wire) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p.get("text"), str))
    return content or ""


def span_ids(message: Wire, order: Sequence[str]) -> list[str] | None:
    """The page ids a span stub stands for (its count checked against them), its range of older
    pages expanded through the transcript's `order`; None for any other message."""
    text = content_text(message)
    match = SPAN_STUB.match(text)
    if message["role"] != "user" or match is None:
        return None
    ids: list[str] = []
    for line in text.split("\n")[1:]:
        first, _, last = line.split(" ", 1)[0].partition("..")
        ids.extend(order[order.index(first) : order.index(last) + 1] if last else [first])
    assert int(match.group(1)) == len(ids), f"a span stub miscounts its entries: {text[:200]!r}"
    return ids


def is_retained(message: Wire) -> bool:
    return message["role"] == "system" and content_text(message).startswith(RETAINED_STATE)


def aligned(request: Sequence[Wire], output: Sequence[Wire], order: Sequence[str]) -> list[tuple[int, Wire]]:
    """Pair each output message that stands for one request message with that message's index.

    Span stubs and the retained-state message stand for no single message; every other output
    message stands for the next request message not listed in a span stub."""
    folded = {page_id for m in output for page_id in span_ids(m, order) or ()}
    remaining = iter(i for i, page_id in enumerate(order) if page_id not in folded)
    pairs = []
    for message in output:
        if span_ids(message, order) is None and not is_retained(message):
            pairs.append((next(remaining), message))
    assert next(remaining, None) is None, "a request message is neither rendered nor folded into a span"
    assert len(order) == len(request)
    return pairs
