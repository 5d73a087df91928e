"""Demand paging inside the gateway: the recall tool the agent never sees (DESIGN §4).

When an assembled prompt holds any page below full, the gateway offers the model one tool of
its own. A model that calls it gets the page back from the store, in the upstream conversation
only, and is called again (bounded); the agent receives only the final answer, or only its
own tool calls when the model mixed both. A model still recalling after the last round is told
recall is exhausted and called once more without the tool, so the agent gets its real answer.

A call names page ids (or a range of a span stub or of the evidence index), or only a `query`:
a search of every page the request may read, newest first — the session's own pages, the
requesting user's part of the project and the project's pages (gateway.store.memory), never another
user's part or another tenant's — answered with the matching lines under their page ids, at
most SEARCH_SHOWN pages of the SEARCH_PAGES newest, and a note naming the others that matched.

Every recall carries a reason code: `ok`, `no_match` (not a page id, no such page in this
session or its project, or no readable page holds the query), `denied` (a page id of another
tenant: its tenant tag, the head of the id, is not this request's, so the answer is the same
whether or not such a page exists) or `backend_error` (the store failed).
An empty answer is never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.store.memory import MemoryService
from gateway.store.session_state import SessionState
from gateway.store.store import Store, StoreError, StoreUnavailable, project_scope, session_scope
from gateway.turns.sessions import per_user
from policies.pages import Fidelity, Page
from policies.pagetable import PageTable, id_tag, paged_out, tenant_tag
from policies.recall import (
    MIN_ANSWER_TOKENS,
    NARROW_CONTEXT_CHARS,
    QUERY_CONTEXT_CHARS,
    QUERY_OR,
    Recalled,
    framing,
    holds,
    matching,
    shares,
    terms,
)
from policies.tokens import TokenCounter
from policies.transcript import ToolCall

RECALL_NAME = "clawvm_recall"
__all__ = ["MIN_ANSWER_TOKENS", "QUERY_OR", "framing", "shares"]  # the pure rules, from policies.recall
RECALL_LEVELS = ("full", "compressed")
RANGE = ".."  # policies.render.RANGE_LINE: `p:first..p:last`
RANGE_LISTED = 16  # pages a range's listing names one by one
MAX_IDS_PER_CALL = 8
SEARCH_PAGES = 256  # pages a query without page ids searches, newest first
SEARCH_SHOWN = 6  # matching pages a query without page ids answers with; the others are named
ARGUMENTS = '{"page_ids": ["p:..."]} or {"query": "text to search for"}'  # what a call must pass
DEFAULT_ROUNDS = 3
EXHAUSTED = "no more recalls this turn; answer from what you have."
DEFAULT_CALL_CAP = 2000  # tokens of recalled text per call


DESCRIPTION = (
    "Read back earlier parts of this conversation that were paged out to save context. "
    "Pass the page ids shown in [clawvm ...] notes (for example p:3f9a2c1b0d7e). "
    "To find a value you know but cannot place, pass only a query, without page_ids: "
    "it searches every page of this conversation and of its project and answers "
    "the matching lines with their page ids."
)


def parameters() -> dict[str, Any]:
    """The recall tool's arguments as a JSON schema (each wire format wraps it in its tool shape)."""
    return {
        "type": "object",
        "properties": {
            "page_ids": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_IDS_PER_CALL},
            "level": {"type": "string", "enum": list(RECALL_LEVELS)},
            "query": {
                "type": "string",
                "description": (
                    "Return only the lines containing this text (with page_ids: of those pages; "
                    "alone: search all pages); separate several alternatives with |, "
                    "e.g. 'HAT080|gift_card_123'."
                ),
            },
        },
    }


async def resolve(paging: Paging, call: ToolCall, cap: int) -> Recalled:
    """Answer one recall call from the store, within `cap` tokens; the outcome goes to `paging.log`."""
    recalled = _fitted(await _resolve(paging, call), paging.counter, cap)
    paging.log.append(recalled)
    return recalled


