"""Fast JSON for the hot path: orjson, with the standard library where orjson refuses.

orjson rejects a few things the standard library and OpenAI's API accept (lone surrogate
escapes such as "\\ud83d", NaN, numbers beyond a double); those inputs take the slower path
instead of failing, and output that orjson cannot encode is written with ASCII escapes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

COMPACT = (",", ":")


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(value, separators=COMPACT, sort_keys=sort_keys, ensure_ascii=True).encode("ascii")


def dumps_text(value: Any, *, sort_keys: bool = False) -> str:
    return dumps(value, sort_keys=sort_keys).decode("utf-8")
