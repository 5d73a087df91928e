"""`python -m bench.live_read`: what a new session's start costs to read a long live predecessor.

A returning user's new session carries its live predecessor's rules, preferences, intents and
current plan (`policies.crossing`). This bench stores one predecessor of `--turns` turns of
`bench.policy_time`'s synthetic agent loop in a real Redis server (`gateway.store.embedded`),
once as it is (no plan) and once with a plan among its last messages, then reads it as another
process would, nothing cached, `--repeats` times each way, alternately:

- whole: the table and every page (`SessionState.read`), then what carries (`Live.of`), as the
  start read it before;
- live: what carries only (`SessionState.live`: the table record, the carried and fact pages,
  the newest pages back to the current plan).

Both must carry the same pages (checked on every read). It prints each way's median wall time.
Every figure but the counts is a timing: it changes from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.policy_time import synthetic_session
from gateway.store.embedded import EmbeddedRedis
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore
from gateway.wire.chat_json import parse_messages
from policies.crossing import Live
from policies.pages import PageType
from policies.pagetable import PageTable, ingest
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter

TENANT = "bench"
PLAN = "Plan:\n1. [x] Reproduce the failure\n2. [ ] Fix the parser\n3. [ ] Run the tests"


@dataclass(frozen=True, slots=True)
class Read:
    """One predecessor read both ways."""

    name: str
    messages: int
    pages: int
    plans: int
    carried: int  # pages that carry
    whole_ms: float  # median
    live_ms: float  # median


def predecessor(turns: int, plan: bool) -> list[dict[str, object]]:
    """The synthetic agent loop's request number `turns`; with `plan`, a plan and a reply after it."""
    raw = synthetic_session(turns)
    if plan:
        raw += [{"role": "assistant", "content": PLAN}, {"role": "user", "content": "Go on."}]
    return raw


async def measure(url: str, turns: int, repeats: int) -> list[Read]:
    store = RedisStore.from_url(url)
    try:
        return [
            await _read_both(store, name, turns, plan, repeats) for name, plan in (("no plan", False), ("plan", True))
        ]
    finally:
        await store.aclose()


async def _read_both(store: RedisStore, name: str, turns: int, plan: bool, repeats: int) -> Read:
    session = f"live-read-{'plan' if plan else 'none'}-{turns}"
    table = PageTable(TENANT, session, "project")
    result = ingest(table, parse_messages(predecessor(turns, plan)), TenantPolicy(), CharCounter())
    table.seen = 1
    await SessionState(store).commit(table, list(result.new_pages))
    whole_ns, live_ns, carried = [], [], 0
    for _ in range(repeats):
        started = time.perf_counter_ns()
        held = await SessionState(store).read(TENANT, session)  # another process: nothing cached
        if held is None:
            raise RuntimeError(f"{name}: the stored predecessor is gone")
        whole = Live.of(held)
        whole_ns.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        live = await SessionState(store).live(TENANT, session, lambda who: True)
        live_ns.append(time.perf_counter_ns() - started)
        if live != whole:
            raise RuntimeError(f"{name}: the live read carries other pages than the whole read")
        carried = len(live.state)
    plans = sum(1 for page in table.pages.values() if page.type is PageType.PLAN)
    return Read(
        name,
        len(table.order),
        len(table.pages),
        plans,
        carried,
        statistics.median(whole_ns) / 1e6,
        statistics.median(live_ns) / 1e6,
    )


def run(turns: int, repeats: int) -> list[Read]:
    with tempfile.TemporaryDirectory(prefix="clawvm-live-read-") as scratch, EmbeddedRedis(Path(scratch)) as url:
        return asyncio.run(measure(url, turns, repeats))


def format_reads(reads: Sequence[Read], repeats: int) -> list[str]:
    lines = [f"a new session's read of its live predecessor, medians of {repeats} reads each way, alternating:"]
    for r in reads:
        lines.append(
            f"  {r.name}: {r.messages} messages, {r.pages} pages ({r.plans} plan), {r.carried} carried; "
            f"whole {r.whole_ms:.1f} ms, live {r.live_ms:.1f} ms"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A new session's read of a long live predecessor.")
    parser.add_argument("--turns", type=int, default=1000, help="the predecessor's turns (default 1,000)")
    parser.add_argument("--repeats", type=int, default=7, help="reads each way (default 7)")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.repeats < 1:
        parser.error("--turns and --repeats must be at least 1")
    print("\n".join(format_reads(run(args.turns, args.repeats), args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
