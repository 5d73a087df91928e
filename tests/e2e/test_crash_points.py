"""A crash at each point of a turn (README "What a crash can lose"), on a real Redis: before the
save script, after it, during the upstream call, during the streamed answer, after the answer
before its audit records. Each time the gateway is started afresh on the same Redis and the agent's
next request, carrying its transcript, is served on whole state: every write-back batch that was
committed is still there, nothing half-written is visible, and an agent that received any byte of
an answer finds that turn's save in the store.

The crashes are real SIGKILLs of a `clawvm serve` process where the point can be reached from
outside (the upstream holding the request or the stream open: `FakeUpstream.hold`), and an
exception raised inside the in-process gateway where it cannot (around the save script, in the
audit write), after which the test goes on with a new gateway: nothing of the old one's memory."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_upstream import FakeUpstream, Running
from gateway.observability.audit import AuditLog
from gateway.store.journal import WritebackJournal
from gateway.store.store import Keys, RedisStore, VersionConflict, project_scope, session_scope
from gateway.store.tables import page_ids
from policies.writeback import Entry
from tests.e2e.conftest import Gateway
from tests.e2e.test_cli_serve import clawvm_serve
from tests.e2e.test_crash import SYSTEM_RULE, USER_RULE, journal_problems, transcript, turn_rule

TENANT = "default"
WAIT_S = 30.0  # a generous bound on "eventually": never a timing assertion
ANSWERED = 3  # turns answered before the crash; the crash hits turn ANSWERED + 1
CRASHED_RULE = turn_rule(ANSWERED)  # the rule the crashed turn's newest message states


class Crash(Exception):
    """The gateway dying at an injected point (in process: the request fails, nothing after runs)."""


@dataclass(frozen=True)
class Agent:
    """One session of an agent that sends its whole transcript with every request."""

    session: str
    project: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-clawvm-session": self.session, "x-clawvm-project": self.project}

    def body(self, turns: int, stream: bool = False) -> dict[str, Any]:
        return {"model": "gpt-4o", "messages": transcript(turns), **({"stream": True} if stream else {})}

    def ask(self, client: httpx.Client, url: str, turns: int) -> httpx.Response:
        return client.post(f"{url}/chat/completions", json=self.body(turns), headers=self.headers, timeout=WAIT_S)


@dataclass(frozen=True)
class Stored:
    """What Redis holds of the agent's session and project."""

    problems: list[str]  # the journal and memory disagreeing: a batch split, lost or half-written
    version: int  # the session table's
    memory: dict[str, dict[str, Entry]]  # scope -> slot -> committed entry

    def values(self) -> set[str]:
        return {e.value for entries in self.memory.values() for e in entries.values()}

    def keeps(self, earlier: Stored) -> bool:
        """Every write-back entry committed in `earlier` is still committed, at its version or later."""
        return all(
            slot in self.memory[scope] and self.memory[scope][slot].version >= entry.version
            for scope, entries in earlier.memory.items()
            for slot, entry in entries.items()
        )


def stored(url: str, agent: Agent) -> Stored:
    async def read() -> Stored:
        async with RedisStore.from_url(url) as store:
            scopes = (session_scope(agent.session), project_scope(agent.project))
            journal = WritebackJournal(store.client)
            problems = [p for scope in scopes for p in await journal_problems_of(store, scope)]
            record = await store.load_table(TENANT, scopes[0])
            version = 0 if record is None else record.version
            if record is not None:
                named = page_ids(record.data)
                found = await store.get_pages(TENANT, scopes[0], named)
                problems += [f"page {p} named by the table but not stored" for p in set(named) - set(found)]
            memory = {scope: dict((await journal.load(TENANT, scope)).entries) for scope in scopes}
            return Stored(problems, version, memory)

    return asyncio.run(read())


async def journal_problems_of(store: RedisStore, scope_id: str) -> list[str]:
    return (
        await journal_problems(store, scope_id) if await store.client.exists(Keys.of(TENANT, scope_id).memory) else []
    )


def rule(text: str) -> str:
    return f"rule: {text}"