async def _resolve(paging: Paging, call: ToolCall, context: int = QUERY_CONTEXT_CHARS) -> Recalled:
    """The whole answer to one call, not yet fitted to any room; `context`: characters kept
    either side of a query's hit in a long line."""
    counter = paging.counter
    ids, level, query = _arguments(call)
    if ids is None:
        return _answer("no_match", f"clawvm_recall: arguments must be {ARGUMENTS}.", counter)
    if not ids:
        return await _search(paging, level, query, context)
    ranged = next((i for i in ids if RANGE in i), None)
    if ranged is not None:
        return await _range(paging, ranged, level, query, context)
    bad = next((i for i in ids if id_tag(i) is None), None)
    if bad is not None:
        return _answer("no_match", f"clawvm_recall: {_shown(bad)} is not a page id (p: and 12 hex digits).", counter)
    foreign = [i for i in ids if id_tag(i) != tenant_tag(paging.tenant)]
    if foreign:
        text = f"clawvm_recall: {', '.join(foreign)} belongs to another tenant; access denied."
        return _answer("denied", text, counter, ids)
    try:
        pages = await _pages(paging, ids)
    except StoreError as exc:
        return _store_failed(exc, counter)
    missing = [i for i in ids if i not in pages]
    if len(missing) == len(ids):
        return _answer("no_match", f"clawvm_recall: no page {', '.join(missing)} in this conversation.", counter, ids)
    parts = [_part(pid, pages[pid], level, query, context) for pid in ids if pid in pages]
    parts += [f"[{pid}: no such page in this conversation]" for pid in missing]
    return _answer("ok", "\n\n".join(parts), counter, tuple(pid for pid in ids if pid in pages))


async def _range(paging: Paging, handle: str, level: Fidelity, query: str, context: int) -> Recalled:
    """A span stub's range of older pages (`p:first..p:last`): with a query, the lines of its pages
    that hold it; without, the range's listing (one line per page), to pick ids from."""
    counter = paging.counter
    first, _, last = handle.partition(RANGE)
    if id_tag(first) is None or id_tag(last) is None:
        return _answer("no_match", f"clawvm_recall: {_shown(handle)} is not a range (p:...{RANGE}p:...).", counter)
    if {id_tag(first), id_tag(last)} != {tenant_tag(paging.tenant)}:
        return _answer("denied", f"clawvm_recall: {handle} belongs to another tenant; access denied.", counter)
    try:
        table = await paging.sessions.read(paging.tenant, paging.session) if paging.sessions else None
        ids = _between(table, first, last)
        if ids and query:
            pages = await _pages(paging, ids)
    except StoreError as exc:
        return _store_failed(exc, counter)
    if table is None or not ids:
        return _answer("no_match", f"clawvm_recall: no range {handle} in this conversation.", counter)
    if not query:
        head = f"[{handle}: {len(ids)} pages; recall an id below, a narrower range, or this range with a query]"
        return _answer("ok", "\n".join([head, *_listing(table, ids)]), counter)
    hits = [p for p in ids if p in pages and holds(pages[p].reprs.at(level).text, query)]
    if not hits:
        return _answer("no_match", f"clawvm_recall: no page in {handle} holds {query!r}.", counter)
    return _answer("ok", "\n\n".join(_part(p, pages[p], level, query, context) for p in hits), counter, hits)


async def _search(paging: Paging, level: Fidelity, query: str, context: int) -> Recalled:
    """A query without page ids: the matching lines of every page this request may read, under
    their page ids, the newest pages first."""
    counter = paging.counter
    try:
        pages, more = await _readable(paging)
    except StoreError as exc:
        return _store_failed(exc, counter)
    hits = [p for p, page in pages.items() if holds(page.reprs.at(level).text, query)]
    searched = f"{len(pages)} pages searched" + (f", the newest of {len(pages) + more}" if more else "")
    if not hits:
        text = (
            f"clawvm_recall: no page of this conversation or its project holds {query!r} ({searched}); "
            f"try a shorter or different spelling, or alternatives joined by {QUERY_OR}."
        )
        return _answer("no_match", text, counter)
    shown, rest = hits[:SEARCH_SHOWN], hits[SEARCH_SHOWN:]
    parts = [_part(p, pages[p], level, query, context) for p in shown]
    if rest:
        beyond = len(rest) - RANGE_LISTED
        named = ", ".join(rest[:RANGE_LISTED]) + (f" and {beyond} more" if beyond > 0 else "")
        parts.append(f"[{len(rest)} more pages hold {query!r}: {named}; recall them by id, or narrow the query]")
    if more:
        parts.append(f"[{searched}: older pages were not searched]")
    return _answer("ok", "\n\n".join(parts), counter, shown)


