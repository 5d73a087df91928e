"""Scale-out: two gateway processes (`clawvm serve`, real subprocesses, each with its own
in-process caches) share a real 3-master Redis Cluster on loopback, in front of one fake
upstream that records what the model saw.

- A real trace replayed turn by turn, alternating replicas every turn, forwards byte-identical
  requests to a replay through one replica (page ids depend on content and tenant only).
- Every key of one session lives in one slot; many sessions spread over every master.
- Concurrent requests for one session, spread over both replicas, all succeed and lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.fake_upstream import FakeUpstream, serve
from bench.traces import Trace, load_traces, traces_dir
from gateway.store.store import RedisStore, session_scope
from gateway.store.tables import load_table, page_ids
from policies.pagetable import PageTable
from tests.e2e.test_cli_serve import Served, clawvm_serve

TENANT = "cluster"
KEY = "sk-cluster"
BUDGET = 4000  # small enough that every trace pages
CONFIG = f"tenants:\n  {TENANT}:\n    api_keys: [{KEY}]\n    budget: {{max_prompt_tokens: {BUDGET}}}\n"
MODEL = "gpt-4o"
TRACE_NAMES = ("taubench-retail-020", "claude-code-bookminder-day003-s2")  # tool calls; paged at 4,000
SESSION_KEYS = {":table", ":tlog", ":dec", ":evt", ""}  # "": the pages (cvm:{tag}:page:<id>)
PROJECT_KEYS = {":mem", ":wb", ":wbids", ":recent"}  # the write-back journal's Lua commit ran there
CONCURRENT = 16  # 3 commit attempts without backoff lost some of these (503) most runs
SPREAD_SESSIONS = 24
TRACES = {t.name: t for t in load_traces(traces_dir())} if traces_dir().is_dir() else {}

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Deployment:
    replicas: tuple[Served, Served]
    fake: FakeUpstream
    store_url: str
    ports: tuple[int, ...]  # the cluster's masters


@contextmanager
def replica(store_url: str, upstream: str, workdir: Path) -> Iterator[Served]:
    """`clawvm serve` on a free port against the cluster, until the block ends (then SIGTERM)."""
    config = workdir / "config.yaml"
    config.write_text(CONFIG)
    with clawvm_serve(upstream, workdir, "--config", str(config), "--store", store_url) as served:
        yield served
        served.terminate()


@pytest.fixture(scope="module")
def deployment(redis_cluster_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    fake = FakeUpstream()
    ports = tuple(int(node.rsplit(":", 1)[1]) for node in redis_cluster_url.split("://")[1].split(","))
    with ExitStack() as stack:
        upstream = stack.enter_context(serve(fake.app))
        a = stack.enter_context(replica(redis_cluster_url, upstream, tmp_path_factory.mktemp("replica-a")))
        b = stack.enter_context(replica(redis_cluster_url, upstream, tmp_path_factory.mktemp("replica-b")))
        yield Deployment((a, b), fake, redis_cluster_url, ports)
        for r in (a, b):
            assert "Traceback" not in r.log.read_text(errors="replace"), r.log.read_text(errors="replace")


def headers(session: str) -> dict[str, str]:
    # a project of its own per run: a new session of a known project would carry its state
    return {"authorization": f"Bearer {KEY}", "x-clawvm-session": session, "x-clawvm-project": f"proj-{session}"}


def chat(client: httpx.Client, target: Served, session: str, messages: list[Any], tools: list[Any]) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if tools:
        body["tools"] = tools
    return client.post(target.url + "/chat/completions", json=body, headers=headers(session))


def replay(deployment: Deployment, targets: Sequence[Served], trace: Trace, session: str) -> list[str]:
    """Every request of `trace`, turn by turn, to targets[turn % len(targets)]; returns, per turn,
    the JSON of the request bodies the model received for it. The `prompt_cache_key` the gateway
    adds names the session, so it is checked here (one per session, whatever the replica) and left
    out of what is compared."""
    fake, seen, keys = deployment.fake, [], set()
    with httpx.Client(timeout=60) as client:
        for turn, messages in enumerate(trace.turns()):
            before = len(fake.requests)
            response = chat(client, targets[turn % len(targets)], session, messages, trace.tools)
            assert response.status_code == 200, (turn, response.text)
            bodies = [dict(r.body) for r in fake.requests[before:]]
            keys |= {body.pop("prompt_cache_key", None) for body in bodies}
            seen.append(json.dumps(bodies, sort_keys=True))
    assert len(keys) == 1 and str(next(iter(keys))).startswith("clawvm-"), keys
    return seen


# -- a session alternating between replicas --------------------------------------------------------


@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
@pytest.mark.parametrize("name", TRACE_NAMES)
def test_a_session_alternating_between_replicas_forwards_what_one_replica_does(
    deployment: Deployment, name: str
) -> None:
    trace = TRACES[name]
    a, b = deployment.replicas
    one = replay(deployment, [a], trace, f"one-{name}")
    alternating = replay(deployment, [a, b], trace, f"alternating-{name}")
    assert len(one) == len(alternating) == len(list(trace.turns()))
    for turn, (x, y) in enumerate(zip(one, alternating, strict=True)):
        assert x == y, f"turn {turn}: replicas alternating forwarded something else than one replica"
    paged = [
        turn
        for turn, (sent, messages) in enumerate(zip(alternating, trace.turns(), strict=True))
        if len(json.loads(sent)[0]["messages"]) < len(messages)
    ]
    assert len(paged) > len(one) // 2, "the budget should force paging on most turns"
    single = stored_table(deployment.store_url, f"one-{name}")
    table = stored_table(deployment.store_url, f"alternating-{name}")
    assert table.turn == single.turn == len(one)  # each replica went on from the other's table
    assert (table.version, table.order, table.levels) == (single.version, single.order, single.levels)
    assert len(table.order) == len(list(trace.turns())[-1])  # the last turn's transcript, all ingested


def test_every_key_of_a_session_lives_in_one_slot_on_one_master(deployment: Deployment) -> None:
    session = "one-slot"
    messages = [{"role": "system", "content": "You must always answer in English."}]
    with httpx.Client(timeout=60) as client:
        for turn, target in enumerate([*deployment.replicas, *deployment.replicas]):
            ask = f"Question {turn}: I prefer short answers. " + "word " * 1200  # pages at 4,000 tokens
            messages.append({"role": "user", "content": ask})
            assert chat(client, target, session, messages, []).status_code == 200
            messages.append({"role": "assistant", "content": f"answer {turn}"})
    for tag, expected in ((f"s:{session}", SESSION_KEYS), (f"project:proj-{session}", PROJECT_KEYS)):
        found = {port: node_keys(port, f"cvm:{{{TENANT}:{tag}}}*") for port in deployment.ports}
        holders = [port for port, keys in found.items() if keys]
        assert len(holders) == 1, {port: len(keys) for port, keys in found.items()}
        keys = found[holders[0]]
        assert expected <= {key.rsplit("}", 1)[1].split(":page:")[0] for key in keys}, keys
        with redis.Redis(port=holders[0], decode_responses=True) as node:
            slots = {node.execute_command("CLUSTER KEYSLOT", key) for key in keys}
        assert len(slots) == 1, slots


def test_sessions_spread_over_every_master(deployment: Deployment) -> None:
    with httpx.Client(timeout=60) as client:
        for n in range(SPREAD_SESSIONS):
            target = deployment.replicas[n % 2]
            messages = [{"role": "user", "content": f"hello from session {n}"}]
            assert chat(client, target, f"spread-{n}", messages, []).status_code == 200
    tables = {port: node_keys(port, f"cvm:{{{TENANT}:s:spread-*}}:table") for port in deployment.ports}
    assert sum(len(keys) for keys in tables.values()) == SPREAD_SESSIONS
    assert all(tables.values()), {port: len(keys) for port, keys in tables.items()}


def node_keys(port: int, pattern: str) -> list[str]:
    """The keys one master holds (SCAN on that node alone)."""
    with redis.Redis(port=port, decode_responses=True) as node:
        return sorted(node.scan_iter(match=pattern, count=1000))


# -- concurrent requests for one session -----------------------------------------------------------

OPENING = [
    {"role": "system", "content": "You are a research agent. You must cite the tool result you used."},
    {"role": "user", "content": "Look up the shipping records and summarise them."},
]


def parallel_call(n: int) -> list[dict[str, Any]]:
    """The opening, then one tool call and its distinct result, as a parallel agent sends it."""
    call = {"id": f"call_{n}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"n": n})}}
    result = f"shipping record {n}: marker-{n:02d}-" + "ZQX" * 20 + f" carrier {n} departed on day {n}."
    return [
        *OPENING,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{n}", "content": result},
    ]


def test_concurrent_requests_for_one_session_on_two_replicas_lose_no_update(deployment: Deployment) -> None:
    session = "concurrent"
    with httpx.Client(timeout=60) as client:
        assert chat(client, deployment.replicas[0], session, OPENING, []).status_code == 200
    start = threading.Barrier(CONCURRENT)

    def send(n: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            start.wait()
            return chat(client, deployment.replicas[n % 2], session, parallel_call(n), [])

    with ThreadPoolExecutor(CONCURRENT) as pool:
        responses = list(pool.map(send, range(CONCURRENT)))
    assert [r.status_code for r in responses] == [200] * CONCURRENT, [r.text for r in responses if r.is_error]
    table = stored_table(deployment.store_url, session)
    texts = [page.reprs.full.text for page in table.pages.values()]
    for n in range(CONCURRENT):
        assert any(f"marker-{n:02d}-" in text for text in texts), f"request {n}'s tool result was lost"
    assert table.version == 1 + CONCURRENT  # the opening, then each request's commit, once


def stored_table(store_url: str, session: str) -> PageTable:
    """The session's table as stored in the cluster, read by a client of our own."""

    async def read() -> PageTable:
        async with RedisStore.from_url(store_url) as store:
            record = await store.load_table(TENANT, session_scope(session))
            assert record is not None
            pages = await store.get_pages(TENANT, session_scope(session), page_ids(record.data))
            return load_table(record.data, pages, record.version)

    return asyncio.run(read())
