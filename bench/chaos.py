"""Chaos: faults injected under load, bad inputs, and the committed pages compared across each.

Each phase starts its own rig (bench.load.rig: redis-server, fake upstream, gateway; subprocesses on
loopback) and is bounded in time:

- redis_kill      sessions running; Redis SIGKILLed, down `outage_s`, restarted on the same port
                  and append-only file; sessions go on;
- gateway_kill    sessions running; the gateway SIGKILLed (its process group) and restarted on the
                  same port; clients retry refused connections with a short backoff and count them;
- upstream_faults the fake upstream answers a share of requests with 429/500/503 and cuts a share
                  of streams mid-way (bench.fake_upstream `Faults`); errors carrying the fake's
                  injected message are told apart from the gateway's own;
- bad_inputs      hypothesis-generated bodies and headers (bench.fuzz strategies when the module is
                  there, else a small set of our own) and the OpenAI edge cases, sent while a few
                  sessions keep running; counts of 5xx, transport failures and gateway crashes; then
                  bench.fuzz's structure-aware sweep over one keep-alive connection (5xx, dropped
                  connections, wrong types not refused by name).

Data lost: before each fault (after a warm-up) every session's committed state is read straight
from Redis (each stored table's page ids and those pages' JSON); after recovery and once the
sessions have stopped it is read again: every page committed before must still be there, unchanged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.load import (
    CHUNK_DELAY_S,
    Fleet,
    Rig,
    Tick,
    UpstreamFaults,
    drain,
    lost,
    rig,
    run_fleet,
    unstored_turns,
)
from bench.load import SYSTEM as AGENT_SYSTEM
from gateway.store.tables import TableFormatError, page_ids

PHASES = ("redis_kill", "gateway_kill", "upstream_faults", "bad_inputs")
FUZZ_TIMEOUT_S = 30.0
EXAMPLES_SHOWN = 5
RECOVERY_GRACE_S = 10.0  # how much longer than after_s sessions may take to progress after a fault
CUT_STREAM = ("truncated", "disconnected", "stream_error_event")  # a stream the upstream dropped, as clients see it
TENANT = "default"

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    sessions: int = 50
    warm_s: float = 6.0  # load before the fault (and before the committed state is read)
    outage_s: float = 3.0  # how long Redis stays down
    after_s: float = 8.0  # load after recovery
    fuzz_examples: int = 400  # hypothesis examples (bodies and headers) in bad_inputs
    fuzz_sessions: int = 10  # sessions running during bad_inputs
    error_rate: float = 0.1  # upstream_faults: share answered 429/500/503
    drop_rate: float = 0.05  # upstream_faults: share of streams cut
    chunk_delay_s: float = CHUNK_DELAY_S
    seed: int = 6
    store_options: str = ""  # a query string on the gateway's redis URL (bench.load.LoadPlan)

    @classmethod
    def tiny(cls) -> ChaosPlan:
        return cls(sessions=5, warm_s=2.0, outage_s=1.0, after_s=3.0, fuzz_examples=40, fuzz_sessions=2)

    @classmethod
    def quick(cls) -> ChaosPlan:
        return cls(sessions=20, warm_s=3.0, outage_s=2.0, after_s=4.0, fuzz_examples=150, fuzz_sessions=5)


# ---------------------------------------------------------------- committed state


def committed_pages(url: str) -> dict[str, str | None]:
    """`table key/page id` -> the page's stored JSON (None: named by the table but absent)."""
    found: dict[str, str | None] = {}
    with redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0) as client:
        for table in sorted(client.scan_iter(match=f"cvm:{{{TENANT}:s:*}}:table", count=1000)):
            prefix = table.removesuffix(":table")
            with client.pipeline(transaction=True) as pipe:
                pipe.hget(table, "data")
                pipe.lrange(prefix + ":tlog", 0, -1)
                data, journal = pipe.execute()
            if data is None:
                continue
            try:
                named = page_ids("\n".join([data, *journal]))
            except TableFormatError:
                continue  # unreadable: none of its pages can be loaded, so every one counts as lost
            values = client.mget([f"{prefix}:page:{page}" for page in named]) if named else []
            found.update({f"{prefix}/{page}": value for page, value in zip(named, values, strict=True)})
    return found


def compare(before: dict[str, str | None], after: dict[str, str | None]) -> Json:
    """Pages committed before (present then) that are absent or different after."""
    present = {key: value for key, value in before.items() if value is not None}
    lost = sorted(key for key in present if after.get(key) is None)
    changed = sorted(key for key, value in present.items() if after.get(key) not in (None, value))
    return {
        "pages_before": len(present),
        "pages_after": sum(1 for value in after.values() if value is not None),
        "named_but_absent_before": len(before) - len(present),
        "lost": len(lost),
        "changed": len(changed),
        "examples": (lost + changed)[:EXAMPLES_SHOWN],
    }


