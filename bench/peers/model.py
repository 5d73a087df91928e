"""The fake model behind every peer: it answers with the trace's real next assistant message.

Before each request the harness tells the model what comes next (`Expected`): the real answer,
and the evidence it needs, i.e. the identifiers of that answer (its text and its tool calls'
arguments) which an earlier message of the transcript holds. Knowing what it wants to say is the
task, not lookahead. When the prompt the model receives lacks some of that evidence and offers a
recall tool, the model uses it once, the way a model that noticed the gap would, then answers:

- `clawvm_recall` (the gateway's), by default (`HONEST`): from its prompt alone, the page ids and
  ranges it sees near what it misses, or a search where the tool takes one (`bench.peers.honest`);
- `clawvm_recall` with `PERFECT` knowledge, an upper bound only: `Expected.needs` also carries
  the page id of the latest message holding each identifier, computed the way the gateway does
  (content-addressed), and the model recalls exactly those pages whether its prompt shows their
  ids or not. No real model can do that; the bench reports it beside the honest figures so the
  gap between them is visible, never as the headline;
- `headroom_retrieve` (Headroom's): one call per compression marker (`hash=...`) in the prompt.

Everything the model does is cheap and decided from `Expected` (prepared outside any timed
region) and the prompt it sees; what it saw is judged later (`bench.peers.compare`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.checks import message_text
from bench.peers.honest import offered_tool, recall_arguments
from bench.recall_replay import RECALL, holders
from gateway.wire.recall import MAX_IDS_PER_CALL, QUERY_OR
from policies.represent import identifiers

Json = dict[str, Any]
HEADROOM_RETRIEVE = "headroom_retrieve"
CALL_PREFIX = "peers_recall_"
MAX_IDENTIFIERS = 40
MAX_HASHES = 8
HASH_MARKER = re.compile(r"hash=([0-9A-Za-z_-]{4,})")
HONEST = "honest"  # recall from what the prompt shows (the default of every bench)
PERFECT = "perfect"  # recall with perfect knowledge of the gateway's page ids (an upper bound)
KNOWLEDGE = (HONEST, PERFECT)


@dataclass(frozen=True, slots=True)
class Expected:
    answer: Json  # the assistant message to answer with: content and tool_calls
    # identifier -> page id of the message holding it; the honest model reads only the identifiers
    needs: dict[str, str] = field(default_factory=dict)


OK = Expected({"content": "ok"})


def expected_for(transcript: Sequence[Json], following: Json) -> Expected:
    """What the model should answer after `transcript`: `following`, the trace's real next message."""
    answer: Json = {"content": message_text(following) or None}
    if following.get("tool_calls"):
        answer["tool_calls"] = following["tool_calls"]
    used = identifiers(visible([following]), MAX_IDENTIFIERS)  # its text and its calls' arguments
    return Expected(answer, holders(transcript, used))


def visible(messages: Sequence[Json]) -> str:
    """Everything of a prompt the model can read: texts and tool-call arguments."""
    parts = [message_text(m) for m in messages]
    parts += [str(c.get("function", {}).get("arguments") or "") for m in messages for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def missing(needs: dict[str, str], messages: Sequence[Json]) -> dict[str, str]:
    seen = visible(messages)
    return {ident: page for ident, page in needs.items() if ident not in seen}


def offered(body: Json) -> set[str]:
    names = {str((t.get("function") or {}).get("name")) for t in body.get("tools") or [] if isinstance(t, dict)}
    return names & {RECALL, HEADROOM_RETRIEVE}


def answers_recall(messages: Sequence[Json]) -> bool:
    """The prompt ends with the results of the recall calls this model made."""
    last = messages[-1] if messages else {}
    return last.get("role") == "tool" and str(last.get("tool_call_id", "")).startswith(CALL_PREFIX)


def recall_calls(tool: str, gaps: dict[str, str], body: Json, knowledge: str = HONEST) -> list[Json]:
    messages = body.get("messages") or []
    if tool == RECALL:
        if knowledge == PERFECT:
            return [_call(n, RECALL, arguments) for n, arguments in enumerate(page_requests(gaps))]
        schema = offered_tool(body, RECALL)
        requests = recall_arguments(list(gaps), messages, schema) if schema is not None else []
        return [_call(n, RECALL, arguments) for n, arguments in enumerate(requests)]
    hashes = list(dict.fromkeys(HASH_MARKER.findall(visible(messages))))[:MAX_HASHES]
    return [_call(n, HEADROOM_RETRIEVE, {"hash": value}) for n, value in enumerate(hashes)]


def page_requests(gaps: dict[str, str]) -> list[Json]:
    """The pages holding missing identifiers, in first-gap order, as few calls as the tool allows
    (MAX_IDS_PER_CALL pages each), each asking for the lines that hold those identifiers."""
    by_page: dict[str, list[str]] = {}
    for ident, page in gaps.items():
        by_page.setdefault(page, []).append(ident)
    pages = list(by_page)
    groups = [pages[at : at + MAX_IDS_PER_CALL] for at in range(0, len(pages), MAX_IDS_PER_CALL)]
    return [{"page_ids": group, "query": QUERY_OR.join(i for p in group for i in by_page[p])} for group in groups]


def _call(number: int, name: str, arguments: Json) -> Json:
    function = {"name": name, "arguments": json.dumps(arguments, sort_keys=True)}
    return {"id": f"{CALL_PREFIX}{number}", "type": "function", "function": function}


class TraceModel:
    """The responder of `bench.fake_upstream.FakeUpstream`; `expect` before each agent request.
    `knowledge`: HONEST (the default) or PERFECT (the upper bound)."""

    def __init__(self, knowledge: str = HONEST) -> None:
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, not {knowledge!r}")
        self.knowledge = knowledge
        self.expected = OK

    def expect(self, expected: Expected) -> None:
        self.expected = expected

    def __call__(self, body: Json) -> Json:
        messages = body.get("messages") or []
        tools = sorted(offered(body))
        if answers_recall(messages) or not tools:
            return self.expected.answer
        gaps = missing(self.expected.needs, messages)
        calls = recall_calls(tools[0], gaps, body, self.knowledge) if gaps else []
        return {"content": None, "tool_calls": calls} if calls else self.expected.answer
