"""`clawvm serve --workers N`: several worker processes on one port, one embedded Redis they share,
concurrent sessions whose turns land on any worker, through real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from bench.fake_upstream import Running
from bench.traces import load_traces, traces_dir
from tests.e2e.test_cli_serve import Served, alive, children, clawvm_serve, stored_table_of

WORKERS = 3
SESSIONS = 6
TURNS = 4
PAGED_TRACE = "taubench-retail-020"  # tool calls; paged at PAGED_BUDGET on most turns
PAGED_BUDGET = 4000
TRACES = {t.name: t for t in load_traces(traces_dir())} if traces_dir().is_dir() else {}


def transcript(session: int, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"You are agent {session}. Be brief."}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": "ok"})
        messages.append({"role": "user", "content": f"Session {session}, question {turn}: where is order #{turn}?"})
    return messages


async def converse(served: Served, session: int) -> list[str]:
    """TURNS turns of one session, each on a fresh connection (so the kernel may hand it to any worker)."""
    faults = []
    for turn in range(1, TURNS + 1):
        messages = transcript(session, turn)
        async with openai.AsyncOpenAI(base_url=served.url, api_key="sk-local", max_retries=0, timeout=30) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages, extra_headers={"x-clawvm-session": f"w-{session}"}
            )
        assert raw.parse().choices[0].message.content == "ok"
        assert raw.headers["x-clawvm-session"] == f"w-{session}"
        faults.append(raw.headers["x-clawvm-faults"])
    return faults


async def all_sessions(served: Served) -> list[list[str]]:
    return await asyncio.gather(*(converse(served, n) for n in range(SESSIONS)))


def redis_port(cmdline: str) -> int:
    """The port in a redis-server's process title ("redis-server 127.0.0.1:PORT")."""
    found = re.search(r"127\.0\.0\.1:(\d+)", cmdline)
    assert found is not None, cmdline
    return int(found.group(1))


@contextmanager
def version_reads(port: int) -> Iterator[list[str]]:
    """The table version reads (HGET of a table key) clients, not scripts, send to the Redis on
    `port` while inside, seen with MONITOR: an ECHO before and after marks the window."""
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        with redis.Redis(port=port).monitor() as monitor:
            while True:
                command = monitor.next_command()
                text = str(command["command"])
                if text.startswith("ECHO clawvm-test-start"):
                    ready.set()
                elif text.startswith("ECHO clawvm-test-end"):
                    done.set()
                    return
                elif command["client_type"] != "lua" and text.startswith("HGET ") and ":table " in text:
                    seen.append(text)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with redis.Redis(port=port) as marker:
        while not ready.is_set():  # MONITOR is on once it reports the marker
            marker.echo("clawvm-test-start")
            ready.wait(0.1)
        yield seen
        marker.echo("clawvm-test-end")
        assert done.wait(10)


def test_workers_share_one_store_and_keep_every_turn(tmp_path: Path, fake_upstream: Running) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  workers: {WORKERS}\nstore:\n  data_dir: {json.dumps(str(data_dir))}\n")
    with clawvm_serve(fake_upstream.url, tmp_path, "--config", str(config)) as served:
        spawned = children(served.process.pid)
        redis_servers = [pid for pid, cmdline in spawned if "redis-server" in cmdline]
        workers = [pid for pid, cmdline in spawned if "spawn_main" in cmdline]
        assert len(redis_servers) == 1, spawned  # started once, by the parent
        assert len(workers) == WORKERS, spawned
        port = redis_port(next(cmdline for _, cmdline in spawned if "redis-server" in cmdline))
        with version_reads(port) as reads:
            asyncio.run(all_sessions(served))
        assert reads == []  # the workers share a versions board: no turn asks the store a version
        sent = [request.body["messages"] for request in fake_upstream.fake.requests if request.body]
        for session in range(SESSIONS):  # every turn forwarded whole: nothing lost or reordered
            for turn in range(1, TURNS + 1):
                assert transcript(session, turn) in sent
        assert served.terminate() in (0, -signal.SIGTERM), served.output()
        assert not alive(redis_servers[0]) and not any(alive(pid) for pid in workers)
        assert "Traceback" not in served.output() and "ERROR" not in served.output()
    for session in range(SESSIONS):  # each session's table holds every turn, committed in order
        table = stored_table_of(data_dir, f"w-{session}")
        assert table.turn == TURNS and len(table.order) == len(transcript(session, TURNS))


