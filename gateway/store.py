"""Persistence of page tables, pages and evidence bodies in Redis (`redis.asyncio`).

Keys: every key of one scope shares one Redis Cluster hash tag, `{<tenant>:<scope_id>}`, so each
multi-key operation (the atomic save, MGET of pages) stays in one slot:

    cvm:{<tenant>:s:<session>}:table               hash: v (int version), data (table JSON)
    cvm:{<tenant>:s:<session>}:page:<page_id>      page JSON (gateway.codec)
    cvm:{<tenant>:s:<session>}:body:<sha256>       evidence body, content-addressed, immutable
    cvm:{<tenant>:project:<project>}:...           the same three for project scope

Tenants may not contain ':' and scope ids are built by `session_scope`/`project_scope`, so the
tag splits one way only: two tenants can never share a key. Ids are validated, never escaped;
callers hash free-form ids first.

Errors (redis exceptions never escape; `_mapped_errors` converts them):

    StoreError
    ├── StoreUnavailable ... connection refused/lost, timeout, server loading
    ├── VersionConflict .... optimistic save lost against another writer
    ├── CorruptData ........ a stored value that does not decode
    └── InvalidKeyError .... (also a ValueError) an id that would not make a safe key
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

from gateway.codec import CodecError, dump_page, load_page
from policies.pages import Page

_TENANT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SCOPE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PAGE_ID = re.compile(r"[\x21-\x7a\x7c\x7e]{1,256}")  # printable ASCII except space, '{' and '}'
_DIGEST = re.compile(r"[0-9a-f]{64}")
SESSION_PREFIX = "s:"
PROJECT_PREFIX = "project:"
CONFLICT = "VERSION_CONFLICT"
# One atomic round trip: check the version (ARGV[1], -1 = unchecked), write the pages (SET),
# the bodies (SET NX) and the table (HSET v, data). A retry of a save that already committed
# (stored = expected + 1 with the same data) returns the stored version; an unchanged table
# keeps its version. KEYS: table, pages..., bodies...; ARGV: expected, data, page count,
# page JSON..., body text...
SAVE_SCRIPT = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local expected = tonumber(ARGV[1])
local data = ARGV[2]
local same = cur > 0 and redis.call('HSTRLEN', KEYS[1], 'data') == #data
  and redis.call('HGET', KEYS[1], 'data') == data
if expected >= 0 and cur ~= expected then
  if cur == expected + 1 and same then return cur end
  return redis.error_reply('VERSION_CONFLICT ' .. cur)
end
local npages = tonumber(ARGV[3])
for i = 1, npages do redis.call('SET', KEYS[1 + i], ARGV[3 + i]) end
for i = 2 + npages, #KEYS do redis.call('SET', KEYS[i], ARGV[2 + i], 'NX') end
if same then return cur end
redis.call('HSET', KEYS[1], 'v', cur + 1, 'data', data)
return cur + 1
"""
# Lone surrogates (valid in JSON escapes, so possible in transcripts) round-trip instead of failing.
DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 30,
        "max_connections": 64,
        "encoding_errors": "surrogatepass",
    }
)


class StoreError(Exception):
    """Base of every store failure."""


class StoreUnavailable(StoreError):
    """The server cannot be reached or did not answer in time; the operation may be retried."""


class VersionConflict(StoreError):
    """The table changed under an optimistic save: reload, merge and save again."""

    def __init__(self, message: str, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class CorruptData(StoreError):
    """A stored value that cannot be decoded."""


class InvalidKeyError(StoreError, ValueError):
    """An id that does not fit the key grammar."""


@dataclass(frozen=True, slots=True)
class TableRecord:
    version: int
    data: str


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
    ) -> int: ...

    async def get_pages(self, tenant: str, scope_id: str, page_ids: Sequence[str]) -> dict[str, Page]: ...

    async def get_body(self, tenant: str, scope_id: str, digest: str) -> str | None: ...

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
def _mapped_errors() -> Iterator[None]:
    """redis-py exceptions -> StoreError subclasses."""
    try:
        yield
    except (rexc.ConnectionError, rexc.TimeoutError) as exc:
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc
    except rexc.RedisError as exc:
        raise StoreError(f"redis error: {exc}") from exc


# -- the store -----------------------------------------------------------------------------


