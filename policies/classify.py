"""Deterministic page typing and fact extraction: rules only, no model.

`carrier_type` says which page type a whole message becomes: system/developer text is
bootstrap, a tool result is evidence (or, when a plan tool such as TodoWrite echoes its
checklist, the plan), an assistant message holding a plan is a plan, and everything else is
conversation.

`extract_facts` finds the rule, preference and intent sentences inside instruction and user text.
Text is cut into units (paragraphs with wrapped lines joined, bullet and numbered items,
`key: value` lines; fenced code and markdown headings are skipped), units into sentences.

Injection safety: facts come only from system, developer and user text. A tool result or an
assistant message never yields a fact, whatever it says and whatever tenant rules match it.

Precedence inside one sentence (the first that applies wins):
  1. tenant rules, in their configured order (only CONSTRAINT and PREFERENCE rules count);
  2. in user text, preference cues before constraint cues: "please always use tabs" is what
     this user likes, a preference (project scope, soft pin), not a session rule;
  3. in system/developer text, constraint cues before preference cues: operator wording such
     as "you should use X instead of Y" is a rule;
  4. in user text only, a sentence with neither cue that states what the person wants, forbids,
     excepts or orders, who they are, or the details of their request is an intent
     (`policies.intent`: "before anything else I'd like the docs brought up to date", "the
     blue one, size M, no express shipping", "my e-mail is ...").
A question ("should we ...?") is not a rule: it yields no built-in rule or preference, though a
tenant rule may still match it, and it is an intent only when it is a request ("could you
please add 3 checked bags?"). Fragments under three words are skipped (except an identity fact:
a bare e-mail address). A rule or preference is cut to 400 characters (the cut ends with "…");
an intent is never cut: it is kept whole up to MAX_INTENT_CHARS, and a longer run of text
without a sentence break is pasted material, not a sentence someone typed, and is skipped. A user
message over MAX_TYPED_CHARS is mostly not typed (a harness's instructions, a pasted demonstration
or log; its rules are still found): of its sentences only those where a person speaks for
themselves ("I would expect ...", "we don't want ...") are intents, at most LONG_MESSAGE_INTENTS
of them, since such a template often wraps the person's own request (an issue's text).
A tenant rule with an invalid pattern raises `re.error`; the settings loader is expected to
compile rules once at start-up to reject them early.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from policies.intent import intent_kind, is_quoted, unquoted
from policies.pages import PageType
from policies.transcript import Message, ToolCall

if TYPE_CHECKING:
    from policies.tenant import ClassifierRule

MAX_FACT_CHARS = 400
MAX_INTENT_CHARS = 1000
MAX_TYPED_CHARS = 4000  # a longer user message is pasted or generated (a harness's template, a log)
MIN_FACT_WORDS = 3
SHORT_INTENTS = frozenset({"identity", "wish"})  # intents shorter than MIN_FACT_WORDS: "Execute ./deploy.md"
LONG_MESSAGE_INTENTS = 3  # intents a user message over MAX_TYPED_CHARS may yield, first-person ones only
FACT_ROLES = frozenset({"system", "developer", "user"})
INTENT_ROLES = frozenset({"user"})
FACT_TYPES = frozenset({PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT})
PLAN_TOOLS = frozenset({"todowrite", "updatetodos", "updateplan", "writetodos"})
MEMO_NAME_CHARS = 128  # tool names remembered by name (a bounded cache) up to this length: clients send them
MEMO_FACTS_CHARS = 2048  # texts this long or longer have their facts remembered (`extract_facts`) ...
MEMO_FACTS_MAX_CHARS = 65_536  # ... up to this length: at most MEMO_FACTS of them, 64 KiB each
MEMO_FACTS = 256


def _led(first: str, pattern: str, flags: re.RegexFlag) -> re.Pattern[str]:
    """`pattern`, tried only where a match can begin: at one of the letters `first` (each of its
    alternatives begins with one; matched under the pattern's own flags, so IGNORECASE folds them
    as it folds the pattern). The same matches as `pattern` alone, found without entering the
    alternation at every position of the text (about 1.6 times as fast on the traces' sentences)."""
    return re.compile(f"(?=[{first}])(?:{pattern})", flags)


_FENCE = re.compile(r"^\s*(?:```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?")
_LABEL = re.compile(r"^\s*[A-Za-z_][\w .'/-]{0,30}:\s")
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[*`]?[A-Z0-9])")
_APOS = "['\u2019]"
_CONSTRAINT = _led(
    "abcdefhimnoprstuwy",
    r"\b(?:must|never|always|only|should|shall|required|requires?|forbidden|prohibited|mandatory"
    rf"|must{_APOS}?n{_APOS}?t|should{_APOS}?n{_APOS}?t|don{_APOS}t|do\s+not|can{_APOS}t|cannot|can\s+not"
    r"|may\s+not|not\s+(?:allowed|permitted)|at\s+(?:most|least)|no\s+more\s+than|(?:have|has)\s+to"
    r"|make\s+sure|be\s+sure|ensure|remember\s+to|under\s+no\s+circumstances"
    r"|(?:you|agent|assistant|user|we|it|they)\s+(?:\w+\s+)?needs?\s+to)\b",
    re.IGNORECASE,
)
# "I don't remember", "I need to cancel", "I should end": the user describing themselves
_FIRST_PERSON = re.compile(r"\bI(?:\s+(?:just|actually|really|also|still|only|simply))?\s+$", re.IGNORECASE)
# The person speaking for themselves: "I would expect", "we don't want", "Hi, I need ..."
_SPEAKER = re.compile(r"^(?:[\w,!.*:]+\s+){0,3}?(?:I|we)(?:['\u2019](?:d|m|re|ve|ll))?\s+\w", re.IGNORECASE)
_PREFERENCE = _led(
    "cimpu",
    rf"\bI(?:{_APOS}d|\s+would)?\s+(?:really\s+)?prefer\b|\bplease\s+(?:always|never)\b|\bcall\s+me\b"
    rf"|\bI\s+(?:really\s+)?(?:like|love|dislike|hate)\b|\bI\s+(?:do\s+not|don{_APOS}t)\s+like\b"
    rf"|\bI(?:{_APOS}d|\s+would)\s+rather\b|\bmy\s+(?:preferred|preference)\b"
    r"|\buse\s+[\w.`'\"/-]+(?:\s+[\w.`'\"/-]+){0,3},?\s+(?:not|instead\s+of|rather\s+than)\s+\S",
    re.IGNORECASE,
)
_PLAN_MARKER = re.compile(
    r"^\s{0,3}#{1,6}\s[^\n]*\bplan\b"
    r"|^[ \t]*(?:\*\*)?(?:plan|initial\s+plan|updated\s+plan|new\s+plan|revised\s+plan)(?:\*\*)?\s*:"
    r"|^[^\n]{0,60}\bplan\b[^\n]{0,30}:(?:\*\*)?[ \t]*$"
    r"|\bhere\s+is\s+the\s+plan\s+to\s+follow\b|^[ \t]*updated\s+ledger\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_CHECKLIST = re.compile(r"^[ \t]*(?:[-*+][ \t]+\[[ xX]\]|[☐☒])[ \t]+\S", re.MULTILINE)
_NUMBERED = re.compile(r"^\s{0,3}(?:\*\*)?(?:step\s+)?\d{1,3}[.)](?:\*\*)?\s+\S", re.IGNORECASE)
_STEP_CUE = re.compile(
    rf"\b(?:plan|steps?|approach|todos?|to-?do|tasks?|roadmap|strategy|let{_APOS}?s|going\s+to)\b"
    rf"|\b(?:I|we)(?:{_APOS}ll|\s+will)\b(?!\s+need)",
    re.IGNORECASE,
)
_NUMBER_MARK = re.compile(r"\d[.)]")  # what every `_NUMBERED` line holds
MIN_PLAN_STEPS = 3


@dataclass(frozen=True, slots=True)
class Fact:
    type: PageType  # CONSTRAINT, PREFERENCE or INTENT
    text: str  # the sentence, whitespace-normalised, as it stands in the source


def carrier_type(message: Message, call: ToolCall | None = None) -> PageType:
    """`call` is the tool call a tool result answers: a plan tool's own echo of the checklist
    (TodoWrite's result) is the current plan. A tool result is never anything but evidence or
    that (never a rule, preference or system text, whatever it says)."""
    if message.role in ("system", "developer"):
        return PageType.BOOTSTRAP
    if message.role == "tool":
        plan_echo = call is not None and is_plan_call(call) and is_plan_text(message.text)
        return PageType.PLAN if plan_echo else PageType.EVIDENCE
    if message.role == "assistant" and is_plan(message):
        return PageType.PLAN
    return PageType.CONVERSATION


def is_plan(message: Message) -> bool:
    """An assistant message that holds a plan: a plan-tool call or plan-shaped text."""
    return any(is_plan_call(c) for c in message.tool_calls) or is_plan_text(message.text)


def is_plan_call(call: ToolCall) -> bool:
    """todo_write, TodoWrite, update_plan, write_todos, "Update Todos" (any case or separator)."""
    return _known_plan_tool(call.name) if len(call.name) <= MEMO_NAME_CHARS else _is_plan_tool(call.name)


@lru_cache(maxsize=1024)
def _known_plan_tool(name: str) -> bool:
    """`_is_plan_tool`, remembered by the tool's name (an agent has a few tools)."""
    return _is_plan_tool(name)


def _is_plan_tool(name: str) -> bool:
    return re.sub(r"[^a-z]", "", name.lower()) in PLAN_TOOLS


def is_plan_text(text: str) -> bool:
    """Plan headers ("Plan:", "## Plan", Magentic-One's plan and ledger), checklists, or a
    numbered list of at least three steps introduced as steps ("I will:", "next steps:")."""
    if not text:
        return False
    return _has_marker(text) or _has_checklist(text) or _has_step_list(text)


def _has_marker(text: str) -> bool:
    """A plan header: every one names a plan or a ledger, so a text naming neither is not read
    by the regex (which tries its alternatives at every position: milliseconds on a long answer)."""
    lowered = text.lower()  # the words' letters have no other case-insensitive forms in `re`
    return ("plan" in lowered or "ledger" in lowered) and _PLAN_MARKER.search(text) is not None


def _has_checklist(text: str) -> bool:
    """A checklist line: every one holds a box ("[ ]", "[x]", "[X]", "☐", "☒")."""
    boxed = "[ ]" in text or "[x]" in text or "[X]" in text or "☐" in text or "☒" in text
    return boxed and _CHECKLIST.search(text) is not None


def _has_step_list(text: str) -> bool:
    if _NUMBER_MARK.search(text) is None:  # no line can be a numbered step
        return False
    recent: list[str] = []
    count = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if _NUMBERED.match(line):
            count += 1
            if count >= MIN_PLAN_STEPS and _STEP_CUE.search(" ".join(recent)):
                return True
        elif not (line[:1].isspace() and count):
            recent, count = [*recent[-2:], stripped], 0
    return False


def extract_facts(
    message: Message, rules: tuple[ClassifierRule, ...] = (), *, max_chars: int | None = MAX_FACT_CHARS
) -> tuple[Fact, ...]:
    """Rule, preference and intent sentences of a system, developer or user message, in source
    order. Intents come from user messages only, whole (see the module doc).

    `max_chars=None` keeps long sentences whole (the bootstrap's structured view uses that).
    A text of MEMO_FACTS_CHARS or more characters (a system prompt every session of an agent
    repeats) is read once per process: its facts are remembered (a bounded cache)."""
    if message.role not in FACT_ROLES or not message.text:
        return ()
    if remembered_length(message.text):
        return _remembered_facts(message.role, message.text, rules, max_chars)
    return _facts(message.role, message.text, rules, max_chars)


def remembered_length(text: str) -> bool:
    """Whether `text` is as long as the instruction texts whose readings a process remembers
    (MEMO_FACTS_CHARS to MEMO_FACTS_MAX_CHARS): a system prompt every session of an agent repeats."""
    return MEMO_FACTS_CHARS <= len(text) <= MEMO_FACTS_MAX_CHARS


@lru_cache(maxsize=MEMO_FACTS)
def _remembered_facts(
    role: str, text: str, rules: tuple[ClassifierRule, ...], max_chars: int | None
) -> tuple[Fact, ...]:
    return _facts(role, text, rules, max_chars)


def _facts(role: str, text: str, rules: tuple[ClassifierRule, ...], max_chars: int | None) -> tuple[Fact, ...]:
    compiled = _compile(rules, role)
    person = role in INTENT_ROLES
    typed = person and len(text) <= MAX_TYPED_CHARS
    long_intents = 0 if typed or not person else LONG_MESSAGE_INTENTS
    facts: dict[Fact, None] = {}
    for sentence in sentences(text):
        spoken = long_intents > 0 and _SPEAKER.match(sentence) is not None
        page_type = _sentence_type(sentence, role, compiled, typed=typed or spoken)
        if page_type is PageType.INTENT:
            if len(sentence) <= MAX_INTENT_CHARS:  # kept whole, or not at all
                facts[Fact(page_type, sentence)] = None
                long_intents -= 1 if spoken else 0
        elif page_type is not None:
            facts[Fact(page_type, _cap(sentence, max_chars))] = None
    return tuple(facts)


def _compile(rules: tuple[ClassifierRule, ...], role: str) -> tuple[tuple[re.Pattern[str], PageType], ...]:
    wanted = (r for r in rules if role in r.roles and r.type in FACT_TYPES)
    return tuple((re.compile(r.pattern, re.IGNORECASE), r.type) for r in wanted)


def _sentence_type(
    sentence: str, role: str, compiled: tuple[tuple[re.Pattern[str], PageType], ...], *, typed: bool = False
) -> PageType | None:
    """`typed`: the sentence is from a message a person typed (user text, not pasted at length)."""
    if len(sentence.split()) < MIN_FACT_WORDS:  # a fragment, unless it names the person or gives an order
        return PageType.INTENT if typed and intent_kind(sentence) in SHORT_INTENTS else None
    for pattern, page_type in compiled:
        if pattern.search(sentence):
            return page_type
    if role in INTENT_ROLES:  # a person's words, not the ones they quote or paste
        if is_quoted(sentence):
            return None
        sentence = unquoted(sentence)
    builtin = None if sentence.endswith("?") else builtin_type(sentence, role)
    if builtin is None and typed and len(sentence) <= MAX_INTENT_CHARS and intent_kind(sentence):
        return PageType.INTENT
    return builtin


def builtin_type(sentence: str, role: str) -> PageType | None:
    """The built-in cue type of one sentence, with the role's precedence applied."""
    preference = _PREFERENCE.search(sentence) is not None
    constraint = has_rule_cue(sentence)
    if role == "user":
        order = ((preference, PageType.PREFERENCE), (constraint, PageType.CONSTRAINT))
    else:
        order = ((constraint, PageType.CONSTRAINT), (preference, PageType.PREFERENCE))
    return next((page_type for hit, page_type in order if hit), None)


def has_rule_cue(sentence: str) -> bool:
    """A rule word (must, never, only, don't ...) that is not the speaker describing themselves."""
    cues = _CONSTRAINT.finditer(sentence)
    return any(not _FIRST_PERSON.search(sentence, max(0, m.start() - 20), m.start()) for m in cues)


def sentences(text: str) -> Iterator[str]:
    """Whitespace-normalised sentences of `text`, unit by unit, in source order."""
    for unit in units(text):
        for part in _SENTENCE_BREAK.split(unit):
            sentence = " ".join(part.split())
            if sentence:
                yield sentence


def units(text: str) -> Iterator[str]:
    """Paragraphs (wrapped lines joined), list items and `key: value` lines; no code, no headings."""
    current: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.strip() and not _HEADING.match(line):
            if _starts_unit(line, current):
                yield from _flush(current)
            current.append(_ITEM.sub("", line, count=1).strip())
            continue
        yield from _flush(current)
    yield from _flush(current)


def _starts_unit(line: str, current: list[str]) -> bool:
    return bool(_ITEM.match(line) or _LABEL.match(line) or (current and current[-1].endswith(":")))


def _flush(current: list[str]) -> Iterator[str]:
    if current:
        yield " ".join(current)
        current.clear()


def _cap(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + "…"
