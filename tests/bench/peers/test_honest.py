"""bench.peers.honest: a fake model that recalls only from what its prompt shows."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import bench.peers.honest as honest
from bench.peers.honest import HANDLE, RecallTool, offered_tool, recall_arguments, sightings
from bench.peers.model import HONEST, PERFECT, Expected, TraceModel
from gateway.wire.chat import tool_schema

Json = dict[str, Any]
RECALL = "clawvm_recall"
OFFERED = RecallTool.of(tool_schema(RECALL))  # the gateway's tool as it offers it: a query may search alone
IDS_ONLY = RecallTool(RECALL, max_ids=8, has_query=True, query_alone=False, alternatives=True)  # page_ids required
SEARCH = RecallTool(RECALL, max_ids=8, has_query=True, query_alone=True, alternatives=True)
A, B, C = "p:abc111111111", "p:abc222222222", "p:abc333333333"
OLDER = "p:abc000000001..p:abc000000009"


def stub(*lines: str) -> Json:
    head = "[clawvm: 5 earlier messages paged out to save context; call clawvm_recall(page_ids=[...]) with an id below]"
    return {"role": "user", "content": "\n".join([head, *lines])}


PROMPT = [
    {"role": "system", "content": "You are a support agent."},
    stub(
        f"{OLDER} (9 older pages: pass this range as a page id, with a query to search them)",
        f'{A} get_order_details({{"order_id": "#W4836353"}})',
        f'{B} get_user_details({{"user_id": "amelia_silva_7726"}})',
    ),
    {"role": "tool", "tool_call_id": "c9", "content": f"order #W1 …\n[… 900 tokens elided; clawvm page {C} …]"},
    {"role": "user", "content": "Which card did I pay #W4836353 with?"},
]


def ids_only_schema() -> Json:
    """The gateway's tool as it was before a query could search alone: page_ids required."""
    schema = tool_schema(RECALL)
    schema["function"]["parameters"]["required"] = ["page_ids"]
    return schema


def arguments(calls: list[Json]) -> list[Json]:
    return [json.loads(c["function"]["arguments"]) for c in calls]


def test_the_gateways_tool_is_read_from_its_schema() -> None:
    assert (OFFERED.name, OFFERED.max_ids, OFFERED.has_query, OFFERED.query_alone, OFFERED.alternatives) == (
        RECALL,
        8,
        True,
        True,  # page_ids is not required: a query searches on its own
        True,  # the description says alternatives are joined by |
    )
    assert RecallTool.of(ids_only_schema()) == IDS_ONLY
    body = {"tools": [{"type": "function", "function": {"name": "other"}}, tool_schema(RECALL)]}
    assert offered_tool(body, RECALL) == OFFERED
    assert offered_tool({"tools": []}, RECALL) is None


def test_an_id_whose_stub_line_names_the_missing_value_is_recalled_with_it_as_the_query() -> None:
    assert recall_arguments(["#W4836353"], PROMPT, IDS_ONLY) == [{"page_ids": [A], "query": "#W4836353"}]


def test_a_path_is_placed_by_its_file_name() -> None:
    prompt = [stub(f'{A} read_file({{"path": "north.txt"}})', f"{B} bash(ls)")]
    assert recall_arguments(["/depot/north.txt"], prompt, IDS_ONLY) == [{"page_ids": [A], "query": "/depot/north.txt"}]


def test_a_value_it_cannot_place_is_searched_for_with_the_query_when_the_tool_takes_one_alone() -> None:
    assert recall_arguments(["credit_card_4190576", "#W4836353"], PROMPT, SEARCH) == [
        {"page_ids": [A], "query": "#W4836353"},
        {"query": "credit_card_4190576"},
    ]


def test_without_a_search_it_queries_the_ids_it_sees_newest_first_then_the_older_range() -> None:
    calls = recall_arguments(["credit_card_4190576", "gift_card_1"], PROMPT, IDS_ONLY)
    query = "credit_card_4190576|gift_card_1"
    assert calls == [{"page_ids": [C, B, A], "query": query}, {"page_ids": [OLDER], "query": query}]


def test_a_tool_without_alternatives_gets_one_value_per_query() -> None:
    plain = RecallTool(RECALL, max_ids=2, has_query=True, query_alone=False, alternatives=False)
    assert recall_arguments(["v1", "v2"], PROMPT, plain) == [
        {"page_ids": [C, B], "query": "v1"},
        {"page_ids": [OLDER], "query": "v1"},
        {"page_ids": [A], "query": "v1"},
    ]


