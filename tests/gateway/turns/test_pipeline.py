from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.connection import AbstractConnection

from bench.fake_upstream import FakeUpstream, serve
from gateway import jsonio
from gateway.api.app import create_app
from gateway.api.auth import KeyRing
from gateway.api.errors import ContextLengthExceeded, ServiceUnavailable
from gateway.observability.audit import AuditLog
from gateway.observability.metrics import Metrics
from gateway.settings import Overrides, Settings, load_settings
from gateway.store.board import VersionBoard
from gateway.store.embedded import free_port
from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService
from gateway.store.outage import OutageQueue
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore
from gateway.turns.pipeline import (
    COMMIT_ATTEMPTS,
    COMMIT_BACKOFF_CAP_S,
    COMMIT_BACKOFF_S,
    commit_backoff,
    prepare,
    uses_litellm,
)
from gateway.turns.services import Services, ToolTokens
from gateway.turns.sessions import SessionIds
from gateway.turns.stages import TIMINGS_LOGGER, parse_header
from gateway.upstream.client import OpenAICompatible
from gateway.upstream.models import ModelCatalog
from gateway.upstream.tokens import Tokenizers
from gateway.wire.cache_hints import cache_key
from gateway.wire.chat_json import parse_request
from gateway.wire.chat_litellm import LiteLLMProvider
from gateway.wire.chat_tokens import count_messages
from gateway.wire.chat_transcripts import TranscriptCache
from gateway.wire.responses import RESPONSES
from policies.budget import TokenBudget
from policies.tenant import TenantPolicy
from policies.turn import plan_turn

Json = dict[str, Any]
_ids = itertools.count()


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """Every test here runs with the offline tokenizer environment."""


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog.load()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    yield store
    await store.aclose()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def settings(tmp_path: Path) -> SettingsFactory:
    def build(config_yaml: str | None = None, budget: int | None = None) -> Settings:
        path = None
        if config_yaml is not None:
            path = tmp_path / f"config-{next(_ids)}.yaml"
            path.write_text(config_yaml)
        return load_settings(path, {}, Overrides(upstream="http://127.0.0.1:9/v1", budget=budget))

    return build


def services(
    settings: Settings, store: RedisStore, catalog: ModelCatalog, sessions: SessionState | None = None
) -> Services:
    sessions, audit = sessions or SessionState(store), AuditLog(store.client)
    memory = MemoryService(WritebackJournal(store.client), store)
    return Services(
        settings=settings,
        keyring=KeyRing(settings),
        sessions=sessions,
        upstream=OpenAICompatible(),
        provider=LiteLLMProvider(),
        tokenizers=Tokenizers(),
        catalog=catalog,
        tool_tokens=ToolTokens(),
        transcripts=TranscriptCache(),
        metrics=Metrics(),
        audit=audit,
        memory=memory,
        outage=OutageQueue(sessions, memory, audit),
    )


def session() -> SessionIds:
    return SessionIds(session=f"pipe-{next(_ids)}", project="proj", source="header")


def coding_session(rounds: int) -> list[Json]:
    messages: list[Json] = [
        {"role": "system", "content": "You are a careful coding agent.\n- Never push to main."},
        {"role": "user", "content": "Please fix the failing build."},
    ]
    for n in range(rounds):
        function = {"name": "read_file", "arguments": f'{{"path":"m{n}.py"}}'}
        call = {"id": f"c{n}", "type": "function", "function": function}
        messages.append({"role": "assistant", "content": f"Reading m{n}.", "tool_calls": [call]})
        body = "\n".join(f"line {i} of module {n}: value = {n * 1000 + i}" for i in range(80))
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": body})
    messages.append({"role": "user", "content": "What did module 2 contain?"})
    return messages


def request(messages: list[Json], **extra: Any) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": messages, **extra}).encode()


