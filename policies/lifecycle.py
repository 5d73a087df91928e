"""Lifecycle detection: what the agent did to its history since the session's last request.

The gateway sees each request's whole transcript and the session's stored `PageTable`. Before
ingesting, it calls `detect` with `kept = known_prefix(table, messages)`; the answer is a
`Boundary`: the event, who did it (`harness`), and one printable line of evidence.

Rules, in the order they are applied:
- The table is empty: START, except that a first request whose transcript already holds a
  summary marker is COMPACTION (a session we join after the agent compacted).
- `kept` covers the whole table: RESEND when nothing follows, else APPEND. This path reads no
  message: it costs O(1) beyond the caller's `known_prefix`.
- Otherwise the transcript diverged at `kept`:
  1. PRUNE: the incoming transcript is at least as long as the table, and every position from
     `kept` to the table's end either still holds the known message or holds a `tool` message
     answering the same call whose text is a placeholder for, or a head/tail cut of, the known
     text (`is_pruned`). Messages appended after the table's end are allowed (prune + append).
     `harness` names who pruned when the placeholder tells (`openclaw` soft-trim, `langchain`
     `[cleared]`, ...); it is "" for `[Old tool result content cleared]`, which several harnesses
     share, and "shape" for a bare head/tail cut or a short bracketed stand-in. A PRUNE with no
     `pruned` positions means results the table had restored were sent whole again.
  2. COMPACTION: a message at or after `kept` holds a summary marker (`summary_marker`) at the
     start of a text block: the start of a content part, or of a paragraph (after a blank line
     or after a line that ends a tag such as `</system-reminder>`, because translators join
     content parts with a single newline). Tool results never count (a tool may print anything);
     Goose's acknowledgement counts only in an assistant message, every other marker only in a
     user, system or developer message; opencode's `What did we do so far?` counts only when an
     assistant message follows. A user who writes a marker phrase at a paragraph start is taken
     as a compaction (the safe direction: compaction keeps state); in the middle of a paragraph
     it is not a marker.
  3. RESET: no marker; the shared prefix is exactly the table's leading instruction messages
     (system/developer: at least one); the incoming transcript has no further instruction
     message there, and at most `MAX_RESET_TAIL` messages follow the instructions. Claude Code's
     `/clear` keeps its CLAUDE.md `<system-reminder>` block in the first user message: with no
     instruction message, a first user message that opens with `<system-reminder>` and is
     identical to the old one up to its last `</system-reminder>` stands for the instructions.
  4. COMPACTION, by shape: anything else (messages dropped from the middle or the end, unknown
     edits), with harness "cline" when Cline's truncation notice is there, else "shape". When
     unsure the answer is COMPACTION, never RESET.
- Hints (the `X-ClawVM-Event` header or `metadata.clawvm_event`: "compaction", "prune" or
  "reset"; anything else is ignored) only act on a diverged transcript, and never toward losing
  state. "prune" makes PRUNE of a divergence that touches only tool results of the same calls,
  whatever their new text. "compaction" turns a would-be RESET into COMPACTION. "reset" makes
  RESET of a by-shape COMPACTION that keeps no more than the instructions; on a transcript that
  holds a marker or keeps more, it is ignored (COMPACTION). `harness` is "hint" only when the
  hint decided.
- `Event.SESSION_END` is recorded by the gateway on idle timeout; `detect` never returns it.

Marker scans run only on a first request or a diverged transcript, and a text is screened for
`MARKER_WORDS` (one lower-casing and a few substring searches) before the regex runs.
Evidence lines are ASCII: message content appears only as an `ascii()`-quoted excerpt of at most
`EXCERPT_CHARS` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from policies.pagetable import PageTable, message_key
from policies.transcript import Message

MAX_RESET_TAIL = 3  # a reset transcript holds at most this many messages after the instructions
EXCERPT_CHARS = 40
CUT_RATIO = 0.8  # a head/tail cut keeps at most this share of the old text
CUT_FILLER = 300  # ... and adds at most this many characters of its own (an ellipsis, a notice)
PLACEHOLDER_CHARS = 200  # a bracketed stand-in for a tool result is at most this long
INSTRUCTION_ROLES = frozenset({"system", "developer"})
USER_SIDE = frozenset({"user", "system", "developer"})
ASSISTANT = frozenset({"assistant"})
REMINDER_OPEN = "<system-reminder>"
REMINDER_CLOSE = "</system-reminder>"


class Event(StrEnum):
    START = "start"
    RESEND = "resend"
    APPEND = "append"
    PRUNE = "prune"
    COMPACTION = "compaction"
    RESET = "reset"
    SESSION_END = "session_end"


@dataclass(frozen=True, slots=True)
class Boundary:
    event: Event
    kept: int  # leading incoming messages the table already held (as passed in)
    harness: str  # who did it; "hint" or "shape" when those decided; "" when nobody did anything
    evidence: str  # one printable ASCII line: what matched and where
    summary_at: int | None = None  # incoming position of the summary message, if one was found
    pruned: tuple[int, ...] = ()  # positions (same in old and new) whose tool result was cleared or cut


@dataclass(frozen=True, slots=True)
class Marker:
    name: str  # the regex group
    harness: str
    description: str
    pattern: str
    roles: frozenset[str] = USER_SIDE


_CONTINUED = r"This session is being continued from a previous conversation that ran out of context\."
_PLAIN = r"(?:summary of the conversation so far|conversation summary)"
MARKERS = (
    Marker(
        "claude_code_2",
        "claude_code",
        "Claude Code 2.x continuation summary",
        _CONTINUED + r" The summary below covers the earlier portion of the conversation\.",
    ),
    Marker(
        "cline_continuation",
        "cline",
        "Cline continuation summary",
        _CONTINUED + r" The conversation is summarized below:(?=[\s\S]*/newtask)",
    ),
    Marker(
        "claude_code_1",
        "claude_code",
        "Claude Code 1.x continuation summary",
        _CONTINUED + r" The conversation is summarized below:",
    ),
    Marker("claude_code", "claude_code", "Claude Code continuation summary", _CONTINUED),
    Marker(
        "openclaw",
        "openclaw",
        "OpenClaw/pi compaction summary",
        r"The conversation history before this point was compacted into the following summary:\s*<summary>",
    ),
    Marker(
        "openclaw_branch",
        "openclaw",
        "OpenClaw/pi branch summary",
        r"The following is a summary of a branch that this conversation came back from:",
    ),
    Marker(
        "codex",
        "codex",
        "Codex compaction summary",
        r"Another language model started to solve this problem and produced a summary of its thinking process\.",
    ),
    Marker(
        "codex_handoff",
        "codex",
        "Codex handoff summary",
        r"You are resuming an in-progress task after context compaction\.",
    ),
    Marker("langchain", "langchain", "LangChain summary", r"Here is a summary of the conversation to date:(?:\s|\Z)"),
    Marker("langmem", "langmem", "LangMem summary", r"Summary of the conversation so far: "),
    Marker(
        "deepagents",
        "deepagents",
        "deepagents summary",
        r"You are in the middle of a conversation that has been summarized\.",
    ),
    Marker("aider", "aider", "Aider summary", r"I spoke to you previously about a number of things\.(?:\s|\Z)"),
    Marker("gemini_cli", "gemini_cli", "Gemini CLI state snapshot", r"<state_snapshot>"),
    Marker("opencode", "opencode", "opencode compaction question", r"What did we do so far\?[ \t]*(?:\n|\Z)"),
    Marker(
        "goose",
        "goose",
        "Goose compaction acknowledgement",
        r"Your context was compacted(?: at the user's request)?\. "
        r"The previous message contains a summary of the conversation so far\.",
        ASSISTANT,
    ),
    Marker("goose_tools", "goose", "Goose tool-call summary", r"\[Historical tool call summary\]"),
    Marker(
        "cline_condense",
        "cline",
        "Cline condensed summary",
        r"The user has accepted the condensed conversation summary you generated\.",
    ),
    Marker(
        "plain",
        "plain",
        "plain conversation summary",
        r"(?i:(?:\#{1,6}[ \t]*)?(?:\*\*|__)?" + _PLAIN + r"(?:\*\*|__)?[ \t]*(?::|(?=\n)|\Z))",
    ),
)
MARKER_WORDS = (
    "summar",
    "compacted",
    "this session is being continued",
    "resuming an in-progress task",
    "spoke to you previously",
    "<state_snapshot>",
    "what did we do so far",
)
_BY_NAME = MappingProxyType({m.name: m for m in MARKERS})
_BLOCK_START = r"(?:\A|\n[ \t]*\n|>[ \t]*\n)[ \t\r\n]*"
_MARKER_SCAN = re.compile(_BLOCK_START + "(?:" + "|".join(f"(?P<{m.name}>{m.pattern})" for m in MARKERS) + ")")

CLEARED = "[Old tool result content cleared]"  # Claude Code, OpenClaw, opencode and many clones
_PLACEHOLDERS = MappingProxyType({CLEARED: "", "[cleared]": "langchain", "<MASKED>": "openhands"})
_PRUNE_MARKS = (
    ("openclaw", r"\n\n\[Tool result trimmed: kept first \d+ chars and last \d+ chars of \d+ chars\.\]\s*\Z"),
    ("openclaw", r"\[image data removed - already processed by model\]"),
    ("openclaw", "\u26a0\ufe0f \\[(?:Content truncated|\\.\\.\\. middle content omitted) \u2014"),
    ("swe_agent", r"\AOld environment output: \(\d+ lines omitted\)"),
    ("swe_agent", r"Outdated window with \d+ lines omitted\.\.\."),
    ("openhands", r"\[\.\.\. Observation truncated due to length \.\.\.\]"),
    ("cline", r"\A\[\[NOTE\] This file read has been removed to save space in the context window\."),
    ("litellm", r"\A\[Compressed: .+ \u2014 \d+ lines, (?:text|json|code)\. Use litellm_content_retrieve tool"),
    ("litellm", r"\.\.\.\[truncated for context window\]\.\.\."),
    ("codex", r"\u2026\d+ tokens truncated\u2026|\[\.\.\. omitted \d+ of \d+ lines \.\.\.\]"),
    ("gemini_cli", r"\AOutput too large\. Showing first \d+ and last \d+ characters\."),
    ("headroom", r"Retrieve (?:more|original): hash=[a-f0-9]{12,24}|<<ccr:[a-f0-9]{12,24}"),
)
_PRUNE_SCAN = tuple((harness, re.compile(pattern)) for harness, pattern in _PRUNE_MARKS)
CLINE_NOTICE = "[NOTE] Some previous conversation history with the user has been removed"
CLINE_CONTINUE = "[Continue assisting the user!]"
PRUNE_LABELS = MappingProxyType({"": "shared placeholder", "shape": "head/tail cut", "hint": "changed, prune hint"})
_HINTS = MappingProxyType({"compaction": Event.COMPACTION, "prune": Event.PRUNE, "reset": Event.RESET})


@dataclass(frozen=True, slots=True)
class _Found:
    marker: Marker
    harness: str
    block: int  # content part
    offset: int  # where the marker starts in that part
    text: str  # the part


# ---------------------------------------------------------------- the entry point


def detect(table: PageTable, messages: Sequence[Message], kept: int, hint: str | None = None) -> Boundary:
    """What the agent did to its history since the table's last ingest (see the module doc)."""
    known = len(table.order)
    if known == 0:
        return _first(messages)
    if kept == known:
        if len(messages) == kept:
            return Boundary(Event.RESEND, kept, "", f"the same {kept} messages again")
        return Boundary(Event.APPEND, kept, "", f"{len(messages) - kept} new messages after {kept} known")
    return _diverged(table, messages, kept, _HINTS.get((hint or "").strip().lower()))


