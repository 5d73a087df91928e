"""The four representations of a page: full, compressed, structured, pointer.

Made once at ingest, deterministically, from the message (or the extracted fact) alone:

- full: the text and tool calls as sent.
- compressed: texts under `COMPRESS_FROM` tokens stay whole. JSON is minified, long arrays cut
  to their first items (`"… 37 more items"`), long strings shortened. Other text keeps a head,
  a tail and, between them, the lines with errors, identifiers, paths and numbers; the gaps are
  marked `[… N tokens elided; clawvm page ID …]`. Tool-call arguments over
  `CALL_ARGS_LIMIT` characters are shortened and stay valid JSON objects.
- structured: typed `key: value` fields that satisfy the type's floor (see `_structured`).
  Tool calls keep their ids and names; arguments shrink to a small JSON object.
- pointer: one line of at most ~`POINTER_TOKENS` tokens naming the page.

Invariants: token counts never grow as fidelity drops (a level that would come out longer
reuses the next-higher level), and a page whose full text is empty has empty text at every
level (its tool calls stay). `Representation.tokens` counts text plus tool calls, no framing.

Pages are named by their id as given (`p:3f9a2c1b0d`); the recall instructions name
`recall_tool` with the same id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from policies.classify import extract_facts, sentences
from policies.pages import PageType, Representation, Reprs
from policies.tokens import TokenCounter, tool_calls_tokens
from policies.transcript import Message, ToolCall

COMPRESS_FROM = 200  # tokens; shorter texts stay whole at compressed
CALL_ARGS_LIMIT = 300  # characters of tool-call arguments kept at compressed
SCALAR_LIMIT = 40  # characters of one argument value kept at structured and pointer
POINTER_TOKENS = 20
SPAN_ARGS = 40
LINE_CAP = 200
KEY_LINES = 3
MAX_IDENTIFIERS = 12
FIRST_SENTENCE_WORDS = 30
# JSON shrinking passes: (objects kept per array, scalars kept per array, string cap)
JSON_PASSES = ((3, 20, 160), (1, 8, 60))
MAX_JSON_DEPTH = 8

_ERROR = re.compile(r"\b(?:error|errors|exception|traceback|failed|failure|fatal|panic)\b", re.IGNORECASE)
_ERROR_STATUS = re.compile(
    r"^\W*(?:error|exception|fatal|traceback)\b|Traceback \(most recent call last\)"
    r"|(?:exit|return)\s+(?:code|status)\s*:?\s*[1-9]|non-zero exit",
    re.IGNORECASE | re.MULTILINE,
)
_IDENT = re.compile(
    r"(?P<url>https?://[^\s\"'<>()\[\]{}]+)"
    r"|(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?P<path>(?<![\w/])(?:~|\.{1,2})?/[\w.@+-]+(?:/[\w.@+-]+)+|\b[\w.-]+(?:/[\w.-]+)+\.[A-Za-z]\w{0,5}\b"
    r"|\b[\w-]+\.(?:py|js|ts|tsx|md|json|ya?ml|toml|txt|cfg|ini|sh|rs|go|java|rb|c|h|cpp|html|css|lock|sql)\b)"
    r"|(?P<ref>#[A-Z]{0,3}\d{3,}\b)"
    r"|(?P<code>\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{5,}\b)"
    r"|(?P<name>\b[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*[_-]\d{3,}\b)"
    r"|(?P<hash>\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b)"
    r"|(?P<number>\$\d[\d,]*(?:\.\d+)?|\b\d{4}-\d{2}-\d{2}\b|\b\d+(?:\.\d+)+\b|\b\d{3,}\b)"
)
_NUMBERED = re.compile(r"^\s{0,3}(?:\*\*)?(?:step\s+)?\d{1,3}[.)](?:\*\*)?\s+(?P<text>\S.*)$", re.IGNORECASE)
_SUB_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s")
_CHECK = re.compile(r"^\s*(?:[-*+]\s+\[(?P<mark>[ xX])\]|(?P<glyph>[☐☒]))\s+(?P<text>\S.*)$")
_DONE_MARK = re.compile(r"✅|✓|~~|\((?:done|completed)\)", re.IGNORECASE)
_GOAL = re.compile(
    r"(?:following user request|\bgoal|\bobjective)\s*:\s*(?P<goal>\S[^\n]*)", re.IGNORECASE
)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_PLAN_START = re.compile(
    r"^[^\n]{0,80}\bplan\b[^\n]{0,60}:(?:\*\*)?[ \t]*$|^\s{0,3}#{1,6}\s[^\n]*\bplan\b[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
_LEDGER = re.compile(r"updated ledger:\s*(?P<body>\{.*\})", re.IGNORECASE | re.DOTALL)
_CARRIES_STRUCTURED = frozenset({PageType.BOOTSTRAP, PageType.PLAN})
_GOAL_KEYS = ("goal", "explanation", "summary", "title")
_TODO_TEXT = ("content", "step", "description", "task", "title", "text", "name")
_DONE = frozenset({"completed", "complete", "done", "cancelled", "canceled", "skipped"})
_ACTIVE = frozenset({"in_progress", "in-progress", "active", "doing", "current"})


# ---------------------------------------------------------------- public API


def represent(
    message: Message,
    page_type: PageType,
    page_id: str,
    counter: TokenCounter,
    *,
    recall_tool: str = "clawvm_recall",
    call: ToolCall | None = None,
) -> Reprs:
    """The four levels of a message page. `call` is the tool call a tool result answers (its
    name and arguments name the evidence); without it the message's `name` is used."""
    text_tokens = counter.count(message.text)
    full = Representation(
        message.text, text_tokens + tool_calls_tokens(counter, message.tool_calls), message.tool_calls
    )
    blank = not message.text.strip()
    structured_text = "" if blank else _structured(message, page_type, page_id, full, recall_tool, call)
    compressed_text = "" if blank else _compressed_text(message.text, text_tokens, page_id)
    if text_tokens >= COMPRESS_FROM and page_type in _CARRIES_STRUCTURED:
        compressed_text = _with_structured(page_type, structured_text, compressed_text)
    compressed = _rep_like(compressed_text, _shortened_calls(message.tool_calls), counter, full)
    reduced = _reduced_calls(message.tool_calls)
    structured = _rep_like(structured_text, reduced, counter, compressed)
    origin = _origin(message, call)
    pointer = _pointer(page_id, page_type, origin, full.tokens, recall_tool, reduced, counter)
    return _monotone(full, compressed, structured, pointer)