def test_with_the_gateways_tool_a_value_it_cannot_place_is_searched_for_alone() -> None:
    assert recall_arguments(["credit_card_4190576"], PROMPT, OFFERED) == [{"query": "credit_card_4190576"}]
    assert recall_arguments(["#W4836353"], [{"role": "user", "content": "hello"}], OFFERED) == [{"query": "#W4836353"}]


def test_nothing_in_view_means_no_call() -> None:
    assert recall_arguments(["#W4836353"], [{"role": "user", "content": "hello"}], IDS_ONLY) == []
    assert recall_arguments([], PROMPT, IDS_ONLY) == []


def test_at_most_max_calls_in_one_round() -> None:
    many = [stub(*(f"p:abc{n:09d} bash(ls)" for n in range(1, 60)))]
    assert len(recall_arguments(["missing-1"], many, IDS_ONLY)) == honest.MAX_CALLS


def test_ids_are_read_from_pointers_and_tool_call_arguments_too() -> None:
    message = {"role": "assistant", "content": f"[{A} tool · 300 tokens]", "tool_calls": []}
    call = {"id": "c", "type": "function", "function": {"name": "x", "arguments": json.dumps({"page": B})}}
    found = [s.handle for s in sightings([message, {"role": "assistant", "content": None, "tool_calls": [call]}])]
    assert found == [A, B]


_hex = st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789#_/.-:", min_size=1, max_size=14)
_piece = st.one_of(
    _word,
    _hex.map(lambda h: f"p:{h}"),
    st.tuples(_hex, _hex).map(lambda p: f"p:{p[0]}..p:{p[1]}"),
    st.sampled_from(["\n", " ", "[clawvm: 3 earlier messages paged out]", "(", ")", "p:", ".."]),
)
_text = st.lists(_piece, max_size=30).map(" ".join)
_message = st.builds(lambda role, text: {"role": role, "content": text}, st.sampled_from(["user", "tool"]), _text)


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.lists(_message, max_size=6),
    wanted=st.lists(_word, min_size=1, max_size=5),
    tool=st.sampled_from([OFFERED, IDS_ONLY, SEARCH]),
)
def test_every_id_it_recalls_is_shown_verbatim_in_the_request_it_got(
    prompt: list[Json], wanted: list[str], tool: RecallTool
) -> None:
    body = {"messages": prompt, "tools": [tool_schema(RECALL)]}
    shown = json.dumps(body)
    for args in recall_arguments(wanted, prompt, tool):
        assert len(args.get("page_ids", [])) <= tool.max_ids
        for handle in args.get("page_ids", []):
            assert HANDLE.fullmatch(handle), handle
            assert handle in shown


def test_the_honest_model_imports_no_gateway_or_policies_code() -> None:
    tree = ast.parse(Path(honest.__file__).read_text(encoding="utf-8"))
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.split(".")[0] in ("gateway", "policies")]


def test_the_trace_model_is_honest_by_default_and_perfect_only_when_asked() -> None:
    hidden = "p:abc999999999"  # the page that holds the value: never shown in the prompt below
    expected = Expected({"content": "It was credit_card_4190576."}, {"credit_card_4190576": hidden})
    body = {"messages": PROMPT, "tools": [tool_schema(RECALL)]}
    model = TraceModel()
    assert model.knowledge == HONEST
    model.expect(expected)
    assert arguments(model(body)["tool_calls"]) == [{"query": "credit_card_4190576"}]  # a search, no id
    model.expect(expected)
    older = {"messages": PROMPT, "tools": [ids_only_schema()]}
    recalled = [i for a in arguments(model(older)["tool_calls"]) for i in a["page_ids"]]
    assert hidden not in recalled and set(recalled) == {A, B, C, OLDER}
    perfect = TraceModel(PERFECT)
    perfect.expect(expected)
    assert arguments(perfect(body)["tool_calls"]) == [{"page_ids": [hidden], "query": "credit_card_4190576"}]


@settings(max_examples=200, deadline=None)
@given(prompt=st.lists(_message, max_size=6), wanted=st.lists(_word, min_size=1, max_size=5))
def test_the_trace_model_only_ever_recalls_ids_of_the_request_it_got(prompt: list[Json], wanted: list[str]) -> None:
    body = {"messages": prompt, "tools": [tool_schema(RECALL)]}
    shown = json.dumps(body)
    model = TraceModel()
    model.expect(Expected({"content": "done"}, {w: "p:fedcba987654" for w in wanted}))  # never shown
    for args in arguments(model(body).get("tool_calls") or []):
        assert all(handle in shown for handle in args.get("page_ids", []))
