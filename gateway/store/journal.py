"""The write-back journal in Redis: one scope's committed memory, its journal and applied batches.

Keys (gateway.store.store.Keys, one hash tag per scope):

    .memory     hash: one field per slot holding the Entry as JSON, plus `v` (the memory version)
    .writeback  stream: one record per staged update, committed or rejected, capped near JOURNAL_MAXLEN
    .applied    sorted set: the ids of committed batches, scored by the version they made

`commit` is one Lua script, so a batch is all in or all out: its entries, its version and its
journal records are written together or not at all (Redis runs a script whole, and its AOF holds
the script's effects as one MULTI/EXEC, which a restart replays whole or drops). A batch id that
was already applied on the same base (its score is the expected version or one more) is a retry:
the script returns the stored version and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc

from gateway.jsonio import dumps_text, loads
from gateway.store.store import (
    APPLY_BATCH,
    CONFLICT,
    CORRUPT,
    RECORD_FIELDS,
    CorruptData,
    Keys,
    ScriptArg,
    VersionConflict,
    mapped_errors,
)
from policies.pages import PageType, Scope
from policies.writeback import Entry, Memory, Outcome, Rejection, Update

VERSION_FIELD = "v"
JOURNAL_MAXLEN = 10_000
APPLIED_KEEP = 1_000
# KEYS: memory, stream, applied. ARGV: batch, expected, new version, maxlen, keep, fields per
# record, entries to set, slots to delete, then (slot, JSON) pairs, slots, and the records, one
# argument each (`pack_record`).
COMMIT_SCRIPT = (
    APPLY_BATCH
    + """
local expected = tonumber(ARGV[2])
local score = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1]) or '')
if score and (score == expected or score == expected + 1) then return score end
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if not cur then return redis.error_reply('CORRUPT ' .. KEYS[1] .. ': version is not a number') end
if cur ~= expected then return redis.error_reply('VERSION_CONFLICT ' .. cur) end
return apply_batch(KEYS[1], KEYS[2], KEYS[3], 0)
"""
)


class WritebackJournal:
    """Load and commit one scope's write-back memory over a `redis.asyncio` client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._commit = client.register_script(COMMIT_SCRIPT)

    async def load(self, tenant: str, scope_id: str) -> Memory:
        """The committed memory (empty, version 0, when nothing was committed)."""
        name = Keys.of(tenant, scope_id).memory
        with mapped_errors():
            raw = await self._client.hgetall(name)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        version = _version(fields.pop(VERSION_FIELD, "0"), name)
        entries = {slot: load_entry(fields[slot], slot, name) for slot in sorted(fields)}
        return Memory(entries, version)

    async def commit(
        self,
        tenant: str,
        scope_id: str,
        outcome: Outcome,
        staged: Sequence[Update],
        batch: str,
        expected_version: int,
    ) -> int:
        """Write `outcome` (made by `policies.writeback.apply` from the memory at
        `expected_version`) and journal every staged update, atomically; returns the version.
        A retry of a committed batch returns its version and writes nothing; a memory that
        moved since `expected_version` raises VersionConflict."""
        keys = Keys.of(tenant, scope_id)
        args = commit_args(outcome, staged, batch, expected_version)
        with mapped_errors():
            try:
                return int(await self._commit(keys=[keys.memory, keys.writeback, keys.applied], args=args))
            except rexc.ResponseError as exc:
                error = _script_error(exc, keys.memory, expected_version)
                if error is None:
                    raise
                raise error from exc

    async def read(self, tenant: str, scope_id: str, *, after: str = "-", count: int = 100) -> list[dict[str, Any]]:
        """Journal records oldest first, after stream id `after` ("-": from the start), each
        with its stream `id` and an integer `version`."""
        name = Keys.of(tenant, scope_id).writeback
        start = after if after == "-" else f"({after}"
        with mapped_errors():
            rows = await self._client.xrange(name, min=start, max="+", count=count)
        return [_record(_text(sid), fields, name) for sid, fields in rows]


# -- encoding ------------------------------------------------------------------------------


def commit_args(outcome: Outcome, staged: Sequence[Update], batch: str, expected_version: int) -> list[ScriptArg]:
    """COMMIT_SCRIPT's arguments for one batch; also the write-back part of a session's joined
    save (gateway.store.store.SAVE_SCRIPT reads the same layout after its own)."""
    version = outcome.memory.version
    if version not in (expected_version, expected_version + 1):
        raise ValueError(f"outcome is v{version}, not one commit after v{expected_version}")
    args: list[ScriptArg] = [batch, expected_version, version, JOURNAL_MAXLEN, APPLIED_KEEP, len(RECORD_FIELDS)]
    return args + _entry_args(outcome) + _record_args(outcome, staged, batch)