def represent_fact(
    fact_text: str,
    page_type: PageType,
    page_id: str,
    parent_id: str,
    counter: TokenCounter,
    *,
    recall_tool: str = "clawvm_recall",
) -> Reprs:
    """A constraint or preference page: `rule: <sentence>` / `preference: <sentence>` at every
    level down to structured (there is nothing to compress), a short labelled pointer below."""
    label = "preference" if page_type is PageType.PREFERENCE else "rule"
    text = f"{label}: {fact_text}"
    full = _rep(text, (), counter)
    pointer = _fact_pointer(page_id, label, fact_text, counter)
    return _monotone(full, full, full, pointer)


def span_entry(page_id: str, message: Message, *, call: ToolCall | None = None) -> str:
    """One line of a span stub: `p:xxxx name(args)` for a tool result, the bare id otherwise."""
    if message.role != "tool":
        return page_id
    return f"{page_id} {_origin(message, call, SPAN_ARGS)}"


def _with_structured(page_type: PageType, structured: str, excerpt: str) -> str:
    """A bootstrap's key lines are its rules: compressed keeps them all (the structured view).
    A plan's compressed view leads with its structured fields so it never loses the current step."""
    if page_type is PageType.BOOTSTRAP:
        return structured
    return f"{structured}\n\n{excerpt}"


# ---------------------------------------------------------------- token accounting


def _rep(text: str, calls: tuple[ToolCall, ...], counter: TokenCounter) -> Representation:
    return Representation(text, counter.count(text) + tool_calls_tokens(counter, calls), calls)


def _rep_like(
    text: str, calls: tuple[ToolCall, ...], counter: TokenCounter, above: Representation
) -> Representation:
    """Count a level, reusing the level above when nothing changed (no second tokenisation)."""
    if text == above.text and calls == above.tool_calls:
        return above
    return _rep(text, calls, counter)


def _monotone(*levels: Representation) -> Reprs:
    kept = [levels[0]]
    for rep in levels[1:]:
        kept.append(rep if rep.tokens <= kept[-1].tokens else kept[-1])
    return Reprs(full=kept[0], compressed=kept[1], structured=kept[2], pointer=kept[3])


# ---------------------------------------------------------------- compressed


