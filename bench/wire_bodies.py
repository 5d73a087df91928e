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


def to_messages(messages: Sequence[Json], tools: Sequence[Json]) -> tuple[Any, list[Json], list[Json]]:
    texts = [_text(m) for m in messages if m.get("role") in ("system", "developer")]
    system: Any = texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts if t]
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
        else:  # consecutive user messages: one message of several blocks, as Claude Code sends them
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
    """The first system message is the instructions; later ones are system message items."""
    first = next((n for n, m in enumerate(messages) if m.get("role") in ("system", "developer")), None)
    instructions = _text(messages[first]) if first is not None else ""
    items: list[Json] = []
    for number, message in enumerate(messages):
        role = message.get("role")
        if number == first:
            continue
        if role in ("system", "developer"):
            items.append({"type": "message", "role": role, "content": [{"type": "input_text", "text": _text(message)}]})
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


# -- back to chat: what the model of a format received, as the chat checks read it -----------------


def _call(call_id: str, name: str, arguments: str) -> Json:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_tool(name: str, description: str, parameters: Any) -> Json:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def canonical(arguments: str) -> str:
    """Tool-call arguments as `json.dumps` writes them (a format that carries them as an object
    cannot keep the original spacing); arguments that are not JSON as they are."""
    try:
        return json.dumps(json.loads(arguments))
    except ValueError:
        return arguments


def canonical_answer(answer: Json | None) -> Json | None:
    """An assistant message with its calls' arguments in canonical JSON (`canonical`)."""
    if answer is None or not answer.get("tool_calls"):
        return answer
    calls = [
        {**c, "function": {**c["function"], "arguments": canonical(c["function"].get("arguments") or "")}}
        for c in answer["tool_calls"]
    ]
    return {**answer, "tool_calls": calls}


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "\n".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def chat_of_messages(body: Json) -> Json:
    """An Anthropic Messages request as a chat request (`messages`, `tools`, `user`)."""
    system = _blocks_text(body.get("system"))
    out: list[Json] = [{"role": "system", "content": system}] if system else []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message.get("role"), "content": content})
            continue
        blocks = [b for b in content or [] if isinstance(b, dict)]
        if message.get("role") == "assistant":
            calls = [
                _call(b["id"], b["name"], json.dumps(b.get("input") or {}))
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            text = _blocks_text([b for b in blocks if b.get("type") == "text"])
            out.append({"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})})
            continue
        for block in blocks:
            if block.get("type") == "tool_result":
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": _blocks_text(block.get("content")),
                    }
                )
        rest = [b for b in blocks if b.get("type") != "tool_result"]
        if rest:
            out.append({"role": "user", "content": _blocks_text(rest)})
    tools = [
        _function_tool(t["name"], t.get("description", ""), t.get("input_schema")) for t in body.get("tools") or []
    ]
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return _chat_body(body.get("model"), out, tools, metadata.get("user_id"))


def _chat_body(model: Any, messages: list[Json], tools: list[Json], user: Any) -> Json:
    """A chat request; `user` is the end user the request named (Anthropic's `metadata.user_id`)."""
    body: Json = {"model": model, "messages": messages}
    if tools:
        body["tools"] = tools
    if isinstance(user, str):
        body["user"] = user
    return body


def chat_of_responses(body: Json) -> Json:
    """A Responses request as a chat request: the model's items of one turn become one assistant message."""
    instructions = body.get("instructions")
    out: list[Json] = [{"role": "system", "content": instructions}] if instructions else []
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            call = _call(item["call_id"], item["name"], item.get("arguments") or "")
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": _blocks_text(item.get("output"))})
        elif kind == "message":
            role = item.get("role")
            text = _blocks_text(item.get("content"))
            if role == "assistant" and out and out[-1]["role"] == "assistant" and not out[-1].get("tool_calls"):
                out[-1]["content"] = "\n".join(filter(None, [out[-1]["content"], text]))
            else:
                out.append({"role": role, "content": text})
    tools = [_function_tool(t["name"], t.get("description", ""), t.get("parameters")) for t in body.get("tools") or []]
    return _chat_body(body.get("model"), out, tools, body.get("user"))


def anthropic_reply(answer: Json) -> Json:
    """A chat answer (`content`, `tool_calls`) as `bench.fake_anthropic`'s responder reply."""
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "input": _input(c["function"].get("arguments") or "")}
        for c in answer.get("tool_calls") or []
    ]
    return {"content": answer.get("content"), "tool_calls": calls}


def responses_reply(answer: Json) -> Json:
    """A chat answer as `bench.fake_responses`' responder reply."""
    calls = [
        {"call_id": c["id"], "name": c["function"]["name"], "arguments": c["function"].get("arguments") or ""}
        for c in answer.get("tool_calls") or []
    ]
    return {"content": answer.get("content"), "tool_calls": calls}


def chat_answer(wire: str, data: Any) -> Json | None:
    """The assistant message an agent of `wire` got, as a chat message (None: not an answer)."""
    if not isinstance(data, dict):
        return None
    if wire == "messages":
        blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
        calls = [
            _call(b["id"], b["name"], json.dumps(b.get("input") or {})) for b in blocks if b.get("type") == "tool_use"
        ]
        text = _blocks_text([b for b in blocks if b.get("type") == "text"])
    elif wire == "responses":
        items = [i for i in data.get("output") or [] if isinstance(i, dict)]
        calls = [
            _call(i["call_id"], i["name"], i.get("arguments") or "") for i in items if i.get("type") == "function_call"
        ]
        text = "\n".join(_blocks_text(i.get("content")) for i in items if i.get("type") == "message")
    else:
        choices = data.get("choices") or [{}]
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        return message if isinstance(message, dict) else None
    return {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}