class RedisStore:
    """`Store` over one `redis.asyncio` client and its connection pool."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._save_script = client.register_script(SAVE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisStore:
        """`redis://`, `rediss://` or `unix://`; `kw` overrides DEFAULT_CLIENT_OPTIONS."""
        options = {**DEFAULT_CLIENT_OPTIONS, **kw, "decode_responses": True}
        try:
            return cls(aioredis.Redis.from_url(url, **options))
        except ValueError as exc:
            raise StoreError(f"bad redis url: {exc}") from exc

    body_digest = staticmethod(body_digest)

    async def load_table(self, tenant: str, scope_id: str) -> TableRecord | None:
        keys = Keys.of(tenant, scope_id)
        with _mapped_errors():
            version, data = await self._client.hmget(keys.table, ["v", "data"])
        if version is None and data is None:
            return None
        return TableRecord(_version(version, keys.table), _data(data, keys.table))

    async def table_version(self, tenant: str, scope_id: str) -> int:
        """The stored table's version, 0 when there is none: a cheap freshness check."""
        keys = Keys.of(tenant, scope_id)
        with _mapped_errors():
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
    ) -> int:
        """Write pages, bodies and the table in one Lua script (one round trip, atomic); returns the new version.

        The version counts table contents: it is bumped only when `table_json` differs from the
        stored data. With `expected_version`, the stored version must equal it (0 = no table yet),
        except that a retry of a save that already committed (stored = expected + 1 with the same
        data) returns the stored version instead of failing. Ids, digests and pages are checked
        before any I/O: a body whose sha256 is not its digest raises InvalidKeyError, a page that
        cannot be encoded (NaN utility) raises gateway.codec.CodecError.
        """
        keys = Keys.of(tenant, scope_id)
        writes = _Writes.build(keys, table_json, pages, bodies)
        names = [keys.table, *(keys.page(p) for p, _ in writes.pages), *(keys.body(d) for d, _ in writes.bodies)]
        args = [
            -1 if expected_version is None else expected_version,
            writes.table_json,
            len(writes.pages),
            *(j for _, j in writes.pages),
            *(t for _, t in writes.bodies),
        ]
        with _mapped_errors():
            try:
                return int(await self._save_script(keys=names, args=args))
            except rexc.ResponseError as exc:
                if not str(exc).startswith(CONFLICT):
                    raise
                actual = int(str(exc).split()[1])
                message = f"{keys.table}: version is {actual}, expected {expected_version}"
                raise VersionConflict(message, expected_version, actual) from exc

    async def get_pages(self, tenant: str, scope_id: str, page_ids: Sequence[str]) -> dict[str, Page]:
        """The stored pages among `page_ids`, in the order asked; missing ids are left out."""
        keys = Keys.of(tenant, scope_id)
        wanted = list(dict.fromkeys(page_ids))
        if not wanted:
            return {}
        names = [keys.page(pid) for pid in wanted]
        with _mapped_errors():
            values = await self._client.mget(names)
        return {pid: _page(raw, name) for pid, name, raw in zip(wanted, names, values, strict=False) if raw is not None}

    async def get_body(self, tenant: str, scope_id: str, digest: str) -> str | None:
        name = Keys.of(tenant, scope_id).body(digest)
        with _mapped_errors():
            value = await self._client.get(name)
        return None if value is None else str(value)

    async def ping(self) -> bool:
        """True when the server answers; False when it cannot be reached."""
        try:
            with _mapped_errors():
                return bool(await self._client.ping())
        except StoreUnavailable:
            return False

    async def aclose(self) -> None:
        with _mapped_errors():
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


@dataclass(frozen=True, slots=True)
class _Writes:
    """What one save writes, encoded and validated before any I/O."""

    table_json: str
    pages: tuple[tuple[str, str], ...]  # (page id, page JSON)
    bodies: tuple[tuple[str, str], ...]  # (digest, text)

    @classmethod
    def build(cls, keys: Keys, table_json: str, pages: Sequence[Page], bodies: Mapping[str, str]) -> _Writes:
        encoded = tuple((_checked(_PAGE_ID, p.id, "page id"), dump_page(p)) for p in pages)
        for digest, text in bodies.items():
            keys.body(digest)
            if body_digest(text) != digest:
                raise InvalidKeyError(f"body digest {digest} does not match its text")
        return cls(table_json, encoded, tuple(sorted(bodies.items())))



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
