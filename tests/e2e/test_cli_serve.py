"""`clawvm serve` as a real process: the installed console script, its own embedded Redis, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.fake_upstream import Running
from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.store.store import RedisStore, session_scope
from gateway.store.tables import load_table, page_ids
from policies.pagetable import PageTable

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 45.0
SESSION = "cli-session"
FIRST = [
    {"role": "system", "content": "You are a support agent. You must confirm before cancelling any order."},
    {"role": "user", "content": "Where is my order #W123?"},
]
SECOND = FIRST + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "And when will it arrive?"}]


def clawvm() -> list[str]:
    """The installed console script (`pip install -e .` puts it beside the interpreter)."""
    script = shutil.which("clawvm", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gateway.cli"]


def clean_env() -> dict[str, str]:
    dropped = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CLAWVM_UPSTREAM_BASE_URL", "CLAWVM_UPSTREAM_API_KEY")
    return {k: v for k, v in os.environ.items() if k not in dropped}


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT/v1
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM, then the exit status once the process has shut down.

        uvicorn (>= 0.29) shuts down gracefully, then re-raises the signal it caught, so a clean
        stop ends "killed by SIGTERM" (-15 here, 143 in a shell), as service managers expect."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(pid) and not fields.get("State", "").startswith("Z"):
            found.append((int(entry.name), cmdline))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_healthy(served: Served, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(f"clawvm exited with {served.process.returncode}:\n{served.output()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"clawvm did not become healthy within {START_TIMEOUT_S}s:\n{served.output()}")


@contextmanager
def clawvm_serve(upstream: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    log = cwd / f"clawvm-{port}.log"
    command = [*clawvm(), "serve", "--upstream", upstream, "--port", str(port), "--log-level", "info", *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=cwd, env={**clean_env(), **(env or {})}, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{port}/v1", log)
    spawned: list[int] = []
    try:
        wait_healthy(served, port)
        spawned = [pid for pid, _ in children(process.pid)]
        yield served
    finally:
        if process.poll() is None:  # the test failed before its own SIGTERM
            process.kill()
            process.wait()
            for pid in spawned:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def ask(served: Served, messages: list[dict[str, Any]]) -> Any:
    with openai.OpenAI(base_url=served.url, api_key="sk-local", max_retries=0, timeout=30) as client:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, extra_headers={"x-clawvm-session": SESSION}
        )


def assert_answered(raw: Any, messages: list[dict[str, Any]], fake_upstream: Running) -> None:
    assert raw.parse().choices[0].message.content == "ok"
    assert raw.headers["x-clawvm-session"] == SESSION
    prompt, budget = int(raw.headers["x-clawvm-prompt-tokens"]), int(raw.headers["x-clawvm-budget"])
    assert 0 < prompt <= budget and raw.headers["x-clawvm-budget-source"]
    assert int(raw.headers["x-clawvm-overhead-us"]) >= int(raw.headers["x-clawvm-policy-us"]) >= 0
    assert "x-clawvm-insufficient" not in raw.headers
    assert fake_upstream.fake.requests[-1].body is not None
    assert fake_upstream.fake.requests[-1].body["messages"] == messages


def stop_and_check(served: Served) -> None:
    """SIGTERM: a clean exit, and the embedded redis-server gone with it."""
    redis_servers = [pid for pid, cmdline in children(served.process.pid) if "redis-server" in cmdline]
    assert len(redis_servers) == 1, children(served.process.pid)
    assert served.terminate() in (0, -signal.SIGTERM), served.output()
    assert "Application shutdown complete." in served.output()  # the lifespan ran to its end
    assert not alive(redis_servers[0]), "the embedded redis-server outlived the gateway"
    assert "Traceback" not in served.output() and "ERROR" not in served.output()


def aof_bytes(data_dir: Path) -> int:
    files = [data_dir / "appendonly.aof", *(data_dir / "appendonlydir").glob("*")]
    return sum(f.stat().st_size for f in files if f.is_file())


def stored_table(data_dir: Path) -> PageTable:
    """The session's table as the stopped gateway left it, read from its own data directory."""
    return stored_table_of(data_dir, SESSION)


def stored_table_of(data_dir: Path, session: str) -> PageTable:
    """A session's table as the stopped gateway left it, read from its own data directory."""

    async def read(url: str) -> PageTable:
        async with RedisStore.from_url(url) as store:
            record = await store.load_table("default", session_scope(session))
            assert record is not None
            pages = await store.get_pages("default", session_scope(session), page_ids(record.data))
            return load_table(record.data, pages, record.version)

    with EmbeddedRedis(data_dir) as url:
        return asyncio.run(read(url))


