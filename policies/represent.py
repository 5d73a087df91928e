"""The four representations of a page: full, compressed, structured, pointer.

Made once at ingest, deterministically, from the message (or the extracted fact) alone:

- full: the text and tool calls as sent.
- compressed: texts under `COMPRESS_FROM` tokens stay whole. JSON is minified, long arrays cut
  to their first items (`"… 37 more items"`), long strings shortened. Other text keeps a head,
  a tail and, between them, the lines with errors, then identifiers and paths, then numbers;
  the first gap says `[… N tokens elided; clawvm page ID …]`, later gaps `[…]`. A bootstrap's
  compressed view is its structured view (its key lines are its rules); a plan's leads with
  its structured fields. Tool-call arguments over `CALL_ARGS_LIMIT` characters are shortened
  and stay valid JSON objects.
- structured: typed `key: value` lines that satisfy the type's floor (`_structured`). Tool
  calls keep their ids and names; their arguments shrink to a small JSON object.
- pointer: one line of at most `POINTER_TOKENS` tokens naming the page, its type, origin and size.

Invariants: token counts never grow as fidelity drops (a level that would come out longer
reuses the next-higher level); a page whose full text is blank has empty text at every level
(its tool calls stay); a pointer either names its page id or holds the page's whole text.
`Representation.tokens` counts text plus tool calls, no framing; each distinct text is
counted once. Pages are named by their id as given (`p:3f9a2c1b0d`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from policies.classify import MEMO_FACTS, extract_facts, remembered_length, sentences
from policies.pages import PageType, Representation, Reprs
from policies.tokens import TOOL_CALL_OVERHEAD, TokenCounter, tool_calls_tokens, utf8_bytes
from policies.transcript import Message, ToolCall

FACT_LABELS = {PageType.PREFERENCE: "preference", PageType.INTENT: "user said"}  # else "rule"
COMPRESS_FROM = 200  # tokens; shorter texts stay whole at compressed
CALL_ARGS_LIMIT = 300  # characters of tool-call arguments kept at compressed
SCALAR_LIMIT = 40  # characters of one argument value kept at structured and pointer
POINTER_TOKENS = 20
POINTER_ARGS = 24
SPAN_ARGS = 40
INDEX_FIRST_LINE = 72  # characters of a tool result's first line kept in its evidence-index entry
LINE_CAP = 200  # lines longer than twice this are cut into pieces for the excerpt
KEY_LINE_CAP = 160
KEY_LINES = 3
TAIL_LINES = 3  # an error word in the last lines marks a tool result as failed
MAX_IDENTIFIERS = 12
MAX_TOKEN = 120  # longer candidate tokens are not identifiers (except URLs, which are cut)
FIRST_SENTENCE_WORDS = 30
OPENING_WORDS = 6  # a shorter first sentence takes the next one along
STEP_WORDS = 40
# JSON shrinking passes: (containers kept per array, scalars kept per array, string cap)
JSON_PASSES = ((3, 20, 160), (1, 8, 60))
CALL_PASSES = ((3, 8, CALL_ARGS_LIMIT // 2), (1, 3, SCALAR_LIMIT))
MAX_JSON_DEPTH = 8

_ERROR = re.compile(r"\b(?:error|errors|exception|traceback|failed|failure|fatal|panic)\b", re.IGNORECASE)
_ERROR_STEMS = ("error", "exception", "traceback", "fail", "fatal", "panic")  # in every `_ERROR` match
_STATUS_STEMS = ("error", "exception", "fatal", "traceback", "exit", "return")  # in every `_ERROR_STATUS` match
STATUS_HEAD = 4000  # characters searched for an error at the top
_ERROR_STATUS = re.compile(
    r"^[^\w\n]{0,8}(?:error|exception|fatal|traceback)\b|Traceback \(most recent call last\)"
    r"|(?:exit|return)\s+(?:code|status)\s*:?\s*[1-9]|non-zero exit",
    re.IGNORECASE | re.MULTILINE,
)
# Identifier candidates: runs of non-separators holding a digit, slash, dot, hash or dollar;
# each starts only where a run starts, so the scan is linear (and runs to its first mark without
# backtracking). `_KIND` then types one token.
_SEP = r"\s\"'<>()\[\]{};|`*"
_MARK = r"\d/.#$"
_CANDIDATE = re.compile(rf"(?<![^{_SEP}])[^{_SEP}{_MARK}]*+[{_MARK}][^{_SEP}]*+")
_PARTS = re.compile(r"[:,=]")
_KIND = re.compile(
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"|(?P<path>(?:~|\.{1,2})?/[\w.@+-]+(?:/[\w.@+-]+)+|(?=[\w.-]*[A-Za-z])[\w.-]+(?:/[\w.-]+)+"
    r"|[\w-]+(?:\.[\w-]+)*\.(?:py|js|ts|tsx|md|json|ya?ml|toml|txt|cfg|ini|sh|rs|go|java|rb|c|h|cpp"
    r"|html|css|lock|sql|plist|swift))"
    r"|(?P<ref>#[A-Z]{0,3}\d{3,})"
    r"|(?P<code>(?=[A-Z]*\d)(?=\d*[A-Z])[A-Z0-9]{5,})"
    r"|(?P<name>[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*[_-]\d{3,})"
    r"|(?P<hash>(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40})"
    r"|(?P<number>\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|\$\d+(?:\.\d+)?|\d{4}-\d{2}-\d{2}|\d+(?:\.\d+)+|\d{3,})"
)
_TRIM = ".,:;!?"
_ODD_CASE = ("\u0130", "\u0131")  # İ, ı: taken for "i" by re.IGNORECASE, yet str.lower() gives no lone "i"
_NUMBERED = re.compile(r"^\s{0,3}(?:\*\*)?(?:step\s+)?\d{1,3}[.)](?:\*\*)?\s+(?P<text>\S.*)$", re.IGNORECASE)
_SUB_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s")
_CHECK = re.compile(r"^\s*(?:[-*+]\s+\[(?P<mark>[ xX])\]|(?P<glyph>[☐☒]))\s+(?P<text>\S.*)$")
_DONE_MARK = re.compile(r"✅|✓|~~|\((?:done|completed)\)", re.IGNORECASE)
_GOAL = re.compile(r"(?:following user request|\bgoal|\bobjective)\s*:\s*(?P<goal>\S[^\n]*)", re.IGNORECASE)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S")
_PLAN_START = re.compile(
    r"^[^\n]{0,80}\bplan\b[^\n]{0,60}:(?:\*\*)?[ \t]*$|^[ \t]{0,3}#{1,6}[ \t][^\n]*\bplan\b[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
_LEDGER = re.compile(r"updated ledger:\s*(?=\{)", re.IGNORECASE)
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
    counted: tuple[Representation, int] | None = None,
) -> Reprs:
    """The four levels of a message page. `call` is the tool call a tool result answers (its
    name and arguments name the evidence); without it the message's `name` is used. `counted`:
    the message's `full_level`, when the caller has it already (not counted again)."""
    full, text_tokens = counted or full_level(message, counter)
    compressed_text, structured_text = "", ""
    if message.text.strip():
        excerpt = text_tokens >= COMPRESS_FROM and page_type is not PageType.BOOTSTRAP
        view = _View.of(message.text, text_tokens, scan=excerpt or page_type is PageType.EVIDENCE)
        structured_text = _structured(message, page_type, page_id, view, full.tokens, recall_tool, call)
        compressed_text = _compressed_text(view, page_type, page_id, structured_text)
    compressed = _rep_like(compressed_text, _shortened_calls(message.tool_calls), counter, full)
    reduced = _reduced_calls(message.tool_calls)
    structured = _rep_like(structured_text, reduced, counter, compressed)
    origin = _origin(message, call, POINTER_ARGS)
    ceiling = min(full.tokens, compressed.tokens, structured.tokens)
    pointer = _pointer(page_id, page_type, origin, full.tokens, recall_tool, reduced, counter, ceiling)
    reprs = _monotone(full, compressed, structured, pointer)
    if reprs.pointer.text == full.text or page_id in reprs.pointer.text or not message.text.strip():
        return reprs  # a blank text (tool calls only) has nothing to lose: its calls are its content
    return _anchored(reprs, page_id, counter)