async def read_committed(running: Rig) -> dict[str, str | None]:
    return await asyncio.to_thread(committed_pages, running.redis.url)


# ---------------------------------------------------------------- phases under load


Fault = Callable[[Rig], Awaitable[Json]]


async def kill_redis(running: Rig, outage_s: float) -> Json:
    running.redis.kill()
    await asyncio.sleep(outage_s)
    started = time.monotonic()
    await asyncio.to_thread(running.redis.start)
    return {"redis_down_s": outage_s, "redis_restart_s": round(time.monotonic() - started, 2)}


async def kill_gateway(running: Rig) -> Json:
    running.gateway.kill()
    code = running.gateway.server.exit_code if running.gateway.server else None
    started = time.monotonic()
    await asyncio.to_thread(running.gateway.start)
    return {"gateway_exit_code": code, "gateway_restart_s": round(time.monotonic() - started, 2)}


async def no_fault(running: Rig) -> Json:
    return {}


async def until_all_progress(fleet: Fleet, limit_s: float) -> float | None:
    """Seconds until every session has finished a turn more than it had; None if not within limit."""
    marks = [agent.turns for agent in fleet.agents]
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if all(agent.turns > mark for agent, mark in zip(fleet.agents, marks, strict=True)):
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.05)
    return None


async def under_load(running: Rig, plan: ChaosPlan, name: str, fault: Fault) -> Json:
    """Sessions warm up; the committed state is read; the fault; recovery; sessions stop; read again."""
    fleet = Fleet()
    tasks = await run_fleet(fleet, running.gateway_url, None, plan.sessions, 0, name)
    await asyncio.sleep(plan.warm_s)
    before = await read_committed(running)
    errors_before = sum(fleet.gateway.errors.values())
    detail = await fault(running)
    recovered = await until_all_progress(fleet, plan.after_s + RECOVERY_GRACE_S)
    remaining = max(0.0, plan.after_s - (recovered or 0.0))
    await asyncio.sleep(remaining)
    fleet.stopping.set()
    await drain(tasks)
    after = await read_committed(running)
    unstored = await unstored_turns(running, fleet)
    stats = fleet.gateway
    return {
        "phase": name,
        "sessions": plan.sessions,
        "requests": stats.requests,
        "ok": stats.ok,
        "degraded": stats.degraded,
        "errors": dict(sorted(stats.errors.items())),
        "errors_before_fault": errors_before,
        "all_sessions_progressed_after_s": recovered,
        "gateway_alive": running.gateway.alive,
        "data": {**compare(before, after), "answered_turns_not_stored": unstored},
        **detail,
    }


def phase_rig(directory: Path, plan: ChaosPlan, faults: UpstreamFaults | None = None) -> AbstractContextManager[Rig]:
    return rig(directory, chunk_delay=plan.chunk_delay_s, faults=faults, store_options=plan.store_options)


def run_redis_kill(directory: Path, plan: ChaosPlan) -> Json:
    with phase_rig(directory, plan) as running:
        return asyncio.run(under_load(running, plan, "redis_kill", lambda r: kill_redis(r, plan.outage_s)))


def run_gateway_kill(directory: Path, plan: ChaosPlan) -> Json:
    with phase_rig(directory, plan) as running:
        return asyncio.run(under_load(running, plan, "gateway_kill", kill_gateway))


def run_upstream_faults(directory: Path, plan: ChaosPlan) -> Json:
    faults = UpstreamFaults(plan.error_rate, plan.drop_rate, plan.seed)
    with phase_rig(directory, plan, faults) as running:
        figures = asyncio.run(under_load(running, plan, "upstream_faults", no_fault))
    kinds = figures["errors"]
    figures["injected_errors_seen"] = sum(n for kind, n in kinds.items() if kind.endswith("_injected"))
    figures["dropped_streams_seen"] = sum(n for kind, n in kinds.items() if kind in CUT_STREAM)
    figures["gateway_own_errors"] = sum(n for kind, n in kinds.items() if _gateway_own(kind))
    figures["error_rate"], figures["drop_rate"] = plan.error_rate, plan.drop_rate
    return figures


def _gateway_own(kind: str) -> bool:
    """An error the gateway made itself: not an injected status relayed, not a cut stream passed on."""
    return not kind.endswith("_injected") and kind not in CUT_STREAM


