"""Persistence of page tables, pages and evidence bodies in Redis (`redis.asyncio`).

Keys: every key of one scope shares one Redis Cluster hash tag, `{<tenant>:<scope_id>}`, so each
multi-key operation (the atomic save, MGET of pages) stays in one slot, and the same code runs on
one server or a cluster (`redis+cluster://host:port[,host:port...]`, see `RedisStore.from_url`):

    cvm:{<tenant>:s:<session>}:table               hash: v (version), data (snapshot), base (its version)
    cvm:{<tenant>:s:<session>}:tlog                list: the journal, one record per save since the snapshot
    cvm:{<tenant>:s:<session>}:page:<page_id>      page JSON (gateway.store.codec)
    cvm:{<tenant>:s:<session>}:body:<sha256>       evidence body, content-addressed, immutable
    cvm:{<tenant>:<scope>}:mem / :wb / :wbids      write-back memory, journal stream, applied batch ids
    cvm:{<tenant>:s:<session>}:dec / :evt          decision trace and lifecycle/fault events (streams)
    cvm:{<tenant>:project:<project>}:recent        the project's newest session (reset detection)
    cvm:{<tenant>:project:<project>}:...           the same four for project scope
    cvm:{probe}:writable                           `ping`'s write probe, expires after 10 s

A table is stored as a snapshot plus a journal of later records (`save` writes a snapshot and
clears the journal, `append` adds one record); both are single lines, and `load_table` returns
them joined by newlines. The journal holds exactly `v - base` records: anything else (a key
evicted on its own, a writer that does not keep the journal) reads as CorruptData, never as a
silently older table.

Tenants may not contain ':' and scope ids are built by `session_scope`/`project_scope`, so the
tag splits one way only: two tenants can never share a key. Ids are validated, never escaped;
callers hash free-form ids first.

Errors (redis exceptions never escape; `mapped_errors` converts them):

    StoreError
    ├── StoreUnavailable ... connection refused/lost, timeout, server loading; a cluster down, a slot
    │                        not covered or migrating (TRYAGAIN), no reachable cluster node; a server
    │                        that answers but refuses the operation until it recovers: a read-only
    │                        replica after a failover (READONLY), maxmemory reached with noeviction
    │                        (OOM), a long script running (BUSY), no master link (MASTERDOWN), too
    │                        few replicas (NOREPLICAS), a failed snapshot stopping writes (MISCONF);
    │                        `reason` names which, without the server's text (no hosts, no ports)
    ├── VersionConflict .... optimistic save lost against another writer
    ├── CorruptData ........ a stored value that does not decode
    ├── InvalidKeyError .... (also a ValueError) an id that would not make a safe key
    └── InvalidRecordError . (also a ValueError) a table record that is not one line
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway.store.codec import CodecError, dump_page, load_page
from policies.pages import Page

_TENANT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SCOPE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PAGE_ID = re.compile(r"[\x21-\x7a\x7c\x7e]{1,256}")  # printable ASCII except space, '{' and '}'
_DIGEST = re.compile(r"[0-9a-f]{64}")
SESSION_PREFIX = "s:"
PROJECT_PREFIX = "project:"
CONFLICT = "VERSION_CONFLICT"
MEMORY_CONFLICT = "MEMORY_CONFLICT"
CORRUPT = "CORRUPT"
SNAPSHOT, APPEND = "snapshot", "append"
PROBE_KEY = "cvm:{probe}:writable"  # `ping` writes it: a store that answers PING may still refuse writes
PROBE_TTL_MS = 10_000
# The fields of one write-back journal record (a stream entry), in order. A record travels to the
# scripts as one argument (gateway.store.journal.pack_record): each value's bytes after their
# length and a colon. (Its fields as arguments of their own, names included, were most of a
# first turn's arguments, and redis-py encodes each argument in Python.)
RECORD_FIELDS = (
    "batch",
    "op",
    "slot",
    "type",
    "scope",
    "status",
    "reason",
    "detail",
    "source_role",
    "source_ref",
    "version",
)
ScriptArg = str | int | bytes  # a script argument as redis-py takes it
_LUA_RECORD_FIELDS = "{" + ", ".join(f"'{name}'" for name in RECORD_FIELDS) + "}"
# A write-back batch's writes, its arguments from ARGV[o + 1] on in COMMIT_SCRIPT's layout
# (gateway.store.journal.commit_args): memory entries set and deleted, `v`, the journal records,
# the applied id. Shared by the journal's COMMIT_SCRIPT (o = 0) and SAVE_SCRIPT (after its own).
APPLY_BATCH = (
    """
