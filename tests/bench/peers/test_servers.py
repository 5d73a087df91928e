from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import Running
from bench.peers import install
from bench.peers.servers import (
    HOOK_SOURCE,
    MODEL,
    PeerUnavailable,
    Upstream,
    available,
    headroom_env,
    litellm_config,
    peer_env,
    start_peer,
)

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


def test_the_upstream_root_has_no_v1() -> None:
    assert Upstream("http://127.0.0.1:9/v1").root == "http://127.0.0.1:9"


def test_peer_env_is_offline_and_keeps_this_repo_off_the_path() -> None:
    env = peer_env({"PYTHONPATH": "/repo", "VIRTUAL_ENV": "/venv", "HOME": "/h"}, {"EXTRA": "1"})
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["HOME"] == "/h" and env["EXTRA"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert Path(env["TIKTOKEN_CACHE_DIR"]).is_dir()


def test_litellm_config_points_the_model_at_the_fake_with_trimming_on() -> None:
    config = litellm_config(Upstream("http://127.0.0.1:9/v1"))
    (entry,) = config["model_list"]
    assert entry == {
        "model_name": MODEL,
        "litellm_params": {
            "model": f"openai/{MODEL}",
            "api_base": "http://127.0.0.1:9/v1",
            "api_key": "sk-bench-dummy",
        },
    }
    assert config["litellm_settings"] == {"telemetry": False, "num_retries": 0, "callbacks": "clawvm_trim_hook.handler"}
    assert config["general_settings"] == {"dangerously_permit_weak_or_unset_master_key": True}


def test_the_hook_source_is_python_with_the_budget() -> None:
    source = HOOK_SOURCE.format(budget=4000)
    compile(source, "clawvm_trim_hook.py", "exec")
    assert "BUDGET = 4000" in source
    assert 'trim_messages(data["messages"], model=data.get("model"), max_tokens=BUDGET)' in source


def test_headroom_gets_the_budget_as_the_models_context_limit(tmp_path: Path) -> None:
    env = headroom_env(tmp_path, 4000)
    assert json.loads(env["HEADROOM_MODEL_LIMITS"]) == {"openai": {"context_limits": {MODEL: 4000}}}
    assert env["HEADROOM_WORKSPACE_DIR"] == str(tmp_path / "workspace")
    assert env["HEADROOM_TELEMETRY"] == "off"


def test_peers_without_a_venv_are_unavailable(tmp_path: Path) -> None:
    assert available("direct", tmp_path) and available("passthrough", tmp_path) and available("clawvm", tmp_path)
    assert not available("litellm", tmp_path) and not available("headroom", tmp_path)
    with ExitStack() as stack, pytest.raises(PeerUnavailable, match="bench.peers.install litellm"):
        start_peer("litellm", stack, tmp_path, Upstream("http://127.0.0.1:9/v1"), 4000, tmp_path)


def test_direct_is_the_upstream_itself(tmp_path: Path) -> None:
    with ExitStack() as stack:
        assert start_peer("direct", stack, tmp_path, Upstream("http://127.0.0.1:9/v1"), 4000) == "http://127.0.0.1:9/v1"
    with ExitStack() as stack, pytest.raises(ValueError, match="unknown peer"):
        start_peer("nginx", stack, tmp_path, Upstream("http://127.0.0.1:9/v1"), 4000)


def _one_request(name: str, tmp_path: Path, fake_upstream: Running, root: Path = install.ROOT) -> dict:
    with ExitStack() as stack:
        base = start_peer(name, stack, tmp_path, Upstream(fake_upstream.url), 4000, root)
        response = httpx.post(base + "/chat/completions", json=BODY, headers={"authorization": "Bearer k"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    return fake_upstream.fake.requests[-1].body or {}


@pytest.mark.parametrize("name", ["passthrough", "clawvm"])
def test_our_peers_start_relay_and_stop(name: str, tmp_path: Path, fake_upstream: Running) -> None:
    seen = _one_request(name, tmp_path, fake_upstream)
    assert seen["messages"] == BODY["messages"]
    assert (tmp_path / name / f"{name}.log").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["litellm", "headroom"])
def test_the_installed_peers_start_relay_and_stop(name: str, tmp_path: Path, fake_upstream: Running) -> None:
    if not available(name):
        pytest.skip(f"{name} is not installed (python -m bench.peers.install {name})")
    seen = _one_request(name, tmp_path, fake_upstream)
    assert seen["messages"] == BODY["messages"]


@pytest.mark.slow
def test_litellm_trims_to_the_budget(tmp_path: Path, fake_upstream: Running) -> None:
    if not available("litellm"):
        pytest.skip("litellm is not installed (python -m bench.peers.install litellm)")
    turns = [{"role": r, "content": f"turn {n}: " + "words " * 400} for n in range(12) for r in ("user", "assistant")]
    body = {"model": MODEL, "messages": [*turns, {"role": "user", "content": "last question"}]}
    with ExitStack() as stack:
        base = start_peer("litellm", stack, tmp_path, Upstream(fake_upstream.url), 2000)
        response = httpx.post(base + "/chat/completions", json=body, headers={"authorization": "Bearer k"}, timeout=60)
    assert response.status_code == 200, response.text
    seen = fake_upstream.fake.requests[-1].body or {}
    assert 0 < len(seen["messages"]) < len(body["messages"])
    assert seen["messages"][-1] == {"role": "user", "content": "last question"}
