from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from gateway.store.session_state import SessionState
from gateway.store.store import Keys, RedisStore, project_scope, session_scope
from gateway.store.tables import dump_table
from gateway.turns.sessions import SAFE_ID, SessionIds, client_id, per_user, resolve, safe_id
from gateway.wire.base import NAMELESS, metadata_names
from gateway.wire.chat_json import parse_messages
from policies.budget import TokenBudget
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from policies.turn import plan_turn

SYSTEM = {"role": "system", "content": "You are a support agent."}
_ids = itertools.count()


def transcript(*texts: str, system: dict[str, Any] | None = SYSTEM) -> list[Message]:
    """A system prompt, then alternating user/assistant turns with the given texts."""
    raw = [system] if system is not None else []
    raw += [{"role": ("user", "assistant")[n % 2], "content": text} for n, text in enumerate(texts)]
    return parse_messages(raw)


def ids(
    headers: Mapping[str, str] | None = None,
    body: dict[str, Any] | None = None,
    messages: list[Message] | None = None,
    tenant: str = "acme",
) -> SessionIds:
    return resolve(headers or {}, metadata_names(body or {}, "user"), messages or transcript("hello"), tenant)


# -- the session ----------------------------------------------------------------------------


def test_precedence_header_then_metadata_then_fingerprint() -> None:
    headers = {"x-clawvm-session": "from-header"}
    body: dict[str, Any] = {"metadata": {"session_id": "from-metadata"}}
    assert (ids(headers, body).session, ids(headers, body).source) == ("from-header", "header")
    assert (ids({}, body).session, ids({}, body).source) == ("from-metadata", "body")
    fingerprinted = ids({}, {})
    assert fingerprinted.source == "fingerprint" and fingerprinted.session.startswith("fp-")


def test_user_names_a_person_never_a_session() -> None:
    """Two conversations of one user are two sessions; `user` is not a session id."""
    first = ids({}, {"user": "alice"}, transcript("Where is my order?"))
    second = ids({}, {"user": "alice"}, transcript("Cancel my order."))
    assert first.source == second.source == "fingerprint"
    assert first.session != second.session and "alice" not in first.session


def test_header_names_are_case_insensitive_on_real_requests() -> None:
    headers = Headers(headers={"X-ClawVM-Session": "s-1", "X-CLAWVM-PROJECT": "repo-1"})
    resolved = ids(headers)
    assert (resolved.session, resolved.project, resolved.source) == ("s-1", "repo-1", "header")


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_values_fall_through(blank: str) -> None:
    body = {"metadata": {"session_id": blank, "user_id": blank}, "user": "u-1"}
    resolved = ids({"x-clawvm-session": blank, "x-clawvm-user": blank}, body)
    assert resolved.source == "fingerprint"
    assert resolved.user == ids({}, {"user": "u-1"}).user != ""


@pytest.mark.parametrize("value", [5, None, ["s"], {"id": "s"}, True])
def test_non_string_ids_are_ignored(value: Any) -> None:
    resolved = ids({}, {"metadata": {"session_id": value, "user_id": value}, "user": value})
    assert resolved.source == "fingerprint" and resolved.user == ""


@pytest.mark.parametrize("metadata", ["session-1", ["session-1"], None, 5])
def test_metadata_that_is_not_an_object_is_ignored(metadata: Any) -> None:
    resolved = ids({}, {"metadata": metadata, "user": "u"})
    assert resolved.source == "fingerprint" and resolved.user == ids({}, {"user": "u"}).user


def test_values_are_stripped() -> None:
    assert ids({"x-clawvm-session": "  s-1 \t"}).session == "s-1"


def test_fingerprint_is_stable_across_the_turns_of_one_conversation() -> None:
    first = ids(messages=transcript("Where is my order?"))
    second = ids(messages=transcript("Where is my order?", "It shipped.", "Thanks. When does it arrive?"))
    third = ids(messages=transcript("Where is my order?", "It shipped.", "Thanks.", "Tomorrow.", "Great!"))
    assert first.session == second.session == third.session


