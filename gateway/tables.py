"""PageTable <-> JSON, the stored form of a session's page table (pages are stored apart).

Versioned (`"v": 1`; fidelity levels as their integer values), compact and key-sorted, so the same table always serialises to the same
bytes. Loading needs the pages themselves, fetched by id from the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import jsonio
from policies.pages import Fidelity, Page
from policies.pagetable import PageTable

FORMAT = 1


class TableFormatError(ValueError):
    """A stored table is not in a format this gateway reads."""


def dump_table(table: PageTable) -> str:
    data = {
        "v": FORMAT,
        "tenant": table.tenant,
        "session": table.session,
        "project": table.project,
        "pages": sorted(table.pages),
        "order": table.order,
        "keys": table.keys,
        "lengths": table.lengths,
        "facts": {k: list(v) for k, v in table.facts.items()},
        "covering": {k: sorted(v) for k, v in table.covering.items()},
        "entries": {k: list(v) for k, v in table.entries.items()},
        "born": table.born,
        "levels": table.levels,
        "calls": {k: list(v) for k, v in table.calls.items()},
        "names": table.names,
        "cost": table.cost,
        "plan_key": table.plan_key,
        "turn": table.turn,
    }
    return jsonio.dumps_text(data, sort_keys=True)


def page_ids(data: str) -> list[str]:
    pages = _parse(data).get("pages")
    if not isinstance(pages, list) or not all(isinstance(p, str) for p in pages):
        raise TableFormatError("stored table has no list of page ids")
    return pages


def load_table(data: str, pages: Mapping[str, Page], version: int) -> PageTable:
    raw = _parse(data)
    try:
        missing = [p for p in raw["pages"] if p not in pages]
        if missing:
            raise TableFormatError(f"stored table names {len(missing)} pages the store does not hold, e.g. {missing[0]}")
        return PageTable(
            tenant=raw["tenant"],
            session=raw["session"],
            project=raw["project"],
            pages={p: pages[p] for p in raw["pages"]},
            order=list(raw["order"]),
            keys=list(raw["keys"]),
            lengths=[int(x) for x in raw["lengths"]],
            facts={k: tuple(v) for k, v in raw["facts"].items()},
            covering={k: frozenset(Fidelity(int(x)) for x in v) for k, v in raw["covering"].items()},
            entries={k: (v[0], int(v[1])) for k, v in raw["entries"].items()},
            born={k: int(v) for k, v in raw["born"].items()},
            levels={k: Fidelity(int(v)) for k, v in raw["levels"].items()},
            calls={k: (v[0], v[1]) for k, v in raw["calls"].items()},
            names=dict(raw["names"]),
            cost=int(raw["cost"]),
            plan_key=raw["plan_key"],
            turn=int(raw["turn"]),
            version=version,
        )
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        if isinstance(exc, TableFormatError):
            raise
        raise TableFormatError(f"stored table is malformed: {exc!r}") from exc


def _parse(data: str) -> dict[str, Any]:
    try:
        raw = jsonio.loads(data)
    except ValueError as exc:
        raise TableFormatError(f"stored table is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("v") != FORMAT:
        raise TableFormatError("stored table has an unknown format version")
    return raw
