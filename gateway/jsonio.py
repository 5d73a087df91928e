"""Fast JSON for the hot path: orjson, with the standard library where orjson refuses.

orjson rejects a few things the standard library and OpenAI's API accept (lone surrogate
escapes such as "\\ud83d", NaN, numbers beyond a double); those inputs take the slower path
instead of failing, and output that orjson cannot encode is written with ASCII escapes.

Nesting deeper than either library can follow (orjson stops at 1,024 levels, the standard library
at Python's recursion limit) raises `NestingTooDeep`, a `ValueError`, never a `RecursionError`.
`JSONAnswer` is the JSON response of every route, written by `dumps`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

COMPACT = (",", ":")


class NestingTooDeep(ValueError):
    """A JSON text or value nested more deeply than can be decoded or encoded."""

    def __init__(self) -> None:
        super().__init__("JSON nested too deeply (arrays and objects within one another)")


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError as exc:
            raise NestingTooDeep() from exc


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        try:
            return json.dumps(value, separators=COMPACT, sort_keys=sort_keys, ensure_ascii=True).encode("ascii")
        except RecursionError as exc:
            raise NestingTooDeep() from exc


def dumps_text(value: Any, *, sort_keys: bool = False) -> str:
    return dumps(value, sort_keys=sort_keys).decode("utf-8")


class JSONAnswer(JSONResponse):
    """A JSON response written by `dumps`: fast, and text holding lone surrogates (which JSON
    carries as escapes, and a stored transcript may hold) is escaped instead of failing as UTF-8."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
