"""Injectors: do to a real transcript what an agent harness does to its history.

Each function takes OpenAI wire messages (`list[dict]`, as in shared/traces/real) and returns a
new list (the input is never changed): a compaction (Claude Code, OpenClaw/pi, LangChain, a plain
summary), a pruning of old tool results (hard clear, OpenClaw soft-trim) or a reset. The texts
follow shared/reference/harness-formats.md. They are pure and deterministic.

The summaries are deliberately lossy: they keep only the first sentence of the first user
message and the names of the tools used, never the user's rules, preferences or plans, so that
an evaluation can check that the gateway puts those back. A kept tail (`keep_recent`) never
starts with a `tool` message whose call was cut: such results are left out with their call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

Wire = dict[str, Any]
Injector = Callable[..., list[Wire]]

CLEARED = "[Old tool result content cleared]"
CONTINUED = "This session is being continued from a previous conversation that ran out of context."
CLAUDE_CODE_2 = CONTINUED + " The summary below covers the earlier portion of the conversation."
CLAUDE_CODE_1 = CONTINUED + " The conversation is summarized below:"
CLAUDE_CODE_KEPT = "Recent messages are preserved verbatim."
CLAUDE_CODE_RESUME = (
    "Continue the conversation from where it left off without asking the user any further questions. "
    "Resume directly \u2014 do not acknowledge the summary, do not recap what was happening, do not preface "
    'with "I\'ll continue" or similar. Pick up the last task as if the break never happened.'
)
CLAUDE_CODE_1_RESUME = (
    "Please continue the conversation from where we left it off without asking the user any further questions. "
    "Continue with the last task that you were asked to work on."
)
CLAUDE_CODE_SECTIONS = (
    "Primary Request and Intent",
    "Key Technical Concepts",
    "Files and Code Sections",
    "Errors and fixes",
    "Problem Solving",
    "All user messages",
    "Pending Tasks",
    "Current Work",
    "Optional Next Step",
)
OPENCLAW_PREFIX = "The conversation history before this point was compacted into the following summary:"
LANGCHAIN_PREFIX = "Here is a summary of the conversation to date:"
PLAIN_PREFIX = "Summary of the conversation so far:"
REMINDER_CLOSE = "</system-reminder>"
INSTRUCTION_ROLES = frozenset({"system", "developer"})
MAX_SENTENCE = 200

_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


# ---------------------------------------------------------------- compaction


def claude_code_compact(messages: Sequence[Wire], *, keep_recent: int = 0, version: int = 2) -> list[Wire]:
    """System kept; one user message with the continuation summary (after the CLAUDE.md
    `<system-reminder>` block when the first user message had one, as a separate text part);
    then the last `keep_recent` messages."""
    head, body, tail = _split(messages, keep_recent)
    reminder, intent = _reminder_and_intent(body)
    summary = _claude_code_text(intent, _tools_used(body), version, kept=bool(tail))
    content: str | list[Wire] = summary
    if reminder:
        content = [{"type": "text", "text": reminder}, {"type": "text", "text": summary}]
    return [*head, {"role": "user", "content": content}, *tail]


def _claude_code_text(intent: str, tools: Sequence[str], version: int, *, kept: bool) -> str:
    sections = "\n".join(
        f"{number}. {title}:\n   {_claude_code_section(number, intent, tools)}"
        for number, title in enumerate(CLAUDE_CODE_SECTIONS, 1)
    )
    if version == 1:
        analysis = "Analysis:\nThe conversation was reviewed in order."
        return f"{CLAUDE_CODE_1}\n{analysis}\n\nSummary:\n{sections}\n{CLAUDE_CODE_1_RESUME}"
    kept_note = f"\n\n{CLAUDE_CODE_KEPT}" if kept else ""
    return f"{CLAUDE_CODE_2}\n\nSummary:\n{sections}{kept_note}\n{CLAUDE_CODE_RESUME}"


def _claude_code_section(number: int, intent: str, tools: Sequence[str]) -> str:
    if number in (1, 6):
        return f"- {intent}"
    if number in (3, 8):
        return f"- Tools used: {_names(tools)}"
    return "- (none recorded)"


def openclaw_compact(messages: Sequence[Wire], *, keep_recent: int = 6) -> list[Wire]:
    """System kept; the OpenClaw/pi summary user message (`<summary>`, `## Goal` ...); the tail."""
    head, body, tail = _split(messages, keep_recent)
    _, intent = _reminder_and_intent(body)
    summary = "\n\n".join(
        (
            f"## Goal\n{intent}",
            "## Constraints & Preferences\n- (none)",
            f"## Progress\n### Done\n- Used tools: {_names(_tools_used(body))}\n### In Progress\n- (none)\n"
            "### Blocked\n- (none)",
            "## Key Decisions\n- (none)",
            "## Next Steps\n- Continue the task.",
            "## Critical Context\n- (none)",
        )
    )
    text = f"{OPENCLAW_PREFIX}\n\n<summary>\n{summary}\n</summary>"
    return [*head, {"role": "user", "content": text}, *tail]


def langchain_summarize(messages: Sequence[Wire], *, keep_recent: int = 20) -> list[Wire]:
    """System kept; LangChain's `SummarizationMiddleware` summary user message; the tail."""
    head, body, tail = _split(messages, keep_recent)
    _, intent = _reminder_and_intent(body)
    summary = f"## SESSION INTENT\n{intent}\n\n## SUMMARY\nThe assistant used: {_names(_tools_used(body))}."
    return [*head, {"role": "user", "content": f"{LANGCHAIN_PREFIX}\n\n{summary}"}, *tail]


