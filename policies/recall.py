"""The recall tool's pure rules (DESIGN §4): how much of the prompt stays free for recalled text,
how a round's room is shared among its calls, and which lines of a page answer a query.

`gateway.wire.recall` resolves calls against the store with these; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from policies.budget import TokenBudget
from policies.tokens import TokenCounter, framed, tool_calls_tokens
from policies.transcript import ToolCall

RECALL_ROOM = 2048  # most prompt tokens kept free for recalled pages
QUERY_HITS = 12  # matching lines kept per page for a query
QUERY_LINE_CHARS = 400  # a matching line longer than this is shown as windows around its hits
QUERY_CONTEXT_CHARS = 160  # characters kept either side of a hit in a long line
NARROW_CONTEXT_CHARS = 24  # the same when a round's answers do not all fit the room
QUERY_OR = "|"  # separates a query's alternatives
MIN_ANSWER_TOKENS = 48  # below this, a cut answer would hold nothing but its note


@dataclass(frozen=True, slots=True)
class Recalled:
    """One recall call's outcome."""

    code: str  # "ok" | "no_match" | "denied" | "backend_error"
    text: str  # what the model reads as the tool result
    tokens: int
    pages: tuple[str, ...] = ()  # the page ids asked for (served ones when the code is "ok")


def recall_room(cap: int, offered: bool) -> int:
    """Prompt tokens kept free for recalled text: a sixth of the budget's cap, at most RECALL_ROOM."""
    return min(RECALL_ROOM, cap // 6) if offered else 0


def without_recall_room(budget: TokenBudget, offered: bool) -> TokenBudget:
    """The budget a turn assembles under: the recall room taken out of `usable` when the tool
    may be offered (the gateway's, and the policy bench's, turn budget)."""
    return replace(budget, usable=max(budget.usable - recall_room(budget.cap, offered), 0))


def shares(sizes: Sequence[int], room: int, most: int) -> list[int]:
    """Water-filling, smallest first: each size gets min(size, most, an equal share of what the
    smaller ones left), but never less than MIN_ANSWER_TOKENS while the room lasts (several
    useful answers beat many empty ones)."""
    caps = [0] * len(sizes)
    left = room
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    for rank, i in enumerate(order):
        share = max(left // (len(sizes) - rank), MIN_ANSWER_TOKENS)
        caps[i] = min(sizes[i], most, share, left)
        left -= caps[i]
    return caps


def framing(text: str, ours: Sequence[ToolCall], counter: TokenCounter, name: str = "clawvm_recall") -> int:
    """Tokens the continuation adds besides the recalled text: the assistant's calls (with its
    `text`), the results' framing and reason lines."""
    calls = tuple(ToolCall(c.id, name, c.arguments) for c in ours)
    assistant = framed(counter.count(text) + tool_calls_tokens(counter, calls))
    return assistant + len(ours) * framed(counter.count("[recall: backend_error]\n"))


def terms(query: str) -> list[str]:
    """A query's alternatives (`a|b|c`), lower-cased, empty ones dropped."""
    return [t for t in (part.strip().lower() for part in query.split(QUERY_OR)) if t]


def holds(text: str, query: str) -> bool:
    lowered = text.lower()
    return any(term in lowered for term in terms(query))


def matching(text: str, query: str, context: int) -> str:
    """The lines holding any of the query's terms, with a line either side; a long line is cut to
    windows around its hits, so a hit deep inside one long line (a JSON tool result) is shown."""
    wanted = terms(query)
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if any(t in line.lower() for t in wanted)]
    if not hits:
        return f"(no line holds {query!r})"
    chosen = set(hits[:QUERY_HITS])
    keep = sorted({j for i in chosen for j in range(max(0, i - 1), min(len(lines), i + 2))})
    out, previous = [], -1
    for j in keep:
        if j > previous + 1:
            out.append("…")
        out.append(windows(lines[j], wanted, context) if j in chosen else lines[j][:context])
        previous = j
    return "\n".join(out)


def windows(line: str, wanted: Sequence[str], context: int) -> str:
    """`line` itself when short, else the merged stretches of `context` characters around each hit."""
    if len(line) <= min(QUERY_LINE_CHARS, 2 * context):
        return line
    lowered = line.lower()
    spans: list[list[int]] = []
    for start in sorted(i for t in wanted for i in occurrences(lowered, t))[:QUERY_HITS]:
        end = start + max(len(t) for t in wanted)
        lo, hi = max(0, start - context), min(len(line), end + context)
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    pieces = [("…" if lo else "") + line[lo:hi] + ("…" if hi < len(line) else "") for lo, hi in spans]
    return " ".join(pieces)


def occurrences(text: str, term: str) -> list[int]:
    found, at = [], text.find(term)
    while at >= 0 and len(found) < QUERY_HITS:
        found.append(at)
        at = text.find(term, at + 1)
    return found