local RECORD_FIELDS = """
    + _LUA_RECORD_FIELDS
    + """
local function record_fields(packed, width)
  local fields, at = {}, 1
  for k = 1, width do
    local colon = string.find(packed, ':', at, true)
    local size = tonumber(string.sub(packed, at, colon - 1))
    fields[2 * k - 1], fields[2 * k] = RECORD_FIELDS[k], string.sub(packed, colon + 1, colon + size)
    at = colon + size + 1
  end
  return fields
end
local function apply_batch(memory, stream, applied, o)
  local version, width = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 6])
  local i = o + 9
  for _ = 1, tonumber(ARGV[o + 7]) do
    redis.call('HSET', memory, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  for _ = 1, tonumber(ARGV[o + 8]) do
    redis.call('HDEL', memory, ARGV[i])
    i = i + 1
  end
  redis.call('HSET', memory, 'v', version)
  while i <= #ARGV do
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[o + 4], '*', unpack(record_fields(ARGV[i], width)))
    i = i + 1
  end
  redis.call('ZADD', applied, version, ARGV[o + 1])
  redis.call('ZREMRANGEBYRANK', applied, 0, -(tonumber(ARGV[o + 5]) + 1))
  return version
end
"""
)
# One atomic round trip per turn: check the table's version (ARGV[2], -1 = unchecked) and, with a
# write-back batch (ARGV[5] > 0: its arguments follow the bodies'), the session memory's version;
# write the pages (SET), the bodies (SET NX), the batch (memory entries, `v`, journal records,
# applied id), then either a snapshot (HSET v, data, base; DEL the journal) or one journal record
# (RPUSH; HSET v). Nothing is written unless every check passes. A retry of a save that already
# committed (stored = expected + 1, and the same snapshot with an empty journal, or the same last
# record) returns the stored version (its batch committed with it); a batch already applied on the
# same base is skipped; an unchanged snapshot keeps its version.
# KEYS: table, journal, memory, write-back stream, applied ids, pages..., bodies...;
# ARGV: mode, expected, record, page count, write-back argument count, page JSON..., body text...,
# write-back arguments (gateway.store.journal.commit_args).
SAVE_SCRIPT = (
    APPLY_BATCH
    + """
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local logged = cur - tonumber(redis.call('HGET', KEYS[1], 'base') or cur)
local expected = tonumber(ARGV[2])
local record = ARGV[3]
local append = ARGV[1] == 'append'
local npages = tonumber(ARGV[4])
local nbodies = #KEYS - 5 - npages
local o = 5 + npages + nbodies
local batch = tonumber(ARGV[5]) > 0
local same
if append then
  same = logged > 0 and redis.call('LINDEX', KEYS[2], -1) == record
else
  same = cur > 0 and logged == 0 and redis.call('HSTRLEN', KEYS[1], 'data') == #record
    and redis.call('HGET', KEYS[1], 'data') == record
end
if expected >= 0 and cur ~= expected then
  if cur == expected + 1 and same then return cur end
  return redis.error_reply('VERSION_CONFLICT ' .. cur)
end
if batch then
  local base = tonumber(ARGV[o + 2])
  local score = tonumber(redis.call('ZSCORE', KEYS[5], ARGV[o + 1]) or '')
  if score and (score == base or score == base + 1) then
    batch = false
  else
    local mem = tonumber(redis.call('HGET', KEYS[3], 'v') or '0')
    if not mem then return redis.error_reply('CORRUPT ' .. KEYS[3] .. ': version is not a number') end
    if mem ~= base then return redis.error_reply('MEMORY_CONFLICT ' .. mem) end
  end