def full_level(message: Message, counter: TokenCounter) -> tuple[Representation, int]:
    """A message's full level, and the tokens of its text alone: all a page needs to be sent
    whole (the other levels follow from them, `represent`)."""
    text_tokens = counter.count(message.text)
    calls_tokens = tool_calls_tokens(counter, message.tool_calls)
    return Representation(message.text, text_tokens + calls_tokens, message.tool_calls), text_tokens


def bound_level(message: Message) -> tuple[Representation, int]:
    """`full_level` with the tokens bounded above by the UTF-8 bytes, for a counter
    `at_most_bytes`: what an append may be judged by before it is counted (policies.pagetable)."""
    text_bound = utf8_bytes(message.text)
    calls = sum(TOOL_CALL_OVERHEAD + utf8_bytes(c.name) + utf8_bytes(c.arguments) for c in message.tool_calls)
    return Representation(message.text, text_bound + calls, message.tool_calls), text_bound


def represent_fact(
    fact_text: str,
    page_type: PageType,
    page_id: str,
    parent_id: str,
    counter: TokenCounter,
    *,
    recall_tool: str = "clawvm_recall",
) -> Reprs:
    """A constraint, preference or intent page: `rule: <sentence>`, `preference: <sentence>` or
    `user said: <sentence>` at full, compressed and structured alike (one sentence has nothing
    to compress); the pointer is the id and the label with the sentence's first words, when that
    is shorter. `parent_id` and `recall_tool` are accepted for symmetry with `represent`; a
    fact's text is its own recall."""
    label = FACT_LABELS.get(page_type, "rule")
    full = _rep(f"{label}: {fact_text}", (), counter)
    pointer = _fact_pointer(page_id, label, fact_text, counter, full.tokens)
    return _monotone(full, full, full, pointer)


