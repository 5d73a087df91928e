"""A request body that is the session's previous body with messages appended, read by its new bytes.

The conversation is the body's `messages` array (Chat Completions, Anthropic Messages) or its
`input` array (Responses): `Known.field`; `messages` below stands for either.

Agents resend the whole conversation every turn, so turn n's body is turn n-1's with a few
messages added at the end of its `messages` array and every other byte the same. Parsing it whole
costs time in proportion to the session's length (about 1.2 ms per MB with orjson, and the
transcript cache's comparison of every message after that); `extended` reads only the new bytes:

- `known.end` is the offset just past the previous body's last message, before the whitespace and
  the `]` that close its `messages` array. The new body must begin with the previous body's bytes
  up to `end`, have a `,` there, and end with the previous body's bytes from `end` on (the close of
  the array and every member after it). Those two comparisons run in C.
- The bytes between are then parsed as the elements of one JSON array (`[` + new + `]`): they must
  be a valid list of values that closes nothing it did not open, or the body is parsed whole.
- The body is the previous one (a new dict, the same members in the same order) with those
  elements added to its messages: what parsing the whole body gives, since by the JSON grammar
  inserting `,` and a list of values after an element of an array extends that array and
  changes nothing else.

The first time (the offset is not known yet), candidates for `end` are taken from the previous
body's `]` characters from its end, each checked against both bodies' bytes (a comma in the later
body first, so a wrong one costs a byte); the one that fits is accepted
only if the previous body's bytes after it, read as the rest of an object, give exactly the members
that follow `messages` in the parsed body (so the `]` there closes the top-level `messages` array
and no other). A body with `messages` twice, or whose candidates all fail, is parsed whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from policies.transcript import Message

WHITESPACE = b" \t\r\n"
COMMA = ord(",")
CANDIDATES = 100_000  # `]` characters tried from the end of a body whose messages' end is not known yet
PROBE = b'{"":[]'  # the start of an object whose first member stands for `messages`


@dataclass(slots=True)
class Known:
    """A body as it came (`raw`), parsed (`body`), the offset past its last message (`end`: None
    until found); once the request is read, whether it passed the account-object check (`clean`:
    `gateway.wire.account_refs`), so that a body extending it needs the check on its new part only,
    and its `messages` as the neutral transcript (`transcript`), so that one extending it parses only
    its new messages."""

    raw: bytes
    body: dict[str, Any]
    field: str = "messages"  # the member that holds the conversation (`input` for Responses)
    end: int | None = None
    clean: bool = False
    transcript: list[Message] | None = None


def extended(known: Known, raw: bytes) -> tuple[dict[str, Any], Known] | None:
    """The body `raw` parses to and what is known of it, when it is `known`'s with messages
    appended (or the same bytes again); None otherwise (parse it whole)."""
    field = known.field
    messages = known.body.get(field)
    if not isinstance(messages, list) or not messages or len(raw) < len(known.raw):
        return None
    if raw == known.raw:  # the same conversation sent again
        same = dict(known.body)
        same[field] = list(messages)
        return same, Known(raw, same, field, known.end, known.clean, known.transcript)
    ends: Iterable[int] = (known.end,) if known.end is not None else _candidates(known.raw)
    for end in ends:
        added = _added(known.raw, raw, end)
        if added is None or (known.end is None and not _closes_messages(known, end)):
            continue
        items = _elements(added)
        if items is None:
            return None
        body = dict(known.body)
        body[field] = [*messages, *items]
        return body, Known(raw, body, field, len(raw) - (len(known.raw) - end))
    return None


def _candidates(raw: bytes) -> Iterator[int]:
    """Offsets past the last element of an array, before `ws* ]`, for each `]` from the end (at most
    `CANDIDATES`; each costs a byte comparison unless the later body has a comma there)."""
    close = len(raw)
    for _ in range(CANDIDATES):
        close = raw.rfind(b"]", 0, close)
        if close <= 0:
            return
        end = close
        while end > 0 and raw[end - 1] in WHITESPACE:
            end -= 1
        if end > 0 and raw[end - 1] != ord("["):  # an empty array has no last element
            yield end


def _added(before: bytes, raw: bytes, end: int) -> bytes | None:
    """The bytes `raw` inserts at `end` of `before` after a comma, when everything else is the same
    (`before`'s head compared in place: a slice of it would copy the session's body)."""
    tail = len(before) - end
    if raw[end] != COMMA or not raw.endswith(before[end:]) or not raw.startswith(memoryview(before)[:end]):
        return None
    added = raw[end + 1 : len(raw) - tail]
    return added if added.strip(WHITESPACE) else None


def _closes_messages(known: Known, end: int) -> bool:
    """Whether `end` is past the last element of the top-level `messages` array: the bytes after
    its `]`, read as the rest of an object, are exactly the members that follow `messages`."""
    close = known.raw.index(b"]", end)
    try:
        rest = orjson.loads(PROBE + known.raw[close + 1 :])
    except orjson.JSONDecodeError:
        return False
    keys = list(known.body)
    after = keys[keys.index(known.field) + 1 :]
    members = list(rest.items())[1:] if isinstance(rest, dict) else None
    return members == [(key, known.body[key]) for key in after] and known.field not in rest


def _elements(added: bytes) -> list[Any] | None:
    """The values `added` lists (`a, b, c`), or None when it is not such a list."""
    try:
        items = orjson.loads(b"[" + added + b"]")
    except orjson.JSONDecodeError:
        return None
    return items if isinstance(items, list) and items else None