def dump_entry(entry: Entry) -> str:
    return dumps_text(
        {
            "slot": entry.slot,
            "page_id": entry.page_id,
            "type": str(entry.page_type),
            "value": entry.value,
            "version": entry.version,
            "scope": str(entry.scope),
            "source_role": entry.source_role,
            "source_ref": entry.source_ref,
            "history": list(entry.history),
        },
        sort_keys=True,
    )


def load_entry(raw: str, slot: str, key: str) -> Entry:
    """An Entry from its JSON; anything that does not decode to one raises CorruptData."""
    try:
        data = loads(raw)
        entry = Entry(
            slot=_typed(data["slot"], str),
            page_id=_typed(data["page_id"], str),
            page_type=PageType(data["type"]),
            value=_typed(data["value"], str),
            version=_typed(data["version"], int),
            scope=Scope(data["scope"]),
            source_role=_typed(data["source_role"], str),
            source_ref=_typed(data["source_ref"], str),
            history=tuple(_typed(v, str) for v in _typed(data["history"], list)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptData(f"{key}: slot {slot!r} does not decode: {exc}") from exc
    if entry.slot != slot:
        raise CorruptData(f"{key}: field {slot!r} holds slot {entry.slot!r}")
    return entry


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _entry_args(outcome: Outcome) -> list[str | int]:
    """The touched slots: (slot, JSON) pairs to set, then the slots to delete, each with its count."""
    touched = sorted({u.slot for u in outcome.committed})
    entries = outcome.memory.entries
    kept = [slot for slot in touched if slot in entries]
    gone = [slot for slot in touched if slot not in entries]
    pairs = [part for slot in kept for part in (slot, dump_entry(entries[slot]))]
    return [len(kept), len(gone), *pairs, *gone]


def _record_args(outcome: Outcome, staged: Sequence[Update], batch: str) -> list[bytes]:
    """Every staged update as one journal record (`pack_record`), in staging order."""
    rejected = {r.update: r for r in outcome.rejected}
    committed = set(outcome.committed)
    args: list[bytes] = []
    for update in staged:
        rejection = rejected.get(update)
        if rejection is None and update not in committed:
            raise ValueError(f"staged update for slot {update.slot!r} is not in the outcome")
        args.append(pack_record(_record_values(update, rejection, batch, outcome.memory.version)))
    return args


def pack_record(values: Sequence[str | int]) -> bytes:
    """One journal record's values (RECORD_FIELDS' order) as one script argument: each value's
    UTF-8 (lone surrogates kept, as the store's client encodes text) after its length in bytes
    and a colon; the scripts read it apart (gateway.store.store.APPLY_BATCH)."""
    if len(values) != len(RECORD_FIELDS):
        raise ValueError(f"a journal record has {len(RECORD_FIELDS)} values, not {len(values)}")
    encoded = [str(value).encode("utf-8", "surrogatepass") for value in values]
    return b"".join([b"%d:%s" % (len(value), value) for value in encoded])


def _record_values(update: Update, rejection: Rejection | None, batch: str, version: int) -> tuple[str | int, ...]:
    status, reason, detail = (
        ("committed", "", "") if rejection is None else ("rejected", rejection.reason, rejection.detail)
    )
    kind = (str(update.op), update.slot, str(update.page_type), str(update.scope))
    return (batch, *kind, status, str(reason), detail, update.source_role, update.source_ref, version)


def _record(stream_id: str, fields: Mapping[Any, Any], key: str) -> dict[str, Any]:
    record: dict[str, Any] = {_text(k): _text(v) for k, v in fields.items()}
    record["version"] = _version(record.get("version"), f"{key} {stream_id}")
    record["id"] = stream_id
    return record


def _script_error(exc: rexc.ResponseError, key: str, expected: int) -> Exception | None:
    message = str(exc)
    if message.startswith(CONFLICT):
        actual = int(message.split()[1])
        return VersionConflict(f"{key}: version is {actual}, expected {expected}", expected, actual)
    if message.startswith(CORRUPT):
        return CorruptData(message[len(CORRUPT) + 1 :])
    return None


def _version(raw: object, key: str) -> int:
    try:
        return int(str(raw))
    except ValueError as exc:
        raise CorruptData(f"{key}: version {raw!r} is not an integer") from exc


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)
