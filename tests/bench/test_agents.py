"""The real Claude Code and Codex CLIs through the gateway (`bench.agents`): the scripted models
alone, and, when the CLIs are installed (`python -m bench.agents` installs them from npm into
bench/.agents), both agents completing their tool task with managed pages."""

from __future__ import annotations

import json

import pytest

from bench.agents import ANSWER, ROOT, STEPS, binary, claude_code_model, codex_model, run


def test_the_claude_code_model_runs_each_step_with_bash_then_answers() -> None:
    tools = [{"name": "Bash"}, {"name": "Read"}]
    first = claude_code_model({"messages": [{"role": "user", "content": "go"}], "tools": tools})
    assert first["tool_calls"][0]["input"]["command"] == STEPS[0]
    results = [{"type": "tool_result", "tool_use_id": f"t{n}", "content": ""} for n in range(len(STEPS))]
    done = claude_code_model({"messages": [{"role": "user", "content": results}], "tools": tools})
    assert done == {"content": ANSWER}


def test_the_codex_model_uses_the_shell_tool_it_is_offered() -> None:
    body = {"input": [{"role": "user", "content": "go"}], "tools": [{"type": "function", "name": "exec_command"}]}
    assert json.loads(codex_model(body)["tool_calls"][0]["arguments"]) == {"cmd": STEPS[0]}
    body["tools"] = [{"type": "function", "name": "shell"}]
    assert json.loads(codex_model(body)["tool_calls"][0]["arguments"])["command"][-1] == STEPS[0]
    outputs = [{"type": "function_call_output", "call_id": f"c{n}", "output": ""} for n in range(len(STEPS))]
    assert codex_model({"input": outputs, "tools": body["tools"]}) == {"content": ANSWER}


@pytest.mark.skipif(
    not (binary("claude").exists() and binary("codex").exists()),
    reason="the agent CLIs are not installed (python -m bench.agents installs them from npm)",
)
def test_claude_code_and_codex_complete_their_task_through_the_gateway() -> None:
    runs = run(ROOT)
    for agent in runs:
        assert agent.ok, agent
        assert agent.model_calls == len(STEPS) + 1 and agent.turns == len(STEPS) + 1 and agent.pages > 0
