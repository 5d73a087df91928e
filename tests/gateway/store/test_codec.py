from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.codec import FORMAT_VERSION, CodecError, dump_page, load_page
from policies.pages import Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.transcript import ToolCall
from tests.factories import make_page

CALLS = (ToolCall("call_1", "read_file", '{"path": "a.py"}'), ToolCall("call_2", "bash", '{"cmd": "ls"}'))


def full_page() -> Page:
    return make_page(
        id="p:0123456789~2",
        type=PageType.PLAN,
        text="1. read\n2. edit — ünïcødé ✓",
        scope=Scope.PROJECT,
        pin=Pin.HARD,
        floor=Fidelity.STRUCTURED,
        provenance=Provenance(3, "assistant", "call_9", "grep", '{"q": "x"}', "p:parent"),
        tool_calls=CALLS,
        base_utility=0.25,
        recompute_cost=7.0,
        version=4,
        dirty=True,
    )


def test_round_trip_keeps_every_field() -> None:
    page = full_page()
    assert load_page(dump_page(page)) == page


def test_round_trip_keeps_tool_calls_inside_representations() -> None:
    loaded = load_page(dump_page(full_page()))
    assert loaded.reprs.full.tool_calls == CALLS
    assert loaded.reprs.pointer.tool_calls == ()


def test_output_is_versioned_compact_sorted_utf8() -> None:
    text = dump_page(full_page())
    data = json.loads(text)
    assert data["v"] == FORMAT_VERSION
    assert text.startswith('{"base_utility":0.25,')
    assert "ünïcødé ✓" in text
    assert text == json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_enums_are_written_as_strings_and_fidelity_by_label() -> None:
    data = json.loads(dump_page(full_page()))
    fields = (data["type"], data["scope"], data["pin"], data["floor"])
    assert fields == ("plan", "project", "hard", "structured")


def test_same_page_gives_same_bytes() -> None:
    assert dump_page(full_page()) == dump_page(full_page())


def test_unknown_fields_are_ignored() -> None:
    data = json.loads(dump_page(full_page()))
    data["later_field"] = [1, 2]
    assert load_page(json.dumps(data)) == full_page()


def test_bytes_input_is_accepted() -> None:
    assert load_page(dump_page(full_page()).encode("utf-8")) == full_page()


def test_integer_utility_loads_as_float() -> None:
    data = json.loads(dump_page(full_page()))
    data["base_utility"] = 2
    loaded = load_page(json.dumps(data))
    assert loaded.base_utility == 2.0 and isinstance(loaded.base_utility, float)


def _mutated(path: tuple[str, ...], value: object) -> str:
    data = json.loads(dump_page(full_page()))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("v",), 2),
        (("v",), _DELETE),
        (("v",), "1"),
        (("id",), 5),
        (("type",), "memo"),
        (("scope",), "global"),
        (("pin",), "HARD"),
        (("floor",), "FULL"),
        (("floor",), "huge"),
        (("version",), True),
        (("version",), 1.5),
        (("dirty",), 0),
        (("base_utility",), "1"),
        (("base_utility",), True),
        (("provenance",), None),
        (("provenance", "message_index"), "3"),
        (("provenance", "tool_name"), 7),
        (("reprs",), []),
        (("reprs", "compressed"), _DELETE),
        (("reprs", "full", "tokens"), None),
        (("reprs", "full", "tool_calls"), None),
        (("reprs", "full", "tool_calls"), [["call_1", "x", "{}"]]),
        (("reprs", "full", "tool_calls"), [{"id": "c", "name": "x"}]),
    ],
)
def test_bad_data_raises_codec_error(path: tuple[str, ...], value: object) -> None:
    with pytest.raises(CodecError):
        load_page(_mutated(path, value))


@pytest.mark.parametrize("text", ["", "not json", "[]", "null", '"page"', '{"v": 1}'])
def test_malformed_documents_raise_codec_error(text: str) -> None:
    with pytest.raises(CodecError):
        load_page(text)


def test_nan_is_rejected_both_ways() -> None:
    with pytest.raises(CodecError):
        dump_page(make_page(base_utility=math.nan))
    with pytest.raises(CodecError):
        load_page(_mutated(("base_utility",), 0.0).replace('"base_utility": 0.0', '"base_utility": NaN'))


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


# -- property: any page survives the round trip ---------------------------------------------

_text = st.text(max_size=40)
_calls = st.tuples() | st.lists(st.builds(ToolCall, _text, _text, _text), max_size=3).map(tuple)
_repr = st.builds(Representation, _text, st.integers(min_value=0, max_value=10**9), _calls)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_pages = st.builds(
    Page,
    id=_text,
    type=st.sampled_from(PageType),
    scope=st.sampled_from(Scope),
    provenance=st.builds(
        Provenance,
        st.integers(min_value=-1, max_value=10**6),
        _text,
        st.none() | _text,
        st.none() | _text,
        st.none() | _text,
        st.none() | _text,
    ),
    pin=st.sampled_from(Pin),
    floor=st.sampled_from(Fidelity),
    reprs=st.builds(Reprs, _repr, _repr, _repr, _repr),
    base_utility=_floats,
    recompute_cost=_floats,
    version=st.integers(min_value=0, max_value=2**53),
    dirty=st.booleans(),
)


@given(_pages)
def test_any_page_round_trips(page: Page) -> None:
    text = dump_page(page)
    assert load_page(text) == page
    assert dump_page(load_page(text)) == text


def test_lone_surrogates_round_trip() -> None:
    page = make_page(text="half a pair: \ud83d end")
    assert load_page(dump_page(page)) == page