def test_fingerprint_differs_for_different_openings() -> None:
    base = ids(messages=transcript("Where is my order?")).session
    assert ids(messages=transcript("Cancel my order.")).session != base
    other_system = {"role": "system", "content": "You are a coding agent."}
    assert ids(messages=transcript("Where is my order?", system=other_system)).session != base
    assert ids(messages=transcript("Where is my order?", system=None)).session != base


def test_fingerprint_ignores_the_tenant_but_is_a_safe_store_id() -> None:
    session = ids(messages=transcript("hello"), tenant="a").session
    assert session == ids(messages=transcript("hello"), tenant="b").session
    assert SAFE_ID.fullmatch(session)
    assert session_scope(session) == "s:" + session


def test_fingerprint_reads_a_developer_prompt_and_content_parts() -> None:
    developer = {"role": "developer", "content": [{"type": "text", "text": "Rules."}]}
    parts = parse_messages([developer, {"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    plain = parse_messages([{"role": "developer", "content": "Rules."}, {"role": "user", "content": "hi"}])
    assert ids(messages=parts).session == ids(messages=plain).session


# -- the project ----------------------------------------------------------------------------


def test_project_precedence_header_then_metadata_then_fingerprint() -> None:
    body = {"metadata": {"project_id": "repo-meta"}}
    assert ids({"x-clawvm-project": "repo-header"}, body).project == "repo-header"
    assert ids({}, body).project == "repo-meta"
    assert ids({}, {}).project.startswith("fp-")


def test_user_does_not_name_a_project() -> None:
    assert ids({}, {"user": "alice"}).project.startswith("fp-")
    assert "alice" not in ids({}, {"user": "alice"}).project


def test_fingerprinted_project_is_shared_by_sessions_of_one_tenant_and_system_prompt() -> None:
    one = ids({"x-clawvm-session": "a"}, messages=transcript("Fix the build."))
    two = ids({"x-clawvm-session": "b"}, messages=transcript("Write the docs."))
    assert one.project == two.project
    assert ids(messages=transcript("Fix the build."), tenant="other").project != one.project
    other_system = {"role": "system", "content": "You are a coding agent."}
    assert ids(messages=transcript("Fix the build.", system=other_system)).project != one.project


# -- the end user ---------------------------------------------------------------------------


def test_user_precedence_header_then_metadata_then_openai_user() -> None:
    header, meta, field = (ids({}, {"user": name}).user for name in ("from-header", "from-metadata", "from-user"))
    assert len({header, meta, field}) == 3
    body: dict[str, Any] = {"metadata": {"user_id": "from-metadata"}, "user": "from-user"}
    assert ids({"x-clawvm-user": "from-header"}, body).user == header
    assert ids({}, body).user == meta
    assert ids({}, {"user": "from-user"}).user == field
    assert ids({}, {}).user == ""


def test_a_user_is_the_same_person_however_it_is_named() -> None:
    named = [
        ids(Headers(headers={"X-ClawVM-User": " alice "})),
        ids({}, {"metadata": {"user_id": "alice"}}),
        ids({}, {"user": "alice"}),
    ]
    assert len({(n.user, n.session, n.project) for n in named}) == 1


@pytest.mark.parametrize("user", ["alice", "alice@example.com", "{acme:s:victim}", "x" * 5000, "\ud800"])
def test_user_ids_are_digests_never_the_id_itself(user: str) -> None:
    resolved = ids({}, {"user": user})
    assert resolved.user.startswith("u-") and SAFE_ID.fullmatch(resolved.user)
    for value in (resolved.user, resolved.session, resolved.project, per_user(resolved.project, resolved.user)):
        assert user not in value and SAFE_ID.fullmatch(value)


NAMED: dict[str, Any] = {
    "header": lambda user: ({"x-clawvm-user": user}, {}),
    "metadata": lambda user: ({}, {"metadata": {"user_id": user}}),
    "openai_user": lambda user: ({}, {"user": user}),
}


@pytest.mark.parametrize("naming", sorted(NAMED))
def test_identical_openings_of_two_users_are_two_sessions(naming: str) -> None:
    opening, later = transcript("Where is my order?"), transcript("Where is my order?", "It shipped.", "When?")
    alice, bob = (ids(*NAMED[naming](user), messages=opening) for user in ("alice", "bob"))
    assert alice.session != bob.session and alice.source == bob.source == "fingerprint"
    assert ids(*NAMED[naming]("alice"), messages=later).session == alice.session  # still one conversation
    assert ids(messages=opening).session not in (alice.session, bob.session)


def test_without_a_user_the_ids_are_what_they_were() -> None:
    """Stored sessions and projects of clients that name no user keep their ids."""
    resolved = ids(messages=transcript("hello"), tenant="acme")
    assert resolved.session == "fp-" + hashlib.sha256(b"You are a support agent.\x1fhello").hexdigest()[:24]
    assert resolved.project == "fp-" + hashlib.sha256(b"acme\x1fYou are a support agent.").hexdigest()[:24]


def test_the_default_project_is_the_users_when_a_user_is_named() -> None:
    alice = ids({}, {"user": "alice"}, transcript("Fix the build."))
    assert ids({}, {"user": "alice"}, transcript("Write the docs.")).project == alice.project
    assert ids({}, {"user": "bob"}, transcript("Fix the build.")).project != alice.project
    assert ids({}, {}, transcript("Fix the build.")).project != alice.project


def test_an_explicit_project_is_shared_by_the_users_who_name_it() -> None:
    for named in ({"x-clawvm-project": "team"}, {}):
        body = {} if named else {"metadata": {"project_id": "team"}}
        alice = ids(named, {**body, "user": "alice"})
        bob = ids(named, {**body, "user": "bob"})
        assert alice.project == bob.project == "team"
        assert per_user(alice.project, alice.user) != per_user(bob.project, bob.user)  # their own parts
    assert per_user("team", "") == "team"


def test_an_explicit_session_id_is_kept_whoever_names_it() -> None:
    alice = ids({"x-clawvm-session": "s-1"}, {"user": "alice"})
    bob = ids({"x-clawvm-session": "s-1"}, {"user": "bob"})
    assert alice.session == bob.session == "s-1" and alice.user != bob.user


# -- safe ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("plain", ["s1", "sess-1.a_b", "A" * 96, "0", "...", "agent:main:main"])
def test_plain_ids_are_kept(plain: str) -> None:
    assert safe_id(plain) == plain
    assert ids({"x-clawvm-session": plain, "x-clawvm-project": plain}) == SessionIds(plain, plain, "header", "")


@pytest.mark.parametrize(
    "unsafe",
    [
        "{acme:s:victim}",
        "a}b",
        "a b",
        "x" * 97,
        "x" * 5000,
        "café",
        "a\nb",
        "a/b",
        "*",
        "s:\x00",
        "\ud800",
    ],
)
def test_unsafe_ids_are_hashed_into_safe_store_ids(unsafe: str) -> None:
    hashed = safe_id(unsafe)
    assert hashed.startswith("h-") and SAFE_ID.fullmatch(hashed)
    assert hashed == safe_id(unsafe)  # deterministic
    table_key = Keys.of("acme", session_scope(hashed)).table
    assert table_key == "cvm:{acme:s:" + hashed + "}:table"
    resolved = ids({"x-clawvm-session": unsafe, "x-clawvm-project": unsafe})
    if unsafe.strip():
        assert (resolved.session, resolved.project) == (safe_id(unsafe.strip()), safe_id(unsafe.strip()))


@pytest.mark.parametrize("claimed", ["fp-0123456789abcdef01234567", "fp-x"])
def test_a_client_cannot_name_an_id_the_gateway_derives(claimed: str) -> None:
    """Ids the gateway derived from the transcript (`fp-`) decide what carries between sessions;
    a client's name for a session or project never reads as one."""
    resolved = ids({"x-clawvm-session": claimed, "x-clawvm-project": claimed})
    assert resolved.session == resolved.project == client_id(claimed)
    assert resolved.session.startswith("h-") and SAFE_ID.fullmatch(resolved.session)


def test_distinct_unsafe_ids_stay_distinct() -> None:
    values = ["a b", "a  b", "a:b", "a;b", "x" * 97, "x" * 98]
    assert len({safe_id(v) for v in values}) == len(values)


# -- tenants never share a session ----------------------------------------------------------


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    yield store
    await store.aclose()


async def commit_turn(state: SessionState, tenant: str, messages: list[Message], resolved: SessionIds) -> None:
    async with state.locked(tenant, resolved.session):
        table = await state.load(tenant, resolved.session, resolved.project)
        budget = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")
        plan = plan_turn(table, messages, TenantPolicy(name=tenant), CharCounter(), budget)
        await state.commit(table, plan.ingest.new_pages)


@pytest.mark.anyio
async def test_the_same_session_id_under_two_tenants_never_collides(store: RedisStore) -> None:
    run = next(_ids)
    tenants = (f"sess-a{run}", f"sess-b{run}")
    headers = {"x-clawvm-session": "shared-session"}
    conversations = {tenants[0]: transcript("Order #1?"), tenants[1]: transcript("Invoice #9?", "Sent.", "Again?")}
    state = SessionState(store)
    for tenant, messages in conversations.items():
        resolved = resolve(headers, NAMELESS, messages, tenant)
        assert resolved.session == "shared-session"
        await commit_turn(state, tenant, messages, resolved)

    fresh = SessionState(store)  # nothing cached: read back from Redis
    tables = {t: await fresh.load(t, "shared-session", "p") for t in tenants}
    assert [len(tables[t].order) for t in tenants] == [2, 4]
    assert [tables[t].tenant for t in tenants] == list(tenants)
    assert [tables[t].version for t in tenants] == [1, 1]
    assert dump_table(tables[tenants[0]]) != dump_table(tables[tenants[1]])
    first_user = {t: tables[t].pages[tables[t].order[1]].reprs.full.text for t in tenants}
    assert first_user == {tenants[0]: "Order #1?", tenants[1]: "Invoice #9?"}


@pytest.mark.anyio
async def test_a_hashed_id_cannot_reach_another_tenants_keys(store: RedisStore) -> None:
    run = next(_ids)
    victim, attacker = f"victim{run}", f"attacker{run}"
    state = SessionState(store)
    messages = transcript("secret")
    await commit_turn(state, victim, messages, resolve({"x-clawvm-session": "s1"}, NAMELESS, messages, victim))
    forged = "{" + victim + ":s:s1}"
    resolved = resolve({"x-clawvm-session": forged}, NAMELESS, messages, attacker)
    assert resolved.session.startswith("h-")
    table = await SessionState(store).load(attacker, resolved.session, resolved.project)
    assert table.order == [] and table.version == 0


_ANY_ID = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=200),
    st.sampled_from(["a}b{c", "x:s:y", "{t:s:x}", "*", "\ud800", "a" * 97, "p:1..p:2", "s\r\nDEL *"]),
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(session=_ANY_ID, project=_ANY_ID, user=st.one_of(_ANY_ID, st.integers(), st.none()))
def test_whatever_a_client_sends_the_ids_are_plain_store_ids(session: str, project: str, user: object) -> None:
    """No key injection: any session or project id (header, metadata or user) becomes an id of
    the safe grammar, without braces, so it can never open or close another Redis hash tag."""
    headers = Headers(raw=[(b"x-clawvm-session", session.encode("utf-8", "surrogatepass"))]) if session else {}
    body = {"metadata": {"project_id": project}, "user": user}
    resolved = resolve(headers, metadata_names(body, "user"), transcript("hello"), "acme")
    for value in (resolved.session, resolved.project, safe_id(session or "x"), safe_id(project or "x")):
        assert SAFE_ID.fullmatch(value) and "{" not in value and "}" not in value
    keys = (Keys.of("acme", session_scope(resolved.session)), Keys.of("acme", project_scope(resolved.project)))
    assert all(k.table.count("{") == 1 and k.table.count("}") == 1 for k in keys)
