"""JSON form of a `Page`, as stored in Redis.

`dump_page` writes a versioned object (`{"v": 1, ...}`) as compact JSON with sorted keys and raw
UTF-8, so one page always gives the same bytes. Enums are written as their string values and
`Fidelity` by its label. `load_page` accepts exactly that shape and raises `CodecError` on
anything else (bad JSON, unknown version, a missing field or one of the wrong type); fields it
does not know are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson

from policies.pages import Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.transcript import ToolCall

FORMAT_VERSION = 1
_T = TypeVar("_T")
_LEVELS = ("full", "compressed", "structured", "pointer")


class CodecError(ValueError):
    """Stored page data that cannot be read back as a `Page` (or a page that cannot be written)."""


def dump_page(page: Page) -> str:
    if not (math.isfinite(page.base_utility) and math.isfinite(page.recompute_cost)):
        raise CodecError(f"page {page.id!r} cannot be encoded: utility and cost must be finite numbers")
    try:
        return orjson.dumps(_page_dict(page), option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:  # text orjson will not encode (lone surrogates): the slow, lossless path
        return json.dumps(_page_dict(page), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_page(text: str | bytes) -> Page:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, TypeError) as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    obj = _object(data, "page")
    version = _get(obj, "v", int)
    if version != FORMAT_VERSION:
        raise CodecError(f"unknown page format version {version!r}")
    return _page(obj)


# -- writing -------------------------------------------------------------------------------


def _page_dict(page: Page) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "id": page.id,
        "type": page.type.value,
        "scope": page.scope.value,
        "provenance": _provenance_dict(page.provenance),
        "pin": page.pin.value,
        "floor": page.floor.label,
        "reprs": {level: _repr_dict(getattr(page.reprs, level)) for level in _LEVELS},
        "base_utility": float(page.base_utility),
        "recompute_cost": float(page.recompute_cost),
        "version": page.version,
        "dirty": page.dirty,
    }


def _provenance_dict(prov: Provenance) -> dict[str, Any]:
    return {
        "message_index": prov.message_index,
        "role": prov.role,
        "tool_call_id": prov.tool_call_id,
        "tool_name": prov.tool_name,
        "tool_arguments": prov.tool_arguments,
        "parent_id": prov.parent_id,
    }


def _repr_dict(rep: Representation) -> dict[str, Any]:
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in rep.tool_calls]
    return {"text": rep.text, "tokens": rep.tokens, "tool_calls": calls}


# -- reading -------------------------------------------------------------------------------


def _page(obj: Mapping[str, object]) -> Page:
    return Page(
        id=_get(obj, "id", str),
        type=_enum(PageType, _get(obj, "type", str)),
        scope=_enum(Scope, _get(obj, "scope", str)),
        provenance=_provenance(_object(obj.get("provenance"), "provenance")),
        pin=_enum(Pin, _get(obj, "pin", str)),
        floor=_fidelity(_get(obj, "floor", str)),
        reprs=_reprs(_object(obj.get("reprs"), "reprs")),
        base_utility=_number(obj, "base_utility"),
        recompute_cost=_number(obj, "recompute_cost"),
        version=_get(obj, "version", int),
        dirty=_get(obj, "dirty", bool),
    )


def _provenance(obj: Mapping[str, object]) -> Provenance:
    return Provenance(
        message_index=_get(obj, "message_index", int),
        role=_get(obj, "role", str),
        tool_call_id=_optional_str(obj, "tool_call_id"),
        tool_name=_optional_str(obj, "tool_name"),
        tool_arguments=_optional_str(obj, "tool_arguments"),
        parent_id=_optional_str(obj, "parent_id"),
    )


def _reprs(obj: Mapping[str, object]) -> Reprs:
    levels = {level: _representation(_object(obj.get(level), f"reprs.{level}")) for level in _LEVELS}
    return Reprs(**levels)


def _representation(obj: Mapping[str, object]) -> Representation:
    calls = obj.get("tool_calls")
    if not isinstance(calls, list):
        raise CodecError("field 'tool_calls' must be a list")
    return Representation(
        text=_get(obj, "text", str),
        tokens=_get(obj, "tokens", int),
        tool_calls=tuple(_tool_call(_object(c, "tool_call")) for c in calls),
    )


def _tool_call(obj: Mapping[str, object]) -> ToolCall:
    return ToolCall(_get(obj, "id", str), _get(obj, "name", str), _get(obj, "arguments", str))


def _reject_constant(name: str) -> float:
    raise CodecError(f"{name} is not allowed")


def _object(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise CodecError(f"{what} must be a JSON object")
    return value


def _get(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    """`obj[key]` if it is a `kind` (a bool is not accepted as an int)."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CodecError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_str(obj: Mapping[str, object], key: str) -> str | None:
    return None if obj.get(key) is None else _get(obj, key, str)


def _number(obj: Mapping[str, object], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"field {key!r} must be a number, got {type(value).__name__}")
    return float(value)


_E = TypeVar("_E", PageType, Scope, Pin)


def _enum(kind: type[_E], value: str) -> _E:
    try:
        return kind(value)
    except ValueError as exc:
        raise CodecError(f"{value!r} is not a {kind.__name__}") from exc


def _fidelity(label: str) -> Fidelity:
    if label != label.lower():
        raise CodecError(f"{label!r} is not a Fidelity label")
    try:
        return Fidelity.parse(label)
    except KeyError as exc:
        raise CodecError(f"{label!r} is not a Fidelity label") from exc
