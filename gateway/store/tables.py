"""PageTable <-> JSON, the stored form of a session's page table (pages are stored apart).

A stored table is a journal in JSON lines: a snapshot of the whole table (`dump_table`), then
one delta per later save (`dump_delta`: what that turn changed, from the table's `Changes`).
`load_table` replays the deltas onto the snapshot and gives exactly the table the writer had:
`dump_table(load_table(journal, ...)) == dump_table(writer's table)`.

Versioned (`"v": 1` on a snapshot, `"delta": 1` on a delta; fidelity levels as their integer
values), compact and key-sorted, so the same table always serialises to the same bytes (and
compact JSON never holds a raw newline, which keeps every record on one line). Loading needs
the pages themselves, fetched by id from the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway import jsonio
from policies.crossing import Predecessor
from policies.pages import Fidelity, Page
from policies.pagetable import PageTable

FORMAT = 1
POSITIONAL = ("order", "keys", "lengths")  # per position: a delta rewrites them from `at` on
PER_KEY = ("born", "entries", "facts", "covering", "names", "calls")  # a delta adds or replaces keys
HEAD = ("cost", "plan_key", "turn", "carried", "restored", "tally", "seen", "plan")  # a delta carries them whole
# Tables stored before a field existed: "plan" None, not known (a start reads back to find it).
HEAD_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"carried": [], "restored": [], "tally": {}, "seen": 0, "plan": None}
)
MAPPINGS = (*PER_KEY, "levels")


class TableFormatError(ValueError):
    """A stored table is not in a format this gateway reads."""


def dump_table(table: PageTable) -> str:
    data = {
        "v": FORMAT,
        "tenant": table.tenant,
        "session": table.session,
        "project": table.project,
        **({"user": table.user} if table.user else {}),
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
        **_head(table),
    }
    return jsonio.dumps_text(data, sort_keys=True)


def _head(table: PageTable) -> dict[str, Any]:
    return {name: getattr(table, name) for name in HEAD}


def dump_delta(table: PageTable) -> str:
    """What changed since the table's last checkpoint: its size follows the change, not the table."""
    changes = table.changes
    at = changes.dirty_from
    added = sorted(changes.pages)
    facts = {p: list(table.facts[p]) for p in added if p in table.facts}
    data = {
        "delta": FORMAT,
        "at": at,
        "order": table.order[at:],
        "keys": table.keys[at:],
        "lengths": table.lengths[at:],
        "pages": added,
        "born": {p: table.born[p] for p in added},
        "entries": {p: list(table.entries[p]) for p in added if p in table.entries},
        "facts": facts,
        "covering": {f"{p}|{f}": sorted(table.covering[f"{p}|{f}"]) for p, ids in facts.items() for f in ids},
        "names": {p: table.names[p] for p in added if p in table.names},
        "calls": {c: list(table.calls[c]) for c in changes.calls},
        "levels": {p: table.levels.get(p) for p in changes.levels},  # null: the level was dropped
        **_head(table),
    }
    return jsonio.dumps_text(data, sort_keys=True)


def page_ids(data: str) -> list[str]:
    """Every page the stored table (snapshot and deltas) names, sorted."""
    snapshot, deltas = _journal(data)
    ids: list[str] = []
    for record in (snapshot, *deltas):
        pages = record.get("pages")
        if not isinstance(pages, list) or not all(isinstance(p, str) for p in pages):
            raise TableFormatError("stored table has no list of page ids")
        ids.extend(pages)
    return sorted(set(ids))


