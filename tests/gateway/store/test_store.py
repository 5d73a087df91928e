from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import AsyncIterator

import anyio
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from gateway.store.codec import dump_page
from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.store.store import (
    CorruptData,
    InvalidKeyError,
    InvalidRecordError,
    Keys,
    RedisStore,
    Store,
    StoreError,
    StoreUnavailable,
    TableRecord,
    VersionConflict,
    body_digest,
    cluster_client,
    mapped_errors,
    project_scope,
    session_scope,
)
from tests.factories import make_page

pytestmark = pytest.mark.anyio


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


BODY = "x" * 500 + " full tool output"
DIGEST = hashlib.sha256(BODY.encode()).hexdigest()
S1 = session_scope("sess-1")


# -- keys ----------------------------------------------------------------------------------


async def test_scope_helpers() -> None:
    assert session_scope("agent:main:main") == "s:agent:main:main"
    assert project_scope("repo.x") == "project:repo.x"


async def test_key_layout() -> None:
    keys = Keys.of("acme", session_scope("s1"))
    assert keys.table == "cvm:{acme:s:s1}:table"
    assert keys.journal == "cvm:{acme:s:s1}:tlog"
    assert keys.page("p:0a1b~2") == "cvm:{acme:s:s1}:page:p:0a1b~2"
    assert keys.body(DIGEST) == f"cvm:{{acme:s:s1}}:body:{DIGEST}"
    assert Keys.of("acme", project_scope("r")).table == "cvm:{acme:project:r}:table"


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "a{b", "a}b", "a\nb", "ü", "x" * 129, "a*", "a/b"],
)
async def test_invalid_session_and_project_ids(bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        session_scope(bad)
    with pytest.raises(InvalidKeyError):
        project_scope(bad)


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "a{b}", "x" * 129, "ten/ant"])
async def test_invalid_tenants(bad: str, store: RedisStore) -> None:
    with pytest.raises(InvalidKeyError):
        await store.load_table(bad, S1)


@pytest.mark.parametrize("bad", ["sess-1", "x:sess-1", "s:", "s:a b", "project:{x}", "session:a"])
async def test_scope_ids_must_come_from_the_helpers(bad: str, store: RedisStore, tenant: str) -> None:
    with pytest.raises(InvalidKeyError):
        await store.load_table(tenant, bad)


async def test_invalid_page_ids_and_digests(store: RedisStore, tenant: str) -> None:
    with pytest.raises(InvalidKeyError):
        await store.get_pages(tenant, S1, ["p 1"])
    with pytest.raises(InvalidKeyError):
        await store.get_pages(tenant, S1, ["p}1"])
    with pytest.raises(InvalidKeyError):
        await store.get_body(tenant, S1, "ABC")
    with pytest.raises(InvalidKeyError):
        await store.save(tenant, S1, "{}", [make_page(id="")], {}, None)


async def test_invalid_key_error_is_a_value_error() -> None:
    assert issubclass(InvalidKeyError, ValueError) and issubclass(InvalidKeyError, StoreError)


async def test_body_digest_is_sha256_hex() -> None:
    assert body_digest(BODY) == DIGEST == RedisStore.body_digest(BODY)


# -- save / load ---------------------------------------------------------------------------


async def test_missing_table_loads_as_none(store: RedisStore, tenant: str) -> None:
    assert await store.load_table(tenant, S1) is None


async def test_save_and_load_round_trip(store: RedisStore, tenant: str) -> None:
    pages = [make_page("p1"), make_page("p2", text="second page")]
    version = await store.save(tenant, S1, '{"order":["p1","p2"]}', pages, {DIGEST: BODY}, None)
    assert version == 1
    assert await store.load_table(tenant, S1) == TableRecord(1, '{"order":["p1","p2"]}')
    assert await store.get_pages(tenant, S1, ["p2", "p1"]) == {"p2": pages[1], "p1": pages[0]}
    assert await store.get_body(tenant, S1, DIGEST) == BODY