def _first(messages: Sequence[Message]) -> Boundary:
    found = _scan(messages, 0)
    if found is None:
        return Boundary(Event.START, 0, "", f"first request of the session: {len(messages)} messages")
    index, hit = found
    evidence = "first request: " + _marker_evidence(index, messages[index], hit)
    return Boundary(Event.COMPACTION, 0, hit.harness, evidence, summary_at=index)


def _diverged(table: PageTable, messages: Sequence[Message], kept: int, hint: Event | None) -> Boundary:
    pruned = _pruned(table, messages, kept, strict=True)
    if pruned is not None:
        return _prune_boundary(table, messages, kept, pruned, "")
    found = _scan(messages, kept)
    if found is not None:
        index, hit = found
        return Boundary(Event.COMPACTION, kept, hit.harness, _marker_evidence(index, messages[index], hit), index)
    if hint is Event.PRUNE:
        pruned = _pruned(table, messages, kept, strict=False)
        if pruned is not None:
            return _prune_boundary(table, messages, kept, pruned, "hint")
    return _by_shape(table, messages, kept, hint)


def _by_shape(table: PageTable, messages: Sequence[Message], kept: int, hint: Event | None) -> Boundary:
    instructions = _old_instructions(table)
    reset = _reset(table, messages, kept, instructions)
    if reset is not None:
        harness, evidence = reset
        if hint is Event.COMPACTION:
            return Boundary(Event.COMPACTION, kept, "hint", f"compaction hint on a reset shape: {evidence}")
        return Boundary(Event.RESET, kept, harness, evidence)
    cline = _cline_notice(messages, kept)
    if cline is not None:
        return Boundary(Event.COMPACTION, kept, "cline", cline)
    shape = _shape(table, messages, kept)
    if hint is Event.RESET and kept <= instructions:
        return Boundary(Event.RESET, kept, "hint", f"reset hint, {kept} instruction messages kept; {shape}")
    return Boundary(Event.COMPACTION, kept, "shape", shape)


