from __future__ import annotations

from typing import Any

import pytest

from gateway.api.errors import InvalidRequest
from gateway.wire.chat_fields import ARRAY, BODY, MESSAGE, NUMBER, OBJECT, STRING, Spec, check, of, typed

PERSON = of(OBJECT, name=of(STRING, required=True), age=of(NUMBER))
SHAPE = typed(OBJECT, {"circle": of(OBJECT, radius=of(NUMBER, required=True))})
TAGS = of(OBJECT, tags=of(ARRAY, items=of(STRING)))


def refused(value: Any, spec: Spec, *where: str | int) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check(value, spec, *where)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    return caught.value


def test_a_field_of_the_wrong_type_is_named_by_its_path_in_openai_words() -> None:
    error = refused({"name": 5}, PERSON, "people", 3)
    assert error.message == "Invalid type for 'people[3].name': expected a string, but got an integer instead."
    assert error.param == "people.[3].name" and error.code == "invalid_type"


def test_a_required_field_absent_is_missing_and_null_is_the_wrong_type() -> None:
    absent = refused({"age": 3}, PERSON, "people", 0)
    assert absent.message == "Missing required parameter: 'people[0].name'."
    assert absent.param == "people.[0].name" and absent.code == "missing_required_parameter"
    null = refused({"name": None}, PERSON, "people", 0)
    assert null.message == "Invalid type for 'people[0].name': expected a string, but got null instead."


@pytest.mark.parametrize(
    ("value", "got"), [(True, "a boolean"), ("3", "a string"), ([3], "an array"), ({}, "an object")]
)
def test_a_boolean_is_not_a_number_and_each_type_is_named(value: Any, got: str) -> None:
    assert refused({"name": "a", "age": value}, PERSON).message.endswith(f"but got {got} instead.")


def test_optional_fields_may_be_null_or_absent_and_unknown_fields_are_left_alone() -> None:
    check({"name": "a", "age": None, "vendor": {"x": [None]}}, PERSON)
    check({"name": "a", "age": 1.5}, PERSON)
    check({"name": "a", "age": 10**30}, PERSON)


@pytest.mark.parametrize("n", [2, 2.0, 1e29])
def test_an_integer_may_arrive_as_a_whole_float(n: Any) -> None:
    """The JSON parser gives a float for an integer past 64 bits: a whole float is an integer."""
    check({"n": n}, BODY)


@pytest.mark.parametrize("n", [1.5, float("inf"), float("nan"), True])
def test_an_integer_is_never_a_fraction_nor_a_boolean(n: Any) -> None:
    assert refused({"n": n}, BODY).param == "n"


def test_items_of_an_array_are_never_null_and_are_named_by_index() -> None:
    error = refused({"tags": ["a", None]}, TAGS)
    assert error.param == "tags.[1]" and "got null" in error.message
    assert refused({"tags": ["a", 5]}, TAGS).message.startswith("Invalid type for 'tags[1]'")
    check({"tags": []}, TAGS)


def test_fields_by_type_are_checked_only_for_their_type() -> None:
    assert refused({"type": "circle", "radius": "big"}, SHAPE, "shape").param == "shape.radius"
    assert refused({"type": "circle"}, SHAPE, "shape").code == "missing_required_parameter"
    check({"type": "square", "radius": "big"}, SHAPE)  # not a circle: radius is not a field of it
    assert refused({"type": 4}, SHAPE, "shape").param == "shape.type"
    assert refused({}, SHAPE, "shape").param == "shape.type"


def test_the_body_itself_is_named_by_no_param() -> None:
    error = refused([1], of(OBJECT))
    assert error.param is None and error.message.startswith("Invalid type for ''")
    assert refused({"n": "2"}, BODY).param == "n"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": {}}, "messages.[0].role"),
        ({"role": []}, "messages.[0].role"),
        ({"role": [None]}, "messages.[0].role"),
        ({"content": "hi"}, "messages.[0].role"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]},
            "messages.[0].content.[0].image_url",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA"}}]},
            "messages.[0].content.[0].input_audio.format",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]},
            "messages.[0].tool_calls.[0].function.arguments",
        ),
    ],
)
def test_message_fields_are_named_down_to_the_leaf(message: dict[str, Any], param: str) -> None:
    assert refused(message, MESSAGE, "messages", 0).param == param


def test_a_failed_check_leaves_no_trace_for_the_next() -> None:
    """The path is built on the failure's way out: a second failure starts from nothing."""
    assert refused({"name": 1}, PERSON, "a").param == "a.name"
    assert refused({"name": 2}, PERSON, "b").param == "b.name"