def _predecessor(raw: dict[str, Any], deltas: list[dict[str, Any]]) -> Predecessor:
    """A stored table's session, user and last use (`policies.crossing.Predecessor`), without
    reading its pages: the last use is the newest delta's, else the snapshot's."""
    try:
        seen = deltas[-1].get("seen", HEAD_DEFAULTS["seen"]) if deltas else raw["seen"]
        return Predecessor(str(raw["session"]), str(raw.get("user", "")), int(seen))
    except (KeyError, TypeError, ValueError) as exc:
        raise TableFormatError(f"stored table is malformed: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Outline:
    """What of a stored table a start reads without its pages: whose session it is and when it
    was last used, then, for `policies.crossing.live_state_of`, its order, the
    facts each message states and the state it carries."""

    who: Predecessor
    order: list[str]
    facts: dict[str, list[str]]
    carried: list[str]
    plan: str | None  # the current plan (`PageTable.plan`); None when the record predates it


def outline(data: str) -> Outline:
    """A stored table's outline, its deltas applied (one parse of the record)."""
    raw, deltas = _journal(data)
    who = _predecessor(raw, deltas)
    with _malformed():
        for delta in deltas:
            _apply(raw, delta)
        order, facts, carried = _list(raw, "order"), raw["facts"], _list(raw, "carried")
        if not isinstance(facts, dict) or not all(isinstance(v, list) for v in facts.values()):
            raise TableFormatError("stored table is malformed: 'facts' is not a mapping of lists")
        named = {str(k): [str(f) for f in v] for k, v in facts.items()}
        plan = raw["plan"]
        if plan is not None and not isinstance(plan, str):
            raise TableFormatError("stored table is malformed: 'plan' is not a page id")
        return Outline(who, [str(p) for p in order], named, [str(p) for p in carried], plan)


def load_table(data: str, pages: Mapping[str, Page], version: int) -> PageTable:
    raw, deltas = _journal(data)
    with _malformed():
        for delta in deltas:
            _apply(raw, delta)
        _sort(raw)
        missing = [p for p in raw["pages"] if p not in pages]
        if missing:
            raise TableFormatError(
                f"stored table names {len(missing)} pages the store does not hold, e.g. {missing[0]}"
            )
        return _table(raw, pages, version)


@contextmanager
def _malformed() -> Iterator[None]:
    """Reading a parsed table: what a malformed one raises is a TableFormatError."""
    try:
        yield
    except TableFormatError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise TableFormatError(f"stored table is malformed: {exc!r}") from exc


def _table(raw: dict[str, Any], pages: Mapping[str, Page], version: int) -> PageTable:
    if not len(raw["order"]) == len(raw["keys"]) == len(raw["lengths"]):
        raise TableFormatError("stored table is malformed: order, keys and lengths differ in length")
    return PageTable(
        tenant=raw["tenant"],
        session=raw["session"],
        project=raw["project"],
        user=str(raw.get("user", "")),
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
        carried=[str(p) for p in _list(raw, "carried")],
        restored=[str(p) for p in _list(raw, "restored")],
        tally={str(k): int(v) for k, v in raw["tally"].items()},
        seen=int(raw["seen"]),
        version=version,
    )


def _apply(raw: dict[str, Any], delta: dict[str, Any]) -> None:
    """One delta onto the parsed table, in place."""
    at = delta["at"]
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= len(raw["order"]):
        raise TableFormatError(f"stored table is malformed: a delta rewrites from position {at!r}")
    for name in POSITIONAL:
        del raw[name][at:]
        raw[name].extend(_list(delta, name))
    raw["pages"].extend(_list(delta, "pages"))
    for name in PER_KEY:
        raw[name].update(delta[name])
    levels = raw["levels"]
    for page_id, level in delta["levels"].items():
        if level is None:
            levels.pop(page_id, None)
        else:
            levels[page_id] = level
    for name in HEAD:
        raw[name] = delta.get(name, HEAD_DEFAULTS.get(name)) if name in HEAD_DEFAULTS else delta[name]


def _sort(raw: dict[str, Any]) -> None:
    """The key order a snapshot has: a table loaded through deltas is built like one loaded whole."""
    raw["pages"] = sorted(set(raw["pages"]))
    for name in MAPPINGS:
        mapping = raw[name]
        if not isinstance(mapping, dict):
            raise TableFormatError(f"stored table is malformed: {name!r} is not a mapping")
        raw[name] = {k: mapping[k] for k in sorted(mapping)}


def _list(record: Mapping[str, Any], name: str) -> list[Any]:
    value = record[name]
    if not isinstance(value, list):
        raise TableFormatError(f"stored table is malformed: {name!r} is not a list")
    return value


def _journal(data: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The snapshot and the deltas of a stored table, parsed."""
    first, *rest = data.split("\n")
    snapshot = _parse(first, "v")
    for name, default in HEAD_DEFAULTS.items():  # tables stored before these fields existed
        snapshot.setdefault(name, default)
    return snapshot, [_parse(line, "delta") for line in rest]


def _parse(data: str, marker: str) -> dict[str, Any]:
    try:
        raw = jsonio.loads(data)
    except ValueError as exc:
        raise TableFormatError(f"stored table is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get(marker) != FORMAT:
        raise TableFormatError("stored table has an unknown format version")
    return raw