def answered(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"


def forwarded(fake: FakeUpstream) -> str:
    body = fake.requests[-1].body
    assert body is not None
    return "\n".join(str(m.get("content") or "") for m in body["messages"])


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def agent_of(request: pytest.FixtureRequest) -> Agent:
    name = request.node.name.replace("[", "-").replace("]", "")[-60:]
    return Agent(f"cp-{name}", f"cpp-{name}")


def goes_on(url: str, fake: FakeUpstream, agent: Agent, before: Stored, redis_url: str) -> None:
    """The agent's next request after the crash (its transcript, the crashed turn included, as it
    got no answer) and one more: both served on whole state; every write-back committed before
    the crash still committed, and the crashed turn's own write-back committed once."""
    with httpx.Client() as client:
        answered(agent.ask(client, url, ANSWERED + 1))
        prompt = forwarded(fake)
        assert SYSTEM_RULE in prompt and USER_RULE in prompt and CRASHED_RULE in prompt
        answered(agent.ask(client, url, ANSWERED + 2))
    after = stored(redis_url, agent)
    assert after.problems == []
    assert after.keeps(before)
    assert rule(CRASHED_RULE) in after.values()
    assert after.version > before.version


# ---------------------------------------------------------------- in process: around the save script


@contextmanager
def crashing_save(monkeypatch: pytest.MonkeyPatch, *, after_script: bool) -> Iterator[list[str]]:
    """Every table save of the store crashes the gateway, before its script runs or once it has
    committed; yields the modes of the saves that crashed."""
    crashed: list[str] = []
    with monkeypatch.context() as patch:
        for name in ("save", "append"):
            original = getattr(RedisStore, name)

            async def crashing(self: RedisStore, *args: Any, _original: Any = original, _name: str = name) -> int:
                crashed.append(_name)
                if after_script:
                    await _original(self, *args)
                raise Crash(f"the gateway died {'after' if after_script else 'before'} the save script")

            patch.setattr(RedisStore, name, crashing)
        yield crashed


def answered_turns(gw: Gateway, agent: Agent, turns: int) -> None:
    with httpx.Client() as client:
        for n in range(1, turns + 1):
            answered(agent.ask(client, gw.url, n))


@pytest.mark.parametrize("after_script", [False, True], ids=["before-the-save-script", "after-the-save-script"])
def test_a_crash_around_the_save_script_loses_no_committed_write_back(
    start_gateway: Callable[..., Any],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    after_script: bool,
) -> None:
    agent = agent_of(request)
    fake = FakeUpstream()
    with start_gateway(fake=fake) as gw:
        answered_turns(gw, agent, ANSWERED)
        before = stored(redis_url, agent)
        assert before.problems == [] and rule(CRASHED_RULE) not in before.values()
        with crashing_save(monkeypatch, after_script=after_script) as crashed, httpx.Client() as client:
            response = agent.ask(client, gw.url, ANSWERED + 1)
        assert crashed and response.status_code == 500  # the agent got no answer
    crashed_at = stored(redis_url, agent)
    assert crashed_at.problems == []
    assert crashed_at.keeps(before)
    if after_script:  # the script committed: the table and the turn's write-back batch, together
        assert crashed_at.version == before.version + 1 and rule(CRASHED_RULE) in crashed_at.values()
    else:  # nothing of the turn's save was written
        assert crashed_at.version == before.version and crashed_at.memory == before.memory
    with start_gateway(fake=fake) as gw:  # restarted: nothing of the old process's caches
        goes_on(gw.url, fake, agent, before, redis_url)


def test_a_crash_after_the_answer_loses_only_its_audit_records(
    start_gateway: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    agent = agent_of(request)
    fake = FakeUpstream()
    audited: list[str] = []

    async def crashing(self: AuditLog, tenant: str, session: str, *args: Any) -> None:
        audited.append(session)
        raise Crash("the gateway died after the answer, before its audit records")

    events = Keys.of(TENANT, session_scope(agent.session)).events
    with start_gateway(fake=fake) as gw, monkeypatch.context() as patch:
        patch.setattr(AuditLog, "record", crashing)
        with httpx.Client() as client:
            answered(agent.ask(client, gw.url, 1))  # the session's start: one lifecycle event to record
        eventually(lambda: agent.session in audited, "the audit write was reached")
    crashed_at = stored(redis_url, agent)
    assert crashed_at.problems == [] and crashed_at.version == 1  # the answered turn is saved whole
    assert rule(USER_RULE) in crashed_at.values()  # with its write-back
    assert asyncio.run(stream_length(redis_url, events)) == 0  # only its records were lost
    with start_gateway(fake=fake) as gw, httpx.Client() as client:
        answered(agent.ask(client, gw.url, 2))
        assert USER_RULE in forwarded(fake)
    after = stored(redis_url, agent)
    assert after.problems == [] and after.keeps(crashed_at) and after.version == 2


async def stream_length(url: str, key: str) -> int:
    async with RedisStore.from_url(url) as store:
        return int(await store.client.xlen(key))


def test_a_save_that_loses_a_race_beside_the_upstream_call_is_planned_again(
    start_gateway: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Another writer moving the session under a save that ran beside the upstream call: the
    answer to the stale prompt is dropped, the turn planned again and saved before it is
    forwarded, and the agent is answered once, on the saved turn."""
    agent = agent_of(request)
    fake = FakeUpstream()
    lost: list[str] = []

    def losing_once(name: str) -> Callable[..., Any]:
        original = getattr(RedisStore, name)

        async def losing(self: RedisStore, *args: Any) -> int:
            if not lost:
                lost.append(name)
                raise VersionConflict("another replica saved this session meanwhile", 1, 2)
            return int(await original(self, *args))

        return losing

    with start_gateway(fake=fake) as gw:
        answered_turns(gw, agent, ANSWERED)
        before = stored(redis_url, agent)
        upstream_calls = len(fake.requests)
        with monkeypatch.context() as patch, httpx.Client() as client:
            for name in ("save", "append"):
                patch.setattr(RedisStore, name, losing_once(name))
            answered(agent.ask(client, gw.url, ANSWERED + 1))
        assert len(lost) == 1
        assert len(fake.requests) == upstream_calls + 2  # the stale prompt's call, then the saved turn's
    after = stored(redis_url, agent)
    assert after.problems == [] and after.keeps(before)
    assert after.version == before.version + 1 and rule(CRASHED_RULE) in after.values()


def test_the_save_runs_beside_the_upstream_call_and_ends_before_any_byte_of_the_answer(
    start_gateway: Callable[..., Any], redis_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A save held up in the store: the prompt still goes upstream meanwhile, but the agent gets
    no byte of the (streamed) answer until the save has committed."""
    agent = agent_of(request)
    fake = FakeUpstream()
    release, entered = threading.Event(), threading.Event()

    def held(name: str) -> Callable[..., Any]:
        original = getattr(RedisStore, name)

        async def saving(self: RedisStore, *args: Any) -> int:
            entered.set()
            while not release.is_set():
                await asyncio.sleep(0.01)
            return int(await original(self, *args))

        return saving

    with start_gateway(fake=fake) as gw:
        answered_turns(gw, agent, ANSWERED)
        before, upstream_calls = stored(redis_url, agent), len(fake.requests)
        with monkeypatch.context() as patch:
            for name in ("save", "append"):
                patch.setattr(RedisStore, name, held(name))
            try:
                flight = send(gw.url, agent, ANSWERED + 1, stream=True)
                eventually(entered.is_set, "the turn's save started")
                eventually(lambda: len(fake.requests) == upstream_calls + 1, "the prompt went upstream")
                time.sleep(0.2)  # room for a relay that would not wait for the save
                assert not flight.first_bytes.is_set() and flight.status == []
                assert stored(redis_url, agent).version == before.version  # the save is still held
            finally:
                release.set()
            flight.thread.join(WAIT_S)
    assert flight.status == [200, "complete"]
    after = stored(redis_url, agent)
    assert after.problems == [] and after.keeps(before)
    assert after.version == before.version + 1 and rule(CRASHED_RULE) in after.values()


# ---------------------------------------------------------------- a real process, SIGKILLed


@dataclass
class InFlight:
    """A request the client sent and is waiting on (in a thread), its outcome once it ends."""

    thread: threading.Thread
    status: list[int | str]
    first_bytes: threading.Event


def send(url: str, agent: Agent, turns: int, stream: bool) -> InFlight:
    status: list[int | str] = []
    first = threading.Event()

    def run() -> None:
        try:
            with httpx.Client(timeout=WAIT_S) as client:
                route = f"{url}/chat/completions"
                with client.stream("POST", route, json=agent.body(turns, stream), headers=agent.headers) as response:
                    status.append(response.status_code)
                    for _ in response.iter_raw():
                        first.set()
                    status.append("complete")
        except httpx.TransportError:
            status.append("cut")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return InFlight(thread, status, first)


@pytest.mark.parametrize("stream", [False, True], ids=["during-the-upstream-call", "during-the-streamed-answer"])
def test_a_gateway_killed_while_the_upstream_answers_loses_no_committed_write_back(
    tmp_path: Path, fake_upstream: Running, redis_url: str, request: pytest.FixtureRequest, stream: bool
) -> None:
    agent = agent_of(request)
    fake = fake_upstream.fake
    args = ("--store", redis_url, "--log-level", "warning")
    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:
        with httpx.Client() as client:
            for n in range(1, ANSWERED + 1):
                answered(agent.ask(client, served.url, n))
        before = stored(redis_url, agent)
        fake.hold = threading.Event()  # the upstream holds the answer (a stream: after its first event)
        try:
            flight = send(served.url, agent, ANSWERED + 1, stream)
            if stream:  # the agent has bytes of the answer: the turn's save must have committed
                assert flight.first_bytes.wait(WAIT_S), served.output()
            else:
                eventually(lambda: fake.held == 1, "the upstream holds the request")
            served.process.kill()
            served.process.wait(timeout=WAIT_S)
        finally:
            fake.hold.set()
        flight.thread.join(WAIT_S)
        assert "complete" not in flight.status  # the agent got no whole answer
    crashed_at = stored(redis_url, agent)
    assert crashed_at.problems == []
    assert crashed_at.keeps(before)
    saved = crashed_at.version == before.version + 1 and rule(CRASHED_RULE) in crashed_at.values()
    if stream:
        assert saved  # no byte of an answer is relayed before its turn is saved
    else:  # the save ran beside the upstream call: whole, or not at all
        assert saved or (crashed_at.version == before.version and crashed_at.memory == before.memory)
    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:
        goes_on(served.url, fake, agent, before, redis_url)
