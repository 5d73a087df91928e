"""Fast JSON with the standard library's fallbacks, and deep nesting as a ValueError."""

from __future__ import annotations

import pytest

from gateway import jsonio
from gateway.jsonio import JSONAnswer, NestingTooDeep


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_what_orjson_refuses_takes_the_standard_librarys_path() -> None:
    assert jsonio.loads(b'["\\ud83d", 18446744073709551617]') == ["\ud83d", 18446744073709551617]
    assert jsonio.dumps(["\ud83d"]) == b'["\\ud83d"]'


@pytest.mark.parametrize("depth", [1100, 100_000])
def test_text_nested_past_every_parser_is_a_value_error(depth: int) -> None:
    with pytest.raises(NestingTooDeep) as caught:
        jsonio.loads(b"[" * depth + b"]" * depth)
    assert isinstance(caught.value, ValueError) and "nested too deeply" in str(caught.value)


def test_a_value_too_deep_to_encode_is_a_value_error() -> None:
    deep = jsonio.loads(b"[" * 1000 + b"]" * 1000)  # orjson reads it; neither encoder can write it
    with pytest.raises(NestingTooDeep):
        jsonio.dumps(deep)
    assert jsonio.loads(jsonio.dumps(nested(200))) == nested(200)


def test_a_json_answer_escapes_lone_surrogates_and_keeps_the_rest_as_utf8() -> None:
    answer = JSONAnswer({"text": "\ud800 é"}, status_code=201)
    assert answer.status_code == 201 and answer.media_type == "application/json"
    assert answer.body == b'{"text":"\\ud800 \\u00e9"}'
    assert JSONAnswer({"text": "é"}).body == '{"text":"é"}'.encode()
