"""How a diligent model without lookahead asks for what it misses: from its prompt alone.

The model knows what it wants to answer, hence the identifiers (order ids, paths, numbers) its
answer uses that its prompt does not show. It does not know where the gateway keeps them: it
only reads the request it received.

- the page handles its prompt shows: page ids (`p:` and 12 hex digits, in span stubs, pointers,
  elision marks) and ranges of older pages (`p:first..p:last`), each with the text around it
  (its line; the whole message when that shows no other handle: a pointer, a compressed page);
- the recall tool as offered in `tools`: its name, whether `page_ids` is required, the most ids
  one call takes (`maxItems`), whether it takes a `query` and whether that query joins
  alternatives with `|` (its description says so).

It then asks, in one round of calls, at most `MAX_CALLS` of them:

1. placed: the handles whose surrounding text names a missing identifier (or its file name),
   with those identifiers as the query;
2. unplaced: when the tool takes a query without page ids, one search for the others; otherwise
   the other handles it sees with the unplaced identifiers as the query, so that only matching
   lines come back: the newest ids first, then each range (a call of its own), then older ids.

Nothing here computes a page id: every id it passes is one it read in its prompt. This module
imports no gateway or policies code on purpose (tests/bench/peers/test_honest.py checks).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
MAX_CALLS = 4  # recall calls in the one round a diligent model spends before answering
_ID = r"p:[0-9a-f]{12}(?:~[1-9][0-9]{0,8})?"
HANDLE = re.compile(rf"(?<![0-9A-Za-z]){_ID}(?:\.\.{_ID})?")
RANGE = ".."
DEFAULT_MAX_IDS = 8


@dataclass(frozen=True, slots=True)
class Sighting:
    handle: str  # a page id or a range, verbatim from the prompt
    context: str  # the text around it, lower-cased
    position: int  # order of appearance in the prompt


@dataclass(frozen=True, slots=True)
class RecallTool:
    """What the recall tool's schema (as offered) tells a model."""

    name: str
    max_ids: int
    has_query: bool
    query_alone: bool  # `page_ids` is not required: a query may search on its own
    alternatives: bool  # the query joins alternatives with `|`

    @classmethod
    def of(cls, tool: Json) -> RecallTool:
        function = tool.get("function") or {}
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") or {}
        required = parameters.get("required") or []
        ids = properties.get("page_ids") or {}
        query = properties.get("query")
        described = " ".join(str(x.get("description") or "") for x in (function, query or {}))
        return cls(
            name=str(function.get("name")),
            max_ids=int(ids.get("maxItems") or DEFAULT_MAX_IDS),
            has_query=isinstance(query, dict),
            query_alone=isinstance(query, dict) and "page_ids" not in required,
            alternatives="|" in described,
        )


def offered_tool(body: Json, name: str) -> RecallTool | None:
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == name:
            return RecallTool.of(tool)
    return None


def texts(message: Json) -> list[str]:
    """A wire message's readable parts: its text and its tool calls' arguments."""
    content = message.get("content")
    parts = [content] if isinstance(content, str) else []
    if isinstance(content, list):
        parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
    calls = message.get("tool_calls") or []
    parts += [str((c.get("function") or {}).get("arguments") or "") for c in calls if isinstance(c, dict)]
    return parts


def sightings(messages: Sequence[Json]) -> list[Sighting]:
    """Every page handle the prompt shows, in order, each with the text around it."""
    found: list[Sighting] = []
    for message in messages:
        parts = texts(message)
        whole = "\n".join(parts)
        alone = len(HANDLE.findall(whole)) == 1
        for text in parts:
            for line in text.splitlines():
                for match in HANDLE.finditer(line):
                    found.append(Sighting(match.group(0), (whole if alone else line).lower(), len(found)))
    return found


def names(ident: str, context: str) -> bool:
    """The context names the identifier: verbatim (case aside), or by its file name for a path."""
    lowered = ident.lower()
    if lowered in context:
        return True
    base = lowered.rstrip("/").rsplit("/", 1)[-1]
    return "/" in lowered and len(base) >= 4 and base in context


def recall_arguments(wanted: Sequence[str], messages: Sequence[Json], tool: RecallTool) -> list[Json]:
    """The arguments of the recall calls for the identifiers `wanted` (missing from `messages`)."""
    if not wanted:
        return []
    seen = sightings(messages)
    placed: dict[str, list[str]] = {}  # handle -> the identifiers its context names
    for ident in wanted:
        for s in seen:
            if names(ident, s.context):
                placed.setdefault(s.handle, []).append(ident)
    unplaced = [i for i in wanted if not any(i in v for v in placed.values())]
    calls = _placed_calls(placed, tool)
    if unplaced:
        calls += _search_calls(unplaced, seen, set(placed), tool)
    return calls[:MAX_CALLS]


def _query(idents: Sequence[str], tool: RecallTool) -> Json:
    if not tool.has_query:
        return {}
    return {"query": "|".join(dict.fromkeys(idents)) if tool.alternatives else idents[0]}


def _placed_calls(placed: dict[str, list[str]], tool: RecallTool) -> list[Json]:
    ranges = [h for h in placed if RANGE in h]
    ids = [h for h in placed if RANGE not in h]
    groups = [ids[at : at + tool.max_ids] for at in range(0, len(ids), tool.max_ids)]
    calls = [{"page_ids": g, **_query([i for h in g for i in placed[h]], tool)} for g in groups]
    return calls + [{"page_ids": [h], **_query(placed[h], tool)} for h in ranges]


def _search_calls(unplaced: Sequence[str], seen: Sequence[Sighting], taken: set[str], tool: RecallTool) -> list[Json]:
    query = _query(unplaced, tool)
    if tool.query_alone and query:
        return [query]
    if not query:  # without a query, pages come back whole: only the newest ones are worth it
        newest = [s.handle for s in reversed(seen) if RANGE not in s.handle and s.handle not in taken]
        return [{"page_ids": list(dict.fromkeys(newest))[: tool.max_ids]}] if newest else []
    handles = list(dict.fromkeys(s.handle for s in reversed(seen) if s.handle not in taken))
    ids = [h for h in handles if RANGE not in h]
    groups = [ids[at : at + tool.max_ids] for at in range(0, len(ids), tool.max_ids)]
    calls = [{"page_ids": g, **query} for g in groups]
    ranged = [{"page_ids": [h], **query} for h in handles if RANGE in h]
    return calls[:1] + ranged + calls[1:]  # the newest pages, then the older ranges, then the rest
