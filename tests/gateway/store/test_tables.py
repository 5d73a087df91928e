from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.tables import (
    FORMAT,
    TableFormatError,
    dump_delta,
    dump_table,
    load_table,
    outline,
    page_ids,
)
from gateway.wire.chat_json import parse_messages
from policies.budget import TokenBudget
from policies.crossing import Predecessor, live_state, live_state_of
from policies.pages import Fidelity
from policies.pagetable import PageTable, checkpoint, current_plan
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.turn import plan_turn
from tests.policies.strategies import requests, sessions


def session_messages(rounds: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent.\n- Never push to main.\n- Always run the tests first."},
        {"role": "user", "content": "Please fix the build. I prefer small commits.", "name": "alice"},
    ]
    for n in range(rounds):
        function = {"name": "read_file", "arguments": f'{{"path":"m{n}.py"}}'}
        call = {"id": f"c{n}", "type": "function", "function": function}
        messages.append({"role": "assistant", "content": f"Reading m{n}.", "tool_calls": [call]})
        body = "\n".join(f"line {i} of m{n}: value {n * 100 + i}" for i in range(50))
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": body})
    messages.append({"role": "user", "content": "What is in m1?"})
    return messages


def planned_table(rounds: int = 6, usable: int = 1500) -> PageTable:
    """A table after one real turn under budget pressure: facts, calls, names and levels all set."""
    table = PageTable(tenant="acme", session="s-1", project="repo")
    budget = TokenBudget(cap=usable, usable=usable, hard_limit=100_000, source="config")
    plan_turn(table, parse_messages(session_messages(rounds)), TenantPolicy(name="acme"), CharCounter(), budget)
    return table


def test_the_fixture_table_exercises_every_field() -> None:
    table = planned_table()
    assert table.facts and any(table.facts.values()) and table.covering and table.calls
    assert any(level is not Fidelity.FULL for level in table.levels.values())
    assert len(table.pages) > len(table.order)  # extracted fact pages too


def test_dump_is_compact_key_sorted_json() -> None:
    data = dump_table(planned_table())
    parsed = json.loads(data)
    assert parsed["v"] == FORMAT
    assert data == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "version" not in parsed  # the version lives beside the data, in the store


def test_dump_is_deterministic() -> None:
    assert dump_table(planned_table()) == dump_table(planned_table())


def test_round_trip_restores_the_table() -> None:
    table = planned_table()
    data = dump_table(table)
    loaded = load_table(data, dict(table.pages), version=7)
    assert dump_table(loaded) == data
    assert loaded.version == 7
    assert (loaded.tenant, loaded.session, loaded.project) == ("acme", "s-1", "repo")
    assert loaded.order == table.order and loaded.keys == table.keys
    assert loaded.pages == table.pages
    assert loaded.levels == table.levels and all(isinstance(v, Fidelity) for v in loaded.levels.values())
    assert loaded.covering == table.covering and loaded.facts == table.facts
    assert loaded.entries == table.entries and loaded.calls == table.calls
    assert loaded.born == table.born and loaded.turn == table.turn and loaded.plan_key == table.plan_key


def test_the_end_user_of_a_session_round_trips() -> None:
    table = planned_table()
    table.user = "u-0123456789abcdef01234567"
    loaded = load_table(dump_table(table), dict(table.pages), version=1)
    assert loaded.user == table.user
    table.user = ""
    assert "user" not in json.loads(dump_table(table))  # tables without a user are stored as before
    assert load_table(dump_table(table), dict(table.pages), version=1).user == ""


def test_a_loaded_table_plans_the_next_turn_like_the_original() -> None:
    original = planned_table()
    loaded = load_table(dump_table(original), dict(original.pages), version=1)
    budget = TokenBudget(cap=1500, usable=1500, hard_limit=100_000, source="config")
    follow_up = session_messages(6)
    follow_up += [{"role": "assistant", "content": "It holds values."}, {"role": "user", "content": "Thanks."}]
    policy = TenantPolicy(name="acme")
    plans = [plan_turn(t, parse_messages(follow_up), policy, CharCounter(), budget) for t in (original, loaded)]
    assert plans[0].ingest.kind == plans[1].ingest.kind == "append"
    assert plans[0].messages == plans[1].messages
    assert dump_table(original) == dump_table(loaded)


def test_page_ids_are_every_page_of_the_table_sorted() -> None:
    table = planned_table()
    assert page_ids(dump_table(table)) == sorted(table.pages)


def test_an_empty_table_round_trips() -> None:
    table = PageTable(tenant="t", session="s", project="p")
    data = dump_table(table)
    assert page_ids(data) == []
    assert dump_table(load_table(data, {}, 0)) == data


def test_missing_pages_are_a_format_error_naming_one() -> None:
    table = planned_table()
    pages = dict(table.pages)
    gone = sorted(pages)[0]
    del pages[gone]
    with pytest.raises(TableFormatError, match=f"1 pages.*{gone}"):
        load_table(dump_table(table), pages, 1)