async def _readable(paging: Paging) -> tuple[dict[str, Page], int]:
    """The pages a query without ids searches, newest first, at most SEARCH_PAGES, and how many
    more there were: the session's (its table), then the requesting user's part of the project,
    then the project's (their committed write-back memory)."""
    table = await paging.sessions.read(paging.tenant, paging.session) if paging.sessions else None
    own = _newest_first(table) if table is not None else []
    seen = set(own)
    pages = {p: table.pages[p] for p in own[:SEARCH_PAGES]} if table is not None else {}
    more = len(own) - len(pages)
    for scope in dict.fromkeys((project_scope(per_user(paging.project, paging.user)), project_scope(paging.project))):
        ids = [i for i in await _committed(paging, scope) if i not in seen]
        seen.update(ids)
        room = max(0, SEARCH_PAGES - len(pages))
        more += max(0, len(ids) - room)
        if ids[:room]:
            stored = await paging.store.get_pages(paging.tenant, scope, ids[:room])
            pages.update((i, stored[i]) for i in ids[:room] if i in stored)
    return pages, more


def _newest_first(table: PageTable) -> list[str]:
    """The session's page ids, the newest first: by the turn each was made, then its place."""
    place = {p: n for n, p in enumerate(table.order)}
    return sorted(table.pages, key=lambda p: (-table.born.get(p, 0), -place.get(p, -1), p))


async def _committed(paging: Paging, scope: str) -> list[str]:
    """The page ids of a project scope's committed memory, the newest slot version first."""
    if paging.memory is None:
        return []
    memory = await paging.memory.memory(paging.tenant, scope)
    entries = sorted(memory.entries.items(), key=lambda item: (-item[1].version, item[0]))
    return list(dict.fromkeys(entry.page_id for _, entry in entries))


def _listing(table: PageTable, ids: Sequence[str]) -> list[str]:
    """One line per page of a range, the first and last RANGE_LISTED // 2 when it is longer."""
    half = RANGE_LISTED // 2
    if len(ids) <= RANGE_LISTED:
        return [table.entries[p][0] for p in ids]
    skipped = f"… {len(ids) - 2 * half} more ({ids[half]}{RANGE}{ids[-half - 1]})"
    return [*(table.entries[p][0] for p in ids[:half]), skipped, *(table.entries[p][0] for p in ids[-half:])]


def _between(table: PageTable | None, first: str, last: str) -> list[str]:
    """The pages of a range: of a span stub (the transcript's order), or of the evidence index
    (`paged_out`: tool results the transcript no longer holds)."""
    if table is None:
        return []
    if first in table.in_order and last in table.in_order:
        start, stop = table.order.index(first), table.order.index(last)
        return table.order[start : stop + 1]
    index = paged_out(table)
    if first not in index or last not in index:
        return []
    return index[index.index(first) : index.index(last) + 1]


async def _pages(paging: Paging, ids: Sequence[str]) -> dict[str, Page]:
    """The session's pages, then the project's for ids the session does not hold. While the
    store is unavailable, the pages of the session's in-process table (gateway.store.outage)."""
    try:
        pages = await paging.store.get_pages(paging.tenant, session_scope(paging.session), ids)
        rest = [i for i in ids if i not in pages]
        if rest:
            pages.update(await paging.store.get_pages(paging.tenant, project_scope(paging.project), rest))
    except StoreUnavailable:
        table = await paging.sessions.read(paging.tenant, paging.session) if paging.sessions else None
        held = {i: table.pages[i] for i in ids if i in table.pages} if table is not None else {}
        if not held:
            raise
        return held
    return pages


def _store_failed(exc: StoreError, counter: TokenCounter) -> Recalled:
    if isinstance(exc, StoreUnavailable):
        return _answer("backend_error", "clawvm_recall: the page store is unavailable right now; retry later.", counter)
    return _answer("backend_error", f"clawvm_recall: the page store failed ({type(exc).__name__}); retry.", counter)


def _shown(value: str) -> str:
    return repr(value[:80]) if value.isprintable() else "the id given"