async def run_prepare(svc: Services, raw: bytes, ids: SessionIds | None = None) -> tuple[Json, bytes, dict[str, str]]:
    tenant = svc.settings.tenants[0]
    turn = await prepare(svc, tenant, parse_request(raw), ids or session())
    body = jsonio.dumps(turn.body)
    return json.loads(body), body, turn.headers


PARAMETERS = {"type": "object", "properties": {"path": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": PARAMETERS}}]


# -- which client ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", False),
        ("openai/gpt-4o", False),
        ("ft:gpt-4o-mini:org:custom:id", False),
        ("meta-llama/Llama-3-70b", False),
        ("anthropic", False),
        ("anthropic/claude-3-5-sonnet-20240620", True),
        ("bedrock/anthropic.claude-v2", True),
        ("gemini/gemini-1.5-pro", True),
        ("ollama/llama3", True),
    ],
)
def test_only_non_openai_providers_go_through_litellm(model: str, expected: bool) -> None:
    assert uses_litellm(model) is expected


# -- prepare --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_fitting_request_is_forwarded_unchanged(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings("upstream:\n  model_map:\n    gpt-4o: gpt-4o-2024-08-06\n"), store, catalog)
    messages = coding_session(2)
    raw = request(messages, tools=TOOLS, temperature=0.3, stream=True, vendor={"x": [1]})
    ids = session()
    body, encoded, headers = await run_prepare(svc, raw, ids)
    original = json.loads(raw)
    assert body["messages"] == messages
    assert body["model"] == "gpt-4o-2024-08-06"
    assert {k: v for k, v in body.items() if k not in ("messages", "model", "prompt_cache_key")} == {
        k: v for k, v in original.items() if k not in ("messages", "model")
    }
    assert body["prompt_cache_key"] == cache_key("default", ids.session)  # the one field the gateway adds
    assert b'": ' not in encoded and b'", "' not in encoded  # compact
    assert headers["x-clawvm-session"] == ids.session
    assert headers["x-clawvm-budget-source"] == "model_map"
    assert int(headers["x-clawvm-budget"]) == 128_000 - 4096
    assert int(headers["x-clawvm-policy-us"]) >= 0
    assert "x-clawvm-insufficient" not in headers


@pytest.mark.anyio
async def test_prompt_tokens_count_messages_and_tool_schemas(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings(), store, catalog)
    messages = coding_session(1)
    _, _, without = await run_prepare(svc, request(messages))
    _, _, with_tools = await run_prepare(svc, request(messages, tools=TOOLS))
    counted = count_messages(Tokenizers().for_model("gpt-4o"), messages)
    assert int(without["x-clawvm-prompt-tokens"]) == counted
    assert int(with_tools["x-clawvm-prompt-tokens"]) > counted


@pytest.mark.anyio
async def test_under_pressure_the_forwarded_request_fits_and_is_valid(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings(budget=2000), store, catalog)
    messages = coding_session(12)
    body, encoded, headers = await run_prepare(svc, request(messages))
    assert headers["x-clawvm-budget"] == "2000" and headers["x-clawvm-budget-source"] == "tenant_budget"
    assert count_messages(Tokenizers().for_model("gpt-4o"), body["messages"]) <= 2000
    assert int(headers["x-clawvm-prompt-tokens"]) <= 2000
    assert body["messages"] != messages and body["messages"][-1] == messages[-1]
    parse_request(encoded)  # still a well-formed chat request: roles, pairing, shapes


@pytest.mark.anyio
async def test_the_same_transcript_gives_the_same_bytes(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings(budget=2500), store, catalog)
    raw = request(coding_session(10))
    first = await run_prepare(svc, raw)
    second = await run_prepare(svc, raw)
    assert first[0].pop("prompt_cache_key") != second[0].pop("prompt_cache_key")  # two sessions, two keys
    assert first[0] == second[0] and len(first[1]) == len(second[1])


