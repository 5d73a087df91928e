"""The real agent CLIs through the gateway: Claude Code (Anthropic Messages) and Codex (OpenAI
Responses), as their users run them.

`python -m bench.agents` installs `@anthropic-ai/claude-code` and `@openai/codex` (pinned
versions, `npm install` into the git-ignored `bench/.agents`, once), then runs each
non-interactively (`claude -p ...`, `codex exec ...`) in a scratch project on a three-step tool
task: write a file, append to it, read it back, then answer. Each talks to a gateway (embedded
store, budget 64,000) whose upstream is a scripted fake in the agent's format
(`bench.fake_anthropic`, `bench.fake_responses`): the fake calls the agent's own shell tool
(Claude Code's `Bash`, Codex's `exec_command`) for the next step until all three ran, then
answers. Nothing reaches the network but `npm install`; the agents' homes are scratch
directories. The session is named by a header each CLI can add (`ANTHROPIC_CUSTOM_HEADERS`,
Codex's `http_headers`), and the gateway's audit (`GET /v1/clawvm/sessions/{id}`) shows the
pages it manages for it.

Reported per agent: its exit code, the model calls it made, whether the file holds what the task
wrote, and the session's pages and turns; exit code 1 when an agent did not complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.fake_anthropic import FakeAnthropic
from bench.fake_apis import app
from bench.fake_responses import FakeResponses
from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.upstream.tokens import prepare_offline

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "bench" / ".agents"
PACKAGES = ("@anthropic-ai/claude-code@2.1.332", "@openai/codex@0.171.0")
STEPS = ("echo alpha > notes.txt", "echo beta >> notes.txt", "cat notes.txt")
EXPECTED = "alpha\nbeta\n"
ANSWER = "notes.txt now holds alpha and beta."
BUDGET = 64000  # Claude Code's system prompt and tools alone are about 25,000 tokens
RUN_TIMEOUT_S = 300.0
INSTALL_TIMEOUT_S = 900.0
KEY = "sk-clawvm-bench"
Json = dict[str, Any]


class AgentsError(RuntimeError):
    """The CLIs could not be installed."""


@dataclass(frozen=True, slots=True)
class AgentRun:
    agent: str
    exit_code: int
    model_calls: int
    file_ok: bool
    answered: bool  # the agent printed the model's final answer
    pages: int  # pages of its session in the gateway's page table
    turns: int
    output: str  # the tail of what the agent printed (stderr when it failed)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.file_ok and self.answered and self.pages > 0


def binary(name: str, root: Path = ROOT) -> Path:
    return root / "node_modules" / ".bin" / name


def install(root: Path = ROOT) -> None:
    """`npm install` the pinned CLIs into `root`, unless both are there already."""
    if all(binary(name, root).exists() for name in ("claude", "codex")):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise AgentsError("npm is not installed: the agents come from the npm registry")
    root.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(root), *PACKAGES]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise AgentsError(f"npm install failed ({done.returncode}): {done.stderr[-500:]}")


def done_steps(results: int) -> Json | None:
    """The next shell command after `results` tool results, or None when the task is done."""
    return {"command": STEPS[results]} if results < len(STEPS) else None


def claude_code_model(body: Json) -> Json:
    """A scripted model for Claude Code: its `Bash` tool for each step, then the answer."""
    results = sum(
        1
        for message in body["messages"]
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    )
    step = done_steps(results)
    if step is None or not any(t.get("name") == "Bash" for t in body.get("tools") or []):
        return {"content": ANSWER}
    call = {"name": "Bash", "input": {**step, "description": f"step {results + 1}"}}
    return {"content": f"Step {results + 1}.", "tool_calls": [call]}


def codex_model(body: Json) -> Json:
    """A scripted model for Codex: its shell tool (`exec_command`, `shell_command` or `shell`)
    for each step, then the answer."""
    items = body["input"] if isinstance(body["input"], list) else []
    results = sum(1 for item in items if isinstance(item, dict) and item.get("type") == "function_call_output")
    step = done_steps(results)
    names = {t.get("name") for t in body.get("tools") or []}
    if step is None:
        return {"content": ANSWER}
    if "exec_command" in names:
        call = {"name": "exec_command", "arguments": json.dumps({"cmd": step["command"]})}
    elif "shell_command" in names:
        call = {"name": "shell_command", "arguments": json.dumps({"command": step["command"]})}
    else:
        call = {"name": "shell", "arguments": json.dumps({"command": ["bash", "-lc", step["command"]]})}
    return {"content": f"Step {results + 1}.", "tool_calls": [call]}


@contextmanager
def gateway(scratch: Path) -> Iterator[tuple[str, FakeAnthropic, FakeResponses]]:
    """A gateway (embedded store) in front of the scripted fakes; yields its /v1 base."""
    anthropic, responses = FakeAnthropic(claude_code_model), FakeResponses(codex_model)
    with serve(app(FakeUpstream(), anthropic, responses)) as upstream:
        config = scratch / "config.yaml"
        data = scratch / "data"
        config.write_text(
            f"store:\n  data_dir: {json.dumps(str(data))}\n"
            f"upstream:\n  anthropic_base: {json.dumps(upstream.removesuffix('/v1'))}\n"
        )
        settings = load_settings(config, {}, Overrides(upstream=upstream, budget=BUDGET, store="embedded"))
        with serve(create_app(settings)) as url:
            yield url, anthropic, responses


def claude_code(url: str, project: Path, home: Path, session: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url.removesuffix("/v1"),
        "ANTHROPIC_API_KEY": KEY,
        "ANTHROPIC_CUSTOM_HEADERS": f"x-clawvm-session: {session}",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    argv = [
        str(binary("claude", root)),
        "-p",
        "Write alpha then beta into notes.txt and show it.",
        "--allowedTools",
        "Bash",
    ]
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def codex(url: str, project: Path, home: Path, session: str, root: Path) -> subprocess.CompletedProcess[str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model = "gpt-5-codex"\nmodel_provider = "clawvm"\n\n[model_providers.clawvm]\nname = "ClawVM"\n'
        f'base_url = "{url}"\nenv_key = "CLAWVM_KEY"\nwire_api = "responses"\n'
        f'http_headers = {{ "x-clawvm-session" = "{session}" }}\n'
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CODEX_HOME": str(codex_home), "CLAWVM_KEY": KEY}
    prompt = "Write alpha then beta into notes.txt and show it."
    argv = [
        str(binary("codex", root)),
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        prompt,
    ]
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


Runner = Callable[[str, Path, Path, str, Path], "subprocess.CompletedProcess[str]"]


def run_agent(name: str, runner: Runner, url: str, fake: Any, scratch: Path, root: Path) -> AgentRun:
    project, home = scratch / name / "project", scratch / name / "home"
    project.mkdir(parents=True)
    home.mkdir(parents=True)
    session = f"bench-{name}"
    before = len(fake.requests)
    done = runner(url, project, home, session, root)
    written = project / "notes.txt"
    audit = httpx.get(f"{url}/clawvm/sessions/{session}", timeout=30)
    table = audit.json() if audit.status_code == 200 else {}
    shown = done.stdout if done.returncode == 0 else done.stderr
    return AgentRun(
        agent=name,
        exit_code=done.returncode,
        model_calls=len(fake.requests) - before,
        file_ok=written.exists() and written.read_text() == EXPECTED,
        answered=ANSWER in done.stdout,
        pages=len(table.get("pages") or []),
        turns=int(table.get("turn") or 0),
        output=shown[-400:],
    )


def run(root: Path = ROOT) -> list[AgentRun]:
    install(root)
    prepare_offline(os.environ)
    with tempfile.TemporaryDirectory(prefix="clawvm-agents-") as tmp:
        scratch = Path(tmp)
        with gateway(scratch) as (url, anthropic, responses):
            return [
                run_agent("claude-code", claude_code, url, anthropic, scratch, root),
                run_agent("codex", codex, url, responses, scratch, root),
            ]


def format_runs(runs: Sequence[AgentRun]) -> list[str]:
    lines = ["agent | exit | model calls | task file | final answer | managed pages | turns"]
    for r in runs:
        lines.append(
            f"{r.agent} | {r.exit_code} | {r.model_calls} | {'ok' if r.file_ok else 'WRONG'} | "
            f"{'yes' if r.answered else 'NO'} | {r.pages} | {r.turns}"
        )
    lines += [f"  {r.agent} failed: {r.output}" for r in runs if not r.ok]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Claude Code and Codex through the gateway (installs them from npm).")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the CLIs are installed (git-ignored)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--install-only", action="store_true", help="install the CLIs, run nothing (scripts/install)")
    args = parser.parse_args(argv)
    try:
        if args.install_only:
            install(args.root)
            return 0
        runs = run(args.root)
    except AgentsError as exc:
        print(f"cannot run the agents: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_runs(runs)), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
