"""Replay real traces turn by turn through a running gateway over HTTP, as the agent would.

For every request the agent sent, the harness records what the fake upstream (the model)
received and checks it: valid tool pairing, within budget (or reported insufficient), and
every system-prompt rule present at structured fidelity or better.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from bench.checks import missing_rules, pairing_errors
from bench.fake_upstream import FakeUpstream
from bench.traces import Trace
from gateway.upstream.tokens import Tokenizers, count_tools
from gateway.wire.chat_tokens import count_messages

MODEL = "gpt-4o"


@dataclass(frozen=True)
class TurnRecord:
    trace: str
    turn: int
    status: int
    budget: int
    prompt_tokens: int  # what the gateway reported
    counted_tokens: int  # what we count in the forwarded request
    insufficient: bool
    pairing_errors: tuple[str, ...]
    missing_rules: tuple[str, ...]
    overhead_us: int
    policy_us: int
    original_tokens: int  # tokens of the transcript as the agent sent it

    @property
    def over_budget(self) -> bool:
        return self.counted_tokens > self.budget and not self.insufficient


def replay(
    client: httpx.Client, url: str, key: str, fake: FakeUpstream, trace: Trace, tokenizers: Tokenizers
) -> list[TurnRecord]:
    counter = tokenizers.for_model(MODEL)
    records = []
    for turn, messages in enumerate(trace.turns()):
        body = {"model": MODEL, "messages": messages, "tools": trace.tools or None, "user": f"replay-{trace.name}"}
        if not trace.tools:
            del body["tools"]
        before = len(fake.requests)
        response = client.post(url + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
        forwarded = fake.requests[-1].body if len(fake.requests) > before else None
        records.append(_record(trace, turn, response, forwarded, messages, counter))
    return records


def _record(
    trace: Trace, turn: int, response: httpx.Response, forwarded: dict | None, messages: list, counter
) -> TurnRecord:
    sent = (forwarded or {}).get("messages") or []
    tools = count_tools(counter, (forwarded or {}).get("tools"))
    return TurnRecord(
        trace=trace.name,
        turn=turn,
        status=response.status_code,
        budget=int(response.headers.get("x-clawvm-budget", "0")),
        prompt_tokens=int(response.headers.get("x-clawvm-prompt-tokens", "0")),
        counted_tokens=count_messages(counter, sent) + tools if sent else 0,
        insufficient="x-clawvm-insufficient" in response.headers,
        pairing_errors=tuple(pairing_errors(sent)),
        missing_rules=tuple(missing_rules(messages, sent)),
        overhead_us=int(response.headers.get("x-clawvm-overhead-us", "0")),
        policy_us=int(response.headers.get("x-clawvm-policy-us", "0")),
        original_tokens=count_messages(counter, messages) + tools,
    )
