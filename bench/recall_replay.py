"""Do pointers resolve in practice? Real traces replayed under a tight budget, with a fake model
that recalls whatever it needs.

For every request of a trace, the fake model (the upstream) looks at the real next assistant
message of the trace and at the identifiers it uses (order ids, paths, numbers). Any identifier
that the prompt it received does not show, but that an earlier message of the transcript holds,
must come back through the gateway's recall tool. By default (`honest`) the fake asks the way a
diligent model would, from its prompt alone (`bench.peers.honest`: the page ids and ranges it
sees near what it misses, a search where the tool takes one); with `perfect` knowledge (an upper
bound, never the headline) it calls `clawvm_recall` with the id of the page that held each
identifier, computed from the transcript as the gateway does. It checks the tool results; the
harness counts identifiers needed, recovered and lost, and recalls made.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.checks import message_text
from bench.traces import Trace
from gateway.wire.chat_json import parse_messages
from policies.pagetable import content_digest, make_page_id, tenant_tag
from policies.represent import identifiers

RECALL = "clawvm_recall"
TENANT = "default"  # the gateway with no config file serves one tenant of this name


@dataclass
class Tally:
    needed: int = 0
    recovered: int = 0
    lost: list[tuple[int, str]] = field(default_factory=list)  # (request: messages sent, identifier)
    recalls: int = 0


class RecallingModel:
    """The fake upstream's responder: recall what the next real answer needs, then answer.
    `knowledge`: "honest" (from the prompt alone, the default) or "perfect" (the upper bound)."""

    def __init__(self, trace: Trace, knowledge: str = "honest") -> None:
        self.trace = trace
        self.knowledge = knowledge
        self.tally = Tally()
        self._wanted: dict[str, str] = {}  # identifier -> page id, for the request in flight
        self._turn = 0

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        if last.get("role") == "tool" and str(last.get("content", "")).startswith("[recall:"):
            return self._check(body)
        return self._ask(body)

    def _ask(self, body: dict[str, Any]) -> dict[str, Any]:
        original = self._original(body)
        if original is None:
            return {"content": "ok"}
        turn, messages = original
        self._turn = turn
        seen = _visible(body["messages"])
        wanted = [i for i in identifiers(message_text(self.trace.messages[turn]), 40) if i not in seen]
        needed = holders(messages, wanted)
        self._wanted = needed
        if not needed:
            return {"content": "ok"}
        self.tally.needed += len(needed)
        if self.knowledge == "perfect":
            calls = [_recall(f"recall_{turn}_{n}", page, ident) for n, (ident, page) in enumerate(needed.items())]
        else:
            calls = self._honest_calls(turn, list(needed), body)
        if not calls:  # nothing in view to ask for: what it needed is lost
            self.tally.lost += [(turn, ident) for ident in needed]
            self._wanted = {}
            return {"content": "ok"}
        self.tally.recalls += len(calls)
        return {"tool_calls": calls}

    def _honest_calls(self, turn: int, wanted: list[str], body: dict[str, Any]) -> list[dict[str, Any]]:
        from bench.peers.honest import offered_tool, recall_arguments

        tool = offered_tool(body, RECALL)
        arguments = recall_arguments(wanted, body["messages"], tool) if tool is not None else []
        return [
            {"id": f"recall_{turn}_{n}", "type": "function", "function": {"name": RECALL, "arguments": json.dumps(a)}}
            for n, a in enumerate(arguments)
        ]

    def _check(self, body: dict[str, Any]) -> dict[str, Any]:
        recalled = " ".join(str(m.get("content", "")) for m in body["messages"] if m.get("role") == "tool")
        for ident in self._wanted:
            if ident in recalled:
                self.tally.recovered += 1
            else:
                self.tally.lost.append((self._turn, ident))
        self._wanted = {}
        return {"content": "ok"}

    def _original(self, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]] | None:
        """Which request of the trace this is: the user tag carries the turn number."""
        tag = str(body.get("user", ""))
        if "#" not in tag:
            return None
        turn = int(tag.rsplit("#", 1)[1])
        return turn, self.trace.messages[:turn]


def _recall(call_id: str, page_id: str, query: str) -> dict[str, Any]:
    arguments = json.dumps({"page_ids": [page_id], "query": query})
    return {"id": call_id, "type": "function", "function": {"name": RECALL, "arguments": arguments}}


def _visible(messages: list[dict[str, Any]]) -> str:
    parts = [message_text(m) for m in messages]
    parts += [c["function"].get("arguments") or "" for m in messages for c in m.get("tool_calls") or []]
    return "\n".join(parts)


def holders(transcript: list[dict[str, Any]], wanted: list[str]) -> dict[str, str]:
    """For each identifier an earlier message's text holds, the page id of the latest such message
    (content-addressed: the id the gateway gives that message's page for TENANT). Only the
    perfect-knowledge model (an upper bound) recalls by these ids."""
    parsed = list(reversed(parse_messages(list(transcript))))
    tag = tenant_tag(TENANT)
    found: dict[str, str] = {}
    for ident in wanted:
        holder = next((m for m in parsed if ident in m.text), None)
        if holder is not None:
            found[ident] = make_page_id(tag, content_digest(holder))
    return found


@dataclass(frozen=True)
class RecallRow:
    trace: str
    needed: int
    recovered: int
    lost: tuple[tuple[int, str], ...]
    recalls: int
    insufficient_turns: tuple[int, ...]
    wire: str = "chat"
    requests: int = 0  # upstream requests the model received, recall rounds included
    invalid: int = 0  # of those, the ones an upstream would refuse (`bench.peers.compare.request_errors`)


def replay(
    client: Any, url: str, trace: Trace, session: str, project: str | None = None, wire: str = "chat"
) -> set[int]:
    """Send every request of `trace` through the gateway at `url` in `wire`'s format (as
    `project` when given: a project of its own carries no other session's state); returns the
    requests (by message count) the gateway reported physically insufficient. The end user is
    the request's tag (`t#` and its message count), which the fake model reads as the turn."""
    from bench.latency import HEADERS, PATHS, encode, request_body

    insufficient: set[int] = set()
    headers = {**HEADERS, "x-clawvm-session": session, **({"x-clawvm-project": project} if project else {})}
    for messages in trace.turns():
        body = request_body(messages, trace.tools or [], False, f"t#{len(messages)}", wire)
        response = client.post(url + PATHS[wire], content=encode(body), headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"{trace.name} request {len(messages)}: {response.status_code} {response.text[:200]}")
        if "x-clawvm-insufficient" in response.headers:
            insufficient.add(len(messages))
    return insufficient


def run_recall(
    traces: list[Trace], budget: int, knowledge: str = "honest", wires: Sequence[str] = ("chat",)
) -> list[RecallRow]:
    """The recall replay for every trace in each wire format of `wires`: the bench's agent speaks
    the format, the fake upstream answers in it (`bench.fake_apis`, the model's chat answer
    translated), the fake model recalling with `knowledge` ("honest" by default, "perfect" for
    the upper bound). Per format one embedded store; per trace a fresh gateway."""
    import tempfile
    from pathlib import Path

    import httpx

    from bench.peers.compare import request_errors
    from bench.wire_replay import Fakes, gateway
    from gateway.store.embedded import EmbeddedRedis

    rows = []
    for wire in wires:
        with tempfile.TemporaryDirectory() as data, EmbeddedRedis(Path(data)) as store:
            for trace in traces:
                model = RecallingModel(trace, knowledge)
                fakes = Fakes.of(model)
                with gateway(fakes, budget, store) as url, httpx.Client(timeout=60, trust_env=False) as client:
                    insufficient = replay(client, url, trace, f"recall-{trace.name}", wire=wire)
                prompts = fakes.prompts(wire)
                invalid = sum(1 for prompt in prompts if request_errors(prompt))
                t = model.tally
                rows.append(
                    RecallRow(
                        trace.name,
                        t.needed,
                        t.recovered,
                        tuple(t.lost),
                        t.recalls,
                        tuple(sorted(insufficient)),
                        wire,
                        len(prompts),
                        invalid,
                    )
                )
    return rows


def format_recall(rows: list[RecallRow], budget: int) -> list[str]:
    lines = [f"recall replay at budget {budget}: identifiers the next real answer needs but cannot see"]
    width = max((len(r.trace) for r in rows), default=0)
    wires = list(dict.fromkeys(r.wire for r in rows))
    for wire in wires:
        lines.append(f" {wire}:")
        for r in (r for r in rows if r.wire == wire):
            on_insufficient = all(t in r.insufficient_turns for t, _ in r.lost)
            lost = (
                f"  lost {len(r.lost)} ({'all on' if on_insufficient else 'NOT all on'} insufficient turns)"
                if r.lost
                else ""
            )
            lines.append(
                f"  {r.trace:<{width}}  needed {r.needed:3d}  recovered {r.recovered:3d}  recalls {r.recalls:3d}{lost}"
            )
    for wire, total in summarise(rows).items():
        lines.append(
            f"  {wire}: {total['recovered']} of {total['needed']} recovered, {total['recalls']} recalls, "
            f"{total['invalid']} invalid of {total['requests']} upstream requests"
        )
    return lines


def summarise(rows: Sequence[RecallRow]) -> dict[str, dict[str, int]]:
    """Per wire format, in order of appearance: identifiers needed, recovered and lost, recalls
    made, upstream requests and invalid ones, over every trace."""
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        total = totals.setdefault(
            r.wire, {"needed": 0, "recovered": 0, "lost": 0, "recalls": 0, "requests": 0, "invalid": 0}
        )
        for key, value in (
            ("needed", r.needed),
            ("recovered", r.recovered),
            ("lost", len(r.lost)),
            ("recalls", r.recalls),
            ("requests", r.requests),
            ("invalid", r.invalid),
        ):
            total[key] += value
    return totals
