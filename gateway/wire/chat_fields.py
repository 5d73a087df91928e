"""The JSON types of a Chat Completions request's fields, checked as OpenAI checks them.

`check(value, spec, *where)` checks a value (found at path `where`) against its `Spec`: `BODY` for the request's
top-level fields (`tools`, `tool_choice`, `stream_options`, `metadata`, `n`, `temperature`, ...
and what they nest), `MESSAGE` for one message (role, content and its parts, name, tool calls,
tool_call_id). A field of the wrong type (null where a value is required included) raises
`InvalidRequest` in OpenAI's words, `param` naming it by its JSON path as OpenAI does
(`messages.[2].tool_calls.[0].function.name`), code `invalid_type`; a required field left out,
code `missing_required_parameter`. Null is accepted for every optional field, and a whole float
for an integer (the JSON parser gives a float for an integer past 64 bits). Fields OpenAI does
not define (vendor extensions) and the inside of a JSON schema (`tools[*].function.parameters`)
are left to the upstream, and so are values of the right type (an unknown role, an empty id:
`gateway.wire.chat_json` checks those the gateway relies on). Of `metadata`, the fields the gateway reads
are checked.

Cost: a dict look-up per field present, a few more per tool, tool call and content part. A path
is built only when a check fails: the failure unwinds as `_Wrong`, each level adding its key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.api.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Kind:
    """The JSON types a field accepts (a boolean is never an integer), as OpenAI words them."""

    types: frozenset[type]
    words: str


STRING = Kind(frozenset({str}), "a string")
INTEGER = Kind(frozenset({int}), "an integer")  # and a whole float (`_whole`): past 2**64 the parser gives floats
NUMBER = Kind(frozenset({int, float}), "a number")
BOOLEAN = Kind(frozenset({bool}), "a boolean")
ARRAY = Kind(frozenset({list}), "an array")
OBJECT = Kind(frozenset({dict}), "an object")
STRING_OR_ARRAY = Kind(frozenset({str, list}), "a string or an array")
STRING_OR_OBJECT = Kind(frozenset({str, dict}), "a string or an object")
CONTENT = Kind(frozenset({str, list}), "a string or an array of content parts")

_GOT = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True, slots=True)
class Spec:
    """One field: its kind; for an object, the specs of its fields (`fields`) and of more fields
    when its `type` field has a given value (`by_type`); for an array, its items' spec."""

    kind: Kind
    required: bool = False
    fields: Mapping[str, Spec] | None = None
    by_type: Mapping[str, Spec] | None = None
    items: Spec | None = None
    types: frozenset[type] = field(init=False)  # the kind's, looked up without a hop
    leaf: bool = field(init=False)  # nothing inside to check
    required_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", self.kind.types)
        object.__setattr__(self, "leaf", self.fields is None and self.by_type is None and self.items is None)
        required = tuple(name for name, spec in (self.fields or {}).items() if spec.required)
        object.__setattr__(self, "required_fields", required)


def of(kind: Kind, *, required: bool = False, items: Spec | None = None, **fields: Spec) -> Spec:
    """A spec, its fields given as keywords (`of(OBJECT, name=of(STRING, required=True))`)."""
    return Spec(kind, required, fields or None, None, items)


