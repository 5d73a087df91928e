"""A chat transcript in the other wire formats: the bench's agent speaking the Anthropic Messages
API or the OpenAI Responses API with the same conversation (the same texts, calls and results).

`to_messages` gives `(system, messages, tools)` in Anthropic's shape: system messages become the
top-level `system`, a tool result a `tool_result` block in the next user message (consecutive
results share one), an assistant's calls `tool_use` blocks. `to_responses` gives
`(instructions, input, tools)`: system messages the instructions, then message, `function_call`
and `function_call_output` items, tools in the flat shape.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Json = dict[str, Any]


def _text(message: Json) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def _function(tool: Json) -> Json:
    return tool.get("function", tool)


def _input(arguments: str) -> Json:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def to_messages(messages: Sequence[Json], tools: Sequence[Json]) -> tuple[str, list[Json], list[Json]]:
    system = "\n\n".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    out: list[Json] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": _text(message) or "(empty)",
            }
            _append(out, "user", [block])
        elif role == "assistant":
            blocks: list[Json] = [{"type": "text", "text": _text(message)}] if _text(message).strip() else []
            for call in message.get("tool_calls") or []:
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function["name"],
                        "input": _input(function.get("arguments", "")),
                    }
                )
            _append(out, "assistant", blocks or [{"type": "text", "text": "(no text)"}])
        else:
            _append(out, "user", [{"type": "text", "text": _text(message) or "(empty)"}])
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continued)"}]})
    shaped = [
        {
            "name": _function(t)["name"],
            "description": _function(t).get("description", ""),
            "input_schema": _function(t).get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    return system, out, shaped


def _append(out: list[Json], role: str, blocks: list[Json]) -> None:
    """Blocks joined to the last message when it has the same role (the API wants turns alternating)."""
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": blocks})


def to_responses(messages: Sequence[Json], tools: Sequence[Json]) -> tuple[str, list[Json], list[Json]]:
    instructions = "\n\n".join(_text(m) for m in messages if m.get("role") in ("system", "developer"))
    items: list[Json] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": message["tool_call_id"], "output": _text(message)})
            continue
        if role == "assistant":
            if _text(message).strip():
                part = {"type": "output_text", "text": _text(message), "annotations": []}
                items.append({"type": "message", "role": "assistant", "content": [part]})
            for call in message.get("tool_calls") or []:
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function.get("arguments") or "{}",
                    }
                )
            continue
        items.append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": _text(message)}]})
    flat = [
        {
            "type": "function",
            "name": _function(t)["name"],
            "description": _function(t).get("description", ""),
            "parameters": _function(t).get("parameters") or {"type": "object"},
        }
        for t in tools
    ]
    return instructions, items, flat