# ---------------------------------------------------------------- summary markers


def summary_marker(text: str) -> tuple[str, str] | None:
    """(harness, description) of the first known summary opening at a block start of `text`."""
    for hit in _hits(text, 0, None):
        return hit.harness, hit.marker.description
    return None


def _hits(text: str, block: int, role: str | None) -> Iterator[_Found]:
    """Markers at block starts of one text part; `role` filters them (None: any role)."""
    if not _may_hold(text):
        return
    for match in _MARKER_SCAN.finditer(text):
        marker = _BY_NAME[match.lastgroup or ""]
        if role is not None and role not in marker.roles:
            continue
        harness = "plain" if marker.name == "langmem" and role not in (None, "system") else marker.harness
        yield _Found(marker, harness, block, match.start(marker.name), text)


def _may_hold(text: str) -> bool:
    """A cheap screen: every marker holds one of `MARKER_WORDS` (the regex scan costs more)."""
    lowered = text.lower()
    return any(word in lowered for word in MARKER_WORDS)


def _scan(messages: Sequence[Message], start: int) -> tuple[int, _Found] | None:
    """The first message at or after `start` that holds a marker its role may carry."""
    for index in range(start, len(messages)):
        message = messages[index]
        if message.role == "tool":
            continue
        for hit in _message_hits(message):
            if hit.marker.name != "opencode" or _followed_by_assistant(messages, index):
                return index, hit
    return None