def test_serve_answers_persists_and_shuts_down_cleanly(tmp_path: Path, fake_upstream: Running) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  data_dir: {json.dumps(str(data_dir))}\n")
    args = ("--config", str(config), "--store", "embedded")

    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:
        assert_answered(ask(served, FIRST), FIRST, fake_upstream)
        stop_and_check(served)
    assert aof_bytes(data_dir) > 0
    first = stored_table(data_dir)
    assert first.version == 1 and len(first.order) == len(FIRST)

    with clawvm_serve(fake_upstream.url, tmp_path, *args) as served:  # same data directory
        assert_answered(ask(served, SECOND), SECOND, fake_upstream)
        stop_and_check(served)
    second = stored_table(data_dir)
    assert second.version == 2 and len(second.order) == len(SECOND)
    assert second.order[: len(FIRST)] == first.order  # an append onto the table that survived the restart
    assert second.turn == first.turn + 1


def test_serve_without_a_config_file(tmp_path: Path, fake_upstream: Running) -> None:
    with clawvm_serve(fake_upstream.url, tmp_path) as served:
        assert_answered(ask(served, FIRST), FIRST, fake_upstream)
        stop_and_check(served)
    assert aof_bytes(tmp_path / ".clawvm-data") > 0  # the default data_dir, relative to the working directory


@pytest.mark.parametrize(
    ("config", "needle"),
    [("server:\n  prot: 4000\n", "server.prot"), ("store:\n  data_dir: 5\n", "store.data_dir")],
)
def test_a_bad_config_file_exits_2_naming_the_key(tmp_path: Path, config: str, needle: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    command = [*clawvm(), "serve", "--config", str(path)]
    done = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "clawvm: invalid configuration" in err and needle in err
    assert not (tmp_path / ".clawvm-data").exists()


REPO = Path(__file__).resolve().parents[2]
IMAGE_CONFIG = "/etc/clawvm/config.yaml"  # where the Dockerfile copies the repo's config.yaml


def image_command() -> list[str]:
    """The Dockerfile's ENTRYPOINT + CMD, with the shipped config.yaml at its path in this checkout."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    entrypoint = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT "))[len("ENTRYPOINT ") :])
    cmd = json.loads(next(line for line in lines if line.startswith("CMD "))[len("CMD ") :])
    assert entrypoint[:2] == ["clawvm", "serve"] and IMAGE_CONFIG in entrypoint
    argv = [str(REPO / "config.yaml") if arg == IMAGE_CONFIG else arg for arg in entrypoint[2:] + cmd]
    return [*clawvm(), "serve", *argv]


def test_the_image_command_refuses_to_start_open(tmp_path: Path) -> None:
    command = [*image_command(), "--port", str(free_port())]
    assert "0.0.0.0" in command  # the image binds every interface
    done = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "clawvm: invalid configuration: server.host: '0.0.0.0' is not a loopback address" in err
    assert "--allow-unauthenticated" in err and "server.allow_unauthenticated: true" in err
    assert "CLAWVM_API_KEYS" in err and "tenants:" in err
    assert not (tmp_path / ".clawvm-data").exists()  # nothing started: no store, no socket


def test_the_image_command_with_api_keys_refuses_unauthenticated_requests(
    tmp_path: Path, fake_upstream: Running
) -> None:
    env = {"CLAWVM_API_KEYS": "sk-tenant-one,sk-tenant-two", "CLAWVM_UPSTREAM_BASE_URL": fake_upstream.url}
    with clawvm_serve(fake_upstream.url, tmp_path, *image_command()[len(clawvm()) + 1 :], env=env) as served:
        body = {"model": "gpt-4o", "messages": FIRST}
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"x-api-key": "sk-tenant-"}):
            refused = httpx.post(f"{served.url}/chat/completions", json=body, headers=headers, timeout=30)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{served.url}/models", timeout=30).status_code == 401  # relayed routes too
        assert fake_upstream.fake.requests == []
        with openai.OpenAI(base_url=served.url, api_key="sk-tenant-two", max_retries=0, timeout=30) as client:
            answer = client.chat.completions.create(model="gpt-4o", messages=FIRST)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "ok"
        assert served.terminate() in (0, -signal.SIGTERM), served.output()
