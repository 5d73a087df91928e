"""Lifecycle boundaries at the gateway's edge (DESIGN §5): what the pure rule
(`policies.crossing`) needs from the store at a session's first request, and the agent's own
word on its boundary.

At the first request of a session (`policies.crossing.wants_start`) `load_start` swaps the
project's newest-session pointer of the end user (gateway.turns.sessions: never another user's) and
reads the session it pointed to, with the committed write-back pages of the project and of the
user's part of it (gateway.store.memory), reads that do not wait for each other made together
(gateway.store.together). The turn step decides from these whether the session is a
reset of a live predecessor or a new start, and what carries over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.store.memory import MemoryService, user_scope
from gateway.store.session_state import SessionState
from gateway.store.store import StoreError, project_scope
from gateway.store.tables import TableFormatError
from gateway.store.together import together
from gateway.wire.base import Names
from policies.crossing import CARRIED_TYPES, Predecessor, Start
from policies.pages import Page
from policies.pagetable import PageTable
from policies.writeback import Memory, opens_sessions


async def load_start(
    sessions: SessionState, memory: MemoryService, table: PageTable, carries: Callable[[Predecessor], bool]
) -> Start:
    """The store's part of a session's first request (one pointer per project and user): the
    swap of the project's newest session and the committed memory of the project and of the
    user's part of it, read together, then the pages they carry and the previous session: its
    stored table record, and only when it `carries` (`policies.crossing.may_carry`) the pages
    it carries (`SessionState.live`). The memory read is fresh, and the turn's write-back is then
    planned on it (`MemoryService.fresh`). A store that fails, or a predecessor whose stored
    state cannot be read, gives a start without carried state that says why (`Start.failed`)."""
    scope, mine = project_scope(table.project), user_scope(table)
    scopes = list(dict.fromkeys((scope, mine)))
    try:
        previous, *memories = await together(
            sessions.store.swap_recent(table.tenant, mine, table.session),
            *(memory.fresh(table.tenant, s) for s in scopes),
        )
        held = await together(*(_project_pages(sessions, table, s, m) for s, m in zip(scopes, memories, strict=True)))
        carried = [page for pages in held for page in pages]
        before = None
        if previous is not None and previous != table.session:
            before = await sessions.live(table.tenant, previous, carries)
    except (StoreError, TableFormatError) as exc:  # an unreadable predecessor fails no new session
        return Start(failed=type(exc).__name__)
    return Start(project=carried, previous=before)


async def _project_pages(sessions: SessionState, table: PageTable, scope: str, memory: Memory) -> list[Page]:
    """The pages of a project scope's committed memory (validated write-back), oldest first."""
    ids = [entry.page_id for _, entry in sorted(memory.entries.items()) if opens_sessions(entry)]
    pages = await sessions.store.get_pages(table.tenant, scope, ids)
    return [pages[i] for i in ids if i in pages and pages[i].type in CARRIED_TYPES]


def hint_of(headers: Mapping[str, str], names: Names) -> str | None:
    """The agent's own word on its boundary: `X-ClawVM-Event`, else the body's (`Names.event`:
    `metadata.clawvm_event`, or the format's own sign such as a Codex compaction item)."""
    return headers.get("x-clawvm-event") or names.event