async def test_pages_are_stored_as_codec_json(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    page = make_page("p1", text="ünïcødé")
    await store.save(tenant, S1, "{}", [page], {}, None)
    assert await raw.get(Keys.of(tenant, S1).page("p1")) == dump_page(page)


async def test_get_pages_leaves_out_missing_and_repeats(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, "{}", [make_page("p1")], {}, None)
    assert list(await store.get_pages(tenant, S1, ["p1", "nope", "p1"])) == ["p1"]
    assert await store.get_pages(tenant, S1, []) == {}


async def test_missing_body_is_none(store: RedisStore, tenant: str) -> None:
    assert await store.get_body(tenant, S1, "0" * 64) is None


async def test_version_bumps_on_each_change(store: RedisStore, tenant: str) -> None:
    assert await store.save(tenant, S1, '{"n":1}', [], {}, None) == 1
    assert await store.save(tenant, S1, '{"n":2}', [], {}, 1) == 2
    assert await store.save(tenant, S1, '{"n":3}', [], {}, None) == 3
    assert await store.load_table(tenant, S1) == TableRecord(3, '{"n":3}')


async def test_expected_version_zero_means_create(store: RedisStore, tenant: str) -> None:
    assert await store.save(tenant, S1, '{"n":1}', [], {}, 0) == 1
    with pytest.raises(VersionConflict):
        await store.save(tenant, S1, '{"other":1}', [], {}, 0)


async def test_version_conflict(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"n":1}', [], {}, None)
    await store.save(tenant, S1, '{"n":2}', [], {}, 1)
    with pytest.raises(VersionConflict) as info:
        await store.save(tenant, S1, '{"n":"stale"}', [make_page("late")], {}, 1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert await store.load_table(tenant, S1) == TableRecord(2, '{"n":2}')
    assert await store.get_pages(tenant, S1, ["late"]) == {}


async def test_retry_of_committed_save_is_idempotent(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"n":1}', [], {}, None)
    assert await store.save(tenant, S1, '{"n":2}', [make_page("p")], {DIGEST: BODY}, 1) == 2
    assert await store.save(tenant, S1, '{"n":2}', [make_page("p")], {DIGEST: BODY}, 1) == 2
    assert await store.load_table(tenant, S1) == TableRecord(2, '{"n":2}')


async def test_identical_table_keeps_its_version(store: RedisStore, tenant: str) -> None:
    assert await store.save(tenant, S1, '{"n":1}', [], {}, None) == 1
    assert await store.save(tenant, S1, '{"n":1}', [make_page("p9")], {}, None) == 1
    assert await store.save(tenant, S1, '{"n":1}', [], {}, 1) == 1
    assert list(await store.get_pages(tenant, S1, ["p9"])) == ["p9"]


async def test_pages_are_overwritten_bodies_are_not(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    await store.save(tenant, S1, "{}", [make_page("p1", text="old")], {DIGEST: BODY}, None)
    await raw.set(Keys.of(tenant, S1).body(DIGEST), "tampered")
    await store.save(tenant, S1, '{"n":2}', [make_page("p1", text="new", version=2)], {DIGEST: BODY}, None)
    assert (await store.get_pages(tenant, S1, ["p1"]))["p1"].reprs.full.text == "new"
    assert await store.get_body(tenant, S1, DIGEST) == "tampered"  # SET NX: the first write stays


async def test_body_must_match_its_digest(store: RedisStore, tenant: str) -> None:
    with pytest.raises(InvalidKeyError, match="does not match"):
        await store.save(tenant, S1, "{}", [], {DIGEST: BODY + "!"}, None)
    assert await store.load_table(tenant, S1) is None


async def test_lone_surrogates_survive(store: RedisStore, tenant: str) -> None:
    body = "broken pair \ud83d here"
    page = make_page("p1", text=body)
    await store.save(tenant, S1, '{"t":"\ud83d"}', [page], {body_digest(body): body}, None)
    assert await store.get_body(tenant, S1, body_digest(body)) == body
    assert await store.get_pages(tenant, S1, ["p1"]) == {"p1": page}
    assert (await store.load_table(tenant, S1)) == TableRecord(1, '{"t":"\ud83d"}')


async def test_concurrent_optimistic_saves_one_wins(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"n":0}', [], {}, None)
    outcomes: list[str] = []

    async def writer(n: int) -> None:
        try:
            await store.save(tenant, S1, f'{{"writer":{n}}}', [make_page(f"w{n}")], {}, 1)
            outcomes.append("ok")
        except VersionConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(writer, n)
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    record = await store.load_table(tenant, S1)
    assert record is not None and record.version == 2
    winner = re.fullmatch(r'\{"writer":(\d)\}', record.data)
    assert winner is not None
    assert list(await store.get_pages(tenant, S1, [f"w{n}" for n in range(8)])) == [f"w{winner[1]}"]


async def test_concurrent_unconditional_saves_all_land(store: RedisStore, tenant: str) -> None:
    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(store.save, tenant, S1, f'{{"n":{n}}}', [], {}, None)
    record = await store.load_table(tenant, S1)
    assert record is not None and record.version == 6


# -- the journal ---------------------------------------------------------------------------


async def test_appended_records_load_after_the_snapshot(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    assert await store.append(tenant, S1, '{"d":1}', [make_page("p1")], {DIGEST: BODY}, 1) == 2
    assert await store.append(tenant, S1, '{"d":2}', [], {}, 2) == 3
    assert await store.load_table(tenant, S1) == TableRecord(3, '{"s":1}\n{"d":1}\n{"d":2}')
    assert list(await store.get_pages(tenant, S1, ["p1"])) == ["p1"]
    assert await store.get_body(tenant, S1, DIGEST) == BODY
    assert await store.table_version(tenant, S1) == 3


async def test_a_snapshot_clears_the_journal(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    assert await store.save(tenant, S1, '{"s":2}', [], {}, 2) == 3
    assert await store.load_table(tenant, S1) == TableRecord(3, '{"s":2}')
    assert await raw.exists(Keys.of(tenant, S1).journal) == 0
    assert await store.append(tenant, S1, '{"d":3}', [], {}, 3) == 4
    assert await store.load_table(tenant, S1) == TableRecord(4, '{"s":2}\n{"d":3}')


async def test_a_snapshot_equal_to_the_stored_one_but_for_the_journal_is_a_change(
    store: RedisStore, tenant: str
) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    assert await store.save(tenant, S1, '{"s":1}', [], {}, 2) == 3
    assert await store.load_table(tenant, S1) == TableRecord(3, '{"s":1}')


async def test_a_stale_append_is_a_version_conflict_and_writes_nothing(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    with pytest.raises(VersionConflict) as info:
        await store.append(tenant, S1, '{"d":"stale"}', [make_page("late")], {DIGEST: BODY}, 1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert await store.load_table(tenant, S1) == TableRecord(2, '{"s":1}\n{"d":1}')
    assert await store.get_pages(tenant, S1, ["late"]) == {}
    assert await store.get_body(tenant, S1, DIGEST) is None


async def test_an_append_to_a_vanished_table_is_a_version_conflict(
    store: RedisStore, raw: aioredis.Redis, tenant: str
) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await raw.delete(Keys.of(tenant, S1).table)
    with pytest.raises(VersionConflict):
        await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    assert await store.load_table(tenant, S1) is None


async def test_a_retried_append_is_idempotent(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    assert await store.append(tenant, S1, '{"d":1}', [make_page("p")], {}, 1) == 2
    assert await store.append(tenant, S1, '{"d":1}', [make_page("p")], {}, 1) == 2
    assert await store.load_table(tenant, S1) == TableRecord(2, '{"s":1}\n{"d":1}')
    with pytest.raises(VersionConflict):  # a different record at the same version is not a retry
        await store.append(tenant, S1, '{"d":"other"}', [], {}, 1)


async def test_a_retried_snapshot_after_a_journal_is_idempotent(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    assert await store.save(tenant, S1, '{"s":2}', [], {}, 2) == 3
    assert await store.save(tenant, S1, '{"s":2}', [], {}, 2) == 3


@pytest.mark.parametrize("expected", [0, -1, None, True])
async def test_an_append_needs_a_stored_version(store: RedisStore, tenant: str, expected: object) -> None:
    with pytest.raises(ValueError, match="append"):
        await store.append(tenant, S1, '{"d":1}', [], {}, expected)  # type: ignore[arg-type]
    assert await store.load_table(tenant, S1) is None


async def test_records_must_be_single_lines(store: RedisStore, tenant: str) -> None:
    with pytest.raises(InvalidRecordError):
        await store.save(tenant, S1, '{"s":\n1}', [], {}, None)
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    with pytest.raises(InvalidRecordError):
        await store.append(tenant, S1, '{"d":\n1}', [], {}, 1)
    assert issubclass(InvalidRecordError, ValueError) and issubclass(InvalidRecordError, StoreError)
    assert await store.load_table(tenant, S1) == TableRecord(1, '{"s":1}')


async def test_a_journal_out_of_step_with_the_table_is_corrupt(
    store: RedisStore, raw: aioredis.Redis, tenant: str
) -> None:
    keys = Keys.of(tenant, S1)
    await store.save(tenant, S1, '{"s":1}', [], {}, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    await raw.delete(keys.journal)  # e.g. evicted on its own under maxmemory
    with pytest.raises(CorruptData, match="journal|tlog"):
        await store.load_table(tenant, S1)
    await raw.rpush(keys.journal, '{"d":1}', '{"d":2}')  # or a writer that bumped v without the journal
    with pytest.raises(CorruptData):
        await store.load_table(tenant, S1)


async def test_a_table_stored_without_a_journal_base_still_loads(
    store: RedisStore, raw: aioredis.Redis, tenant: str
) -> None:
    await raw.hset(Keys.of(tenant, S1).table, mapping={"v": 4, "data": '{"old":1}'})  # the format before the journal
    assert await store.load_table(tenant, S1) == TableRecord(4, '{"old":1}')
    assert await store.append(tenant, S1, '{"d":1}', [], {}, 4) == 5
    assert await store.load_table(tenant, S1) == TableRecord(5, '{"old":1}\n{"d":1}')


async def racing_appends(store: RedisStore, tenant: str, writers: int = 8) -> list[str]:
    """`writers` appends at once on a stored table at v1: each one's outcome, sorted."""
    await store.save(tenant, S1, '{"s":0}', [], {}, None)
    outcomes: list[str] = []

    async def writer(n: int) -> None:
        try:
            await store.append(tenant, S1, f'{{"writer":{n}}}', [], {}, 1)
            outcomes.append("ok")
        except VersionConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for n in range(writers):
            tg.start_soon(writer, n)
    return sorted(outcomes)


async def test_concurrent_appends_one_wins(store: RedisStore, tenant: str) -> None:
    assert await racing_appends(store, tenant) == ["conflict"] * 7 + ["ok"]
    record = await store.load_table(tenant, S1)
    assert record is not None and record.version == 2 and record.data.count("\n") == 1


# -- isolation and hash tags ---------------------------------------------------------------


async def test_tenants_are_isolated(store: RedisStore, tenant: str) -> None:
    other = tenant + "-other"
    await store.save(tenant, S1, '{"who":"a"}', [make_page("p1", text="a")], {}, None)
    await store.save(other, S1, '{"who":"b"}', [make_page("p1", text="b")], {}, None)
    assert (await store.load_table(tenant, S1)) == TableRecord(1, '{"who":"a"}')
    assert (await store.load_table(other, S1)) == TableRecord(1, '{"who":"b"}')
    assert (await store.get_pages(other, S1, ["p1"]))["p1"].reprs.full.text == "b"


async def test_colons_cannot_make_two_tenants_share_keys(tenant: str) -> None:
    # a tenant "x:s:y" with session "z" and tenant "x" with session "y:s:z" would collide
    # if tenants could hold ':'; they cannot, so the tag splits one way only.
    with pytest.raises(InvalidKeyError):
        Keys.of(f"{tenant}:s:y", session_scope("z"))
    assert Keys.of(tenant, session_scope("y:s:z")).tag == f"{tenant}:s:y:s:z"


async def test_session_and_project_scopes_are_apart(store: RedisStore, tenant: str) -> None:
    await store.save(tenant, session_scope("same"), '{"k":"session"}', [], {}, None)
    await store.save(tenant, project_scope("same"), '{"k":"project"}', [], {}, None)
    assert await store.load_table(tenant, session_scope("same")) == TableRecord(1, '{"k":"session"}')
    assert await store.load_table(tenant, project_scope("same")) == TableRecord(1, '{"k":"project"}')


async def test_every_key_of_a_session_shares_one_hash_tag(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    pages = [make_page(f"p:{n:04d}~1") for n in range(5)]
    bodies = {body_digest(f"body {n}"): f"body {n}" for n in range(3)}
    await store.save(tenant, S1, "{}", pages, bodies, None)
    await store.append(tenant, S1, '{"d":1}', [], {}, 1)
    keys = [key async for key in raw.scan_iter(match=f"cvm:{{{tenant}:*")]
    assert len(keys) == 2 + len(pages) + len(bodies)
    assert {_hash_tag(key) for key in keys} == {f"{tenant}:s:sess-1"}


def _hash_tag(key: str) -> str:
    """The part Redis Cluster hashes: between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


# -- failures ------------------------------------------------------------------------------


async def test_dead_server_raises_store_unavailable(tenant: str) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.load_table(tenant, S1)
        assert isinstance(info.value.__cause__, Exception)
        with pytest.raises(StoreUnavailable):
            await store.save(tenant, S1, "{}", [make_page()], {}, None)
        with pytest.raises(StoreUnavailable):
            await store.get_body(tenant, S1, DIGEST)
        assert await store.ping() is False
    finally:
        await store.aclose()


async def test_ping(store: RedisStore) -> None:
    assert await store.ping() is True


async def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        RedisStore.from_url("http://127.0.0.1:1/0")


async def test_other_redis_errors_become_store_error(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    await raw.set(Keys.of(tenant, S1).table, "a string, not a hash")
    with pytest.raises(StoreError) as info:
        await store.load_table(tenant, S1)
    assert not isinstance(info.value, StoreUnavailable)


async def test_corrupt_stored_values_raise_corrupt_data(store: RedisStore, raw: aioredis.Redis, tenant: str) -> None:
    keys = Keys.of(tenant, S1)
    await raw.set(keys.page("p1"), "{not json")
    with pytest.raises(CorruptData):
        await store.get_pages(tenant, S1, ["p1"])
    await raw.hset(keys.table, mapping={"v": "seven", "data": "{}"})
    with pytest.raises(CorruptData):
        await store.load_table(tenant, S1)


async def test_unix_socket_url_is_accepted() -> None:
    store = RedisStore.from_url("unix:///nonexistent/redis.sock", socket_connect_timeout=0.5)
    try:
        assert await store.ping() is False
    finally:
        await store.aclose()


async def test_redis_store_satisfies_the_protocol(store: RedisStore) -> None:
    as_protocol: Store = store
    assert await as_protocol.ping()


async def test_store_is_an_async_context_manager(redis_url: str, tenant: str) -> None:
    async with RedisStore.from_url(redis_url) as store:
        await store.save(tenant, S1, "{}", [], {}, None)
        assert await store.load_table(tenant, S1) == TableRecord(1, "{}")


async def test_put_pages_stores_project_pages_once(store: RedisStore, tenant: str) -> None:
    scope = project_scope("repo")
    first, changed = make_page("p:0a0b0c0d0e0f"), make_page("p:0a0b0c0d0e0f", text="other text")
    await store.put_pages(tenant, scope, [first])
    await store.put_pages(tenant, scope, [changed])  # immutable: the first write stays
    await store.put_pages(tenant, scope, [])
    assert await store.get_pages(tenant, scope, [first.id]) == {first.id: first}


async def test_swap_recent_returns_the_session_before(store: RedisStore, tenant: str) -> None:
    scope = project_scope("repo-recent")
    assert await store.swap_recent(tenant, scope, "s1") is None
    assert await store.swap_recent(tenant, scope, "s2") == "s1"
    assert await store.swap_recent(tenant, scope, "s2") == "s2"
    with pytest.raises(InvalidKeyError):
        await store.swap_recent(tenant, scope, "bad id{x}")


# -- Redis Cluster -------------------------------------------------------------------------


@pytest.fixture
async def cluster_store(redis_cluster_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_cluster_url)
    yield store
    await store.aclose()


async def test_a_cluster_url_makes_a_cluster_client(redis_cluster_url: str) -> None:
    async with RedisStore.from_url(redis_cluster_url) as store:
        assert isinstance(store.client, RedisCluster)
        assert await store.ping() is True
    listed = redis_cluster_url.removeprefix("redis+cluster://").split(",")
    client = cluster_client(f"redis+cluster://user:secret@{','.join(listed)}/0?socket_timeout=3", {})
    try:
        assert sorted(f"{n.host}:{n.port}" for n in client.startup_nodes) == sorted(listed)
        assert client.connection_kwargs["username"] == "user" and client.connection_kwargs["password"] == "secret"
    finally:
        await client.aclose()


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1", "redis+cluster://a:1,b", "redis+cluster://a:1/3"])
async def test_a_bad_cluster_url_is_a_store_error(url: str) -> None:
    with pytest.raises(StoreError):
        RedisStore.from_url(url)


async def test_store_operations_on_a_cluster(cluster_store: RedisStore, tenant: str) -> None:
    project = project_scope("repo")
    for n in range(6):  # sessions whose tags hash to different masters
        scope = session_scope(f"sess-{n}")
        assert await cluster_store.save(tenant, scope, '{"s":1}', [make_page("p1")], {DIGEST: BODY}, 0) == 1
        assert await cluster_store.append(tenant, scope, f'{{"d":{n}}}', [make_page("p2")], {}, 1) == 2
        assert await cluster_store.load_table(tenant, scope) == TableRecord(2, f'{{"s":1}}\n{{"d":{n}}}')
        assert await cluster_store.table_version(tenant, scope) == 2
        assert list(await cluster_store.get_pages(tenant, scope, ["p2", "p1", "nope"])) == ["p2", "p1"]
        assert await cluster_store.get_body(tenant, scope, DIGEST) == BODY
        with pytest.raises(VersionConflict):
            await cluster_store.append(tenant, scope, '{"d":"stale"}', [], {}, 1)
    await cluster_store.put_pages(tenant, project, [make_page("p:0a0b0c0d0e0f")])
    assert list(await cluster_store.get_pages(tenant, project, ["p:0a0b0c0d0e0f"])) == ["p:0a0b0c0d0e0f"]
    assert await cluster_store.swap_recent(tenant, project, "sess-0") is None
    assert await cluster_store.swap_recent(tenant, project, "sess-1") == "sess-0"


async def test_concurrent_optimistic_saves_on_a_cluster_one_wins(cluster_store: RedisStore, tenant: str) -> None:
    assert await racing_appends(cluster_store, tenant) == ["conflict"] * 7 + ["ok"]


async def test_an_unreachable_cluster_raises_store_unavailable(tenant: str) -> None:
    store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.load_table(tenant, S1)
        with pytest.raises(StoreUnavailable):
            await store.save(tenant, S1, "{}", [], {}, None)
        assert await store.ping() is False
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (rexc.ClusterDownError("CLUSTERDOWN The cluster is down"), StoreUnavailable),
        (rexc.MasterDownError("MASTERDOWN"), StoreUnavailable),
        (rexc.TryAgainError("TRYAGAIN"), StoreUnavailable),
        (rexc.SlotNotCoveredError('Slot "7" is not covered by the cluster.'), StoreUnavailable),
        (rexc.RedisClusterException("Redis Cluster cannot be connected."), StoreUnavailable),
        (rexc.CrossSlotTransactionError("keys in different slots"), StoreError),
    ],
)
async def test_cluster_errors_are_mapped(raised: Exception, expected: type[StoreError]) -> None:
    with pytest.raises(expected) as info, mapped_errors():
        raise raised
    assert type(info.value) is expected and info.value.__cause__ is raised


async def test_more_requests_than_pooled_connections_wait_for_one_instead_of_failing(
    redis_url: str, tenant: str
) -> None:
    store = RedisStore.from_url(redis_url, max_connections=2)
    versions: list[int] = []

    async def save(n: int) -> None:
        scope = session_scope(f"pool-{n}")
        versions.append(await store.save(tenant, scope, f'{{"n":{n}}}', [], {}, None))

    try:
        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(save, n)
    finally:
        await store.aclose()
    assert versions == [1] * 40


# -- a server that answers but refuses: READONLY, OOM, BUSY, ... (issue 11, item 8) ----------


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (rexc.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (rexc.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING"),
        (rexc.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL."), "BUSY"),
        (rexc.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
        (rexc.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it cannot"), "MISCONF"),
        (rexc.MasterDownError("Link with MASTER is down"), "MASTERDOWN"),
        (rexc.TryAgainError("Multiple keys request during rehashing of slot"), "TRYAGAIN"),
        (rexc.ClusterDownError("The cluster is down"), "CLUSTERDOWN"),
        (  # a pipeline's failed command, as redis-py words it
            rexc.ResponseError(
                "Command # 1 (HMGET cvm:{t:s:a}:table v data base) of pipeline caused error: BUSY Redis is busy"
            ),
            "BUSY",
        ),
        (  # a `redis.call` refused inside a script (Redis 6 wording)
            rexc.ResponseError(
                "Error running script (call to f_bb33): @user_script:19: @user_script: 19: -OOM command not allowed"
            ),
            "OOM",
        ),
        (
            rexc.ResponseError(
                "Error running script (call to f_bb33): @user_script:19: @user_script: 19: -READONLY You can't write"
            ),
            "READONLY",
        ),
    ],
)
async def test_a_server_refusing_for_now_is_store_unavailable_with_its_code(raised: Exception, reason: str) -> None:
    with pytest.raises(StoreUnavailable) as info, mapped_errors():
        raise raised
    assert info.value.reason == reason and info.value.__cause__ is raised


@pytest.mark.parametrize(
    "raised",
    [
        rexc.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rexc.ResponseError("BUSYKEY Target key name already exists."),
        rexc.ResponseError("ERR unknown command 'FOO'"),
        rexc.ResponseError("Error running script (call to f_1): @user_script:3: user_script:3: Script attempted x"),
    ],
)
async def test_errors_that_are_bugs_stay_store_errors(raised: Exception) -> None:
    with pytest.raises(StoreError) as info, mapped_errors():
        raise raised
    assert not isinstance(info.value, StoreUnavailable)


async def test_connection_failures_name_their_reason_without_the_servers_text(tenant: str) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.table_version(tenant, S1)
    finally:
        await store.aclose()
    assert info.value.reason == "connection" and "127.0.0.1" in str(info.value)


@pytest.fixture
async def own(killable: EmbeddedRedis) -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    """A store on a redis-server of the test's own (its configuration is changed), and a raw client."""
    store = RedisStore.from_url(killable.url)
    raw = aioredis.Redis.from_url(killable.url, decode_responses=True)
    yield store, raw
    await raw.aclose()
    await store.aclose()


async def _refused(store: RedisStore, tenant: str) -> set[str]:
    """The reasons of every write of the store that fails, each as StoreUnavailable."""
    reasons = set()
    writes = [
        store.save(tenant, S1, '{"v": 2}', [make_page("p2")], {DIGEST: BODY}, 1),
        store.put_pages(tenant, project_scope("p"), [make_page("p3")]),
        store.swap_recent(tenant, project_scope("p"), "sess-1"),
    ]
    for write in writes:
        with pytest.raises(StoreUnavailable) as info:
            await write
        reasons.add(info.value.reason)
    return reasons


async def test_a_read_only_replica_refuses_writes_as_unavailable_and_ping_says_so(own, tenant: str) -> None:
    store, raw = own
    await store.save(tenant, S1, '{"v": 1}', [make_page("p1")], {}, None)
    await raw.replicaof("127.0.0.1", free_port())  # a master that is not there: read-only, stale reads served
    assert await store.ping() is False  # PING alone answers PONG here
    assert await _refused(store, tenant) == {"READONLY"}
    assert (await store.load_table(tenant, S1)).version == 1
    await raw.replicaof("NO", "ONE")
    assert await store.ping() is True
    assert await store.save(tenant, S1, '{"v": 2}', [make_page("p2")], {}, 1) == 2


async def test_maxmemory_with_noeviction_refuses_writes_as_unavailable_and_ping_says_so(own, tenant: str) -> None:
    store, raw = own
    await store.save(tenant, S1, '{"v": 1}', [make_page("p1")], {}, None)
    await raw.config_set("maxmemory-policy", "noeviction")
    await raw.config_set("maxmemory", "1")
    try:
        assert await store.ping() is False
        assert await _refused(store, tenant) == {"OOM"}
    finally:
        await raw.config_set("maxmemory", "0")
    assert await store.ping() is True
    assert await store.save(tenant, S1, '{"v": 2}', [make_page("p2")], {}, 1) == 2


async def test_too_few_replicas_and_a_lost_master_link_are_unavailable(own, tenant: str) -> None:
    store, raw = own
    await store.save(tenant, S1, '{"v": 1}', [make_page("p1")], {}, None)
    await raw.config_set("min-replicas-to-write", "1")
    assert await store.ping() is False
    assert await _refused(store, tenant) == {"NOREPLICAS"}
    await raw.config_set("min-replicas-to-write", "0")
    await raw.config_set("replica-serve-stale-data", "no")
    await raw.replicaof("127.0.0.1", free_port())
    with pytest.raises(StoreUnavailable) as info:
        await store.load_table(tenant, S1)
    assert info.value.reason == "MASTERDOWN"
    assert await store.ping() is False
    await raw.replicaof("NO", "ONE")
    assert await store.ping() is True


async def test_a_busy_script_makes_every_operation_unavailable_until_killed(own, killable: EmbeddedRedis) -> None:
    store, raw = own
    await raw.config_set("lua-time-limit", "50")  # busy-reply-threshold on Redis 7+
    looping = redis_sync.Redis.from_url(killable.url)
    busy = threading.Thread(target=_loop_forever, args=(looping,))
    busy.start()
    try:
        with anyio.fail_after(10):
            while await store.ping():  # until the script has run past the threshold
                await anyio.sleep(0.02)
        with pytest.raises(StoreUnavailable) as info:
            await store.load_table("busy", S1)
        assert info.value.reason == "BUSY"
    finally:
        await raw.script_kill()
        busy.join()
        looping.close()
    assert await store.ping() is True


def _loop_forever(client: redis_sync.Redis) -> None:
    with contextlib.suppress(rexc.ResponseError):  # "Script killed by user with SCRIPT KILL"
        client.eval("while true do end", 0)