end
for i = 1, npages do redis.call('SET', KEYS[5 + i], ARGV[5 + i]) end
for i = 6 + npages, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'NX') end
if batch then apply_batch(KEYS[3], KEYS[4], KEYS[5], o) end
if append then
  redis.call('RPUSH', KEYS[2], record)
  redis.call('HSET', KEYS[1], 'v', cur + 1, 'base', cur - logged)
  return cur + 1
end
if same then return cur end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'v', cur + 1, 'data', record, 'base', cur + 1)
return cur + 1
"""
)
# Pages that outlive their session, each SET NX (pages are immutable). KEYS: the pages; ARGV: their JSON.
PUT_PAGES_SCRIPT = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'NX') end"
# `redis+cluster://host:port[,host:port...]` (and `rediss+cluster://`) names a Redis Cluster by
# some of its nodes; the client discovers the rest and follows MOVED/ASK itself.
CLUSTER_SCHEMES: Mapping[str, str] = MappingProxyType({"redis+cluster": "redis", "rediss+cluster": "rediss"})
# A request that finds every pooled connection busy waits for one (BlockingConnectionPool) up to
# POOL_WAIT_S, instead of failing at once as if the server were down.
POOL_WAIT_S = 5.0
# Lone surrogates (valid in JSON escapes, so possible in transcripts) round-trip instead of failing.
DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
        "max_connections": 128,
        "encoding_errors": "surrogatepass",
    }
)


class StoreError(Exception):
    """Base of every store failure."""


class StoreUnavailable(StoreError):
    """The server cannot be reached, did not answer in time, or refuses the operation for now
    (see the module docstring); the operation may be retried. `reason` is a short label safe to
    show a client or write to an audit record (a Redis error code or "connection", "timeout",
    "cluster"); the message may quote the server's text, internal hosts and ports: log it only."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class VersionConflict(StoreError):
    """The table changed under an optimistic save: reload, merge and save again."""

    def __init__(self, message: str, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class MemoryConflict(VersionConflict):
    """The table was current but the session's write-back memory moved under a joined save: reload
    both and plan again (nothing was written)."""


class CorruptData(StoreError):
    """A stored value that cannot be decoded."""


class InvalidKeyError(StoreError, ValueError):
    """An id that does not fit the key grammar."""


class InvalidRecordError(StoreError, ValueError):
    """A table record (snapshot or journal record) that is not a single line."""


Client = aioredis.Redis | RedisCluster  # one server, or a cluster: the same commands


@dataclass(frozen=True, slots=True)
class TableRecord:
    version: int
    data: str  # the snapshot, then the journal's records: one line each


class Store(Protocol):
    async def load_table(self, tenant: str, scope_id: str) -> TableRecord | None: ...

    async def table_version(self, tenant: str, scope_id: str) -> int: ...

    async def save(
        self,
        tenant: str,
        scope_id: str,
        table_json: str,
        pages: Sequence[Page],
        bodies: Mapping[str, str],
        expected_version: int | None,
        writeback: Sequence[ScriptArg] = (),
    ) -> int: ...

    async def append(
        self,
        tenant: str,
        scope_id: str,
        record: str,
        pages: Sequence[Page],
        bodies: Mapping[str, str],
        expected_version: int,
        writeback: Sequence[ScriptArg] = (),
    ) -> int: ...

    async def get_pages(self, tenant: str, scope_id: str, page_ids: Sequence[str]) -> dict[str, Page]: ...

    async def get_body(self, tenant: str, scope_id: str, digest: str) -> str | None: ...

    async def put_pages(self, tenant: str, scope_id: str, pages: Sequence[Page]) -> None: ...

    async def swap_recent(self, tenant: str, scope_id: str, session: str) -> str | None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


# -- keys ----------------------------------------------------------------------------------


def session_scope(session_id: str) -> str:
    return SESSION_PREFIX + _checked(_SCOPE_ID, session_id, "session id")


def project_scope(project_id: str) -> str:
    return PROJECT_PREFIX + _checked(_SCOPE_ID, project_id, "project id")


def body_digest(text: str) -> str:
    """sha256 hex of the UTF-8 text (lone surrogates kept, as the store writes them)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def hash_tag(tenant: str, scope_id: str) -> str:
    _checked(_TENANT, tenant, "tenant")
    for prefix in (SESSION_PREFIX, PROJECT_PREFIX):
        if scope_id.startswith(prefix):
            _checked(_SCOPE_ID, scope_id[len(prefix) :], "scope id")
            return f"{tenant}:{scope_id}"
    raise InvalidKeyError(f"scope id {scope_id!r} must come from session_scope() or project_scope()")


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names of one (tenant, scope)."""

    tag: str

    @classmethod
    def of(cls, tenant: str, scope_id: str) -> Keys:
        return cls(hash_tag(tenant, scope_id))

    @property
    def table(self) -> str:
        return f"cvm:{{{self.tag}}}:table"

    @property
    def journal(self) -> str:
        return f"cvm:{{{self.tag}}}:tlog"

    @property
    def memory(self) -> str:
        """Hash: the committed write-back memory (one field per slot, plus `v`)."""
        return f"cvm:{{{self.tag}}}:mem"

    @property
    def writeback(self) -> str:
        """Stream: the write-back journal (staged, committed and rejected updates)."""
        return f"cvm:{{{self.tag}}}:wb"

    @property
    def applied(self) -> str:
        """Sorted set: ids of write-back batches already committed (idempotent retries)."""
        return f"cvm:{{{self.tag}}}:wbids"

    @property
    def recent(self) -> str:
        """String: the session of this project that started last."""
        return f"cvm:{{{self.tag}}}:recent"

    @property
    def decisions(self) -> str:
        """Stream: the decision trace (degrade, evict, upgrade, recall, with reason codes)."""
        return f"cvm:{{{self.tag}}}:dec"

    @property
    def recalled(self) -> str:
        """Set: pages a recall has served in this session (a second recall is a refetch)."""
        return f"cvm:{{{self.tag}}}:recalled"

    @property
    def counts(self) -> str:
        """Hash: fault-tally counts observed after a response (recall hits, refetches, silent recalls)."""
        return f"cvm:{{{self.tag}}}:counts"

    @property
    def events(self) -> str:
        """Stream: lifecycle events and faults, each with its evidence."""
        return f"cvm:{{{self.tag}}}:evt"

    def page(self, page_id: str) -> str:
        return f"cvm:{{{self.tag}}}:page:{_checked(_PAGE_ID, page_id, 'page id')}"

    def body(self, digest: str) -> str:
        return f"cvm:{{{self.tag}}}:body:{_checked(_DIGEST, digest, 'body digest')}"


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidKeyError(f"invalid {what}: {value!r}")
    return value


# -- errors --------------------------------------------------------------------------------


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """redis-py exceptions -> StoreError subclasses."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}", _reason(exc)) from exc
    except (rexc.CrossSlotTransactionError, rexc.InvalidPipelineStack) as exc:  # a bug here, not an outage
        raise StoreError(f"redis cluster error: {exc}") from exc
    except rexc.RedisClusterException as exc:  # no reachable node, slots not all covered, no agreement
        raise StoreUnavailable(f"redis cluster unavailable: {exc}", "cluster") from exc
    except rexc.RedisError as exc:
        code = refusal(exc)
        if code is not None:
            raise StoreUnavailable(f"redis refused the operation for now: {exc}", code) from exc
        raise StoreError(f"redis error: {exc}") from exc


_UNAVAILABLE = (
    rexc.ConnectionError,  # also BusyLoadingError: LOADING, the server reads its data set
    rexc.TimeoutError,
    rexc.ClusterDownError,  # also MasterDownError: a failover in progress
    rexc.TryAgainError,  # a slot migrating
    rexc.SlotNotCoveredError,
)
# Error codes of a server that answers but refuses the operation until it recovers (the
# module docstring). Never a bug of ours: the same command succeeds once the server is well.
REFUSALS = frozenset(
    {"READONLY", "OOM", "BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "MISCONF"}
)
# Where the code stands in redis-py's message: first (redis-py strips only the codes it maps to
# a class), after a pipeline's "Command # n (...) of pipeline caused error: ", or after the
# "-" of an error raised by a `redis.call` inside a script (Redis 6: "Error running script
# (call to f_...): @user_script:19: @user_script: 19: -OOM command not allowed ...").
_REFUSAL = re.compile(r"(?:^|caused error: |: -)([A-Z]+)\b")
_CLASS_CODES: tuple[tuple[type[Exception], str], ...] = (
    (rexc.ReadOnlyError, "READONLY"),
    (rexc.OutOfMemoryError, "OOM"),
    (rexc.BusyLoadingError, "LOADING"),
    (rexc.MasterDownError, "MASTERDOWN"),
    (rexc.ClusterDownError, "CLUSTERDOWN"),
    (rexc.TryAgainError, "TRYAGAIN"),
)


def refusal(exc: BaseException) -> str | None:
    """The Redis error code when `exc` is a refusal of a server that will recover (READONLY, OOM,
    BUSY, ...), else None."""
    for cls, code in _CLASS_CODES:
        if isinstance(exc, cls):
            return code
    if not isinstance(exc, rexc.ResponseError):
        return None
    for found in _REFUSAL.finditer(str(exc)):
        if found.group(1) in REFUSALS:
            return found.group(1)
    return None


def _reason(exc: BaseException) -> str:
    code = refusal(exc)
    if code is not None:
        return code
    if isinstance(exc, rexc.TimeoutError):
        return "timeout"
    if isinstance(exc, rexc.ConnectionError):
        return "connection"
    return "cluster"


# -- the store -----------------------------------------------------------------------------


class RedisStore:
    """`Store` over one `redis.asyncio` client (one server, or a `RedisCluster`) and its pools.

    Every command names keys of one hash tag only, so it runs unchanged on a cluster: the saves
    are Lua scripts over one slot, and the one MULTI (`load_table`) reads two keys of one slot."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._save_script = client.register_script(SAVE_SCRIPT)
        self._put_pages_script = client.register_script(PUT_PAGES_SCRIPT)

    @property
    def client(self) -> Client:
        """The shared client, for the journal and audit streams that live beside the pages."""
        return self._client

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisStore:
        """`redis://`, `rediss://`, `unix://`, or `redis+cluster://host:port[,host:port...]` (also
        `rediss+cluster://`) for a Redis Cluster; `kw` overrides DEFAULT_CLIENT_OPTIONS."""
        options = {**DEFAULT_CLIENT_OPTIONS, **kw, "decode_responses": True}
        try:
            if url.partition("://")[0] in CLUSTER_SCHEMES:
                return cls(cluster_client(url, options))
            pool = aioredis.BlockingConnectionPool.from_url(url, timeout=POOL_WAIT_S, **options)
            return cls(aioredis.Redis.from_pool(pool))
        except (ValueError, rexc.RedisClusterException, rexc.RedisError) as exc:
            raise StoreError(f"bad redis url: {exc}") from exc

    body_digest = staticmethod(body_digest)

    async def load_table(self, tenant: str, scope_id: str) -> TableRecord | None:
        """The snapshot and the journal, read together (one MULTI/EXEC)."""
        keys = Keys.of(tenant, scope_id)
        with mapped_errors():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(keys.table, ["v", "data", "base"])
                pipe.lrange(keys.journal, 0, -1)
                (version, data, base), journal = await pipe.execute()
        if version is None and data is None:
            return None
        current = _version(version, keys.table)
        logged = current - (current if base is None else _version(base, keys.table))
        if logged != len(journal):
            raise CorruptData(f"{keys.journal}: holds {len(journal)} records, the table at v{current} needs {logged}")
        return TableRecord(current, "\n".join([_data(data, keys.table), *journal]))

    async def table_version(self, tenant: str, scope_id: str) -> int:
        """The stored table's version, 0 when there is none: a cheap freshness check."""
        keys = Keys.of(tenant, scope_id)
        with mapped_errors():
            version = await self._client.hget(keys.table, "v")
        return 0 if version is None else _version(version, keys.table)

    async def save(
        self,
        tenant: str,
        scope_id: str,
        table_json: str,
        pages: Sequence[Page],
        bodies: Mapping[str, str],
        expected_version: int | None,
        writeback: Sequence[ScriptArg] = (),
    ) -> int:
        """Write pages, bodies and a snapshot of the table in one Lua script (one round trip,
        atomic), clearing the journal; returns the new version.

        The version counts table contents: it is bumped only when `table_json` differs from the
        stored table. With `expected_version`, the stored version must equal it (0 = no table yet),
        except that a retry of a save that already committed (stored = expected + 1 with the same
        data) returns the stored version instead of failing. Ids, digests and pages are checked
        before any I/O: a body whose sha256 is not its digest raises InvalidKeyError, a page that
        cannot be encoded (NaN utility) raises gateway.store.codec.CodecError, a snapshot holding a
        newline raises InvalidRecordError.

        `writeback`, when given, is the session scope's write-back batch
        (`gateway.store.journal.commit_args`), committed in the same script: both or neither. Its
        memory having moved raises MemoryConflict.
        """
        expected = -1 if expected_version is None else expected_version
        return await self._write(SNAPSHOT, tenant, scope_id, table_json, pages, bodies, expected, writeback)

    async def append(
        self,
        tenant: str,
        scope_id: str,
        record: str,
        pages: Sequence[Page],
        bodies: Mapping[str, str],
        expected_version: int,
        writeback: Sequence[ScriptArg] = (),
    ) -> int:
        """Like `save`, but adds one record to the table's journal instead of replacing its
        snapshot: the write is the record's size, not the table's. Every append bumps the
        version; `expected_version` is required and at least 1 (a record extends a stored
        table). A retry of an append that already committed returns the stored version."""
        if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 1:
            raise ValueError(f"an append needs the version of a stored table, got {expected_version!r}")
        return await self._write(APPEND, tenant, scope_id, record, pages, bodies, expected_version, writeback)

    async def _write(
        self,
        mode: str,
        tenant: str,
        scope_id: str,
        record: str,
        pages: Sequence[Page],
        bodies: Mapping[str, str],
        expected: int,
        writeback: Sequence[ScriptArg] = (),
    ) -> int:
        keys = Keys.of(tenant, scope_id)
        writes = _Writes.build(keys, record, pages, bodies)
        names = [keys.table, keys.journal, keys.memory, keys.writeback, keys.applied]
        names += [keys.page(p) for p, _ in writes.pages]
        names += [keys.body(d) for d, _ in writes.bodies]
        args = [mode, expected, writes.record, len(writes.pages), len(writeback), *(j for _, j in writes.pages)]
        args += [t for _, t in writes.bodies]
        args += writeback
        with mapped_errors():
            try:
                return int(await self._save_script(keys=names, args=args))
            except rexc.ResponseError as exc:
                error = _save_error(exc, keys, expected)
                if error is exc:
                    raise
                raise error from exc

    async def get_pages(self, tenant: str, scope_id: str, page_ids: Sequence[str]) -> dict[str, Page]:
        """The stored pages among `page_ids`, in the order asked; missing ids are left out."""
        keys = Keys.of(tenant, scope_id)
        wanted = list(dict.fromkeys(page_ids))
        if not wanted:
            return {}
        names = [keys.page(pid) for pid in wanted]
        with mapped_errors():
            values = await self._client.mget(names)
        return {pid: _page(raw, name) for pid, name, raw in zip(wanted, names, values, strict=False) if raw is not None}

    async def get_body(self, tenant: str, scope_id: str, digest: str) -> str | None:
        name = Keys.of(tenant, scope_id).body(digest)
        with mapped_errors():
            value = await self._client.get(name)
        return None if value is None else str(value)

    async def put_pages(self, tenant: str, scope_id: str, pages: Sequence[Page]) -> None:
        """Store pages that outlive their session (project scope); pages are immutable: SET NX,
        all of them in one script (PUT_PAGES_SCRIPT: one command, where a pipeline of one SET per
        page cost a first turn's write-back about a millisecond in redis-py)."""
        if not pages:
            return
        keys = Keys.of(tenant, scope_id)
        names, texts = [keys.page(page.id) for page in pages], [dump_page(page) for page in pages]
        with mapped_errors():
            await self._put_pages_script(keys=names, args=texts)

    async def swap_recent(self, tenant: str, scope_id: str, session: str) -> str | None:
        """Name `session` the project's newest; returns the session that was, if any."""
        name = Keys.of(tenant, scope_id).recent
        _checked(_SCOPE_ID, session, "session id")
        with mapped_errors():
            previous = await self._client.set(name, session, get=True)
        return None if previous is None else str(previous)

    async def ping(self) -> bool:
        """True when the server answers and accepts writes; False when it cannot be reached or
        refuses writes for now. A PING alone is not enough: a read-only replica after a failover,
        a server at maxmemory (noeviction) or one whose link to its master is down all answer
        PING while every write fails, so the probe also writes one short-lived key (PROBE_KEY;
        on a cluster, the node that owns its slot)."""
        try:
            with mapped_errors():
                return bool(await self._client.ping()) and bool(await self._client.set(PROBE_KEY, "1", px=PROBE_TTL_MS))
        except StoreUnavailable:
            return False

    async def aclose(self) -> None:
        with mapped_errors():
            await self._client.aclose()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def cluster_client(url: str, options: Mapping[str, Any]) -> RedisCluster:
    """A `RedisCluster` for `redis+cluster://[user:password@]host:port[,host:port...][/0][?query]`:
    every listed node is a startup node (any one reachable is enough); credentials, TLS and the
    query apply to all. Nothing connects until the first command."""
    scheme, _, rest = url.partition("://")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = [_node(part) for part in hosts.split(",")]
    first = f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{hosts.split(',')[0]}{tail}"
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]], **options)


