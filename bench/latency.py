"""Gateway-added latency: the fake upstream called directly and through the gateway, side by side.

Both servers run as subprocesses on free loopback ports: `python -m bench.fake_apis` (the fake
Chat Completions, Messages and Responses APIs) and `clawvm serve --store embedded` (with a
throw-away config whose `store.data_dir` is a temporary directory). One keep-alive `httpx.Client`
interleaves the two paths (direct, gateway, direct, ...) with byte-identical bodies, after a
discarded warm-up. Four series per wire format (chat, then Anthropic Messages, then Responses,
the same conversation in each: `bench.wire_bodies`): a fixed tau-bench prefix of about ten
messages with its tools (a transcript the gateway already knows after the first request) and a
growing session (each request appends an assistant tool call and its result), each
non-streaming and streaming (the whole SSE body is read). Every process started here is stopped,
its process group included (the gateway's embedded redis-server).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.policy_time import Summary, summarize_ns
from bench.traces import Trace
from bench.wire_bodies import to_messages, to_responses
from gateway.store.embedded import free_port
from gateway.turns.stages import HEADER as STAGES_HEADER
from gateway.turns.stages import logged_stages, parse_header
from gateway.upstream.tokens import prepare_offline

MODEL = "gpt-4o"
REQUESTS = 400
WARMUP = 50
BUDGET = 16000
PREFIX_MESSAGES = 10
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
GROUP_GRACE_S = 3.0
REQUEST_TIMEOUT_S = 30.0
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench", "anthropic-version": "2023-06-01"}
WIRES = ("chat", "messages", "responses")
PATHS = {"chat": "/chat/completions", "messages": "/messages", "responses": "/responses"}
FINISHED = {"chat": b"data: [DONE]", "messages": b"message_stop", "responses": b"response.completed"}
ANSWERED = {"chat": "choices", "messages": "content", "responses": "output"}
REPO = Path(__file__).resolve().parent.parent

Json = dict[str, Any]
BodyFactory = Callable[[int], bytes]


class BenchError(RuntimeError):
    """A server would not start, or the bench could not run."""


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    name: str
    pid: int  # also its process group id: each server starts its own session
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    stream: bool
    wire: str  # "chat" | "messages" | "responses"
    direct: Summary
    gateway: Summary
    added_median_us: float  # median(gateway) - median(direct)
    overhead_header: Summary | None  # the gateway's x-clawvm-overhead-us (None: header absent)
    policy_header: Summary | None  # the gateway's x-clawvm-policy-us
    direct_failures: int
    gateway_failures: int
    stages: dict[str, float] = field(default_factory=dict)  # µs by stage, the median gateway request's


@dataclass(frozen=True, slots=True)
class LatencyReport:
    trace: str
    prefix_messages: int
    requests: int
    warmup: int
    budget: int | None
    series: tuple[Series, ...]
    processes: tuple[ProcessRecord, ...]

    @property
    def failures(self) -> int:
        return sum(s.direct_failures + s.gateway_failures for s in self.series)


# ---------------------------------------------------------------- processes


@dataclass(slots=True)
class Server:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None

    def record(self) -> ProcessRecord:
        return ProcessRecord(self.name, self.process.pid, self.exit_code)


def group_alive(pgid: int) -> bool:
    """True while a live process (not a zombie) of group `pgid` exists.

    Zombies are dead: they wait for a parent to reap them, and a container's PID 1 may never do so.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return _group_signalable(pgid)
    return any(_live_member(entry, pgid) for entry in proc.iterdir() if entry.name.isdigit())