@pytest.mark.parametrize("data", ["", "{", "not json", "[1]", "null", '{"v": 2}', '{"v": "1"}', '{"pages": []}'])
def test_unreadable_data_is_a_format_error(data: str) -> None:
    with pytest.raises(TableFormatError):
        load_table(data, {}, 1)
    with pytest.raises(TableFormatError):
        page_ids(data)


def mangled(field: str, value: Any) -> str:
    raw = json.loads(dump_table(planned_table(rounds=2)))
    if value is KeyError:
        del raw[field]
    else:
        raw[field] = value
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("order", KeyError),
        ("turn", KeyError),
        ("turn", "many"),
        ("levels", {"p:x": "blurry"}),
        ("covering", {"a|b": ["nope"]}),
        ("entries", {"p:x": []}),
        ("entries", {"p:x": ["entry", "lots"]}),
        ("calls", {"c": "x"}),
        ("born", {"p:x": None}),
    ],
)
def test_malformed_fields_are_a_format_error(field: str, value: Any) -> None:
    table = planned_table(rounds=2)
    with pytest.raises(TableFormatError, match="malformed"):
        load_table(mangled(field, value), dict(table.pages), 1)


@pytest.mark.parametrize("data", ['{"v": 1}', '{"v": 1, "pages": 5}'])
def test_page_ids_of_a_malformed_table_is_a_format_error(data: str) -> None:
    with pytest.raises(TableFormatError):
        page_ids(data)


@pytest.mark.parametrize("field", ["facts", "levels", "born"])
def test_a_list_where_a_mapping_belongs_is_a_format_error(field: str) -> None:
    table = planned_table(rounds=2)
    with pytest.raises(TableFormatError):
        load_table(mangled(field, []), dict(table.pages), 1)


# -- deltas and journals -------------------------------------------------------------------

BUDGET = TokenBudget(cap=1500, usable=1500, hard_limit=100_000, source="config")


def next_turn(table: PageTable, wire: list[dict[str, Any]], budget: TokenBudget = BUDGET) -> str:
    """Plan one turn on a saved table; returns its delta."""
    checkpoint(table)
    plan_turn(table, parse_messages(wire), TenantPolicy(name="acme"), CharCounter(), budget)
    return dump_delta(table)


def follow_up(rounds: int = 6) -> list[dict[str, Any]]:
    return [
        *session_messages(rounds),
        {"role": "assistant", "content": "It holds values."},
        {"role": "user", "content": "Thanks."},
    ]


def test_a_journal_loads_as_the_writers_table() -> None:
    table = planned_table()
    snapshot = dump_table(table)
    delta = next_turn(table, follow_up())
    loaded = load_table(snapshot + "\n" + delta, dict(table.pages), version=2)
    assert dump_table(loaded) == dump_table(table)
    assert loaded.version == 2 and loaded.levels == table.levels and loaded.entries == table.entries


def test_a_delta_holds_the_change_not_the_table() -> None:
    table = planned_table(rounds=40, usable=100_000)
    snapshot = dump_table(table)
    delta = json.loads(next_turn(table, follow_up(rounds=40), TokenBudget(100_000, 100_000, 100_000, "config")))
    assert delta["at"] == len(session_messages(40)) and len(delta["order"]) == 2
    assert len(json.dumps(delta)) * 10 < len(snapshot)
    assert set(delta["pages"]) == set(delta["born"]) and set(delta["levels"]) <= set(delta["order"])


def test_a_delta_is_deterministic() -> None:
    deltas = []
    for _ in range(2):
        table = planned_table()
        deltas.append(next_turn(table, follow_up()))
    assert deltas[0] == deltas[1]


def test_a_rewrite_and_a_replan_replay_exactly() -> None:
    table = planned_table()
    journal = [dump_table(table)]
    journal.append(next_turn(table, session_messages(2)))  # a shorter transcript: truncation and a replan
    assert json.loads(journal[-1])["at"] < len(session_messages(6))
    journal.append(next_turn(table, session_messages(6), TokenBudget(600, 600, 100_000, "config")))
    dropped = [p for p, level in json.loads(journal[-1])["levels"].items() if level is None]
    journal.append(next_turn(table, follow_up()))
    loaded = load_table("\n".join(journal), dict(table.pages), version=4)
    assert dump_table(loaded) == dump_table(table)
    assert all(p not in loaded.levels for p in dropped)


def test_page_ids_of_a_journal_are_every_page_sorted() -> None:
    table = planned_table(rounds=2)
    snapshot = dump_table(table)
    delta = next_turn(table, follow_up(rounds=2))
    assert page_ids(snapshot + "\n" + delta) == sorted(table.pages)
    assert len(page_ids(snapshot)) < len(table.pages)