def test_one_process_on_the_embedded_store_asks_it_no_version_of_a_table_it_saved(
    tmp_path: Path, fake_upstream: Running
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n")
    with clawvm_serve(fake_upstream.url, tmp_path, "--config", str(config), "--workers", "1") as served:
        spawned = children(served.process.pid)
        assert not [pid for pid, cmdline in spawned if "spawn_main" in cmdline], spawned
        port = redis_port(next(cmdline for _, cmdline in spawned if "redis-server" in cmdline))
        with version_reads(port) as reads:
            asyncio.run(all_sessions(served))
        assert reads == []  # the process's own versions board answers
        assert served.terminate() in (0, -signal.SIGTERM), served.output()


def forwarded(served: Served, fake_upstream: Running, session: str, *, spread: bool) -> list[str]:
    """Every request of PAGED_TRACE as one session, turn by turn; per turn, the JSON of what the
    model received (its `prompt_cache_key`, which names the session, left out). `spread`: each
    request on a fresh connection (any worker); else all on one kept-alive connection (one worker)."""
    trace, seen = TRACES[PAGED_TRACE], []
    ids = {"x-clawvm-session": session, "x-clawvm-project": f"proj-{session}"}  # no state carried over
    with httpx.Client(timeout=60) as kept:
        for messages in trace.turns():
            before = len(fake_upstream.fake.requests)
            body = {"model": "gpt-4o", "messages": messages, "tools": trace.tools}
            if spread:
                with httpx.Client(timeout=60) as fresh:
                    response = fresh.post(served.url + "/chat/completions", json=body, headers=ids)
            else:
                response = kept.post(served.url + "/chat/completions", json=body, headers=ids)
            assert response.status_code == 200, response.text
            bodies = [dict(r.body) for r in fake_upstream.fake.requests[before:]]
            for sent in bodies:
                sent.pop("prompt_cache_key", None)
            seen.append(json.dumps(bodies, sort_keys=True))
    return seen


@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
def test_a_session_spread_over_workers_forwards_what_one_worker_does(tmp_path: Path, fake_upstream: Running) -> None:
    """The versions board decides which cached copy a worker plans on: a session whose turns land
    on any worker is forwarded byte for byte what one worker forwards, with no version read."""
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  workers: {WORKERS}\nstore:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n")
    args = ("--config", str(config), "--budget", str(PAGED_BUDGET))
    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:
        port = redis_port(next(cmdline for _, cmdline in children(served.process.pid) if "redis-server" in cmdline))
        one = forwarded(served, fake_upstream, "one", spread=False)
        with version_reads(port) as reads:
            spread = forwarded(served, fake_upstream, "spread", spread=True)
        assert reads == []
        assert served.terminate() in (0, -signal.SIGTERM), served.output()
    assert len(one) == len(spread) == len(list(TRACES[PAGED_TRACE].turns()))
    for turn, (x, y) in enumerate(zip(one, spread, strict=True)):
        assert x == y, f"turn {turn}: a session spread over workers forwarded something else than one worker"
    paged = [
        t
        for t, (sent, m) in enumerate(zip(spread, TRACES[PAGED_TRACE].turns(), strict=True))
        if len(json.loads(sent)[0]["messages"]) < len(m)
    ]
    assert len(paged) > len(one) // 2, "the budget should force paging on most turns"
    assert "lost to another writer" not in served.output()  # planned once per turn


def test_the_workers_flag_wins_over_the_config(tmp_path: Path, fake_upstream: Running) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  workers: 3\nstore:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n")
    with clawvm_serve(fake_upstream.url, tmp_path, "--config", str(config), "--workers", "2") as served:
        spawned = children(served.process.pid)
        assert len([pid for pid, cmdline in spawned if "spawn_main" in cmdline]) == 2, spawned
        assert served.terminate() in (0, -signal.SIGTERM), served.output()


def test_workers_die_with_a_killed_supervisor(tmp_path: Path, fake_upstream: Running) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  data_dir: {json.dumps(str(tmp_path / 'data'))}\n")
    with clawvm_serve(fake_upstream.url, tmp_path, "--config", str(config), "--workers", "2") as served:
        spawned = children(served.process.pid)
        workers = [pid for pid, cmdline in spawned if "spawn_main" in cmdline]
        assert len(workers) == 2
        served.process.kill()  # SIGKILL: no graceful stop, no chance to stop the workers itself
        served.process.wait()
        deadline = time.monotonic() + 10.0
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in workers)  # nothing left serving on the port
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url.removesuffix("/v1") + "/health", timeout=2.0)
        for pid, _ in spawned:  # the embedded redis-server outlives a SIGKILLed parent, as it always has
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