@pytest.mark.anyio
async def test_a_newest_turn_over_the_budget_is_flagged(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings(budget=300), store, catalog)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 600}]
    body, _, headers = await run_prepare(svc, request(messages))
    prompt = int(headers["x-clawvm-prompt-tokens"])
    assert prompt > 300
    assert headers["x-clawvm-insufficient"] == f"minimum set {prompt} tokens exceeds budget 300"
    assert body["messages"][-1] == messages[-1]


@pytest.mark.anyio
async def test_a_newest_turn_over_the_model_window_is_context_length_exceeded(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    svc = services(settings("models:\n  tiny-model:\n    context_window: 5000\n"), store, catalog)
    raw = json.dumps({"model": "tiny-model", "messages": [{"role": "user", "content": "word " * 2000}]}).encode()
    with pytest.raises(ContextLengthExceeded) as caught:
        await run_prepare(svc, raw)
    error = caught.value
    assert (error.status_code, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert "904" in error.message  # 5000 less the 4096-token output reserve


@pytest.mark.anyio
async def test_context_length_exceeded_names_the_formats_transcript_field(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog
) -> None:
    """A Responses request holds its transcript in `input`, not `messages`: the error says so."""
    svc = services(settings("models:\n  tiny-model:\n    context_window: 5000\n"), store, catalog)
    raw = json.dumps({"model": "tiny-model", "input": [{"role": "user", "content": "word " * 2000}]}).encode()
    tenant = svc.settings.tenants[0]
    with pytest.raises(ContextLengthExceeded) as caught:
        await prepare(svc, tenant, RESPONSES.parse(raw), session(), wire=RESPONSES)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "input")


class RacingStore(RedisStore):
    """A real store; before each of its first `races` saves, another replica commits a turn first."""

    races = 0
    rival: Callable[[int], Awaitable[None]]

    async def save(self, *args: Any, **kw: Any) -> int:
        if self.races > 0:
            self.races -= 1
            await self.rival(self.races)
        return await super().save(*args, **kw)


def rival_replica(store: RedisStore, ids: SessionIds) -> Callable[[int], Awaitable[None]]:
    state = SessionState(store)

    async def commit_a_turn(n: int) -> None:
        table = await state.load("default", ids.session, ids.project)
        messages = parse_request(request([{"role": "user", "content": f"rival turn {n}"}])).messages
        budget = TokenBudget(cap=10_000, usable=10_000, hard_limit=10_000, source="config")
        plan = plan_turn(table, messages, TenantPolicy(), Tokenizers().for_model("gpt-4o"), budget)
        await state.commit(table, plan.ingest.new_pages)

    return commit_a_turn


@pytest.fixture
async def racing(redis_url: str, store: RedisStore) -> AsyncIterator[tuple[RacingStore, SessionIds]]:
    racing = RacingStore.from_url(redis_url)
    ids = session()
    racing.rival = rival_replica(store, ids)
    yield racing, ids
    await racing.aclose()


@pytest.mark.anyio
async def test_a_lost_race_is_replanned_on_fresh_state(
    settings: SettingsFactory, racing: tuple[RacingStore, SessionIds], store: RedisStore, catalog: ModelCatalog
) -> None:
    racing_store, ids = racing
    racing_store.races = COMMIT_ATTEMPTS - 1
    svc = services(settings(), racing_store, catalog)
    messages = coding_session(2)
    body, _, headers = await run_prepare(svc, request(messages), ids)
    assert body["messages"] == messages
    stored = await SessionState(store).load("default", ids.session, ids.project)
    assert stored.version == COMMIT_ATTEMPTS  # the rivals' turns, then ours
    assert len(stored.order) == len(messages)


@pytest.mark.anyio
async def test_losing_every_race_is_503(
    settings: SettingsFactory, racing: tuple[RacingStore, SessionIds], catalog: ModelCatalog
) -> None:
    racing_store, ids = racing
    racing_store.races = COMMIT_ATTEMPTS
    svc = services(settings(), racing_store, catalog)
    with pytest.raises(ServiceUnavailable, match="concurrently") as caught:
        await run_prepare(svc, request(coding_session(1)), ids)
    assert caught.value.status_code == 503


@pytest.mark.anyio
async def test_an_unreachable_store_degrades_the_turn_and_defers_its_writes(
    settings: SettingsFactory, catalog: ModelCatalog
) -> None:
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    try:
        svc = services(settings(), dead, catalog)
        ids = session()
        body, _, headers = await run_prepare(svc, request(coding_session(1)), ids)
        assert headers["x-clawvm-degraded"] == "store_unavailable"
        assert body["messages"][-1]["content"] == "What did module 2 contain?"  # planned on a fresh table
        assert svc.outage.queued == 1 and svc.outage.holds("default", ids.session)
        held = svc.outage.table("default", ids.session)
        assert held is not None and held.version == 0 and len(held.order) == len(coding_session(1))
        _, _, again = await run_prepare(svc, request(coding_session(2)), ids)  # the next turn plans on it
        assert again["x-clawvm-degraded"] == "store_unavailable" and svc.outage.queued == 2
        assert svc.outage.table("default", ids.session) is held and len(held.order) == len(coding_session(2))
    finally:
        await dead.aclose()


@pytest.mark.anyio
async def test_a_full_outage_queue_refuses_new_turns_with_503(settings: SettingsFactory, catalog: ModelCatalog) -> None:
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1.0)
    try:
        svc = services(settings(), dead, catalog)
        svc.outage.capacity = 1
        await run_prepare(svc, request(coding_session(1)))
        with pytest.raises(ServiceUnavailable, match="store.outage_queue") as caught:
            await run_prepare(svc, request(coding_session(1)))
        assert caught.value.status_code == 503 and caught.value.code == "store_unavailable"
        assert svc.outage.queued == 1  # the queued turn is kept
    finally:
        await dead.aclose()