class _Wrong(Exception):
    """A failed check unwinding to `check`; `path` is filled in on the way, innermost key first."""

    def __init__(self, spec: Spec, value: Any, missing: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.value = value
        self.missing = missing  # a required field absent (not: present, of the wrong type)
        self.path: list[str | int] = []

    def at(self, key: str | int) -> _Wrong:
        self.path.append(key)
        return self


def check(value: Any, spec: Spec, *where: str | int) -> None:
    """Raise `InvalidRequest` naming the first field of `value` that does not fit `spec`; `where`
    is the path of `value` itself (`"messages", 2`; nothing for the request body)."""
    try:
        if value is None:
            if spec.required:
                raise _Wrong(spec, value)
        elif type(value) not in spec.types and not _whole(value, spec):
            raise _Wrong(spec, value)
        elif not spec.leaf:
            _inside(value, spec)
    except _Wrong as wrong:
        raise invalid(shown((*where, *reversed(wrong.path))), wrong.spec, wrong.value, wrong.missing) from None


def shown(path: tuple[str | int, ...]) -> str:
    """`messages[2].tool_calls[0].id`: a path as OpenAI's messages write it."""
    return "".join(f"[{key}]" if type(key) is int else f".{key}" for key in path).removeprefix(".")


def invalid(where: str, spec: Spec, value: Any, missing: bool = False) -> InvalidRequest:
    """The error for `value` at `where` (a display path, `messages[2].role`) not fitting `spec`,
    or for a required field `missing` there."""
    param = where.replace("[", ".[") or None
    if missing:
        return InvalidRequest(f"Missing required parameter: '{where}'.", param=param, code="missing_required_parameter")
    got = "null" if value is None else _GOT.get(type(value), "a value")
    return InvalidRequest(
        f"Invalid type for '{where}': expected {spec.kind.words}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


def _whole(value: Any, spec: Spec) -> bool:
    """A whole float where an integer is expected (asked only once the type did not match)."""
    return type(value) is float and spec.kind is INTEGER and value.is_integer()


def _inside(value: Any, spec: Spec) -> None:
    """The fields or items of `value`, already known to be of `spec`'s kind."""
    if type(value) is dict:
        if spec.fields is not None:
            _fields(value, spec)
        return
    items = spec.items
    if items is None or type(value) is not list:
        return
    for index, item in enumerate(value):
        if item is None or (type(item) not in items.types and not _whole(item, items)):
            raise _Wrong(items, item).at(index)  # an array's items are never optional
        if not items.leaf:
            try:
                _inside(item, items)
            except _Wrong as wrong:
                raise wrong.at(index) from None


def _fields(obj: dict[str, Any], spec: Spec) -> None:
    fields = spec.fields or {}
    for name, value in obj.items():
        inner = fields.get(name)
        if inner is None:
            continue
        if value is None:
            if inner.required:
                raise _Wrong(inner, value).at(name)
        elif type(value) not in inner.types and not _whole(value, inner):
            raise _Wrong(inner, value).at(name)
        elif not inner.leaf:
            try:
                _inside(value, inner)
            except _Wrong as wrong:
                raise wrong.at(name) from None
    for name in spec.required_fields:
        if name not in obj:
            raise _Wrong(fields[name], None, missing=True).at(name)
    if spec.by_type is not None:
        kind = obj.get("type")
        variant = spec.by_type.get(kind) if type(kind) is str else None
        if variant is not None:
            _fields(obj, variant)


def typed(kind: Kind, by_type: Mapping[str, Spec], *, required: bool = False, **fields: Spec) -> Spec:
    """An object spec with a required string `type` and more fields by its value."""
    return Spec(kind, required, {"type": of(STRING, required=True), **fields}, by_type)


# -- OpenAI's Chat Completions request ------------------------------------------------------

PART = typed(
    OBJECT,
    {
        "text": of(OBJECT, text=of(STRING, required=True)),
        "refusal": of(OBJECT, refusal=of(STRING, required=True)),
        "image_url": of(OBJECT, image_url=of(OBJECT, required=True, url=of(STRING, required=True), detail=of(STRING))),
        "input_audio": of(
            OBJECT,
            input_audio=of(OBJECT, required=True, data=of(STRING, required=True), format=of(STRING, required=True)),
        ),
        "file": of(
            OBJECT, file=of(OBJECT, required=True, file_id=of(STRING), file_data=of(STRING), filename=of(STRING))
        ),
    },
)
TOOL_CALL = of(
    OBJECT,
    id=of(STRING, required=True),
    type=of(STRING),
    function=of(OBJECT, required=True, name=of(STRING, required=True), arguments=of(STRING)),
)
MESSAGE = of(
    OBJECT,
    required=True,
    role=of(STRING, required=True),
    content=of(CONTENT, items=PART),
    name=of(STRING),
    tool_calls=of(ARRAY, items=TOOL_CALL),
    tool_call_id=of(STRING),
    refusal=of(STRING),
    audio=of(OBJECT, id=of(STRING, required=True)),
    function_call=of(OBJECT, name=of(STRING), arguments=of(STRING)),
)
FUNCTION = of(
    OBJECT,
    required=True,
    name=of(STRING, required=True),
    description=of(STRING),
    parameters=of(OBJECT),
    strict=of(BOOLEAN),
)
TOOL = typed(OBJECT, {"function": of(OBJECT, function=FUNCTION)})
TOOL_CHOICE = typed(
    STRING_OR_OBJECT, {"function": of(OBJECT, function=of(OBJECT, required=True, name=of(STRING, required=True)))}
)
BODY = of(  # `model` and `messages` (each item a MESSAGE) are checked by gateway.wire.chat_json
    OBJECT,
    stream=of(BOOLEAN),
    stream_options=of(OBJECT, include_usage=of(BOOLEAN), include_obfuscation=of(BOOLEAN)),
    n=of(INTEGER),
    max_tokens=of(INTEGER),
    max_completion_tokens=of(INTEGER),
    seed=of(INTEGER),
    top_logprobs=of(INTEGER),
    temperature=of(NUMBER),
    top_p=of(NUMBER),
    presence_penalty=of(NUMBER),
    frequency_penalty=of(NUMBER),
    logprobs=of(BOOLEAN),
    parallel_tool_calls=of(BOOLEAN),
    store=of(BOOLEAN),
    user=of(STRING),
    reasoning_effort=of(STRING),
    service_tier=of(STRING),
    verbosity=of(STRING),
    prompt_cache_key=of(STRING),
    safety_identifier=of(STRING),
    stop=of(STRING_OR_ARRAY, items=of(STRING)),
    logit_bias=of(OBJECT),
    metadata=of(OBJECT, session_id=of(STRING), project_id=of(STRING), user_id=of(STRING), clawvm_event=of(STRING)),
    tools=of(ARRAY, items=TOOL),
    tool_choice=TOOL_CHOICE,
    response_format=typed(OBJECT, {}),
    modalities=of(ARRAY, items=of(STRING)),
    audio=of(OBJECT),
    prediction=of(OBJECT),
    web_search_options=of(OBJECT),
    functions=of(ARRAY, items=of(OBJECT)),
    function_call=of(STRING_OR_OBJECT),
)