# ---------------------------------------------------------------- bad inputs


@dataclass(frozen=True, slots=True)
class Probe:
    """One bad (or odd) request."""

    path: str
    body: bytes
    headers: dict[str, Any]
    method: str = "POST"


def edge_cases() -> list[tuple[str, Json]]:
    """OpenAI's edge cases, each a valid request the gateway must answer with 200."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    calls = [
        {"id": f"call_e{n}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"n":{n}}}'}}
        for n in range(3)
    ]
    null_args = [{"id": "call_null", "type": "function", "function": {"name": "read_file", "arguments": None}}]
    system = {"role": "system", "content": AGENT_SYSTEM}
    return [
        ("empty content", {"messages": [system, {"role": "user", "content": ""}]}),
        ("content parts", {"messages": [system, {"role": "user", "content": [{"type": "text", "text": "hi"}] * 2}]}),
        ("image part", {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]}),
        ("system as parts", {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]}),
        (
            "developer role",
            {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "x"}]},
        ),
        (
            "null tool arguments",
            {
                "messages": [
                    system,
                    {"role": "user", "content": "read it"},
                    {"role": "assistant", "content": None, "tool_calls": null_args},
                    {"role": "tool", "tool_call_id": "call_null", "content": "file text"},
                ]
            },
        ),
        (
            "parallel tool calls",
            {
                "messages": [
                    system,
                    {"role": "user", "content": "read three"},
                    {"role": "assistant", "content": None, "tool_calls": calls},
                    *[{"role": "tool", "tool_call_id": c["id"], "content": f"result {c['id']}"} for c in calls],
                ]
            },
        ),
        ("n=2", {"messages": [system, {"role": "user", "content": "two answers"}], "n": 2}),
        ("n=2 streaming", {"messages": [system, {"role": "user", "content": "two"}], "n": 2, "stream": True}),
        (
            "streaming with usage",
            {"messages": [{"role": "user", "content": "x"}], "stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            "assistant content null, no calls",
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": None},
                    {"role": "user", "content": "b"},
                ]
            },
        ),
        ("unicode", {"messages": [{"role": "user", "content": "naïve 🙂 \u202e ok \u0000"}]}),
    ]


def fuzz_probes(examples: int, seed: int) -> list[Probe]:
    """Hypothesis-drawn probes: bench.fuzz's strategies when present, else a small set of our own."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded

    strategy = _probe_strategy()
    drawn: list[Probe] = []

    @seeded(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(probe: Probe) -> None:
        drawn.append(probe)

    collect()
    return drawn


def _probe_strategy() -> Any:
    from hypothesis import strategies as st

    try:
        from bench import fuzz
    except ImportError:
        fuzz = None
    chat = "/v1/chat/completions"
    if fuzz is not None:
        bodies = st.one_of(
            fuzz.raw_bodies(),
            fuzz.chat_bodies().map(fuzz.encode),
            fuzz.valid_chat_bodies().map(fuzz.encode),
        )
        headers = fuzz.header_sets("bench")
    else:
        bodies = st.one_of(st.binary(max_size=200), _own_chat_bodies())
        headers = st.fixed_dictionaries(
            {"authorization": st.just("Bearer bench")},
            optional={"x-clawvm-session": st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)},
        )
    audit = st.builds(
        lambda session, tail: f"/v1/clawvm/sessions/{session}{tail}",
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"), max_size=60),
        st.sampled_from(["", "/decisions", "/events", "/journal", "/journal?scope=project", "/events?limit=-1"]),
    )
    pages = st.builds(
        lambda page, level: f"/v1/clawvm/pages/{page}?level={level}",
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%&"), max_size=40),
        st.sampled_from(["full", "pointer", "bogus", ""]),
    )
    posts = st.builds(lambda body, head: Probe(chat, body, head), bodies, headers)
    gets = st.builds(lambda path, head: Probe(path, b"", head, "GET"), st.one_of(audit, pages), headers)
    return st.one_of(posts, posts, posts, gets)


def _own_chat_bodies() -> Any:
    from hypothesis import strategies as st

    scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool", "bogus"])},
        optional={
            "content": st.one_of(scalar, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": scalar}))),
            "tool_call_id": scalar,
            "tool_calls": st.one_of(scalar, st.lists(st.dictionaries(st.text(max_size=8), scalar))),
        },
    )
    body = st.fixed_dictionaries(
        {"model": st.just("gpt-4o"), "messages": st.lists(message, max_size=5)},
        optional={"stream": st.booleans(), "n": st.integers(-1, 3)},
    )
    return body.map(lambda b: json.dumps(b).encode())


