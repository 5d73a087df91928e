"""Start and stop each peer as a subprocess on a free loopback port, in front of the fake upstream.

Each `start_*` enters the server into an `ExitStack` (stopped, process group included, when the
stack closes) and returns the peer's api_base (`http://127.0.0.1:N/v1`). The processes are started
with `bench.latency.launched`; the configuration each peer needs (LiteLLM's config and trimming
hook, Headroom's workspace) is written into `directory`, the peer's run directory.

- passthrough: `bench.peers.passthrough`, a plain relay (this repo's venv);
- clawvm: the gateway (`clawvm serve --store embedded`) at the budget;
- litellm: LiteLLM proxy from `bench/.peers/litellm`, with a `CustomLogger` whose
  `async_pre_call_hook` trims the messages to the budget with `litellm.utils.trim_messages`;
- headroom: Headroom's proxy from `bench/.peers/headroom`, token mode, the model's context limit
  set to the budget (it has no token budget of its own).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.latency import gateway_argv, launched, server_env, write_config
from bench.peers import install
from gateway.store.embedded import free_port
from gateway.upstream.tokens import prepare_offline

MODEL = "gpt-4o"
DUMMY_KEY = "sk-bench-dummy"
HOOK_MODULE = "clawvm_trim_hook"
HOOK_SOURCE = '''"""Written by bench.peers.servers: trim chat messages to the benchmark's budget."""

from litellm.integrations.custom_logger import CustomLogger
from litellm.utils import trim_messages

BUDGET = {budget}


class TrimToBudget(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        if call_type in ("completion", "acompletion") and data.get("messages"):
            data["messages"] = trim_messages(data["messages"], model=data.get("model"), max_tokens=BUDGET)
        return data


handler = TrimToBudget()
'''


class PeerUnavailable(RuntimeError):
    """The peer cannot run here: its venv is not installed."""


@dataclass(frozen=True, slots=True)
class Upstream:
    api_base: str  # the fake upstream's api_base, `http://127.0.0.1:M/v1`

    @property
    def root(self) -> str:
        return self.api_base.removesuffix("/v1")


def peer_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A peer's environment: offline, unbuffered, and without this repo on PYTHONPATH."""
    env = {name: value for name, value in base.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    prepare_offline(env)
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **(extra or {})}


def available(name: str, root: Path = install.ROOT) -> bool:
    """Whether peer `name` can be started here (the venv peers need their install)."""
    return name not in install.PACKAGES or install.is_installed(name, root)


def _require(name: str, root: Path) -> Path:
    if not install.is_installed(name, root):
        raise PeerUnavailable(f"{name} is not installed: run `python -m bench.peers.install {name}`")
    return install.command_path(name, root)


def start_passthrough(stack: ExitStack, directory: Path, upstream: Upstream) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.peers.passthrough", "--port", str(port), "--upstream", upstream.api_base]
    env = server_env(os.environ)
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(launched("passthrough", argv, base + "/health", env, directory / "passthrough.log"))
    return base + "/v1"


def start_clawvm(stack: ExitStack, directory: Path, upstream: Upstream, budget: int) -> str:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    argv = gateway_argv(write_config(directory), port, upstream.api_base, budget)
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(launched("clawvm", argv, base + "/health", server_env(os.environ), directory / "clawvm.log"))
    return base + "/v1"


def litellm_config(upstream: Upstream) -> dict[str, object]:
    params = {"model": f"openai/{MODEL}", "api_base": upstream.api_base, "api_key": DUMMY_KEY}
    return {
        "model_list": [{"model_name": MODEL, "litellm_params": params}],
        "litellm_settings": {"telemetry": False, "num_retries": 0, "callbacks": f"{HOOK_MODULE}.handler"},
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def start_litellm(stack: ExitStack, directory: Path, upstream: Upstream, budget: int, root: Path = install.ROOT) -> str:
    command = _require("litellm", root)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{HOOK_MODULE}.py").write_text(HOOK_SOURCE.format(budget=int(budget)), encoding="utf-8")
    config = directory / "config.yaml"
    config.write_text(json.dumps(litellm_config(upstream), indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    port = free_port()
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    env = peer_env(os.environ, {"PYTHONPATH": str(directory)})
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(launched("litellm", argv, base + "/health/liveliness", env, directory / "litellm.log"))
    return base + "/v1"


def headroom_env(directory: Path, budget: int) -> dict[str, str]:
    limits = {"openai": {"context_limits": {MODEL: int(budget)}}}
    return {
        "TRANSFORMERS_OFFLINE": "1",
        "HEADROOM_TELEMETRY": "off",
        "HEADROOM_WORKSPACE_DIR": str(directory / "workspace"),
        "HEADROOM_CONFIG_DIR": str(directory / "config"),
        "HEADROOM_MODEL_LIMITS": json.dumps(limits),
    }


def start_headroom(
    stack: ExitStack, directory: Path, upstream: Upstream, budget: int, root: Path = install.ROOT
) -> str:
    command = _require("headroom", root)
    for sub in ("workspace", "config"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(command), "proxy", "--host", "127.0.0.1", "--port", str(port), "--openai-api-url", upstream.root]
    argv += ["--mode", "token", "--no-rate-limit", "--no-telemetry"]
    env = peer_env(os.environ, headroom_env(directory, budget))
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(launched("headroom", argv, base + "/health", env, directory / "headroom.log"))
    return base + "/v1"


def start_peer(
    name: str, stack: ExitStack, directory: Path, upstream: Upstream, budget: int, root: Path = install.ROOT
) -> str:
    """Start peer `name` ("direct" starts nothing: it is the upstream itself); its api_base."""
    run_dir = directory / name
    if name == "direct":
        return upstream.api_base
    if name == "passthrough":
        run_dir.mkdir(parents=True, exist_ok=True)
        return start_passthrough(stack, run_dir, upstream)
    if name == "clawvm":
        return start_clawvm(stack, run_dir, upstream, budget)
    if name == "litellm":
        return start_litellm(stack, run_dir, upstream, budget, root)
    if name == "headroom":
        return start_headroom(stack, run_dir, upstream, budget, root)
    raise ValueError(f"unknown peer {name!r}")