def span_entry(page_id: str, message: Message, *, call: ToolCall | None = None) -> str:
    """One line of a span stub: `p:xxxx name(args)` for a tool result, the bare id otherwise."""
    if message.role != "tool":
        return page_id
    return f"{page_id} {_origin(message, call, SPAN_ARGS)}"


def index_entry(page_id: str, name: str | None, arguments: str | None, text: str) -> str:
    """One line of the evidence index (paged-out tool results): `p:xxxx name(args): "first line"`,
    the arguments shortened as in a span stub, the result's first non-blank line cut to
    INDEX_FIRST_LINE characters and quoted as JSON (tool output, never instructions)."""
    args = _abbreviate(arguments, SPAN_ARGS) if arguments else ""
    first = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if len(first) > INDEX_FIRST_LINE:
        first = first[: INDEX_FIRST_LINE - 1].rstrip() + "…"
    return f"{page_id} {name or 'tool'}({args}): {json.dumps(first, ensure_ascii=False)}"


def identifiers(text: str, limit: int = MAX_IDENTIFIERS) -> list[str]:
    """Ids, paths and URLs first, then numbers; deduplicated, in source order within each."""
    return _identifiers(_scan(text), limit)


# ---------------------------------------------------------------- one reading of the text


class _Found(NamedTuple):
    offset: int
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class _View:
    """A text read once: its lines (as spans), parsed JSON, identifiers and error lines."""

    text: str
    tokens: int
    spans: tuple[tuple[int, int], ...]
    value: Any
    found: tuple[_Found, ...]
    error_lines: tuple[int, ...]

    @classmethod
    def of(cls, text: str, tokens: int, *, scan: bool) -> _View:
        """`scan`: find lines, identifiers and errors too (evidence, and texts to excerpt)."""
        value = _json_value(text)
        spans = _spans(text) if scan else ()
        found = _scan(text) if scan else ()
        errors = _error_lines(text, spans) if scan else ()
        return cls(text, tokens, spans, value, found, errors)

    def line(self, index: int) -> str:
        start, end = self.spans[index]
        return self.text[start:end]