@dataclass
class FuzzTally:
    sent: int = 0
    unsendable: int = 0  # drawn but refused by the HTTP client itself (never reached the gateway)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    server_errors: list[str] = field(default_factory=list)  # 5xx and transport failures, described
    edge: list[Json] = field(default_factory=list)


def send(client: httpx.Client, root: str, probe: Probe, tally: FuzzTally) -> int | None:
    """One probe; its status (None: the connection failed)."""
    tally.sent += 1
    headers = {"content-type": "application/json", **probe.headers}
    try:
        with client.stream(probe.method, root + probe.path, content=probe.body or None, headers=headers) as response:
            response.read()
            status = response.status_code
    except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeError, ValueError):
        tally.unsendable += 1  # the client refused to send it (a header or URL HTTP does not allow)
        return None
    except httpx.TransportError as exc:
        tally.transport_errors += 1
        tally.server_errors.append(f"transport {type(exc).__name__} on {probe.method} {probe.path[:60]}")
        return None
    tally.statuses[status] += 1
    if status >= 500:
        tally.server_errors.append(f"{status} on {probe.method} {probe.path[:60]}: {probe.body[:120]!r}")
    return status


def fuzz(root: str, probes: Sequence[Probe], alive: Callable[[], bool]) -> FuzzTally:
    tally = FuzzTally()
    with httpx.Client(trust_env=False, timeout=FUZZ_TIMEOUT_S) as client:
        for probe in probes:
            send(client, root, probe, tally)
            if not alive():
                break
        for name, body in edge_cases():
            probe = Probe("/v1/chat/completions", json.dumps({"model": "gpt-4o", **body}).encode(), _auth())
            status = send(client, root, probe, tally)
            tally.edge.append({"case": name, "status": status})
    return tally


def _auth() -> dict[str, Any]:
    return {"authorization": "Bearer bench"}


def health(root: str) -> int | None:
    try:
        return httpx.get(root + "/health", timeout=10.0, trust_env=False).status_code
    except httpx.TransportError:
        return None


async def bad_inputs(running: Rig, plan: ChaosPlan) -> Json:
    probes = fuzz_probes(plan.fuzz_examples, plan.seed)
    fleet = Fleet()
    tasks = await run_fleet(fleet, running.gateway_url, None, plan.fuzz_sessions, 0, "bad-inputs")
    await asyncio.sleep(plan.warm_s)
    before = await read_committed(running)
    root = running.gateway_url.removesuffix("/v1")
    tally = await asyncio.to_thread(fuzz, root, probes, lambda: running.gateway.alive)
    structural = await asyncio.to_thread(structural_sweep, root)
    fleet.stopping.set()
    await drain(tasks)
    after = await read_committed(running)
    unstored = await unstored_turns(running, fleet)
    server_errors = sum(n for status, n in tally.statuses.items() if status >= 500)
    return {
        "phase": "bad_inputs",
        "strategies": "bench.fuzz" if _has_fuzz() else "bench.chaos (own)",
        "probes": tally.sent - tally.unsendable,
        "unsendable": tally.unsendable,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors": server_errors,
        "transport_errors": tally.transport_errors,
        "examples": tally.server_errors[:EXAMPLES_SHOWN],
        "structural": structural,
        "edge_cases": tally.edge,
        "edge_cases_not_200": [e["case"] for e in tally.edge if e["status"] != 200],
        "gateway_alive": running.gateway.alive,
        "gateway_restarts": running.gateway.starts - 1,
        "health_after": health(root),
        "sessions": plan.fuzz_sessions,
        "session_requests": fleet.gateway.requests,
        "session_errors": dict(sorted(fleet.gateway.errors.items())),
        "data": {**compare(before, after), "answered_turns_not_stored": unstored},
    }


def structural_sweep(root: str) -> Json | None:
    """bench.fuzz's structure-aware sweep (every JSON path of valid requests, every JSON type) over
    one keep-alive connection: its counts, or None without bench.fuzz."""
    if not _has_fuzz():
        return None
    from bench.fuzz import OneConnection, structural_mutations, sweep

    with OneConnection(root, _auth(), timeout=FUZZ_TIMEOUT_S) as connection:
        return sweep(connection, structural_mutations()).as_dict()


def _has_fuzz() -> bool:
    try:
        from bench import fuzz  # noqa: F401
    except ImportError:
        return False
    return True