def _live_member(entry: Path, pgid: int) -> bool:
    try:
        fields = (entry / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False  # it ended while we looked
    return len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid


def _group_signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    prepare_offline(env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def launched(name: str, argv: Sequence[str], health_url: str, env: Mapping[str, str], log: Path) -> Iterator[Server]:
    """Start `argv` in a new process group, wait until `health_url` answers 200, stop it on exit."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: children (redis-server) are found on stop
        )
    server = Server(name, process, log)
    try:
        wait_healthy(server, health_url)
        yield server
    finally:
        stop(server)


def wait_healthy(server: Server, url: str, limit: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + limit
    with httpx.Client(trust_env=False, timeout=2.0) as probe:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                code = server.process.returncode
                raise BenchError(f"{server.name} exited with {code} while starting:\n{log_tail(server.log)}")
            if _answers(probe, url):
                return
            time.sleep(0.05)
    raise BenchError(f"{server.name} did not answer {url} within {limit:.0f}s:\n{log_tail(server.log)}")


def _answers(probe: httpx.Client, url: str) -> bool:
    try:
        return probe.get(url).status_code == 200
    except httpx.TransportError:
        return False


def stop(server: Server) -> None:
    """SIGTERM the leader and wait; then stop whatever of its process group is left."""
    process = server.process
    if process.poll() is None:
        process.terminate()
    try:
        server.exit_code = process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        server.exit_code = process.wait()
    clear_group(process.pid)


def clear_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, what is still alive in the group (a child the leader left behind)."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(pgid):
            return
        _signal_group(pgid, signum)
        deadline = time.monotonic() + GROUP_GRACE_S
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def clawvm_command() -> list[str]:
    """The `clawvm` entry point beside this interpreter; `python -m gateway.cli` when not installed."""
    script = Path(sys.executable).parent / "clawvm"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]


def gateway_argv(config: Path, port: int, upstream: str, budget: int | None) -> list[str]:
    argv = clawvm_command() + ["serve", "--config", str(config), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--upstream", upstream, "--store", "embedded", "--log-level", "warning"]
    return argv + (["--budget", str(budget)] if budget is not None else [])


def write_config(directory: Path, anthropic_base: str | None = None) -> Path:
    config = directory / "config.yaml"
    data_dir = directory / "data"
    text = f"store:\n  data_dir: {json.dumps(str(data_dir))}\n"
    if anthropic_base is not None:  # the Messages API's upstream
        text += f"upstream:\n  anthropic_base: {json.dumps(anthropic_base)}\n"
    text += "limits: {max_concurrent_requests: 0}\n"  # the load bench's sessions are all one (open) tenant
    text += "server: {log_timings: true}\n"  # each turn's stages, after-response work included (logged_timings)
    config.write_text(text, encoding="utf-8")
    return config


def logged_timings(log: Path) -> list[dict[str, float]]:
    """The stages (µs by name) of each turn a gateway started with `write_config` logged
    (`server.log_timings`), every worker's, in the order logged; [] when there is no log. Beside
    the answer's `server-timing` stages they hold the save's parts, "complete" and "commit" (run
    beside "upstream"), and "after": the work once the answer was sent (audit records, metrics,
    the inspector's record, recall observations)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [stages for stages in map(logged_stages, lines) if stages is not None]


def stage_medians_us(
    stages: Sequence[Mapping[str, float]], logged: Sequence[Mapping[str, float]] = ()
) -> dict[str, float]:
    """Each `server-timing` stage's median over `stages` (one request's each), µs: the stages of
    different requests, they need not add up to one request's time; then the median of each part
    only the timings log has (`logged`: `logged_timings`), over the turns that logged it."""
    names = dict.fromkeys(name for one in stages for name in one)
    medians = {name: round(statistics.median(one.get(name, 0.0) for one in stages), 1) for name in names}
    for name in dict.fromkeys(name for one in logged for name in one if name not in names):
        medians[name] = round(statistics.median(one[name] for one in logged if name in one), 1)
    return medians


# ---------------------------------------------------------------- bodies


def latency_trace(traces: Sequence[Trace]) -> Trace:
    """A tau-bench trace with tools (the first by name), else any trace with tools."""
    with_tools = [t for t in traces if t.tools]
    preferred = [t for t in with_tools if t.name.startswith("taubench")]
    if not (preferred or with_tools):
        raise BenchError("no trace with tools to build a latency body from")
    return (preferred or with_tools)[0]


def prefix(trace: Trace, size: int = PREFIX_MESSAGES) -> list[Json]:
    """The first request of the trace carrying at least `size` messages (a valid transcript)."""
    turns = list(trace.turns())
    if not turns:
        raise BenchError(f"trace {trace.name} has no request to replay")
    return next((t for t in turns if len(t) >= size), turns[-1])


def encode(body: Json) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def request_body(
    messages: Sequence[Json], tools: Sequence[Json], stream: bool, session: str, wire: str = "chat"
) -> Json:
    """The request in `wire`'s format (the chat transcript translated: `bench.wire_bodies`)."""
    if wire == "messages":
        system, turns, shaped = to_messages(messages, tools)
        body: Json = {"model": MODEL, "max_tokens": 1024, "system": system, "messages": turns}
        body["metadata"] = {"user_id": session}
    elif wire == "responses":
        instructions, items, shaped = to_responses(messages, tools)
        body = {"model": MODEL, "instructions": instructions, "input": items, "store": False, "user": session}
    else:
        body, shaped = {"model": MODEL, "messages": list(messages), "user": session}, list(tools)
        if stream:
            body["stream_options"] = {"include_usage": True}
    if shaped:
        body["tools"] = shaped
    if stream:
        body["stream"] = True
    return body


def static_bodies(trace: Trace, stream: bool, session: str, wire: str = "chat") -> BodyFactory:
    body = encode(request_body(prefix(trace), trace.tools, stream, session, wire))
    return lambda _: body


def growing_bodies(trace: Trace, stream: bool, session: str, wire: str = "chat") -> BodyFactory:
    """Request n carries the prefix plus n + 1 appended tool-call steps: the agent loop's growth."""
    start, tool = prefix(trace), _tool_name(trace)

    def body(number: int) -> bytes:
        steps = [message for step in range(number + 1) for message in appended_step(step, tool)]
        return encode(request_body(start + steps, trace.tools, stream, session, wire))

    return body


def _tool_name(trace: Trace) -> str:
    function = trace.tools[0].get("function", trace.tools[0])
    return str(function.get("name", "lookup"))


def appended_step(step: int, tool: str) -> list[Json]:
    call_id = f"call_bench_{step:06d}"
    function = {"name": tool, "arguments": json.dumps({"step": step})}
    call = {"id": call_id, "type": "function", "function": function}
    result = "; ".join(f"record {step}-{n}: status confirmed, amount {100 + n}.00 USD" for n in range(8))
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Endpoints:
    direct: str  # the fake upstream's /v1
    gateway: str  # the gateway's /v1


@dataclass(slots=True)
class PathSamples:
    times_ns: list[int] = field(default_factory=list)
    overhead_us: list[int] = field(default_factory=list)
    policy_us: list[int] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)  # Server-Timing, in step with times_ns
    failures: int = 0

    def add(self, elapsed_ns: int, response: httpx.Response, stream: bool, wire: str = "chat") -> None:
        self.times_ns.append(elapsed_ns)
        self.failures += 0 if succeeded(response, stream, wire) else 1
        headers = response.headers
        if "x-clawvm-overhead-us" in headers:
            self.overhead_us.append(int(headers["x-clawvm-overhead-us"]))
        if "x-clawvm-policy-us" in headers:
            self.policy_us.append(int(headers["x-clawvm-policy-us"]))
        self.stages.append(parse_header(headers.get(STAGES_HEADER, "")))


def succeeded(response: httpx.Response, stream: bool, wire: str = "chat") -> bool:
    if response.status_code != 200:
        return False
    if stream:
        return FINISHED[wire] in response.content
    try:
        return bool(response.json().get(ANSWERED[wire]))
    except ValueError:
        return False


def timed_post(
    client: httpx.Client, url: str, body: bytes, stream: bool, samples: PathSamples, wire: str = "chat"
) -> None:
    """One request; the whole response body (every SSE event too) is read inside the timed region."""
    started = time.perf_counter_ns()
    response = client.post(url, content=body, headers=HEADERS)
    elapsed = time.perf_counter_ns() - started
    samples.add(elapsed, response, stream, wire)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    stream: bool
    bodies: BodyFactory
    wire: str = "chat"


def interleave(
    client: httpx.Client, endpoints: Endpoints, workload: Workload, numbers: range
) -> tuple[PathSamples, PathSamples]:
    """Request n goes direct, then through the gateway, with the same bytes."""
    direct, gateway = PathSamples(), PathSamples()
    path, stream, wire = PATHS[workload.wire], workload.stream, workload.wire
    for number in numbers:
        body = workload.bodies(number)
        timed_post(client, endpoints.direct + path, body, stream, direct, wire)
        timed_post(client, endpoints.gateway + path, body, stream, gateway, wire)
    return direct, gateway


def measure(client: httpx.Client, endpoints: Endpoints, workload: Workload, warmup: int, requests: int) -> Series:
    """The first `warmup` bodies are sent and discarded; the next `requests` are measured."""
    interleave(client, endpoints, workload, range(warmup))
    direct, gateway = interleave(client, endpoints, workload, range(warmup, warmup + requests))
    return series(workload, direct, gateway)


def series(workload: Workload, direct: PathSamples, gateway: PathSamples) -> Series:
    direct_summary, gateway_summary = summarize_ns(direct.times_ns), summarize_ns(gateway.times_ns)
    return Series(
        name=workload.name,
        stream=workload.stream,
        wire=workload.wire,
        direct=direct_summary,
        gateway=gateway_summary,
        added_median_us=round(gateway_summary.median_us - direct_summary.median_us, 1),
        overhead_header=_header_summary(gateway.overhead_us),
        policy_header=_header_summary(gateway.policy_us),
        stages=median_request_stages(gateway),
        direct_failures=direct.failures,
        gateway_failures=gateway.failures,
    )


def median_request_stages(samples: PathSamples) -> dict[str, float]:
    """The stage breakdown (gateway `Server-Timing`, µs) of the request whose whole time is the
    median, plus what the client saw beyond the gateway's stages ("client+wire": the client, the
    loopback, the answer's relay)."""
    if not samples.times_ns:
        return {}
    order = sorted(range(len(samples.times_ns)), key=samples.times_ns.__getitem__)
    middle = order[len(order) // 2]
    stages = dict(samples.stages[middle]) if middle < len(samples.stages) else {}
    stages["client+wire"] = round(samples.times_ns[middle] / 1000 - sum(stages.values()), 1)
    return stages


def _header_summary(values_us: Sequence[int]) -> Summary | None:
    return summarize_ns([us * 1000 for us in values_us]) if values_us else None


def workloads(trace: Trace) -> list[Workload]:
    """Each series talks to its own gateway session (the `user` field, `metadata.user_id`)."""
    made = []
    for wire in WIRES:
        for name, factory in (("static", static_bodies), ("growing", growing_bodies)):
            for stream in (False, True):
                session = f"bench-{wire}-{name}-{'stream' if stream else 'json'}"
                made.append(Workload(name, stream, factory(trace, stream, session, wire), wire))
    return made


# ---------------------------------------------------------------- the whole bench


def run_latency(
    traces: Sequence[Trace], requests: int = REQUESTS, warmup: int = WARMUP, budget: int | None = BUDGET
) -> LatencyReport:
    trace = latency_trace(traces)
    with tempfile.TemporaryDirectory(prefix="clawvm-bench-") as scratch, ExitStack() as stack:
        fake, gateway, endpoints = start_servers(stack, Path(scratch), budget)
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
            measured = tuple(measure(client, endpoints, w, warmup, requests) for w in workloads(trace))
    processes = (fake.record(), gateway.record())  # both stopped by now
    return LatencyReport(trace.name, len(prefix(trace)), requests, warmup, budget, measured, processes)


def start_servers(stack: ExitStack, directory: Path, budget: int | None) -> tuple[Server, Server, Endpoints]:
    """The fake upstream, then the gateway in front of it; `stack` stops them in reverse order."""
    env = server_env(os.environ)
    fake_port, gateway_port = free_port(), free_port()
    fake_base = f"http://127.0.0.1:{fake_port}/v1"
    fake_argv = [sys.executable, "-m", "bench.fake_apis", "--port", str(fake_port)]
    fake_log, gateway_log = directory / "fake.log", directory / "gateway.log"
    fake = stack.enter_context(launched("fake upstream", fake_argv, fake_base + "/models", env, fake_log))
    gateway_root = f"http://127.0.0.1:{gateway_port}"
    config = write_config(directory, anthropic_base=fake_base.removesuffix("/v1"))
    argv = gateway_argv(config, gateway_port, fake_base, budget)
    gateway = stack.enter_context(launched("gateway", argv, gateway_root + "/health", env, gateway_log))
    return fake, gateway, Endpoints(fake_base, gateway_root + "/v1")


def format_latency(report: LatencyReport) -> list[str]:
    budget = report.budget if report.budget is not None else "default"
    lines = [
        "gateway-added latency: fake upstream direct vs via gateway (subprocesses, loopback, keep-alive)",
        f"  body: {report.trace}, prefix of {report.prefix_messages} messages with tools; budget {budget}",
        f"  {report.requests} interleaved requests per path and series, after {report.warmup} warm-up each",
    ]
    for item in report.series:
        lines += _format_series(item)
    return lines + [f"  {p.name}: pid {p.pid}, {_exit(p.exit_code)}" for p in report.processes]


def _exit(code: int | None) -> str:
    if code is None:
        return "still running"
    return f"ended by signal {-code}" if code < 0 else f"exit code {code}"


def _format_series(item: Series) -> list[str]:
    lines = [f"{item.wire} {PATHS[item.wire]}, {item.name}, {'stream' if item.stream else 'non-stream'}:"]
    for label, summary in (("direct", item.direct), ("gateway", item.gateway)):
        lines.append(
            f"  {label:<8} median {summary.median_us:>9.1f} µs  "
            f"p95 {summary.p95_us:>9.1f} µs  p99 {summary.p99_us:>9.1f} µs"
        )
    lines.append(f"  added (median gateway - median direct): {item.added_median_us:.1f} µs")
    headers = (("x-clawvm-overhead-us", item.overhead_header), ("x-clawvm-policy-us", item.policy_header))
    for label, header in headers:
        shown = f"median {header.median_us:.0f} µs, p95 {header.p95_us:.0f} µs" if header else "absent"
        lines.append(f"  {label}: {shown}")
    if item.stages:
        parts = ", ".join(f"{name} {spent:.0f}" for name, spent in item.stages.items())
        lines.append(f"  median request's stages (µs): {parts}")
    if item.direct_failures or item.gateway_failures:
        lines.append(f"  FAILED requests: direct {item.direct_failures}, gateway {item.gateway_failures}")
    return lines
