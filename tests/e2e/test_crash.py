"""The gateway killed with SIGKILL in the middle of a session's write-backs, then restarted on
the same Redis: every write-back batch is whole or absent, every stored table loads, and the
session goes on, its rules still in the forwarded prompt."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.fake_upstream import Running
from gateway.store.journal import WritebackJournal
from gateway.store.session_state import SessionState
from gateway.store.store import Keys, RedisStore, project_scope, session_scope
from gateway.store.tables import page_ids
from policies.pagetable import PageTable
from tests.e2e.test_cli_serve import Served, clawvm_serve

TENANT = "default"  # the open local setup's tenant
SESSION = "crash-session"
PROJECT = "crash-project"
SYSTEM_RULE = "You must always run the linter before a commit."
USER_RULE = "Never push to main without a review."
HEADERS = {"x-clawvm-session": SESSION, "x-clawvm-project": PROJECT}
ANSWERED_BEFORE_KILL = 4
MAX_TURNS = 40
REQUEST_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 30.0
SUMMARY = "This session is being continued from a previous conversation that ran out of context. Summary: parser work."


def turn_rule(turn: int) -> str:
    return f"You must never edit generated_{turn}.py by hand."


def transcript(turns: int) -> list[dict[str, Any]]:
    """The session after `turns` tool round trips: tool results, a plan, and a user rule every third turn."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are a coding agent. {SYSTEM_RULE}"},
        {"role": "user", "content": f"Fix the parser bug. {USER_RULE} I prefer small commits."},
        {"role": "assistant", "content": "Plan:\n1. Read the parser.\n2. Fix the bug.\n3. Run the tests."},
    ]
    for n in range(turns):
        call = {"id": f"call_{n}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"n":{n}}}'}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": f"file {n}\n" + f"line {n} " * 300})
        rule = f" {turn_rule(n)}" if n % 3 == 0 else ""
        messages.append({"role": "user", "content": f"Go on with file {n + 1}.{rule}"})
    return messages


def chat(client: httpx.Client, url: str, messages: list[dict[str, Any]]) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": messages}
    return client.post(f"{url}/chat/completions", json=body, headers=HEADERS, timeout=REQUEST_TIMEOUT_S)


@dataclass
class Stream:
    """A client thread growing the session one turn per request until the gateway goes away."""

    url: str
    answered: int = 0
    in_flight: threading.Event = field(default_factory=threading.Event)
    enough: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def run(self) -> None:
        with httpx.Client() as client:
            for turns in range(1, MAX_TURNS + 1):
                self.in_flight.set()
                try:
                    response = chat(client, self.url, transcript(turns))
                except httpx.TransportError:
                    return  # the gateway was killed under this request
                if response.status_code != 200:
                    self.errors.append(f"turn {turns}: {response.status_code} {response.text[:200]}")
                    return
                self.answered = turns
                if turns >= ANSWERED_BEFORE_KILL:
                    self.enough.set()
        self.enough.set()


def kill_mid_stream(served: Served) -> Stream:
    """Stream requests; SIGKILL the gateway while one is in flight after the first few answers."""
    stream = Stream(served.url)
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    assert stream.enough.wait(STREAM_TIMEOUT_S), f"no {ANSWERED_BEFORE_KILL} answers:\n{served.output()}"
    stream.in_flight.clear()
    assert stream.in_flight.wait(REQUEST_TIMEOUT_S)  # the next request has been sent
    time.sleep(0.01)  # let the gateway get into it: ingest, write-back, commit
    served.process.kill()
    served.process.wait(timeout=REQUEST_TIMEOUT_S)
    thread.join(REQUEST_TIMEOUT_S * 2)
    assert not thread.is_alive()
    assert stream.errors == [] and stream.answered < MAX_TURNS, stream.errors
    return stream


# ---------------------------------------------------------------- what Redis holds


async def journal_problems(store: RedisStore, scope_id: str) -> list[str]:
    """Ways the scope's write-back memory and journal disagree: a batch split or interleaved,
    a batch missing from the applied set, a version without its batch."""
    journal = WritebackJournal(store.client)
    memory = await journal.load(TENANT, scope_id)
    records = await journal.read(TENANT, scope_id, count=10_000)
    applied = dict(await store.client.zrange(Keys.of(TENANT, scope_id).applied, 0, -1, withscores=True))
    applied = {_text(k): int(v) for k, v in applied.items()}
    problems: list[str] = []
    runs = [r["batch"] for i, r in enumerate(records) if i == 0 or records[i - 1]["batch"] != r["batch"]]
    if len(runs) != len(set(runs)):
        problems.append(f"{scope_id}: a batch's records are not contiguous: {runs}")
    versions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        versions[record["batch"]].add(record["version"])
    for batch, found in versions.items():
        if len(found) != 1 or applied.get(batch) not in found:
            problems.append(f"{scope_id}: batch {batch} has versions {found}, applied at {applied.get(batch)}")
    made = {v for found in versions.values() for v in found} - {0}
    if made != set(range(1, memory.version + 1)):
        problems.append(f"{scope_id}: memory v{memory.version}, batches made versions {sorted(made)}")
    committed = {r["slot"] for r in records if r["status"] == "committed"}
    if set(memory.entries) - committed:
        problems.append(f"{scope_id}: slots without a committed record: {set(memory.entries) - committed}")
    return problems


async def stored_state(url: str) -> tuple[list[str], PageTable, int]:
    """(journal problems, the session's table loaded afresh, its stored page count)."""
    async with RedisStore.from_url(url) as store:
        problems = [
            *await journal_problems(store, session_scope(SESSION)),
            *await journal_problems(store, project_scope(PROJECT)),
        ]
        record = await store.load_table(TENANT, session_scope(SESSION))
        assert record is not None
        named = page_ids(record.data)
        found = await store.get_pages(TENANT, session_scope(SESSION), named)
        assert set(named) == set(found), f"pages named but not stored: {set(named) - set(found)}"
        table = await SessionState(store).load(TENANT, SESSION, PROJECT)
        return problems, table, len(named)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- the test


def forwarded_text(fake_upstream: Running) -> str:
    body = fake_upstream.fake.requests[-1].body
    assert body is not None
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


def test_a_gateway_killed_mid_write_back_restarts_on_whole_state(
    tmp_path: Path, fake_upstream: Running, redis_url: str
) -> None:
    args = ("--store", redis_url, "--log-level", "warning")
    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:
        stream = kill_mid_stream(served)
    assert served.process.returncode == -9

    problems, table, pages = asyncio.run(stored_state(redis_url))
    assert problems == []
    assert table.version >= 1 and pages == len(table.pages)
    stored_turns = (len(table.order) - 3) // 3
    assert stream.answered <= stored_turns <= stream.answered + 1  # the killed request committed or not

    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served, httpx.Client() as client:
        response = chat(client, served.url, transcript(stream.answered + 2))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "ok"
        compacted = [transcript(0)[0], {"role": "user", "content": SUMMARY}]
        response = chat(client, served.url, compacted)
        assert response.status_code == 200, response.text
        prompt = forwarded_text(fake_upstream)
        assert SUMMARY in prompt
        assert USER_RULE in prompt and turn_rule(0) in prompt  # carried from the stored table
        assert SYSTEM_RULE in prompt

    problems, table, _ = asyncio.run(stored_state(redis_url))
    assert problems == []
    assert table.carried  # the compaction's carried state was stored