def _arguments(call: ToolCall) -> tuple[list[str] | None, Fidelity, str]:
    """(page ids, level, query); no ids ([]) for a query alone; None when the arguments are neither."""
    raw = call.arguments or "{}"
    try:
        args = jsonio.loads(raw)
    except ValueError:
        return None, Fidelity.FULL, ""
    if not isinstance(args, dict):
        return None, Fidelity.FULL, ""
    ids = args.get("page_ids")
    if isinstance(ids, str):
        ids = [ids]
    query = args.get("query").strip() if isinstance(args.get("query"), str) else ""
    if ids in (None, []) and terms(query):
        ids = []  # a search of every readable page
    elif not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return None, Fidelity.FULL, ""
    level = Fidelity.COMPRESSED if args.get("level") == "compressed" else Fidelity.FULL
    return list(dict.fromkeys(ids))[:MAX_IDS_PER_CALL], level, query


def _part(page_id: str, page: Page, level: Fidelity, query: str, context: int) -> str:
    """One page's text at `level`; with a query, only the lines that hold it (and their neighbours)."""
    text = page.reprs.at(level).text
    if query:
        text = matching(text, query, context)
    return f"[{page_id} {page.type} · {level.label}{f' · lines matching {query!r}' if query else ''}]\n{text}"


def _answer(code: str, text: str, counter: TokenCounter, pages: Sequence[str] = ()) -> Recalled:
    return Recalled(code, text, counter.count(text), tuple(pages))


def _fitted(recalled: Recalled, counter: TokenCounter, cap: int) -> Recalled:
    """The answer within `cap` tokens: cut when it is longer (only whole answers are `ok` to cut)."""
    if recalled.tokens <= cap or recalled.code != "ok":
        return recalled
    return _capped(recalled.text, counter, cap, recalled.pages)


def _capped(text: str, counter: TokenCounter, cap: int, pages: tuple[str, ...]) -> Recalled:
    """The text, or as much of its head as fits `cap` tokens with a note saying what was cut."""
    tokens = counter.count(text)
    if tokens <= cap:
        return Recalled("ok", text, tokens, pages)
    if cap < MIN_ANSWER_TOKENS:
        note = "[no room left under the budget for this recall: ask for fewer pages, or one page with a query]"
        return Recalled("ok", note, counter.count(note), ())
    keep = len(text) * cap // max(tokens, 1)
    while True:
        cut = text[:keep] + f'\n[… cut to fit the budget: {tokens} tokens in all; ask for level "compressed"]'
        counted = counter.count(cut)
        if counted <= cap or keep == 0:
            return Recalled("ok", cut, counted, pages)
        keep = max(0, keep - max(64, (counted - cap) * 4))


@dataclass(frozen=True, slots=True)
class Paging:
    """What the recall loop needs of the request it serves; `log` collects every outcome."""

    store: Store
    tenant: str
    session: str
    project: str
    counter: TokenCounter
    room: int  # prompt tokens still free under the budget for recalled text
    rounds: int = DEFAULT_ROUNDS
    per_call_cap: int = DEFAULT_CALL_CAP
    name: str = "clawvm_recall"
    log: list[Recalled] = field(default_factory=list)
    sessions: SessionState | None = None  # to expand a span stub's range of older pages, and to search the session
    user: str = ""  # the requesting end user (a digest, gateway.turns.sessions); "" when the request names none
    memory: MemoryService | None = None  # the project's committed pages, for a query without page ids


async def resolve_all(paging: Paging, calls: Sequence[ToolCall], room: int) -> list[Recalled]:
    """Answer a round's recall calls, sharing the room fairly: answers that fit their share are
    whole, and what they leave goes in equal shares to the longer ones, which are cut to fit."""
    whole = [await _resolve(paging, call) for call in calls]
    if sum(r.tokens for r in whole) > room:  # cramped: queries keep less context around their hits
        narrow = [await _resolve(paging, c, NARROW_CONTEXT_CHARS) if _queried(c) else None for c in calls]
        whole = [n or r for n, r in zip(narrow, whole, strict=True)]
    caps = shares([r.tokens for r in whole], max(0, room), paging.per_call_cap)
    answers = [_fitted(r, paging.counter, cap) for r, cap in zip(whole, caps, strict=True)]
    paging.log.extend(answers)
    return answers


def _queried(call: ToolCall) -> bool:
    return bool(_arguments(call)[2])