def run_bad_inputs(directory: Path, plan: ChaosPlan) -> Json:
    with phase_rig(directory, replace(plan, chunk_delay_s=0.0)) as running:
        return asyncio.run(bad_inputs(running, plan))


# ---------------------------------------------------------------- all phases


RUNNERS: dict[str, Callable[[Path, ChaosPlan], Json]] = {
    "redis_kill": run_redis_kill,
    "gateway_kill": run_gateway_kill,
    "upstream_faults": run_upstream_faults,
    "bad_inputs": run_bad_inputs,
}


def run_chaos(directory: Path, plan: ChaosPlan, phases: Sequence[str] = PHASES, tick: Tick = lambda _: None) -> Json:
    """Each phase in its own rig under `directory/<phase>`; their figures by phase name."""
    results: Json = {}
    for name in phases:
        tick(f"chaos: {name} ...")
        results[name] = RUNNERS[name](directory / name, plan)
    return results


def lost_pages(results: Json) -> int:
    """Committed pages lost or changed, and answered turns not stored, over every phase."""
    return sum(lost(phase["data"]) for phase in results.values())


def format_chaos(results: Json) -> list[str]:
    lines: list[str] = []
    for name, phase in results.items():
        lines += ["", f"## Chaos: {name.replace('_', ' ')}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in _rows(phase)]
    return lines


def _rows(phase: Json) -> Iterator[tuple[str, Any]]:
    data = phase["data"]
    if phase["phase"] == "bad_inputs":
        yield "strategies", phase["strategies"]
        yield "probes sent (hypothesis + edge cases)", phase["probes"]
        yield "statuses", ", ".join(f"{k}: {v}" for k, v in phase["statuses"].items())
        yield "5xx answers", phase["server_errors"]
        yield "transport failures", phase["transport_errors"]
        yield "gateway crashes (restarts needed)", 0 if phase["gateway_alive"] else 1
        yield from _structural_rows(phase.get("structural"))
        yield "/health after", phase["health_after"]
        yield (
            "OpenAI edge cases answered 200",
            f"{len(phase['edge_cases']) - len(phase['edge_cases_not_200'])}/{len(phase['edge_cases'])}",
        )
        if phase["edge_cases_not_200"]:
            yield "edge cases not 200", ", ".join(phase["edge_cases_not_200"])
        yield (
            f"sessions alongside ({phase['sessions']}): requests, errors",
            f"{phase['session_requests']}, {_kinds(phase['session_errors'])}",
        )
        for example in phase["examples"]:
            yield "example", f"`{example[:160]}`"
    else:
        yield "sessions", phase["sessions"]
        yield "requests (whole streams)", f"{phase['requests']} ({phase['ok']})"
        yield "errors by kind", _kinds(phase["errors"])
        yield "served degraded (`x-clawvm-degraded`)", phase["degraded"]
        for key in ("redis_down_s", "redis_restart_s", "gateway_exit_code", "gateway_restart_s"):
            if key in phase:
                yield key.replace("_", " "), phase[key]
        for key in ("injected_errors_seen", "dropped_streams_seen", "gateway_own_errors"):
            if key in phase:
                yield key.replace("_", " "), phase[key]
        progressed = phase["all_sessions_progressed_after_s"]
        yield (
            "every session made progress after the fault",
            "no" if progressed is None else f"yes, within {progressed} s",
        )
        yield "gateway alive at the end", "yes" if phase["gateway_alive"] else "NO"
    yield "committed pages before / after", f"{data['pages_before']} / {data['pages_after']}"
    yield "committed pages lost / changed", f"{data['lost']} / {data['changed']}"
    if "answered_turns_not_stored" in data:
        yield "answered turns missing from the store at the end", data["answered_turns_not_stored"]
    for example in data["examples"]:
        yield "lost or changed", f"`{example}`"


def _structural_rows(swept: Json | None) -> Iterator[tuple[str, Any]]:
    if not swept:
        return
    yield "structure-aware sweep: requests (statuses)", f"{swept['requests']} ({_statuses(swept['statuses'])})"
    yield (
        "structure-aware sweep: 5xx / dropped connections",
        f"{swept['server_errors']} / {swept['dropped_connections']}",
    )
    yield (
        "structure-aware sweep: wrong types accepted / not refused by name / not OpenAI's error shape",
        f"{swept['wrong_types_accepted']} / {swept['misnamed']} / {swept['not_openai_errors']}",
    )
    for example in swept["examples"][:EXAMPLES_SHOWN]:
        yield "structure-aware example", f"`{example[:160]}`"


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in counts.items())


def _kinds(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in errors.items()) or "none"