def _compressed_text(text: str, text_tokens: int, page_id: str) -> str:
    if text_tokens < COMPRESS_FROM:
        return text
    value = _json_value(text)
    if value is not None:
        return _compact_json(value, len(text) // 3)
    return _excerpt(text, text_tokens, page_id)


def _json_value(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):
        return None


def _compact_json(value: Any, target_chars: int) -> str:
    out = ""
    for limits in JSON_PASSES:
        out = _dumps(_shrink(value, limits, 0))
        if len(out) <= target_chars:
            break
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _shrink(value: Any, limits: tuple[int, int, int], depth: int) -> Any:
    """`value` with long strings cut and long arrays cut to their first items plus a count."""
    if isinstance(value, str):
        return _cut_string(value, limits[2])
    if isinstance(value, dict):
        if depth >= MAX_JSON_DEPTH:
            return "{…}"
        return {k: _shrink(v, limits, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth >= MAX_JSON_DEPTH:
            return "[…]"
        keep = limits[0] if any(isinstance(v, (dict, list)) for v in value) else limits[1]
        head = value if len(value) <= keep + 1 else value[:keep]
        items = [_shrink(v, limits, depth + 1) for v in head]
        return items + ([f"… {len(value) - keep} more items"] if len(head) < len(value) else [])
    return value


def _cut_string(value: str, cap: int) -> str:
    if len(value) <= cap:
        return value
    return f"{value[:cap]}… [{len(value) - cap} chars cut]"


def _excerpt(text: str, text_tokens: int, page_id: str) -> str:
    """Head + tail + the salient lines between them, about a third of the text."""
    budget = max(len(text) // 3, LINE_CAP)
    lines = text.splitlines()
    if len(lines) == 1:
        lines = _wrap(text, LINE_CAP)
    head = _take(lines, budget // 4)
    tail = _take(lines[head:][::-1], budget // 4)
    middle = range(head, len(lines) - tail)
    kept = set(range(head)) | set(range(len(lines) - tail, len(lines)))
    kept |= set(_salient(lines, middle, budget // 2))
    return _join_kept(lines, sorted(kept), text, text_tokens, page_id)


def _wrap(text: str, width: int) -> list[str]:
    """A single long line cut into pieces at spaces (so head and tail do not take it all)."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + width)
        space = text.rfind(" ", start + width // 2, end) if end < len(text) else -1
        end = space + 1 if space > 0 else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _take(lines: Sequence[str], budget: int) -> int:
    """How many leading lines fit in `budget` characters (at least one)."""
    used = 0
    for count, line in enumerate(lines):
        used += len(line) + 1
        if used > budget:
            return max(count, 1) if lines else 0
    return len(lines)


def _salient(lines: Sequence[str], indexes: Iterable[int], budget: int) -> list[int]:
    """Line indexes worth keeping, by rank (errors, then identifiers, then numbers), in budget."""
    ranked = sorted((rank, i) for i in indexes if (rank := _line_rank(lines[i])) < 3)
    chosen: list[int] = []
    for _, index in ranked:
        cost = min(len(lines[index]), LINE_CAP) + 1
        if cost <= budget:
            chosen.append(index)
            budget -= cost
    return chosen


def _line_rank(line: str) -> int:
    if _ERROR.search(line):
        return 0
    kinds = {m.lastgroup for m in _IDENT.finditer(line, 0, 4 * LINE_CAP)}
    if kinds - {"number", None}:
        return 1
    return 2 if kinds else 3


def _join_kept(lines: Sequence[str], kept: Sequence[int], text: str, text_tokens: int, page_id: str) -> str:
    kept_chars = sum(min(len(lines[i]), LINE_CAP) + 1 for i in kept)
    elided = text_tokens * max(0, len(text) - kept_chars) // max(1, len(text))
    markers = iter((f"[… {elided:,} tokens elided; clawvm page {page_id} …]",))
    out: list[str] = []
    previous = -1
    for index in [*kept, len(lines)]:
        if index > previous + 1:
            out.append(next(markers, "[…]"))
        if index < len(lines):
            out.append(_cap_line(lines[index]))
        previous = index
    return "\n".join(out)


def _cap_line(line: str, cap: int = LINE_CAP) -> str:
    if len(line) <= cap:
        return line
    match = _ERROR.search(line) or _IDENT.search(line, 0, 4 * cap)
    start = max(0, match.start() - cap // 3) if match and match.end() > cap else 0
    return ("…" if start else "") + line[start : start + cap] + "…"


# ---------------------------------------------------------------- tool calls


def _shortened_calls(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    if all(len(c.arguments) <= CALL_ARGS_LIMIT for c in calls):
        return calls
    return tuple(_shorten_call(c) for c in calls)


def _shorten_call(call: ToolCall) -> ToolCall:
    if len(call.arguments) <= CALL_ARGS_LIMIT:
        return call
    value = _json_object(call.arguments)
    if value is None:
        return ToolCall(call.id, call.name, _dumps({"arguments": _cut_string(call.arguments, CALL_ARGS_LIMIT // 2)}))
    out = ""
    for limits in ((3, 8, CALL_ARGS_LIMIT // 2), (1, 3, SCALAR_LIMIT)):
        out = _dumps(_shrink(value, limits, 0))
        if len(out) <= CALL_ARGS_LIMIT:
            break
    return ToolCall(call.id, call.name, out)


def _reduced_calls(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, _reduce_arguments(c.arguments)) for c in calls)


def _reduce_arguments(arguments: str) -> str:
    """A small valid JSON object: short scalars kept, anything longer replaced by its size."""
    if not arguments.strip():
        return arguments
    value = _json_object(arguments)
    if value is None:
        return _dumps({"arguments": _elide(arguments) if len(arguments) > SCALAR_LIMIT else arguments})
    return _dumps({k: _small(v) for k, v in value.items()})


def _small(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= SCALAR_LIMIT else _elide(value)
    if isinstance(value, (dict, list)):
        text = _dumps(value)
        return value if len(text) <= SCALAR_LIMIT else _elide(text)
    return value


def _elide(text: str) -> str:
    return f"<elided {len(text)} chars>"


def _json_object(arguments: str) -> dict[str, Any] | None:
    value = _json_value(arguments)
    return value if isinstance(value, dict) else None


def _origin(message: Message, call: ToolCall | None, limit: int = 24) -> str:
    """`name(args)` for a tool result, the role otherwise."""
    if message.role != "tool":
        return message.role
    name = call.name if call else message.name or "tool"
    args = _abbreviate(call.arguments, limit) if call else ""
    return f"{name}({args})"


def _abbreviate(arguments: str, limit: int) -> str:
    value = _json_object(arguments)
    if value is None:
        flat = " ".join(arguments[: 4 * limit].split())
    elif len(value) == 1:
        flat = _flat(next(iter(value.values())), limit)
    else:
        flat = ", ".join(f"{k}={_flat(v, limit)}" for k, v in value.items())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _flat(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else _dumps(value)
    return " ".join(text[: 4 * limit].split())


# ---------------------------------------------------------------- structured


def _structured(
    message: Message, page_type: PageType, page_id: str, full: Representation, recall_tool: str, call: ToolCall | None
) -> str:
    if page_type is PageType.EVIDENCE:
        return _evidence(message, page_id, full.tokens, recall_tool, call)
    if page_type is PageType.PLAN:
        return _plan(message)
    if page_type is PageType.BOOTSTRAP:
        return _bootstrap(message)
    return _said(message)


def _evidence(message: Message, page_id: str, tokens: int, recall_tool: str, call: ToolCall | None) -> str:
    text = message.text
    value = _json_value(text)
    lines = [
        f"tool: {_origin(message, call, 60)}",
        f"status: {_status(text, value)}",
        f"size: {tokens:,} tokens",
    ]
    if value is not None:
        lines.append(f"shape: {_shape(value)}")
    key = _key_lines(text, value is not None)
    if key:
        lines.append("key lines:")
        lines.extend(f"  {line}" for line in key)
    found = identifiers(text)
    if found:
        lines.append(f"identifiers: {', '.join(found)}")
    lines.append(f'recall full text with {recall_tool}(page_ids=["{page_id}"])')
    return "\n".join(lines)


def _status(text: str, value: Any) -> str:
    if not text.strip():
        return "empty"
    if isinstance(value, dict) and ("error" in value or "errors" in value):
        return "error"
    if value is None and _ERROR_STATUS.search(text, 0, 4000):
        return "error"
    return "ok"


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(keys[:8]) + (", …" if len(keys) > 8 else "")
        return f"object, {len(keys)} keys: {shown}"
    if isinstance(value, list):
        return f"array, {len(value)} items"
    return type(value).__name__


def _key_lines(text: str, is_json: bool) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [_cap_line(line, 160) for line in lines if _ERROR.search(line)][:KEY_LINES]
    if errors or is_json or not lines:
        return errors
    return [_cap_line(lines[0], 160)]


def identifiers(text: str, limit: int = MAX_IDENTIFIERS) -> list[str]:
    """Ids, paths and URLs first, then numbers; deduplicated, in source order within each."""
    ids: dict[str, None] = {}
    numbers: dict[str, None] = {}
    for match in _IDENT.finditer(text):
        found = match.group()[:80]
        (numbers if match.lastgroup == "number" else ids)[found] = None
        if len(ids) >= limit:
            break
    return (list(ids) + [n for n in numbers if n not in ids])[:limit]


def _said(message: Message) -> str:
    return f"{message.role}: {_words(_first_sentence(message.text), FIRST_SENTENCE_WORDS)}"


def _words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words) if len(words) <= limit else " ".join(words[:limit]) + " …"


def _bootstrap(message: Message) -> str:
    """The opening sentence (who the agent is), then every heading and every rule sentence,
    section by section."""
    first = _first_sentence(message.text)
    lines = [first]
    for heading, body in _sections(message.text):
        if heading:
            lines.append(heading)
        probe = Message(role=message.role, text=body)
        lines.extend(f"- {fact.text}" for fact in extract_facts(probe, max_chars=None) if fact.text != first)
    return "\n".join(lines)


def _sections(text: str) -> Iterator[tuple[str, str]]:
    heading, body = "", []
    in_fence = False
    for line in text.splitlines():
        in_fence ^= line.lstrip().startswith(("```", "~~~"))
        if _HEADING.match(line) and not in_fence:
            yield heading, "\n".join(body)
            heading, body = line.strip(), []
        else:
            body.append(line)
    yield heading, "\n".join(body)


# ---------------------------------------------------------------- plan


def _plan(message: Message) -> str:
    steps = _todo_steps(message.tool_calls) or _text_steps(_plan_body(message.text))
    ledger = _ledger(message.text)
    current, left = _current(steps)
    lines = [f"{name}: {value}" for name, value in _plan_head(message, ledger)]
    if ledger.get("step") or current or not steps:
        step = ledger.get("step") or current or _first_sentence(message.text)
        lines.append(f"current step: {_words(step, 40)}")
    else:
        lines.append("current step: none (all steps done)")
    if steps or not ledger:
        names = "; ".join(_words(s, 12) for s in left[:4]) + (" …" if len(left) > 4 else "")
        lines.append(f"steps left: {len(left)}" + (f" ({names})" if left else ""))
    return "\n".join(lines)


def _plan_head(message: Message, ledger: dict[str, str]) -> list[tuple[str, str]]:
    """The goal where one is stated ("goal:", Magentic-One's "user request:", a todo call's
    explanation); a ledger states progress instead. An unstated goal is left out, not guessed."""
    match = _GOAL.search(message.text)
    goal = match.group("goal") if match else _todo_goal(message.tool_calls)
    if goal:
        return [("goal", _words(goal, FIRST_SENTENCE_WORDS))]
    if ledger.get("progress"):
        return [("progress", _words(ledger["progress"], FIRST_SENTENCE_WORDS))]
    return []


def _todo_goal(calls: tuple[ToolCall, ...]) -> str:
    for call in calls:
        value = _json_object(call.arguments) or {}
        goal = next((value[k] for k in _GOAL_KEYS if isinstance(value.get(k), str) and value[k].strip()), "")
        if goal:
            return str(goal)
    return ""


def _plan_body(text: str) -> str:
    """The text after the last plan header ("Here is the plan…:", "## Plan"), without a ledger."""
    starts = [m.end() for m in _PLAN_START.finditer(text)]
    body = text[starts[-1] :] if starts else text
    ledger = _LEDGER.search(body)
    return body[: ledger.start()] if ledger else body


def _first_sentence(text: str) -> str:
    return next(sentences(text), " ".join(text.split()[:FIRST_SENTENCE_WORDS]))


def _current(steps: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The first active step, else the first pending one; and the pending steps after it."""
    pending = [(text, state) for text, state in steps if state != "done"]
    active = next((i for i, (_, state) in enumerate(pending) if state == "active"), 0)
    if not pending:
        return "", []
    return pending[active][0], [text for text, _ in pending[active + 1 :]]


def _todo_steps(calls: tuple[ToolCall, ...]) -> list[tuple[str, str]]:
    for call in calls:
        value = _json_object(call.arguments)
        items = _todo_items(value) if value else None
        if items:
            return items
    return []


def _todo_items(value: dict[str, Any]) -> list[tuple[str, str]] | None:
    for entry in value.values():
        if isinstance(entry, list) and entry and all(isinstance(e, dict) for e in entry):
            steps = [_todo_step(e) for e in entry]
            return [s for s in steps if s[0]] or None
    return None


def _todo_step(entry: dict[str, Any]) -> tuple[str, str]:
    text = next((str(entry[k]) for k in _TODO_TEXT if isinstance(entry.get(k), str) and entry[k]), "")
    status = str(entry.get("status", "")).lower()
    state = "done" if status in _DONE else "active" if status in _ACTIVE else "pending"
    return " ".join(text.split()), state


def _text_steps(text: str) -> list[tuple[str, str]]:
    checks = [_check_step(m) for line in text.splitlines() if (m := _CHECK.match(line))]
    if checks:
        return checks
    return [_numbered_step(item) for item in _numbered_items(text)]


def _numbered_items(text: str) -> Iterator[str]:
    """Top-level numbered items, each with its indented continuation lines joined."""
    item: list[str] = []
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match:
            yield from _flush_item(item)
            item.append(match.group("text"))
        elif item and line[:1].isspace() and line.strip() and not _SUB_ITEM.match(line):
            item.append(line.strip())
        else:
            yield from _flush_item(item)
    yield from _flush_item(item)


def _flush_item(item: list[str]) -> Iterator[str]:
    if item:
        yield " ".join(item)
        item.clear()


def _check_step(match: re.Match[str]) -> tuple[str, str]:
    done = match.group("mark") in ("x", "X") or match.group("glyph") == "☒"
    return " ".join(match.group("text").split()), "done" if done else "pending"


def _numbered_step(text: str) -> tuple[str, str]:
    clean = " ".join(text.replace("**", "").split())
    return clean, "done" if _DONE_MARK.search(text) else "pending"


def _ledger(text: str) -> dict[str, str]:
    """Magentic-One's ledger: who speaks next and what they are asked to do, and the progress."""
    match = _LEDGER.search(text)
    body = _json_value(match.group("body")) if match else None
    if not isinstance(body, dict):
        return {}
    speaker = _ledger_field(body, "next_speaker", "answer")
    ask = _ledger_field(body, "instruction_or_question", "answer")
    step = f"{speaker}: {ask}" if speaker and ask else ask or speaker
    progress = _ledger_field(body, "is_request_satisfied", "reason")
    return {k: v for k, v in (("step", step), ("progress", progress)) if v}


def _ledger_field(body: dict[str, Any], key: str, field: str) -> str:
    entry = body.get(key)
    value = entry.get(field) if isinstance(entry, dict) else None
    return " ".join(str(value).split()) if value not in (None, "") else ""


# ---------------------------------------------------------------- pointer


def _pointer(
    page_id: str,
    page_type: PageType,
    origin: str,
    tokens: int,
    recall_tool: str,
    calls: tuple[ToolCall, ...],
    counter: TokenCounter,
) -> Representation:
    bare = origin.split("(", 1)[0]
    size = f"{tokens:,} tok"
    candidates = (
        f"[{page_id} {page_type.value} · {origin} · {size} paged out · {recall_tool}]",
        f"[{page_id} {page_type.value} · {origin} · {size} paged out]",
        f"[{page_id} {page_type.value} · {bare} · {size}]",
        f"[{page_id} {page_type.value} · {size}]",
    )
    return _first_fitting(candidates, calls, counter)


def _fact_pointer(page_id: str, label: str, fact_text: str, counter: TokenCounter) -> Representation:
    words = fact_text.split()
    candidates = tuple(f"[{page_id}] {label}: {_words(' '.join(words), n)}" for n in (14, 10, 6, 3))
    return _first_fitting(candidates, (), counter)


def _first_fitting(candidates: Sequence[str], calls: tuple[ToolCall, ...], counter: TokenCounter) -> Representation:
    call_tokens = tool_calls_tokens(counter, calls)
    for text in candidates:
        tokens = counter.count(text)
        if tokens <= POINTER_TOKENS:
            return Representation(text, tokens + call_tokens, calls)
    return Representation(candidates[-1], counter.count(candidates[-1]) + call_tokens, calls)