def _node(part: str) -> tuple[str, int]:
    host, colon, port = part.strip().rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"a cluster node must be host:port, got {part!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class _Writes:
    """What one save writes, encoded and validated before any I/O."""

    record: str
    pages: tuple[tuple[str, str], ...]  # (page id, page JSON)
    bodies: tuple[tuple[str, str], ...]  # (digest, text)

    @classmethod
    def build(cls, keys: Keys, record: str, pages: Sequence[Page], bodies: Mapping[str, str]) -> _Writes:
        if "\n" in record:
            raise InvalidRecordError("a table record must be a single line (compact JSON has no raw newline)")
        encoded = tuple((_checked(_PAGE_ID, p.id, "page id"), dump_page(p)) for p in pages)
        for digest, text in bodies.items():
            keys.body(digest)
            if body_digest(text) != digest:
                raise InvalidKeyError(f"body digest {digest} does not match its text")
        return cls(record, encoded, tuple(sorted(bodies.items())))


def _save_error(exc: rexc.ResponseError, keys: Keys, expected: int) -> Exception:
    """The StoreError a save script's error reply stands for; anything else is raised as it came."""
    message = str(exc)
    if message.startswith(CONFLICT):
        actual = int(message.split()[1])
        text = f"{keys.table}: version is {actual}, expected {expected}"
        return VersionConflict(text, None if expected < 0 else expected, actual)
    if message.startswith(MEMORY_CONFLICT):
        return MemoryConflict(f"{keys.memory}: version is {message.split()[1]}, the write-back was planned on another")
    if message.startswith(CORRUPT):
        return CorruptData(message[len(CORRUPT) + 1 :])
    return exc


def _version(raw: object, key: str) -> int:
    try:
        return int(str(raw))
    except ValueError as exc:
        raise CorruptData(f"{key}: version {raw!r} is not an integer") from exc


def _data(raw: object, key: str) -> str:
    if raw is None:
        raise CorruptData(f"{key}: table has a version but no data")
    return str(raw)


def _page(raw: str, key: str) -> Page:
    try:
        return load_page(raw)
    except CodecError as exc:
        raise CorruptData(f"{key}: {exc}") from exc