def _message_hits(message: Message) -> Iterator[_Found]:
    for block, text in enumerate(_blocks(message)):
        yield from _hits(text, block, message.role)


def _blocks(message: Message) -> list[str]:
    """The message's text parts as the client sent them (its text when there are none)."""
    content = message.raw.get("content") if message.raw else None
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return [p for p in parts if isinstance(p, str)]
    return [message.text]


def _followed_by_assistant(messages: Sequence[Message], index: int) -> bool:
    return index + 1 < len(messages) and messages[index + 1].role == "assistant"


def _marker_evidence(index: int, message: Message, hit: _Found) -> str:
    where = f"message {index} ({message.role})"
    excerpt = _excerpt(hit.text[hit.offset :])
    if hit.block == 0 and not hit.text[: hit.offset].strip():
        return f"{where} opens with {hit.marker.description}: {excerpt}"
    return f"{where} part {hit.block} has {hit.marker.description} at a paragraph start: {excerpt}"


def _excerpt(text: str) -> str:
    return ascii(text[:EXCERPT_CHARS])


# ---------------------------------------------------------------- pruning


def is_pruned(old: str, new: str) -> bool:
    """Whether `new` is a placeholder for, or a head and/or tail cut of, `old`."""
    return _prune_kind(old, new) is not None


def _prune_kind(old: str, new: str) -> str | None:
    """Who pruned (a harness, "" for a placeholder many share, "shape" for a bare cut), or None."""
    if new == old:
        return None
    stripped = new.strip()
    if stripped in _PLACEHOLDERS:
        return _PLACEHOLDERS[stripped]
    if len(new) >= len(old):
        return None
    for harness, pattern in _PRUNE_SCAN:
        if pattern.search(new):
            return harness
    return "shape" if _is_cut(old, new) or _is_stand_in(old, stripped) else None


def _is_cut(old: str, new: str) -> bool:
    """`new` keeps a head and/or a tail of `old`, adds little of its own and is much shorter."""
    if len(new) > CUT_RATIO * len(old):
        return False
    head = _common_prefix(old, new)
    tail = _common_suffix(old, new, min(len(old), len(new)) - head)
    return len(new) - head - tail <= CUT_FILLER and (head + tail > 0 or not new)


def _is_stand_in(old: str, stripped: str) -> bool:
    """A short bracketed text in place of a much longer result (a configured placeholder)."""
    bracketed = stripped[:1] in "[<(" and stripped[-1:] in "]>)"
    return bracketed and len(stripped) <= PLACEHOLDER_CHARS and 2 * len(stripped) < len(old)


