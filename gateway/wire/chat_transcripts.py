"""Parsed chat requests kept between requests: agents resend the whole conversation every turn.

`TranscriptCache.read` keeps the newest bodies of each hint (tenant and session header) as they
came and parsed, and reads a body that is one of them with messages appended by its new bytes
only (`gateway.wire.appended`); the elements of its `messages` before those are then the very
objects of the earlier body. `TranscriptCache.parse` remembers the last transcript parsed for a key (the tenant, the
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

from gateway.wire.appended import Known, extended
from gateway.wire.base import ParseFrom, json_object, messages_from
from gateway.wire.chat_json import parse_messages
from policies.transcript import Message

CAPACITY = 256  # transcripts kept (each holds the request's message dicts)
MIN_REUSE = 8  # shorter transcripts are parsed whole: nothing worth keeping
MIN_BODY_BYTES = 16 * 1024  # shorter bodies are parsed whole: a few microseconds
BODIES_PER_HINT = 4  # sessions sharing a hint (no session header) each keep their newest body
BODY_BYTES = 128 * 1024 * 1024  # raw bodies kept in all (per worker), the least recently used dropped first


@dataclass(frozen=True, slots=True)
class _Parsed:
    raw: list[Any]
    messages: list[Message]


class Reader:
    """One request's reader (`gateway.wire.base.Parse`): its body, then its messages, through the
    cache; then what of the body the account-object check has yet to see (`unchecked`), and that
    it passed (`checked`)."""

    __slots__ = ("cache", "hint", "_before", "_now")

    def __init__(self, cache: TranscriptCache, hint: str) -> None:
        self.cache, self.hint = cache, hint
        self._before: Known | None = None  # the kept body this one extends
        self._now: Known | None = None  # this body, as kept

    def loads(self, raw: bytes, field: str = "messages") -> dict[str, Any]:
        """The body; `field` names the member that holds the conversation."""
        body, self._before, self._now = self.cache.read(self.hint, raw, field)
        return body

    def __call__(self, raw_messages: list[Any]) -> list[Message]:
        """A chat body's `messages` as the transcript (`transcript`, else the cache's `parse`)."""
        return self.transcript(raw_messages, CHAT_FROM, lambda raw: self.cache.parse(self.hint, raw))

    def transcript(
        self, raw_messages: list[Any], parse: ParseFrom, whole: Callable[[list[Any]], list[Message]] | None = None
    ) -> list[Message]:
        """`raw_messages` (this body's conversation) as the transcript: when this body extends a kept
        one whose transcript is known, that one's and `parse` of the appended messages; else all of
        them (by `whole`, or `parse` from 0)."""
        now = self._now
        if now is None or now.body.get(now.field) is not raw_messages:
            return _whole(raw_messages, parse, whole)
        messages = self._appended(raw_messages, parse)
        now.transcript = messages if messages is not None else _whole(raw_messages, parse, whole)
        return now.transcript

    def _appended(self, raw_messages: list[Any], parse: ParseFrom) -> list[Message] | None:
        """The transcript of the kept body this one extends and `parse` of the appended messages;
        None when that transcript is not known or the appended messages do not parse apart."""
        before = self._before
        if before is None or before.transcript is None:
            return None
        tail = parse(raw_messages, len(before.body[before.field]))
        return None if tail is None else [*before.transcript, *tail]

    def unchecked(self, raw: bytes, body: Any) -> Unchecked:
        """What the account-object check must read of this request: only its appended messages
        (their bytes, the values, the index of the first) when it extends a body that passed it."""
        before, now = self._before, self._now
        if before is None or now is None or now.end is None or not before.clean or now.raw is not raw:
            return Unchecked(raw, body, None)
        start = len(before.body[before.field])
        inserted_at = now.end - (len(raw) - len(before.raw))  # where the previous body's last message ended
        return Unchecked(raw[inserted_at : now.end], now.body[now.field][start:], start, now.field)

    def checked(self) -> None:
        """This body passed the account-object check: a body extending it needs it on its new part only."""
        if self._now is not None:
            self._now.clean = True


@dataclass(frozen=True, slots=True)
class Unchecked:
    """What the account-object check reads: `raw` and `body`, or with `start` the appended
    messages only (`body` their values, `start` the index of the first)."""

    raw: bytes
    body: Any
    start: int | None
    field: str = "messages"


def _whole(
    raw_messages: list[Any], parse: ParseFrom, whole: Callable[[list[Any]], list[Message]] | None
) -> list[Message]:
    """All of `raw_messages` as the transcript: by `whole` when given, else `parse` from index 0."""
    if whole is not None:
        return whole(raw_messages)
    messages = parse(raw_messages, 0)
    if messages is None:  # a ParseFrom reads from index 0 always
        raise ValueError("a ParseFrom returned None for a whole transcript")
    return messages


CHAT_FROM = messages_from(parse_messages)


class TranscriptCache:
    def __init__(self, capacity: int = CAPACITY, body_bytes: int = BODY_BYTES) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, str], _Parsed] = OrderedDict()
        self._body_bytes = body_bytes
        self._bodies: OrderedDict[str, list[Known]] = OrderedDict()
        self._kept = 0  # bytes of the raw bodies in `_bodies`

    def parser(self, hint: str) -> Reader:
        """The reader for one request, `hint` naming where it comes from (tenant and session header)."""
        return Reader(self, hint)

    def read(self, hint: str, raw: bytes, field: str = "messages") -> tuple[dict[str, Any], Known | None, Known | None]:
        """The body `raw` parses to (`InvalidRequest` when it is not a JSON object), read by its new
        bytes when it extends one of `hint`'s newest bodies, else parsed whole; with the kept body
        it extended (None when parsed whole) and itself as kept. `field` names the member that
        holds the conversation."""
        recent = self._bodies.pop(hint, [])
        self._kept -= sum(len(known.raw) for known in recent)
        body, before, now = self._read(recent, raw, field)
        if now is not None:
            recent.insert(0, now)
            del recent[BODIES_PER_HINT:]
        if recent:
            self._bodies[hint] = recent
            self._kept += sum(len(known.raw) for known in recent)
        while self._kept > self._body_bytes or len(self._bodies) > self._capacity:
            _, dropped = self._bodies.popitem(last=False)
            self._kept -= sum(len(known.raw) for known in dropped)
        return body, before, now

    @staticmethod
    def _read(recent: list[Known], raw: bytes, field: str) -> tuple[dict[str, Any], Known | None, Known | None]:
        for index, known in enumerate(recent):
            found = extended(known, raw) if known.field == field else None
            if found is not None:
                del recent[index]
                return found[0], known, found[1]
        body = json_object(raw)
        return body, None, Known(raw, body, field) if len(raw) >= MIN_BODY_BYTES else None

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