def test_an_unchanged_table_has_an_empty_delta() -> None:
    table = planned_table()
    checkpoint(table)
    delta = json.loads(dump_delta(table))
    assert delta["at"] == len(table.order)
    assert not (delta["order"] or delta["pages"] or delta["levels"] or delta["calls"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("at", -1), ("at", 10_000), ("at", True), ("at", "0"), ("order", "p:x"), ("delta", 2), ("levels", [])],
)
def test_a_malformed_delta_is_a_format_error(field: str, value: Any) -> None:
    table = planned_table(rounds=2)
    snapshot = dump_table(table)
    delta = json.loads(next_turn(table, follow_up(rounds=2)))
    delta[field] = value
    with pytest.raises(TableFormatError):
        load_table(snapshot + "\n" + json.dumps(delta), dict(table.pages), 2)


def test_records_out_of_place_are_a_format_error() -> None:
    table = planned_table(rounds=2)
    snapshot = dump_table(table)
    delta = next_turn(table, follow_up(rounds=2))
    for data in (delta, snapshot + "\n" + snapshot, snapshot + "\n", delta + "\n" + snapshot):
        with pytest.raises(TableFormatError):
            load_table(data, dict(table.pages), 2)
        with pytest.raises(TableFormatError):
            page_ids(data)


def test_a_delta_cutting_the_positions_unevenly_is_a_format_error() -> None:
    table = planned_table(rounds=2)
    snapshot = dump_table(table)
    delta = json.loads(next_turn(table, follow_up(rounds=2)))
    delta["keys"] = delta["keys"][:-1]
    with pytest.raises(TableFormatError, match="malformed"):
        load_table(snapshot + "\n" + json.dumps(delta), dict(table.pages), 2)


@given(sessions(max_rounds=6), st.lists(st.integers(0, 3), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_turn_sequence_replays_from_its_journal(session: Any, moves: list[int]) -> None:
    """Appends, resends, rewinds and compactions: the journal always loads as the writer's table."""
    table = PageTable(tenant="acme", session="s-1", project="repo")
    journal = [dump_table(table)]
    turns = requests(session.wire)
    for step, move in enumerate(moves * 2):
        index = min(step, len(turns) - 1)
        wire = turns[index // 2 if move == 0 else index]  # 0: rewind to an earlier, shorter request
        delta = next_turn(table, wire, session.budget)
        journal = [dump_table(table)] if move == 3 else [*journal, delta]  # 3: a snapshot instead
        loaded = load_table("\n".join(journal), dict(table.pages), step + 1)
        assert dump_table(loaded) == dump_table(table)


def test_carried_restored_tally_and_seen_round_trip_in_snapshots_and_deltas() -> None:
    table = planned_table()
    snapshot = dump_table(table)
    checkpoint(table)
    table.carried = [next(iter(f for ids in table.facts.values() for f in ids))]
    table.restored = [table.order[1]]
    table.tally = {"flush_miss": 0, "duplicate_signature": 2}
    table.seen = 1_790_000_000
    delta = dump_delta(table)
    for stored in (dump_table(table), snapshot + "\n" + delta):
        loaded = load_table(stored, dict(table.pages), version=2)
        assert (loaded.carried, loaded.restored, loaded.tally, loaded.seen) == (
            table.carried,
            table.restored,
            table.tally,
            table.seen,
        )


def test_a_table_stored_before_the_boundary_fields_loads_with_empty_ones() -> None:
    table = planned_table()
    old = json.loads(dump_table(table))
    for name in ("carried", "restored", "tally", "seen"):
        del old[name]
    loaded = load_table(json.dumps(old), dict(table.pages), version=1)
    assert (loaded.carried, loaded.restored, loaded.tally, loaded.seen) == ([], [], {}, 0)


def test_a_stored_tables_outline_names_its_predecessor_fields_and_live_state_without_its_pages() -> None:
    table = planned_table()
    table.user, table.seen = "ada", 1_700_000_000
    snapshot = dump_table(table)
    assert outline(snapshot).who == Predecessor("s-1", "ada", 1_700_000_000)
    table.seen = 1_700_000_300
    delta = next_turn(table, follow_up())
    shape = outline(snapshot + "\n" + delta)
    loaded = load_table(snapshot + "\n" + delta, table.pages, 2)
    assert shape.who == Predecessor("s-1", "ada", 1_700_000_300) == Predecessor.of(loaded)
    assert (shape.order, shape.carried) == (loaded.order, loaded.carried)
    assert shape.facts == {page: list(facts) for page, facts in loaded.facts.items()}
    assert shape.plan == loaded.plan == table.plan == current_plan(table.order, table.pages)
    assert live_state_of(shape.order, shape.facts, shape.carried, loaded.pages) == live_state(loaded)
    old = {k: v for k, v in json.loads(snapshot).items() if k != "plan"}  # stored before the plan was named
    assert outline(json.dumps(old)).plan is None
    assert load_table(json.dumps(old), table.pages, 1).plan == table.plan  # derived again on load
    broken_plan = {**json.loads(snapshot), "plan": 7}
    for broken in ({"v": FORMAT}, {**json.loads(snapshot), "facts": ["not", "a", "mapping"]}, broken_plan):
        with pytest.raises(TableFormatError):
            outline(json.dumps(broken))
