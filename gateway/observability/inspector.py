"""Per-turn records for the session inspector (`GET /ui`, gateway.api.ui_api): bounded, beside the pages.

Every request of a session leaves one record: its turn, when, the lifecycle event, tokens
received and forwarded against the budget, how much of the forwarded prompt repeats the previous
one (the prefix a provider's prompt cache can reuse), its faults and write-back, and the pages
whose fidelity changed. The record is cut in two: `glimpse` takes, inside the turn and before the
commit, what only the page table knows then (the levels it changed); `TurnLog.record` adds the
rest once the answer is sent, off the request's path.

Keys (the session's hash tag, so one pipeline writes them on a Redis Cluster too):

    cvm:{<tenant>:s:<session>}:turns    stream: one record per request, capped near `ui.turns`
    cvm:{<tenant>:s:<session>}:prompts  stream: the digests of the forwarded messages and of those
                                        the agent sent, of the newest `ui.prompts` requests
    cvm:{<tenant>:s:<session>}:msgs     hash: those messages, each once, and chunks of those digests
                                        (gateway.observability.prompt_store)
    cvm:{<tenant>:s:<session>}:fwd      string: digest and size of each message last forwarded
    cvm:{<tenant>:s:<session>}:sum      hash: the session's totals (turns, tokens, faults, events)
    cvm:{<tenant>:ui}:sessions          sorted set: the tenant's sessions by last activity, the
                                        newest `ui.sessions` kept

Levels are one letter each (`CODES`). A record holds the pages whose level changed since the last
one (`levels`); every KEYFRAME_EVERY turns, and when most pages changed, it holds every page with
a level instead (`key`: true), so a reader of the newest records rebuilds each turn's levels from
the first keyframe it finds, whatever the stream's cap cut before it.
"""

from __future__ import annotations

import base64
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway import jsonio
from gateway.observability.audit import decode
from gateway.observability.prompt_store import (
    SWEEP_FACTOR,
    SWEEP_SLACK,
    WRITE_SCRIPT,
    Digested,
    Digests,
    chunks_in,
    entry_tokens,
    expanded,
    message_of,
)
from gateway.settings import UISettings
from gateway.store.memory import WriteReport
from gateway.store.store import InvalidKeyError, Keys, StoreError, mapped_errors, session_scope
from policies.assembler import Assembly
from policies.faults import Tally
from policies.pages import Fidelity
from policies.pagetable import PageTable

log = logging.getLogger("clawvm.gateway")
FIELD = "r"
KEYFRAME_EVERY = 32
CODES: Mapping[Fidelity, str] = {
    Fidelity.FULL: "F",
    Fidelity.COMPRESSED: "C",
    Fidelity.STRUCTURED: "S",
    Fidelity.POINTER: "P",
    Fidelity.NONE: "-",
}
WRITE_ATTEMPTS = 3  # the missing messages asked, sent, and once more if a sweep raced them
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclass(frozen=True, slots=True)
class Glimpse:
    """What a turn's record needs from the page table, taken before the commit resets its
    change tracking (and before a store outage moves the turn's events to the outage queue)."""

    turn: int
    at_ms: int
    levels: dict[str, str]
    key: bool
    events: tuple[Mapping[str, Any], ...]
    decisions: int
    faults: int  # the session's fault count so far (its tally)
    replanned: bool
    insufficient: bool


@dataclass(frozen=True, slots=True)
class Shot:
    """One request as the inspector records it: the glimpse, then what the pipeline forwarded."""

    glimpse: Glimpse | None  # None: the turn was not glimpsed (nothing is recorded)
    received: Sequence[Any]  # the messages the agent sent
    forwarded: Sequence[Any]  # the messages the model saw
    tokens_received: int
    tokens_forwarded: int
    budget: int
    written: WriteReport | None = None


