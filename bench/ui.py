"""`python -m bench ui`: how fast the session inspector's page loads on a 1,000-turn session.

The synthetic agent loop of `bench.policy_time` (system prompt, task, then one tool call and its
result per turn) is sent turn by turn to a real gateway subprocess (embedded store, fake upstream,
`bench.latency.start_servers`), so the per-turn records, prompts and audit streams are the ones the
gateway itself wrote, within its `ui.*` retention. Then, `--repeats` times each:

- the JSON the session view reads (`GET /v1/clawvm/sessions/{id}/timeline`: turn records, heat
  map, recalls, events, write-back), over HTTP on loopback: wall time and bytes;
- with Debian's chromium and playwright at hand: the page itself in headless Chromium, a fresh
  tab each time, from the navigation's start to the heat map, timeline and tables drawn (the
  page's own `performance.now()` when it sets `document.body.dataset.ready`);
- the sessions list, the page view of one page and the newest prompt with its diff, over HTTP.

Every figure is a timing (it changes from run to run); the counts (turns, records, rows, bytes) do
not. The target is under a second for the session page of a 1,000-turn session.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.latency import HEADERS, PATHS, REQUEST_TIMEOUT_S, BenchError, encode, start_servers
from bench.policy_time import MODEL, synthetic_session

TURNS = 1000
BUDGET = 4000
REPEATS = 5
SESSION = "ui-bench"
CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 1000.0
SETTLE_S = 10.0
BROWSER_FLAGS = (  # headless, and no background traffic: the machine's network is closed
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass(frozen=True, slots=True)
class Timed:
    median_ms: float
    samples_ms: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class UIReport:
    turns: int
    budget: int
    failures: int  # non-200 answers while the session was built
    send_s: float  # wall time to send every turn
    records: int  # turn records the timeline answered with
    heat_rows: int
    heat_cells: int
    timeline_bytes: int
    timeline: Timed
    sessions: Timed
    page: Timed
    prompt: Timed
    browser: Timed | None  # None: no chromium or no playwright here
    browser_note: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_ui(turns: int = TURNS, budget: int = BUDGET, repeats: int = REPEATS) -> UIReport:
    with tempfile.TemporaryDirectory(prefix="clawvm-ui-bench-") as tmp, ExitStack() as stack:
        _, gateway, endpoints = start_servers(stack, Path(tmp), budget)
        root = endpoints.gateway.removesuffix("/v1")
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            started = time.perf_counter()
            failures = build_session(client, endpoints.gateway + PATHS["chat"], turns)
            send_s = time.perf_counter() - started
            timeline_url = f"{root}/v1/clawvm/sessions/{SESSION}/timeline"
            answer, body = settled(client, timeline_url, turns)
            page_id = body["heat"]["pages"][-1]["id"]
            prompt_id = body["turns"][-1]["prompt"]
            timeline = timed_get(client, timeline_url, repeats)
            sessions = timed_get(client, f"{root}/v1/clawvm/sessions", repeats)
            page = timed_get(client, f"{root}/v1/clawvm/sessions/{SESSION}/pages/{page_id}", repeats)
            prompt = timed_get(client, f"{root}/v1/clawvm/sessions/{SESSION}/prompts/{prompt_id}", repeats)
            browser, note = browser_load(f"{root}/ui#/s/{SESSION}", repeats)
    return UIReport(
        turns=turns,
        budget=budget,
        failures=failures,
        send_s=round(send_s, 1),
        records=len(body["turns"]),
        heat_rows=len(body["heat"]["rows"]),
        heat_cells=len(body["heat"]["rows"]) * body["heat"]["columns"],
        timeline_bytes=len(answer.content),
        timeline=timeline,
        sessions=sessions,
        page=page,
        prompt=prompt,
        browser=browser,
        browser_note=note,
    )


def build_session(client: httpx.Client, url: str, turns: int) -> int:
    """Every turn of the agent loop through the gateway; returns the failures."""
    wire = synthetic_session(turns)
    failures = 0
    headers = {**HEADERS, "x-clawvm-session": SESSION}
    for turn in range(1, turns + 1):
        body = encode({"model": MODEL, "messages": wire[: 2 + 2 * (turn - 1)]})
        if client.post(url, content=body, headers=headers).status_code != 200:
            failures += 1
    return failures


def settled(client: httpx.Client, url: str, turns: int) -> tuple[httpx.Response, dict[str, Any]]:
    """The timeline once the last turn's record is in (records are written after each answer)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        answer = client.get(url, headers=HEADERS)
        if answer.status_code != 200:
            raise BenchError(f"timeline answered {answer.status_code}: {answer.text[:200]}")
        body = answer.json()
        if (body["turns"] and body["turns"][-1]["turn"] >= turns) or time.monotonic() > deadline:
            return answer, body
        time.sleep(0.05)


