"""The record of answered responses behind `previous_response_id`, on a real Redis: a chain grows
by appending, a branch gets a copy of its prefix, and an id resolves for its own tenant only."""

from __future__ import annotations

import pytest

from gateway.store.store import RedisStore
from gateway.wire.chains import ResponseChains

pytestmark = pytest.mark.anyio


def item(text: str) -> dict:
    return {"role": "user", "content": text}


async def test_a_chain_appends_each_turn_and_resolves_whole(store: RedisStore, tenant: str) -> None:
    chains = ResponseChains(store.client)
    await chains.save(tenant, "r1", None, [item("a"), item("A")])
    first = await chains.chain(tenant, "r1")
    await chains.save(tenant, "r2", first, [item("b"), item("B")])
    second = await chains.chain(tenant, "r2")
    assert first is not None and second is not None and second.list_id == first.list_id  # one list, appended
    assert await chains.load(tenant, "r2") == [item("a"), item("A"), item("b"), item("B")]
    assert await chains.load(tenant, "r1") == [item("a"), item("A")]


async def test_a_branch_copies_its_prefix_and_leaves_the_other_branch_whole(store: RedisStore, tenant: str) -> None:
    chains = ResponseChains(store.client)
    await chains.save(tenant, "root", None, [item("a")])
    root = await chains.chain(tenant, "root")
    await chains.save(tenant, "left", root, [item("left")])
    await chains.save(tenant, "right", root, [item("right")])
    assert await chains.load(tenant, "left") == [item("a"), item("left")]
    assert await chains.load(tenant, "right") == [item("a"), item("right")]


async def test_an_id_resolves_for_its_own_tenant_only(store: RedisStore, tenant: str) -> None:
    chains = ResponseChains(store.client)
    await chains.save(tenant, "mine", None, [item("secret")])
    assert await chains.load(tenant + "x", "mine") is None
    assert await chains.load(tenant, "unknown") is None