def glimpse(
    table: PageTable,
    decisions: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    assembly: Assembly,
) -> Glimpse:
    """The turn's level changes (or all levels, on a keyframe), from the table's change tracking;
    its decision count, events and fault count."""
    changed = table.changes.levels
    key = table.version == 0 or table.turn % KEYFRAME_EVERY == 1 or 2 * len(changed) > max(len(table.levels), 1)
    if key:
        levels = {p: CODES[level] for p, level in table.levels.items() if level is not Fidelity.NONE}
    else:
        levels = {p: CODES[table.levels.get(p, Fidelity.NONE)] for p in sorted(changed)}
    return Glimpse(
        turn=table.turn,
        at_ms=time.time_ns() // 1_000_000,
        levels=levels,
        key=key,
        events=tuple(dict(e) for e in events),
        decisions=len(decisions),
        faults=sum(Tally.from_counts(table.tally).faults.values()),
        replanned=assembly.replanned,
        insufficient=assembly.insufficient,
    )


def recorded(
    inspector: TurnLog | None,
    tenant: str,
    session: str,
    after: Callable[[], Awaitable[None]],
    shot: Shot,
) -> Callable[[], Awaitable[None]]:
    """`after` (the turn's audit records), then the inspector's record of the turn."""
    if inspector is None or shot.glimpse is None:
        return after

    async def both() -> None:
        await after()
        await inspector.record(tenant, session, shot)

    return both


