"""Cost growth: the policy engine's time and the gateway's added latency at turns 10, 100 and 1,000
of one session. Per-turn cost should follow the new content, not the session length.

- policy time: in process, with `bench.policy_time`'s replays of its synthetic agent loop: each
  turn within `window` of a mark timed once per replay on the table as that replay left it
  (median of the replays), then the median over those turns (a re-planning turn is one of them,
  not all);
- added latency: the same agent loop sent turn by turn to a real gateway subprocess (embedded
  store) and, around each marked turn, the same bytes straight to the fake upstream
  (`bench.latency.start_servers`), each of those timed requests after the same pause (`walk`).
  For the turns within `window` of a mark: the median wall time of each path, their
  difference, and the gateway's own x-clawvm-policy-us and x-clawvm-overhead-us headers.

Every figure here is a timing: it changes from run to run. The counts (turns, messages, bytes,
failures) do not.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.latency import HEADERS, PATHS, REQUEST_TIMEOUT_S, Endpoints, encode, start_servers
from bench.policy_time import (
    GROWTH_REPEATS,
    GROWTH_TURNS,
    MODEL,
    GrowthPoint,
    engine,
    growth_replay,
    synthetic_session,
)
from gateway.wire.chat_json import parse_messages
from policies.tokens import TokenCounter

BUDGET = 4000
WINDOW = 5  # turns each side of a mark: 11 samples per mark
PAUSE_S = 0.05  # idle time before each timed request (see `walk`)
SESSION = "growth"


@dataclass(frozen=True, slots=True)
class HttpPoint:
    turn: int
    messages: int
    request_bytes: int
    samples: int
    direct_median_us: float
    gateway_median_us: float
    added_median_us: float  # gateway - direct
    policy_header_median_us: float  # the gateway's x-clawvm-policy-us
    overhead_header_median_us: float  # the gateway's x-clawvm-overhead-us


@dataclass(frozen=True, slots=True)
class GrowthReport:
    budget: int
    marks: tuple[int, ...]
    window: int
    policy: tuple[GrowthPoint, ...]
    http: tuple[HttpPoint, ...]
    failures: int  # non-200 answers on either path

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def ratios(self) -> dict[str, float | None]:
        """Last mark over first mark: 1.0 means the cost does not grow with the session. None where
        there is no such ratio: no marks, or a time at either mark that is not positive (a
        negative or zero time is a measurement error, and a ratio of it would look like no growth)."""
        return {
            "policy": _ratio(self.policy[0].median_us, self.policy[-1].median_us) if self.policy else None,
            "added_latency": _ratio(self.http[0].added_median_us, self.http[-1].added_median_us) if self.http else None,
        }


def _ratio(first: float, last: float) -> float | None:
    if not (math.isfinite(first) and math.isfinite(last)) or first <= 0 or last <= 0:
        return None
    return round(last / first, 2)


@dataclass
class Samples:
    direct_ns: list[int]
    gateway_ns: list[int]
    policy_us: list[int]
    overhead_us: list[int]
    failures: int = 0


def policy_growth(
    counter: TokenCounter, budget: int, marks: Sequence[int], window: int, repeats: int
) -> tuple[GrowthPoint, ...]:
    """Per mark: the median over the turns within `window` of it of each turn's median time
    (`samples_us` holds those per-turn medians, in turn order), in process."""
    near = {mark: range(max(mark - window, 1), mark + window + 1) for mark in marks}
    turns = sorted({turn for span in near.values() for turn in span})
    messages = parse_messages(synthetic_session(max(turns)))
    timed_ns = growth_replay(messages, turns, engine(counter, budget), repeats)
    per_turn = {turn: statistics.median(samples) / 1000 for turn, samples in timed_ns.items()}
    return tuple(_policy_point(mark, [per_turn[t] for t in near[mark]]) for mark in marks)


def _policy_point(mark: int, medians_us: Sequence[float]) -> GrowthPoint:
    samples = tuple(round(us, 1) for us in medians_us)
    return GrowthPoint(turn=mark, messages=2 * mark, median_us=round(statistics.median(samples), 1), samples_us=samples)


def body_at(wire: Sequence[dict[str, Any]], turn: int) -> bytes:
    """Request number `turn` of the synthetic agent loop, as the agent sends it."""
    messages = list(wire[: 2 + 2 * (turn - 1)])
    return encode({"model": MODEL, "messages": messages, "user": SESSION})


def timed(client: httpx.Client, url: str, body: bytes) -> tuple[int, httpx.Response]:
    started = time.perf_counter_ns()
    response = client.post(url, content=body, headers=HEADERS)
    return time.perf_counter_ns() - started, response


def walk(
    client: httpx.Client, endpoints: Endpoints, marks: Sequence[int], window: int
) -> tuple[dict[int, Samples], int]:
    """Every turn through the gateway; turns near a mark also straight to the fake, same bytes.
    Returns the samples per mark and the failures on the other turns.

    Each timed request (a turn near a mark, either way) is sent after a pause of `PAUSE_S`, its
    body encoded before it, so that every mark's request meets a server idle for as long, as an
    agent's requests do (they come seconds apart: the model generates, tools run). Sent back to
    back, a turn-1,000 request met a gateway left idle for the tens of milliseconds in which the
    fake parsed the 1.2 MB direct request and the client encoded the next body, and a turn-10
    request one busy a moment before: at turn 1,000 every part of the turn ran about twice as
    slow, fixed work included."""
    wire = synthetic_session(max(marks) + window)
    near = {mark: range(mark - window, mark + window + 1) for mark in marks}
    found = {mark: Samples([], [], [], []) for mark in marks}
    failures = 0
    for turn in range(1, max(marks) + window + 1):
        body = body_at(wire, turn)
        mark = next((m for m, turns in near.items() if turn in turns), None)
        if mark is not None:
            time.sleep(PAUSE_S)
        elapsed, response = timed(client, endpoints.gateway + PATHS["chat"], body)
        if mark is not None:
            _sample(found[mark], client, endpoints.direct + PATHS["chat"], body, elapsed, response)
        else:
            failures += response.status_code != 200
    return found, failures


def _sample(
    samples: Samples, client: httpx.Client, direct: str, body: bytes, elapsed: int, answer: httpx.Response
) -> None:
    time.sleep(PAUSE_S)
    direct_ns, straight = timed(client, direct, body)
    samples.direct_ns.append(direct_ns)
    samples.gateway_ns.append(elapsed)
    samples.policy_us.append(int(answer.headers.get("x-clawvm-policy-us", "0")))
    samples.overhead_us.append(int(answer.headers.get("x-clawvm-overhead-us", "0")))
    samples.failures += (answer.status_code != 200) + (straight.status_code != 200)


def http_point(mark: int, samples: Samples, request_bytes: int) -> HttpPoint:
    direct = statistics.median(samples.direct_ns) / 1000
    gateway = statistics.median(samples.gateway_ns) / 1000
    return HttpPoint(
        turn=mark,
        messages=2 * mark,
        request_bytes=request_bytes,
        samples=len(samples.gateway_ns),
        direct_median_us=round(direct, 1),
        gateway_median_us=round(gateway, 1),
        added_median_us=round(gateway - direct, 1),
        policy_header_median_us=round(float(statistics.median(samples.policy_us)), 1),
        overhead_header_median_us=round(float(statistics.median(samples.overhead_us)), 1),
    )


def added_latency(
    marks: Sequence[int], window: int = WINDOW, budget: int = BUDGET
) -> tuple[tuple[HttpPoint, ...], int]:
    """The HTTP points and the failure count, from real subprocess servers (stopped on return)."""
    wire = synthetic_session(max(marks) + window)
    with tempfile.TemporaryDirectory(prefix="clawvm-growth-") as scratch, ExitStack() as stack:
        _, _, endpoints = start_servers(stack, Path(scratch), budget)
        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
            found, failures = walk(client, endpoints, marks, window)
    points = tuple(http_point(mark, found[mark], len(body_at(wire, mark))) for mark in marks)
    return points, failures + sum(s.failures for s in found.values())


def run_growth(
    counter: TokenCounter,
    marks: Sequence[int] = GROWTH_TURNS,
    *,
    window: int = WINDOW,
    repeats: int = GROWTH_REPEATS,
    budget: int = BUDGET,
    progress: Callable[[str], None] | None = None,
) -> GrowthReport:
    done = progress or (lambda _: None)
    policy = policy_growth(counter, budget, marks, window, repeats)
    done("policy time")
    http, failures = added_latency(marks, window, budget)
    done("added latency")
    return GrowthReport(budget, tuple(marks), window, policy, http, failures)
