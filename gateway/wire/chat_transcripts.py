"""Parsed chat transcripts kept between requests: agents resend the whole conversation every turn.

`TranscriptCache.parse` remembers the last transcript parsed for a key (the tenant, the
session header and the first message's text) and, when a new request's `messages` begin with exactly
that list (compared by value, in C: `list.__eq__`), parses only the messages after it. The
earlier list was a whole valid request, so no tool call is waiting at its end and the rest
parses on its own: a hit returns exactly what `parse_messages` would, only sooner.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.wire.chat_json import parse_messages
from policies.transcript import Message

CAPACITY = 256  # transcripts kept (each holds the request's message dicts)
MIN_REUSE = 8  # shorter transcripts are parsed whole: nothing worth keeping


@dataclass(frozen=True, slots=True)
class _Parsed:
    raw: list[Any]
    messages: list[Message]


class TranscriptCache:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Parsed] = OrderedDict()

    def parser(self, hint: str) -> Callable[[list[Any]], list[Message]]:
        """`parse` for one request, `hint` naming where it comes from (tenant and session header)."""
        return lambda raw_messages: self.parse(hint, raw_messages)

    def parse(self, hint: str, raw_messages: list[Any]) -> list[Message]:
        first = raw_messages[0] if raw_messages else None
        opening = first.get("content") if isinstance(first, dict) else None
        if len(raw_messages) < MIN_REUSE or not isinstance(opening, str):
            return parse_messages(raw_messages)
        key = (hint, opening)
        known = self._entries.pop(key, None)
        if known is not None and _extends(raw_messages, known.raw):
            messages = [*known.messages, *parse_messages(raw_messages[len(known.raw) :], len(known.raw))]
        else:
            messages = parse_messages(raw_messages)
        self._entries[key] = _Parsed(list(raw_messages), messages)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return messages


def _extends(raw_messages: list[Any], earlier: list[Any]) -> bool:
    """`raw_messages` begins with `earlier`, by value (deeply nested values count as a miss)."""
    if len(earlier) > len(raw_messages):
        return False
    try:
        return raw_messages[: len(earlier)] == earlier
    except RecursionError:
        return False