class TurnLog:
    """Writes and reads the inspector's records over the store's client."""

    def __init__(self, client: aioredis.Redis, settings: UISettings) -> None:
        self._client = client
        self.settings = settings
        self._digests = Digests()
        self._write_prompt = client.register_script(WRITE_SCRIPT)

    # -- writing -----------------------------------------------------------------------------

    async def record(self, tenant: str, session: str, shot: Shot) -> None:
        """The request's record, its prompts and the session's totals, in two round trips. A
        failure is logged, never the request's: the turn itself is committed already."""
        if not self.settings.turns or shot.glimpse is None:
            return
        try:
            await self._record(tenant, session, shot, shot.glimpse)
        except (StoreError, InvalidKeyError) as exc:
            log.warning("inspector records of session %s not written: %s", session, type(exc).__name__)

    async def _record(self, tenant: str, session: str, shot: Shot, g: Glimpse) -> None:
        keys = InspectorKeys.of(tenant, session)
        digested = self._digests.digest((tenant, session), shot.received, shot.forwarded)
        sizes = [(d.hex, d.size) for d in digested.forwarded.digests]  # what the next turn compares its prefix with
        index = sessions_key(tenant)
        with mapped_errors():
            if self.settings.prompts:
                previous, prompt_id = await self._prompt(keys, digested)
            else:
                previous, prompt_id = await self._client.get(keys.forwarded), ""
            prefix = reused_prefix(parse_sizes(previous), sizes, shot.tokens_forwarded)
            body = turn_record(g, shot, prefix, prompt_id)
            lifecycle = sum(1 for e in g.events if e.get("kind") == "lifecycle")
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(keys.turns, {FIELD: jsonio.dumps_text(body)}, maxlen=self.settings.turns, approximate=True)
                pipe.set(keys.forwarded, " ".join(f"{d}:{n}" for d, n in sizes))
                pipe.hincrby(keys.summary, "requests", 1)
                pipe.hincrby(keys.summary, "received", shot.tokens_received)
                pipe.hincrby(keys.summary, "forwarded", shot.tokens_forwarded)
                pipe.hincrby(keys.summary, "events", lifecycle)
                pipe.hset(keys.summary, mapping={"turns": g.turn, "faults": g.faults, "last": g.at_ms})
                if body["event"]:
                    pipe.hset(keys.summary, "last_event", body["event"])
                if self.settings.sessions:  # the tenant's index: another slot on a cluster, same round trip
                    pipe.zadd(index, {session: g.at_ms})
                    pipe.zremrangebyrank(index, 0, -(self.settings.sessions + 1))
                await pipe.execute()

    async def _prompt(self, keys: InspectorKeys, digested: Digested) -> tuple[str, str]:
        """Writes the request's prompt entry (`WRITE_SCRIPT`) with what the entry this worker last
        wrote for the session did not name; without that entry, with what the store says it lacks.
        Returns the sizes of the messages last forwarded (read before) and the entry's id."""
        received, forwarded = digested.keys()
        base = digested.base  # none: ask first (another worker may have written the messages)
        send = digested.fresh() if base else {}
        names = [keys.prompts, keys.messages, keys.forwarded]
        for _ in range(WRITE_ATTEMPTS):
            pairs = [part for pair in send.items() for part in pair]
            args = [self.settings.prompts, base, received, forwarded, SWEEP_FACTOR, SWEEP_SLACK, *pairs]
            status, previous, *rest = await self._write_prompt(keys=names, args=args)
            if int(status) == 1:
                Digests.wrote(digested, str(rest[0]))
                return str(previous), str(rest[0])
            send.update(digested.unsent({str(k) for k in rest}))
        raise StoreError("prompt not written: its messages were swept while it was written, each attempt")

    # -- reading -----------------------------------------------------------------------------

    async def sessions(self, tenant: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """The tenant's sessions, most recently active first, with their totals."""
        with mapped_errors():
            listed = await self._client.zrevrange(sessions_key(tenant), offset, offset + limit - 1, withscores=True)
            if not listed:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for session, _ in listed:
                    pipe.hgetall(InspectorKeys.of(tenant, session).summary)
                    pipe.hgetall(Keys.of(tenant, session_scope(session)).counts)
                answers = await pipe.execute()
        rows = []
        for i, (session, score) in enumerate(listed):
            totals, later = answers[2 * i], answers[2 * i + 1]
            rows.append(session_row(str(session), int(score), totals, later))
        return rows

    async def turns(self, tenant: str, session: str) -> list[dict[str, Any]]:
        """Every kept record of the session, oldest first."""
        with mapped_errors():
            entries = await self._client.xrange(InspectorKeys.of(tenant, session).turns, min="-", max="+")
        return [decode(entry_id, fields) for entry_id, fields in entries]

    async def prompt(self, tenant: str, session: str, prompt_id: str) -> dict[str, Any] | None:
        """One kept prompt: `received` and `forwarded` messages; None when trimmed or unknown."""
        if _STREAM_ID.fullmatch(prompt_id) is None:
            return None
        keys = InspectorKeys.of(tenant, session)
        with mapped_errors():
            entries = await self._client.xrange(keys.prompts, min=prompt_id, max=prompt_id)
            if not entries:
                return None
            fields = entries[0][1]
            listed = entry_tokens(fields)
            if listed is None:  # written whole, by an earlier version
                return unpack(fields.get(FIELD, ""))
            chunks = chunks_in(listed)
            values = await self._client.hmget(keys.messages, chunks) if chunks else []
            known = {key: value for key, value in zip(chunks, values, strict=True) if value is not None}
            received, forwarded = expanded(listed[0], known), expanded(listed[1], known)
            if received is None or forwarded is None:
                return self._lost(session, prompt_id)
            unique = list(dict.fromkeys([*received, *forwarded]))
            values = await self._client.hmget(keys.messages, unique) if unique else []
        messages = {}
        for key, value in zip(unique, values, strict=True):
            ok, message = message_of(value)
            if not ok:
                return self._lost(session, prompt_id)
            messages[key] = message
        return {"received": [messages[k] for k in received], "forwarded": [messages[k] for k in forwarded]}

    @staticmethod
    def _lost(session: str, prompt_id: str) -> None:
        """A kept entry naming a message not kept: not expected (the sweep keeps what kept entries
        name); reads as trimmed."""
        log.warning("inspector prompt %s of session %s names a message not kept", prompt_id, session)


@dataclass(frozen=True, slots=True)
class InspectorKeys:
    turns: str
    prompts: str
    forwarded: str
    summary: str
    messages: str

    @classmethod
    def of(cls, tenant: str, session: str) -> InspectorKeys:
        tag = Keys.of(tenant, session_scope(session)).tag
        return cls(*(f"cvm:{{{tag}}}:{name}" for name in ("turns", "prompts", "fwd", "sum", "msgs")))


def sessions_key(tenant: str) -> str:
    if _TENANT.fullmatch(tenant) is None:
        raise InvalidKeyError(f"invalid tenant: {tenant!r}")
    return f"cvm:{{{tenant}:ui}}:sessions"


def turn_record(g: Glimpse, shot: Shot, prefix: Mapping[str, int], prompt_id: str) -> dict[str, Any]:
    lifecycle = [e for e in g.events if e.get("kind") == "lifecycle"]
    return {
        "turn": g.turn,
        "at": g.at_ms,
        "event": str(lifecycle[-1].get("event", "")) if lifecycle else "",
        "received": shot.tokens_received,
        "forwarded": shot.tokens_forwarded,
        "budget": shot.budget,
        "messages": {"received": len(shot.received), "forwarded": len(shot.forwarded)},
        "prefix": dict(prefix),
        "replanned": g.replanned,
        "insufficient": g.insufficient,
        "decisions": g.decisions,
        "events": list(g.events),
        "writeback": writeback_summary(shot.written),
        "levels": g.levels,
        "key": g.key,
        "prompt": prompt_id,
    }


def writeback_summary(written: WriteReport | None) -> dict[str, Any]:
    if written is None:
        return {"staged": 0, "committed": [], "rejected": {}}
    committed = [
        {"slot": u.slot, "op": str(u.op.value), "type": u.page_type.value, "scope": u.scope.value, "page_id": u.page_id}
        for u in written.committed
    ]
    return {"staged": written.staged, "committed": committed, "rejected": dict(written.rejected)}


def parse_sizes(stored: str | None) -> list[tuple[str, int]]:
    out = []
    for part in (stored or "").split():
        digest, _, size = part.partition(":")
        if size.isdigit():
            out.append((digest, int(size)))
    return out


def reused_prefix(
    previous: Sequence[tuple[str, int]], current: Sequence[tuple[str, int]], tokens: int
) -> dict[str, int]:
    """The leading messages `current` shares with `previous`: how many, their bytes, and the
    forwarded tokens in proportion to those bytes (`tokens`, an estimate: messages are not
    counted one by one on the request's path)."""
    same = 0
    for before, now in zip(previous, current, strict=False):
        if before != now:
            break
        same += 1
    reused = sum(n for _, n in current[:same])
    total = sum(n for _, n in current)
    return {
        "messages": same,
        "bytes": reused,
        "of_bytes": total,
        "tokens": round(tokens * reused / total) if total else 0,
    }


def session_row(session: str, last_ms: int, totals: Mapping[str, str], later: Mapping[str, str]) -> dict[str, Any]:
    """One line of the sessions list; `later` is the tally observed after responses (recalls)."""
    counted = Tally.from_counts({str(k): int(v) for k, v in later.items()})
    return {
        "id": session,
        "turns": _int(totals.get("turns")),
        "requests": _int(totals.get("requests")),
        "tokens_received": _int(totals.get("received")),
        "tokens_forwarded": _int(totals.get("forwarded")),
        "faults": _int(totals.get("faults")) + sum(counted.faults.values()),
        "lifecycle_events": _int(totals.get("events")),
        "last_event": str(totals.get("last_event") or ""),
        "last_activity_ms": last_ms,
    }


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def unpack(text: str) -> dict[str, Any] | None:
    """A prompt entry of the earlier format (the whole prompt, zlib + base64 JSON)."""
    try:
        value = jsonio.loads(zlib.decompress(base64.b64decode(text)))
    except (ValueError, zlib.error):
        return None
    return value if isinstance(value, dict) else None