def plain_summary(messages: Sequence[Wire], *, role: str = "system", keep_recent: int = 0) -> list[Wire]:
    """System kept; one `Summary of the conversation so far: ...` message in `role` (a system
    one is LangMem's shape); the tail."""
    head, body, tail = _split(messages, keep_recent)
    _, intent = _reminder_and_intent(body)
    text = f"{PLAIN_PREFIX} {intent} Tools used: {_names(_tools_used(body))}."
    return [*head, {"role": role, "content": text}, *tail]


# ---------------------------------------------------------------- pruning and reset


def prune_tool_results(messages: Sequence[Wire], *, keep_recent: int = 5, placeholder: str = CLEARED) -> list[Wire]:
    """Every tool result but the newest `keep_recent` replaced by `placeholder` (Claude Code
    microcompact, OpenClaw hard-clear, opencode prune)."""
    results = [i for i, m in enumerate(messages) if m.get("role") == "tool"]
    cleared = set(results[: max(0, len(results) - keep_recent)])
    return [{**m, "content": placeholder} if i in cleared else dict(m) for i, m in enumerate(messages)]


def soft_trim(messages: Sequence[Wire], *, head: int = 1500, tail: int = 1500, min_chars: int = 4000) -> list[Wire]:
    """OpenClaw's soft-trim of every tool result over `min_chars` characters."""
    return [_soft_trimmed(m, head, tail, min_chars) for m in messages]


def _soft_trimmed(message: Wire, head: int, tail: int, min_chars: int) -> Wire:
    text = _text(message)
    if message.get("role") != "tool" or len(text) <= max(min_chars, head + tail):
        return dict(message)
    note = f"[Tool result trimmed: kept first {head} chars and last {tail} chars of {len(text)} chars.]"
    return {**message, "content": f"{text[:head]}\n...\n{text[len(text) - tail :]}\n\n{note}"}


def reset(messages: Sequence[Wire], new_prompt: str) -> list[Wire]:
    """The leading system message(s) and one new user message (`/clear`, `/new`, a daily reset)."""
    return [*_instructions(messages), {"role": "user", "content": new_prompt}]


INJECTORS: Mapping[str, Injector] = MappingProxyType(
    {
        "claude_code_compact": claude_code_compact,
        "openclaw_compact": openclaw_compact,
        "langchain_summarize": langchain_summarize,
        "plain_summary": plain_summary,
        "prune_tool_results": prune_tool_results,
        "soft_trim": soft_trim,
        "reset": reset,
    }
)


# ---------------------------------------------------------------- shared pieces


def _instructions(messages: Sequence[Wire]) -> list[Wire]:
    count = next((i for i, m in enumerate(messages) if m.get("role") not in INSTRUCTION_ROLES), len(messages))
    return [dict(m) for m in messages[:count]]


def _split(messages: Sequence[Wire], keep_recent: int) -> tuple[list[Wire], list[Wire], list[Wire]]:
    """(leading instructions, the summarised middle, the kept tail)."""
    head = _instructions(messages)
    rest = list(messages[len(head) :])
    start = max(0, len(rest) - max(0, keep_recent))
    while start < len(rest) and rest[start].get("role") == "tool":
        start += 1  # its call is summarised away: so is the result
    return head, rest[:start], [dict(m) for m in rest[start:]]


def _reminder_and_intent(body: Sequence[Wire]) -> tuple[str, str]:
    """The first user message's CLAUDE.md block (or "") and the first sentence after it."""
    first = next((_text(m) for m in body if m.get("role") == "user"), "")
    end = first.rfind(REMINDER_CLOSE) if first.lstrip().startswith("<system-reminder>") else -1
    reminder = first[: end + len(REMINDER_CLOSE)] if end >= 0 else ""
    return reminder, _first_sentence(first[len(reminder) :])


def _first_sentence(text: str) -> str:
    text = text.strip()
    match = _SENTENCE_END.search(text)
    sentence = (text[: match.start()] if match else text).strip()
    return sentence[:MAX_SENTENCE] or "(no request recorded)"


def _tools_used(body: Sequence[Wire]) -> list[str]:
    names = (c.get("function", {}).get("name") for m in body for c in m.get("tool_calls") or ())
    return list(dict.fromkeys(n for n in names if isinstance(n, str) and n))


def _names(tools: Sequence[str]) -> str:
    return ", ".join(tools) if tools else "none"


def _text(message: Wire) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""
