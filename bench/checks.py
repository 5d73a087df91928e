"""Checks on what the model saw: a valid request, within budget, every system-prompt rule present."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from policies.classify import extract_facts
from policies.pages import PageType
from policies.transcript import Message


def pairing_errors(messages: Sequence[dict[str, Any]]) -> list[str]:
    """What an OpenAI-compatible upstream would reject about tool-call pairing and arguments."""
    errors: list[str] = []
    waiting: dict[str, int] = {}
    for index, message in enumerate(messages):
        if message.get("role") == "tool":
            if waiting.pop(message.get("tool_call_id"), None) is None:
                errors.append(f"messages[{index}]: tool message answers no waiting call")
        elif waiting:
            errors.append(f"messages[{index}]: calls {sorted(waiting)} left unanswered")
            waiting.clear()
        for call in message.get("tool_calls") or []:
            waiting[call["id"]] = index
            try:
                json.loads(call["function"]["arguments"] or "{}")
            except ValueError:
                errors.append(f"messages[{index}]: call {call['id']} has arguments that are not JSON")
    if waiting:
        errors.append(f"calls {sorted(waiting)} left unanswered at the end")
    return errors


def system_rules(messages: Sequence[dict[str, Any]]) -> list[str]:
    rules: list[str] = []
    for message in messages:
        if message.get("role") in ("system", "developer") and isinstance(message.get("content"), str):
            fact_source = Message(role=message["role"], text=message["content"])
            rules.extend(f.text for f in extract_facts(fact_source) if f.type is PageType.CONSTRAINT)
    return rules


def missing_rules(original: Sequence[dict[str, Any]], forwarded: Sequence[dict[str, Any]]) -> list[str]:
    """System-prompt rules absent from everything the model saw (whitespace-insensitive)."""
    seen = " ".join(" ".join(message_text(m).split()) for m in forwarded)
    return [rule for rule in system_rules(original) if _needle(rule) not in seen]


def _needle(rule: str) -> str:
    return " ".join(rule.split()).rstrip("…").strip()


def message_text(message: dict[str, Any]) -> str:
    """A wire message's text: its string content or its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
