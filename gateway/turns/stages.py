"""Where a turn's time goes: the stages of one request, sent as a `Server-Timing` header.

`Stages` is started when the request arrives and `lap`ped at each stage's end; the header lists
each stage's duration in milliseconds (receive, parse, ingest, assemble, store, serialise,
upstream, persist), so a bench can print the breakdown of its median request. "receive" is the
wait for the request's body once its headers came (the client's upload, and reading it in). "store" is the planning time
that is not the policy engine's: loading (and, once another writer of the store was seen,
committing) the session's table, write-back, rendering the body. "persist" is the wait, once the
upstream answered, for the turn's save that ran beside the upstream call (gateway.store.saving).
Work done after the answer is sent (audit records, metrics, the inspector's record) cannot be in a
header of that answer: with `server.log_timings` it is timed as "after" and each turn's stages are
logged as one line on the `clawvm.timings` logger (`TIMINGS_LOGGER`), in the header's own format,
so a bench (or an operator) can read every worker's turns from the log. The line also holds the
save's two parts, "complete" (`policies.step.complete`) and "commit" (the write-back and the save
script), which ran beside "upstream" and "persist": they overlap those, so the line's stages do not
add up to the request's time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

HEADER = "server-timing"
TIMINGS_LOGGER = "clawvm.timings"
AFTER = "after"  # the stage of the work done once the answer was sent


@dataclass(slots=True)
class Stages:
    started: int = field(default_factory=time.perf_counter_ns)
    laps: dict[str, int] = field(default_factory=dict)  # stage name -> nanoseconds
    _last: int = 0

    def __post_init__(self) -> None:
        self._last = self.started

    def lap(self, name: str) -> int:
        """The time since the previous lap (or the start) is `name`'s; returns it in ns."""
        now = time.perf_counter_ns()
        spent, self._last = now - self._last, now
        self.add(name, spent)
        return spent

    def split(self, name: str, parts: dict[str, int]) -> None:
        """Divide `name`'s lap into `parts` (ns each, measured inside it); the rest stays `name`'s."""
        rest = self.laps.pop(name, 0)
        for part, spent in parts.items():
            self.add(part, spent)
            rest -= spent
        self.add(name, max(rest, 0))

    def add(self, name: str, spent: int) -> None:
        """`spent` ns more for `name`, timed apart from the laps (work after the answer was sent)."""
        self.laps[name] = self.laps.get(name, 0) + spent

    def header(self) -> str:
        return ", ".join(f"{name};dur={spent / 1e6:.3f}" for name, spent in self.laps.items())


def timed_after(work: Callable[[], Awaitable[None]], stages: Stages) -> Callable[[], Awaitable[None]]:
    """`work` (what runs once the answer was sent) timed as the AFTER stage; once it ends, the
    turn's stages are logged as one `clawvm.timings` line (`server.log_timings`)."""

    async def run() -> None:
        started = time.perf_counter_ns()
        await work()
        stages.add(AFTER, time.perf_counter_ns() - started)
        logging.getLogger(TIMINGS_LOGGER).info("%s", stages.header())

    return run


def logged_stages(line: str) -> dict[str, float] | None:
    """The stages (µs by name) of one `clawvm.timings` log line, None for any other line."""
    _, marker, value = line.partition(f" {TIMINGS_LOGGER}: ")
    return parse_header(value) if marker else None


def parse_header(value: str) -> dict[str, float]:
    """A `Server-Timing` header's durations in microseconds, by stage name (unknown parts ignored)."""
    found: dict[str, float] = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, number = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    found[name] = float(number) * 1000
                except ValueError:
                    continue
    return found
