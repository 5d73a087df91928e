"""The session inspector's views of the stored records (gateway.observability.inspector), computed on read. Pure.

- `heat_map`: every page's fidelity at every kept turn, rebuilt from the records' level changes and
  keyframes, one run-length row per page;
- `after_turn`, `event_turns`: which turn a stream entry belongs to;
- `prompt_diff`: what the gateway did to the agent's messages, as message-level edit operations.

Level letters: F full, C compressed, S structured, P pointer, - absent (in the table, not in the
prompt), . not yet in the table, ? unknown (before the first keyframe the stream's cap kept).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from gateway import jsonio

ABSENT, UNBORN, UNKNOWN = "-", ".", "?"


@dataclass(frozen=True, slots=True)
class HeatMap:
    pages: list[str]  # page ids, top to bottom
    rows: list[str]  # per page: runs, each a level letter and how many turns it lasts ("F12C3-40")
    columns: int


def heat_map(records: Sequence[Mapping[str, Any]], order: Mapping[str, int] | None = None) -> HeatMap:
    """Rows of level runs over the records (one column each); pages ordered by the turn they first
    show up at, then by `order` (their position in the transcript), then by id."""
    runs: dict[str, list[tuple[str, int]]] = {}  # page -> [(letter, first column), ...]
    current: dict[str, str] = {}
    keyed = False
    for column, record in enumerate(records):
        levels = record.get("levels")
        levels = levels if isinstance(levels, dict) else {}
        if record.get("key"):
            for page in [p for p, letter in current.items() if letter != ABSENT and p not in levels]:
                _set(runs, current, page, ABSENT, column, keyed)
        for page, letter in levels.items():
            if isinstance(page, str) and isinstance(letter, str) and len(letter) == 1:
                _set(runs, current, page, letter, column, keyed)
        keyed = keyed or bool(record.get("key"))  # from here on, a page not yet seen was not in the table
    columns = len(records)
    position = order or {}
    pages = sorted(runs, key=lambda p: (_first(runs[p]), position.get(p, len(position)), p))
    return HeatMap(pages, [_encoded(runs[p], columns) for p in pages], columns)


def _set(
    runs: dict[str, list[tuple[str, int]]], current: dict[str, str], page: str, letter: str, column: int, keyed: bool
) -> None:
    if current.get(page) == letter:
        return
    current[page] = letter
    page_runs = runs.setdefault(page, [])
    if not page_runs and column:
        page_runs.append((UNBORN if keyed else UNKNOWN, 0))
    if page_runs and page_runs[-1][1] == column:  # changed twice in one record: the last word counts
        page_runs.pop()
    if page_runs and page_runs[-1][0] == letter:
        return
    page_runs.append((letter, column))


def _first(page_runs: list[tuple[str, int]]) -> int:
    return next((start for letter, start in page_runs if letter not in (UNBORN, UNKNOWN)), len(page_runs))


def _encoded(page_runs: list[tuple[str, int]], columns: int) -> str:
    ends = [start for _, start in page_runs[1:]] + [columns]
    return "".join(f"{letter}{end - start}" for (letter, start), end in zip(page_runs, ends, strict=True))


def level_history(records: Sequence[Mapping[str, Any]], page: str) -> str:
    """One page's level letter at every record, as `heat_map` would spell its row out."""
    out: list[str] = []
    letter = UNKNOWN
    for record in records:
        levels = record.get("levels")
        levels = levels if isinstance(levels, dict) else {}
        if page in levels:
            letter = str(levels[page])
        elif record.get("key"):
            letter = ABSENT if letter not in (UNKNOWN, UNBORN) else UNBORN
        out.append(letter)
    return "".join(out)


def after_turn(times: Sequence[int], at_ms: int) -> int:
    """The index of the last turn that started at or before `at_ms` (-1: before every kept turn).
    Recalls and after-response events belong to the turn whose answer they came in."""
    return bisect.bisect_right(times, at_ms) - 1


def event_turns(records: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> list[int]:
    """The turn index of each event of the session's event stream: the record that holds the same
    event (a turn's own lifecycle events and faults travel in its record), else by time (the
    faults observed after a response, with its recalls)."""
    held: dict[bytes, list[int]] = {}
    for index, record in enumerate(records):
        for event in record.get("events") or ():
            held.setdefault(jsonio.dumps(event, sort_keys=True), []).append(index)
    times = [int(r.get("at", 0)) for r in records]
    out = []
    for event in events:
        same = held.get(jsonio.dumps({k: v for k, v in event.items() if k != "id"}, sort_keys=True))
        out.append(same.pop(0) if same else after_turn(times, stream_ms(str(event.get("id", "")))))
    return out


def stream_ms(entry_id: str) -> int:
    head = entry_id.partition("-")[0]
    return int(head) if head.isdigit() else 0


def prompt_diff(received: Sequence[Any], forwarded: Sequence[Any]) -> list[dict[str, Any]]:
    """Message-level edits from what the agent sent to what the model saw: `equal` (forwarded as
    sent), `replace` (degraded or rebuilt), `delete` (paged out), `insert` (added by the gateway:
    retained state, a paged-out span's stub)."""
    matcher = SequenceMatcher(None, _digests(received), _digests(forwarded), autojunk=False)
    return [{"op": op, "received": [i1, i2], "forwarded": [j1, j2]} for op, i1, i2, j1, j2 in matcher.get_opcodes()]


def _digests(messages: Sequence[Any]) -> list[str]:
    return [hashlib.sha256(jsonio.dumps(m, sort_keys=True)).hexdigest() for m in messages]