def timed_get(client: httpx.Client, url: str, repeats: int) -> Timed:
    def once() -> None:
        response = client.get(url, headers=HEADERS)
        if response.status_code != 200:
            raise BenchError(f"GET {url} answered {response.status_code}: {response.text[:200]}")

    return timing(once, repeats)


def timing(action: Callable[[], None], repeats: int) -> Timed:
    samples = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        action()
        samples.append(round((time.perf_counter() - started) * 1000, 1))
    return Timed(round(statistics.median(samples), 1), tuple(samples))


def chromium_path() -> str:
    """Debian's chromium (scripts/install installs it); the path may not exist."""
    return shutil.which("chromium") or CHROMIUM


def browser_load(url: str, repeats: int) -> tuple[Timed | None, str]:
    """The session page in headless Chromium, a fresh tab each time: navigation to drawn."""
    chromium = chromium_path()
    if not Path(chromium).exists():
        return None, "no chromium (scripts/install installs Debian's chromium package)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "no playwright (pip install -e '.[test]')"
    hash_ = url[url.index("#") :]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, headless=True, args=list(BROWSER_FLAGS))
        try:

            def once() -> float:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                tab = context.new_page()
                tab.goto(url)
                tab.wait_for_function("h => document.body.dataset.ready === h", arg=hash_, timeout=60_000)
                drawn = float(tab.evaluate("() => Number(document.body.dataset.readyMs)"))
                context.close()
                return drawn

            once()  # warm-up: the browser's own start, not the page's load
            samples = [round(once(), 1) for _ in range(max(repeats, 1))]
            return Timed(round(statistics.median(samples), 1), tuple(samples)), f"headless {chromium}"
        finally:
            browser.close()


def format_ui(report: UIReport) -> list[str]:
    lines = [
        f"session inspector: one {report.turns}-turn session (bench.policy_time's agent loop, budget "
        f"{report.budget}) through a real gateway subprocess, embedded store; {report.failures} failed turns, "
        f"sent in {report.send_s:.0f} s",
        f"  timeline JSON: {report.records} turn records, heat map {report.heat_rows} pages x {report.records} "
        f"turns ({report.heat_cells:,} cells), {report.timeline_bytes / 1024:.0f} KiB",
        f"  GET timeline (the session page's data): median {report.timeline.median_ms:.0f} ms "
        f"{_samples(report.timeline)}",
    ]
    if report.browser is not None:
        verdict = "under" if report.browser.median_ms < TARGET_MS else "OVER"
        lines.append(
            f"  session page in headless Chromium, navigation to drawn: median {report.browser.median_ms:.0f} ms "
            f"{_samples(report.browser)} ({verdict} the {TARGET_MS:.0f} ms target)"
        )
    else:
        lines.append(f"  session page in a browser: not measured ({report.browser_note})")
    lines += [
        f"  GET sessions list: median {report.sessions.median_ms:.0f} ms; GET one page's view: median "
        f"{report.page.median_ms:.0f} ms; GET the newest prompt with its diff: median {report.prompt.median_ms:.0f} ms",
    ]
    return lines


def _samples(t: Timed) -> str:
    return "(" + ", ".join(f"{s:.0f}" for s in t.samples_ms) + ")"


def main(argv: Sequence[str]) -> int:
    top = argparse.ArgumentParser(prog="python -m bench ui", description="The session inspector's load time.")
    top.add_argument("--turns", type=int, default=TURNS, help=f"turns of the session (default {TURNS})")
    top.add_argument("--budget", type=int, default=BUDGET, help=f"the gateway's budget (default {BUDGET})")
    top.add_argument("--repeats", type=int, default=REPEATS, help=f"timed loads of each view (default {REPEATS})")
    top.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = top.parse_args(list(argv))
    if args.turns < 2:
        top.error("--turns: at least 2")
    try:
        report = run_ui(args.turns, args.budget, args.repeats)
    except BenchError as exc:
        print(f"bench ui: {exc}", file=sys.stderr)
        return 1
    print("\n".join(format_ui(report)))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0