# -- chat_completions over HTTP -------------------------------------------------------------


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, FakeUpstream]]:
    fake = FakeUpstream()
    config = tmp_path / "config.yaml"
    config.write_text("upstream:\n  api_key: sk-upstream-secret\ntenants:\n  acme:\n    api_keys: [sk-client]\n")
    with serve(fake.app) as upstream_url:
        settings = load_settings(config, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            yield url, fake


def test_chat_completions_forwards_with_the_upstream_key_and_our_headers(gateway: tuple[str, FakeUpstream]) -> None:
    url, fake = gateway
    headers = {"authorization": "Bearer sk-client", "accept": "application/json", "x-clawvm-session": "http-1"}
    headers["cookie"] = "a=b"
    response = httpx.post(url + "/chat/completions", content=request(coding_session(1)), headers=headers)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "ok"
    assert response.headers["x-clawvm-session"] == "http-1"
    assert int(response.headers["x-clawvm-overhead-us"]) >= int(response.headers["x-clawvm-policy-us"]) >= 0
    stages = parse_header(response.headers["server-timing"])
    assert list(stages) == ["receive", "parse", "ingest", "assemble", "store", "serialise", "upstream", "persist"]
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.body is not None
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert sent.headers["content-type"] == "application/json" and sent.headers["accept"] == "application/json"
    assert "cookie" not in sent.headers and "x-clawvm-session" not in sent.headers
    assert sent.body["messages"] == coding_session(1)


def test_chat_completions_streams_sse(gateway: tuple[str, FakeUpstream]) -> None:
    url, fake = gateway
    fake.responder = lambda body: {"content": "one two three"}
    headers = {"authorization": "Bearer sk-client", "accept": "text/event-stream"}
    content = request(coding_session(1), stream=True)
    with httpx.stream("POST", url + "/chat/completions", content=content, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-clawvm-session"].startswith("fp-")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") or "" for line in lines[:-1]]
    assert "".join(pieces) == "one two three"
    assert fake.requests[-1].headers["accept"] == "text/event-stream"