def _common_prefix(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_suffix(a: str, b: str, limit: int) -> int:
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle :] == b[len(b) - middle :]:
            low = middle
        else:
            high = middle - 1
    return low


def _pruned(table: PageTable, messages: Sequence[Message], kept: int, *, strict: bool) -> list[tuple[int, str]] | None:
    """(position, harness) of every pruned tool result from `kept` to the table's end, or None
    when some other change is there. Empty: the only change is a restored result sent whole
    again. Not strict (a prune hint): any new text of the same call counts."""
    known = len(table.order)
    if len(messages) < known:
        return None
    found: list[tuple[int, str]] = []
    for index in range(kept, known):
        message = messages[index]
        if message_key(message) == table.keys[index]:
            continue
        kind = _position_pruned(table, index, message, strict)
        if kind is None:
            return None
        if kind != "same":
            found.append((index, kind))
    return found


def _position_pruned(table: PageTable, index: int, message: Message, strict: bool) -> str | None:
    page = table.pages[table.order[index]]
    provenance = page.provenance
    if message.role != "tool" or provenance.role != "tool" or provenance.tool_call_id != message.tool_call_id:
        return None
    old = page.reprs.full.text
    if message.text == old:
        return "same"  # a restored page: the agent sent the whole result again
    kind = _prune_kind(old, message.text)
    return kind if kind is not None or strict else "hint"


def _prune_boundary(
    table: PageTable, messages: Sequence[Message], kept: int, pruned: list[tuple[int, str]], harness: str
) -> Boundary:
    added = len(messages) - len(table.order)
    tail = f", {added} appended" if added else ""
    if not pruned:
        return Boundary(Event.PRUNE, kept, harness, f"pruned tool results sent whole again from message {kept}{tail}")
    index, kind = pruned[0]
    how = PRUNE_LABELS.get(kind, kind)
    evidence = (
        f"{len(pruned)} tool results pruned ({how}), first message {index}: {_excerpt(messages[index].text)}{tail}"
    )
    return Boundary(Event.PRUNE, kept, harness or kind, evidence, pruned=tuple(i for i, _ in pruned))


# ---------------------------------------------------------------- reset and shape


def _old_instructions(table: PageTable) -> int:
    """How many leading instruction messages the table holds."""
    count = 0
    for page_id in table.order:
        if table.pages[page_id].provenance.role not in INSTRUCTION_ROLES:
            break
        count += 1
    return count


def _reset(table: PageTable, messages: Sequence[Message], kept: int, instructions: int) -> tuple[str, str] | None:
    """(harness, evidence) when the transcript is a new one after the same instructions."""
    if kept != instructions or len(messages) <= kept or messages[kept].is_instruction:
        return None
    if len(messages) - kept > MAX_RESET_TAIL:
        return None
    first = messages[kept]
    if instructions == 0:
        if not _same_reminder(table.pages[table.order[0]].reprs.full.text, first.text):
            return None
        return "claude_code", f"same {REMINDER_OPEN} block, new last paragraph; {len(messages)} messages"
    tail = len(messages) - kept
    return "shape", f"same {kept} instruction messages, then {tail} new: {_excerpt(first.text)}"


def _same_reminder(old: str, new: str) -> bool:
    """Both texts open with the same `<system-reminder>` block(s) and differ only after them."""
    if not new.lstrip().startswith(REMINDER_OPEN):
        return False
    head = _reminders(new)
    return bool(head) and old.startswith(head) and old[len(head) :] != new[len(head) :]


def _reminders(text: str) -> str:
    """The text up to the end of its last `</system-reminder>` (empty when there is none)."""
    end = text.rfind(REMINDER_CLOSE)
    return text[: end + len(REMINDER_CLOSE)] if end >= 0 else ""


def _cline_notice(messages: Sequence[Message], kept: int) -> str | None:
    for index in range(kept, len(messages)):
        message = messages[index]
        text = message.text.lstrip()
        if message.role == "assistant" and text.startswith(CLINE_NOTICE):
            return f"message {index} (assistant) opens with Cline's truncation notice: {_excerpt(text)}"
        if message.role == "user" and text.startswith(CLINE_CONTINUE):
            return f"message {index} (user) is Cline's truncated first task: {_excerpt(text)}"
    return None


def _shape(table: PageTable, messages: Sequence[Message], kept: int) -> str:
    known = len(table.order)
    role = messages[kept].role if kept < len(messages) else "end"
    return f"diverged at message {kept} ({role}): {known} known, {len(messages)} incoming"