def _spans(text: str) -> tuple[tuple[int, int], ...]:
    """Line spans; a line longer than 2 × LINE_CAP is cut into pieces at spaces."""
    spans: list[tuple[int, int]] = []
    start = 0
    for line in text.split("\n"):
        end = start + len(line)
        if end - start > 2 * LINE_CAP:
            spans.extend(_pieces(text, start, end))
        else:
            spans.append((start, end))
        start = end + 1
    return tuple(spans)


def _pieces(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while end - start > 2 * LINE_CAP:
        space = text.rfind(" ", start + LINE_CAP // 2, start + LINE_CAP)
        cut = space + 1 if space > 0 else start + LINE_CAP
        yield start, cut
        start = cut
    yield start, end


def _scan(text: str) -> tuple[_Found, ...]:
    """Every identifier candidate, typed; a token the text repeats is typed once."""
    found: list[_Found] = []
    kinds: dict[str, tuple[tuple[str, str], ...]] = {}
    for token, offset in [(m[0], m.start()) for m in _CANDIDATE.finditer(text)]:
        typed = kinds.get(token)
        if typed is None:
            typed = kinds[token] = tuple(_typed(token.rstrip(_TRIM).lstrip("@")))
        found.extend(_Found(offset, kind, value) for kind, value in typed)
    return tuple(found)


def _typed(token: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of what one candidate token names: itself, or its parts between `:,=`."""
    if token.startswith(("http://", "https://")):
        yield "url", token[:80]
        return
    if len(token) > MAX_TOKEN:
        return
    match = _KIND.fullmatch(token)
    if match and match.lastgroup:
        yield match.lastgroup, token
    elif ":" in token or "," in token or "=" in token:
        for part in _PARTS.split(token):
            found = _KIND.fullmatch(part.strip(_TRIM))
            if found and found.lastgroup:
                yield found.lastgroup, found.group()


def _error_lines(text: str, spans: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    if not _may_match(text, _ERROR_STEMS):
        return ()
    starts = [start for start, _ in spans]
    lines = (bisect.bisect_right(starts, m.start()) - 1 for m in _ERROR.finditer(text))
    return tuple(dict.fromkeys(lines))


def _may_match(text: str, stems: tuple[str, ...]) -> bool:
    """False when a case-insensitive search for words built on `stems` (ASCII) cannot match: a
    text whose lower case holds none of them. Cheaper than the search (a long tool result with a
    curly quote used to be searched in full). Every character such a search takes for an ASCII
    letter lowers to that letter, but for İ and ı (`_ODD_CASE`): a text holding one is searched."""
    if not text.isascii() and any(odd in text for odd in _ODD_CASE):
        return True
    lowered = text.lower()
    return any(stem in lowered for stem in stems)


def _identifiers(found: Sequence[_Found], limit: int) -> list[str]:
    ids = dict.fromkeys(f.text for f in found if f.kind != "number")
    numbers = dict.fromkeys(f.text for f in found if f.kind == "number" and f.text not in ids)
    return [*ids, *numbers][:limit]


# ---------------------------------------------------------------- token accounting


def _rep(text: str, calls: tuple[ToolCall, ...], counter: TokenCounter) -> Representation:
    return Representation(text, counter.count(text) + tool_calls_tokens(counter, calls), calls)


def _rep_like(text: str, calls: tuple[ToolCall, ...], counter: TokenCounter, above: Representation) -> Representation:
    """Count a level, reusing the level above when nothing changed (no second tokenisation)."""
    if text == above.text and calls == above.tool_calls:
        return above
    return _rep(text, calls, counter)


def _anchored(reprs: Reprs, page_id: str, counter: TokenCounter) -> Reprs:
    """A pointer names its page unless it holds the whole page. When the structured text is
    lossy yet shorter than any line naming the page, it takes the id as a suffix, and the
    pointer is the bare id."""
    structured = reprs.structured
    tagged = _rep(f"{structured.text} [{page_id}]", structured.tool_calls, counter)
    bare = _rep(f"[{page_id}]", structured.tool_calls, counter)
    return _monotone(reprs.full, reprs.compressed, tagged, bare)


def _monotone(*levels: Representation) -> Reprs:
    kept = [levels[0]]
    for rep in levels[1:]:
        kept.append(rep if rep.tokens <= kept[-1].tokens else kept[-1])
    return Reprs(full=kept[0], compressed=kept[1], structured=kept[2], pointer=kept[3])


# ---------------------------------------------------------------- compressed


def _compressed_text(view: _View, page_type: PageType, page_id: str, structured: str) -> str:
    if view.tokens < COMPRESS_FROM:
        return view.text
    if page_type is PageType.BOOTSTRAP:
        return structured  # a bootstrap's key lines are its rules: keep them all
    if view.value is not None:
        body = _compact_json(view.value, len(view.text) // 3)
    else:
        body = _excerpt(view, page_id)
    return f"{structured}\n\n{body}" if page_type is PageType.PLAN else body


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


def _excerpt(view: _View, page_id: str) -> str:
    """Head + tail + the salient lines between them: about a third of the text."""
    budget = max(len(view.text) // 3, LINE_CAP)
    lengths = [end - start + 1 for start, end in view.spans]
    head = _take(lengths, budget // 4)
    tail = _take(lengths[head:][::-1], budget // 4)
    ends = set(range(head)) | set(range(len(lengths) - tail, len(lengths)))
    middle = _salient(view, range(head, len(lengths) - tail), lengths, budget // 2)
    kept = sorted(ends | set(middle))
    kept_chars = sum(lengths[i] for i in kept)
    elided = view.tokens * max(0, len(view.text) - kept_chars) // max(1, len(view.text))
    return _join_kept(view, kept, f"[… {elided:,} tokens elided; clawvm page {page_id} …]")


def _take(lengths: Sequence[int], budget: int) -> int:
    """How many leading lines fit in `budget` characters (at least one)."""
    used = 0
    for count, length in enumerate(lengths):
        used += length
        if used > budget:
            return max(count, 1)
    return len(lengths)


def _salient(view: _View, indexes: range, lengths: Sequence[int], budget: int) -> list[int]:
    """Lines worth keeping, by rank (errors, then ids and paths, then numbers), within budget."""
    rank = dict.fromkeys(indexes, 3)
    starts = [start for start, _ in view.spans]
    for found in view.found:
        line = bisect.bisect_right(starts, found.offset) - 1
        if line in rank:
            rank[line] = min(rank[line], 2 if found.kind == "number" else 1)
    for line in view.error_lines:
        if line in rank:
            rank[line] = 0
    chosen: list[int] = []
    for _level, index in sorted((level, index) for index, level in rank.items() if level < 3):
        if lengths[index] <= budget:
            chosen.append(index)
            budget -= lengths[index]
    return chosen


def _join_kept(view: _View, kept: Sequence[int], first_marker: str) -> str:
    markers = iter((first_marker,))
    out: list[str] = []
    previous = -1
    for index in [*kept, len(view.spans)]:
        if index > previous + 1:
            out.append(next(markers, "[…]"))
        if index < len(view.spans):
            out.append(view.line(index))
        previous = index
    return "\n".join(out)


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
        wrapped = {"arguments": _cut_string(call.arguments, CALL_ARGS_LIMIT // 2)}
        return ToolCall(call.id, call.name, _dumps(wrapped))
    out = ""
    for limits in CALL_PASSES:
        out = _dumps(_shrink(value, limits, 0))
        if len(out) <= CALL_ARGS_LIMIT:
            break
    return ToolCall(call.id, call.name, out)


def _reduced_calls(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, _reduce_arguments(c.arguments)) for c in calls)


def _reduce_arguments(arguments: str) -> str:
    """A small valid JSON object: short scalars kept, anything longer replaced by its size.
    Arguments that are already small stay byte for byte as sent."""
    if not arguments.strip():
        return arguments
    value = _json_object(arguments)
    if value is None:
        return _dumps({"arguments": _elide(arguments) if len(arguments) > SCALAR_LIMIT else arguments})
    small = {k: _small(v) for k, v in value.items()}
    return arguments if small == value else _dumps(small)


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


def _origin(message: Message, call: ToolCall | None, limit: int) -> str:
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
    message: Message,
    page_type: PageType,
    page_id: str,
    view: _View,
    tokens: int,
    recall_tool: str,
    call: ToolCall | None,
) -> str:
    if page_type is PageType.EVIDENCE:
        return _evidence(message, page_id, view, tokens, recall_tool, call)
    if page_type is PageType.PLAN:
        return _plan(message)
    if page_type is PageType.BOOTSTRAP:
        return _bootstrap(message)
    return _said(message)


def _evidence(message: Message, page_id: str, view: _View, tokens: int, recall_tool: str, call: ToolCall | None) -> str:
    lines = [
        f"tool: {_origin(message, call, 60)}",
        f"status: {_status(view)}",
        f"size: {tokens:,} tokens",
    ]
    if view.value is not None:
        lines.append(f"shape: {_shape(view.value)}")
    key = _key_lines(view)
    if key:
        lines.append("key lines:")
        lines.extend(f"  {line}" for line in key)
    found = _identifiers(view.found, MAX_IDENTIFIERS)
    if found:
        lines.append(f"identifiers: {', '.join(found)}")
    lines.append(f'recall full text with {recall_tool}(page_ids=["{page_id}"])')
    return "\n".join(lines)


def _status(view: _View) -> str:
    """error: an error object, an error or traceback near the top, a failing exit status, or an
    error word in the last lines (test runners and compilers summarise at the end)."""
    if isinstance(view.value, dict):
        return "error" if "error" in view.value or "errors" in view.value else "ok"
    if view.value is not None:
        return "ok"
    tail = len(view.spans) - TAIL_LINES
    if any(i >= tail for i in view.error_lines) or _error_at_top(view.text[:STATUS_HEAD]):
        return "error"
    return "ok"


def _error_at_top(head: str) -> bool:
    return _may_match(head, _STATUS_STEMS) and _ERROR_STATUS.search(head) is not None


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        keys = [str(k) for k in value]
        shown = ", ".join(keys[:8]) + (", …" if len(keys) > 8 else "")
        return f"object, {len(keys)} keys: {shown}"
    if isinstance(value, list):
        return f"array, {len(value)} items"
    return type(value).__name__


def _key_lines(view: _View) -> list[str]:
    """The first few error lines; for plain text without errors, the first line."""
    errors = list(dict.fromkeys(_cap_line(view.line(i).strip()) for i in view.error_lines))[:KEY_LINES]
    if errors or view.value is not None:
        return errors
    first = next((view.line(i).strip() for i in range(len(view.spans)) if view.line(i).strip()), "")
    return [_cap_line(first)] if first else []


def _cap_line(line: str) -> str:
    return line if len(line) <= KEY_LINE_CAP else line[: KEY_LINE_CAP - 1].rstrip() + "…"


def _said(message: Message) -> str:
    return f"{message.role}: {_words(_first_sentence(message.text), FIRST_SENTENCE_WORDS)}"


def _first_sentence(text: str) -> str:
    """The opening sentence, joined with the next ones while it is shorter than
    `OPENING_WORDS` ("Great!" alone says nothing)."""
    opening: list[str] = []
    for sentence in sentences(text):
        opening.append(sentence)
        if sum(len(s.split()) for s in opening) >= OPENING_WORDS:
            break
    return " ".join(opening) or " ".join(text.split()[:FIRST_SENTENCE_WORDS])


def _words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words) if len(words) <= limit else " ".join(words[:limit]) + " …"


def _bootstrap(message: Message) -> str:
    """The opening sentence (who the agent is), then every heading and every rule sentence,
    section by section, uncut: the structured view of a system prompt keeps all its rules. A
    prompt as long as those whose facts are remembered (`extract_facts`) is read once per
    process as well: every session of an agent opens with it."""
    if remembered_length(message.text):
        return _remembered_bootstrap(message.role, message.text)
    return _bootstrap_text(message.role, message.text)


@lru_cache(maxsize=MEMO_FACTS)
def _remembered_bootstrap(role: str, text: str) -> str:
    return _bootstrap_text(role, text)


def _bootstrap_text(role: str, text: str) -> str:
    first = _first_sentence(text)
    lines = [first]
    for heading, body in _sections(text):
        if heading:
            lines.append(heading)
        probe = Message(role=role, text=body)
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
    """`goal:` (where stated), `current step:` and `steps left:`. Steps come from a plan-tool
    call's todo list, else the checklist or numbered list after the last plan header; a
    Magentic-One ledger names the current step (next speaker and instruction)."""
    steps = _todo_steps(message.tool_calls) or _text_steps(_plan_body(message.text))
    ledger = _ledger(message.text)
    current, left = _current(steps)
    lines = [f"{name}: {value}" for name, value in _plan_head(message, ledger)]
    if ledger.get("step") or current or not steps:
        step = ledger.get("step") or current or _first_sentence(message.text)
        lines.append(f"current step: {_words(step, STEP_WORDS)}")
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


def _current(steps: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    """The first active step, else the first pending one; and the pending steps after it."""
    pending = [(text, state) for text, state in steps if state != "done"]
    if not pending:
        return "", []
    active = next((i for i, (_, state) in enumerate(pending) if state == "active"), 0)
    return pending[active][0], [text for text, _ in pending[active + 1 :]]


def _todo_steps(calls: tuple[ToolCall, ...]) -> list[tuple[str, str]]:
    for call in calls:
        value = _json_object(call.arguments)
        items = _todo_items(value) if value else []
        if items:
            return items
    return []


def _todo_items(value: dict[str, Any]) -> list[tuple[str, str]]:
    """The first list of objects in the arguments (todos, plan, items...) as (text, state)."""
    for entry in value.values():
        if isinstance(entry, list) and entry and all(isinstance(e, dict) for e in entry):
            return [step for step in map(_todo_step, entry) if step[0]]
    return []


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
    if not match:
        return {}
    try:
        body, _ = json.JSONDecoder().raw_decode(text, match.end())
    except (ValueError, RecursionError):
        return {}
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
    ceiling: int,
) -> Representation:
    """The richest line within `POINTER_TOKENS` and under the structured level: with the recall
    tool, then without it, then the bare tool name, then id, type and size, then the id alone."""
    head = f"[{page_id} {page_type.value}"
    size = f"{tokens:,} tok"
    candidates = (
        f"{head} · {origin} · {size} paged out · {recall_tool}]",
        f"{head} · {origin} · {size} paged out]",
        f"{head} · {origin.split('(', 1)[0]} · {size}]",
        f"{head} · {size}]",
        f"[{page_id}]",
    )
    return _first_fitting(candidates, calls, counter, ceiling)


def _fact_pointer(page_id: str, label: str, fact_text: str, counter: TokenCounter, ceiling: int) -> Representation:
    candidates = tuple(f"[{page_id}] {label}: {_words(fact_text, n)}" for n in (14, 10, 6, 3))
    return _first_fitting(candidates, (), counter, ceiling)


def _first_fitting(
    candidates: Sequence[str], calls: tuple[ToolCall, ...], counter: TokenCounter, ceiling: int
) -> Representation:
    """The first candidate within `POINTER_TOKENS` whose total stays under `ceiling`, else the
    last one (which the monotone rule then replaces with the level above). A candidate is never
    blank, so it counts at least one token: when the calls alone reach `ceiling` (a page of tool
    calls and no text), none but the last is counted."""
    call_tokens = tool_calls_tokens(counter, calls)
    for text in candidates[:-1] if call_tokens < ceiling else ():
        tokens = counter.count(text)
        if tokens <= POINTER_TOKENS and tokens + call_tokens <= ceiling:
            return Representation(text, tokens + call_tokens, calls)
    return Representation(candidates[-1], counter.count(candidates[-1]) + call_tokens, calls)