def _timed_turn(redis_url: str, config: Path, stream: bool) -> dict[str, float]:
    """One turn through a gateway started on `config` (stopped before this returns: uvicorn waits
    for the work after the answer); the answer's `server-timing` stages."""
    fake = FakeUpstream()
    headers = {"authorization": "Bearer sk-client", "accept": "text/event-stream" if stream else "application/json"}
    with serve(fake.app) as upstream_url:
        settings = load_settings(config, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            content = request(coding_session(2), stream=stream)
            with httpx.stream("POST", url + "/chat/completions", content=content, headers=headers) as response:
                assert response.status_code == 200
                response.read()
                return parse_header(response.headers["server-timing"])


@pytest.mark.parametrize("stream", [False, True])
def test_log_timings_logs_a_turns_stages_its_save_and_the_work_after_its_answer(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger=TIMINGS_LOGGER)
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  log_timings: true\n")
    header = _timed_turn(redis_url, config, stream)
    lines = [r.getMessage() for r in caplog.records if r.name == TIMINGS_LOGGER]
    assert len(lines) == 1
    logged = parse_header(lines[0])
    assert list(logged) == [*header, "complete", "commit", "after"]
    assert all(logged[name] == header[name] for name in header)  # the header's stages, as sent
    assert logged["complete"] > 0 and logged["commit"] > 0 and logged["after"] > 0


def test_without_log_timings_no_timings_are_logged(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=TIMINGS_LOGGER)
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  log_timings: false\n")
    assert "persist" in _timed_turn(redis_url, config, stream=False)
    assert not [r for r in caplog.records if r.name == TIMINGS_LOGGER]


def test_chat_completions_rejects_a_bad_key_before_reading_anything(gateway: tuple[str, FakeUpstream]) -> None:
    url, fake = gateway
    response = httpx.post(url + "/chat/completions", content=b"{not json", headers={"authorization": "Bearer nope"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert not fake.requests


def test_commit_backoff_is_full_jitter_growing_to_a_cap() -> None:
    bounds = [commit_backoff(n, lambda low, high: high) for n in range(COMMIT_ATTEMPTS)]
    assert bounds[0] == COMMIT_BACKOFF_S and bounds == sorted(bounds) and max(bounds) == COMMIT_BACKOFF_CAP_S
    assert all(commit_backoff(n, lambda low, high: low) == 0.0 for n in range(COMMIT_ATTEMPTS))
    assert all(0.0 <= commit_backoff(n) <= COMMIT_BACKOFF_CAP_S for n in range(COMMIT_ATTEMPTS))


# -- store round trips per turn ---------------------------------------------------------------


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every request this process sends to Redis from now on, one entry per round trip (a
    pipeline or a script is one), its first command's name."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        raw = packed.encode() if isinstance(packed, str) else packed
        sent.append(raw.split(b"\r\n")[2] if raw.startswith(b"*") else raw)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return sent


@pytest.mark.anyio
async def test_a_turn_on_a_cached_table_is_one_store_round_trip(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog, round_trips: list[bytes]
) -> None:
    svc, ids = services(settings(), store, catalog), session()
    await run_prepare(svc, request(coding_session(1)), ids)  # the first turn loads what it needs
    for rounds in (2, 3, 4, 5):  # each adds a tool call and its result (evidence: a session write-back)
        round_trips.clear()
        await run_prepare(svc, request(coding_session(rounds)), ids)
        assert round_trips == [b"EVALSHA"]  # the write-back commit and the table save, one script
    journal = await svc.memory.journal.read("default", f"s:{ids.session}")
    assert len({r["slot"] for r in journal if r["type"] == "evidence"}) == 5  # every tool result committed
    fresh = await SessionState(store).load("default", ids.session, ids.project)
    assert len(fresh.order) == len(coding_session(5))


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per turn planned (`policies.step.forward` called) from now on."""
    import gateway.turns.pipeline as pipeline

    planned: list[int] = []
    forward = pipeline.forward

    def counted(*args: Any, **kw: Any) -> Any:
        planned.append(1)
        return forward(*args, **kw)

    monkeypatch.setattr(pipeline, "forward", counted)
    return planned


@pytest.mark.anyio
async def test_a_session_alternating_between_workers_is_planned_once_per_turn(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog, plans: list[int]
) -> None:
    workers, ids = (services(settings(), store, catalog), services(settings(), store, catalog)), session()
    for rounds in range(1, 5):  # the first stale copies lose their saves: each worker learns it shares the store
        await run_prepare(workers[rounds % 2], request(coding_session(rounds)), ids)
    assert all(w.sessions.shared for w in workers)
    for rounds in range(5, 10):
        plans.clear()
        body, _, _ = await run_prepare(workers[rounds % 2], request(coding_session(rounds)), ids)
        assert len(plans) == 1  # its cached copy was stale: checked and reloaded before planning, not after
        assert body["messages"] == coding_session(rounds)
    stored = await SessionState(store).load("default", ids.session, ids.project)
    assert len(stored.order) == len(coding_session(9))
    journal = await workers[0].memory.journal.read("default", f"s:{ids.session}")
    assert len({r["slot"] for r in journal if r["type"] == "evidence"}) == 9


@pytest.mark.anyio
async def test_a_table_evicted_from_the_cache_is_planned_with_fresh_memory(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog, plans: list[int]
) -> None:
    """A worker whose table cache dropped a session (another session took its room) while it still
    holds that session's memory reads both again: another worker may have saved the session since,
    so a turn planned on the stored table with the old memory would lose its save and be planned
    (and forwarded) twice."""
    board = VersionBoard.private()
    try:
        mine = services(settings(), store, catalog, SessionState(store, capacity=1, board=board))
        theirs = services(settings(), store, catalog, SessionState(store, board=board))
        ids, other = session(), session()
        tenant = mine.settings.tenants[0]
        await run_prepare(mine, request(coding_session(1)), ids)
        await run_prepare(mine, request(coding_session(1)), other)  # takes the only cached table's room
        await run_prepare(theirs, request(coding_session(2)), ids)  # a write-back: the session memory moves
        plans.clear()
        turn = await prepare(mine, tenant, parse_request(request(coding_session(3))), ids, overlap=True)
        await turn.saved()  # the save beside the upstream call commits: the answer is relayed once
        assert len(plans) == 1
    finally:
        board.close()
    stored = await SessionState(store).load("default", ids.session, ids.project)
    assert len(stored.order) == len(coding_session(3))
    journal = await mine.memory.journal.read("default", f"s:{ids.session}")
    assert len({r["slot"] for r in journal if r["type"] == "evidence"}) == 3


@pytest.mark.anyio
async def test_the_rest_of_the_turn_runs_in_the_save_beside_the_upstream_call(
    settings: SettingsFactory, store: RedisStore, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the save beside the upstream call, the turn is forwarded after `policies.step.forward`
    alone: `complete` (the new pages' other levels, the write-back plan, the observation) runs in
    the save, and the headers that tell its faults wait for it, as the answer does."""
    import gateway.turns.pipeline as pipeline

    order: list[str] = []
    completed = pipeline.complete

    def counted(*args: Any, **kw: Any) -> Any:
        order.append("complete")
        return completed(*args, **kw)

    monkeypatch.setattr(pipeline, "complete", counted)
    svc, ids = services(settings(), store, catalog), session()
    _, _, headers = await run_prepare(svc, request(coding_session(1)), ids)  # saved before it is forwarded
    assert order == ["complete"] and "x-clawvm-faults" in headers
    turn = await prepare(svc, svc.settings.tenants[0], parse_request(request(coding_session(2))), ids, overlap=True)
    order.append("forwarded")
    assert "x-clawvm-faults" not in turn.headers
    await turn.saved()
    assert order == ["complete", "forwarded", "complete"]
    assert "x-clawvm-faults" in turn.headers
    stored = await SessionState(store).load("default", ids.session, ids.project)
    assert len(stored.order) == len(coding_session(2))
    assert all(p in stored.entries for p in stored.order)  # every page whole: its span entry made
