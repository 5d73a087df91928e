"""Hypothesis strategies for what an agent (or an attacker) can send the gateway over HTTP.

Shared by the fuzz tests (tests/e2e/test_fuzz.py) and the load and chaos benches, which may mix
bad requests into their traffic. Every strategy draws data, never performs I/O (only `sweep`,
below, sends); `encode` turns a drawn body into the bytes to send.

- `json_values`: arbitrary JSON, including huge integers, extreme floats, unicode with lone
  surrogates (sent as `\\udXXX` escapes, which JSON allows and UTF-8 cannot carry) and deep nesting.
- `raw_bodies`: anything at all: random bytes, truncated JSON, non-object JSON, arbitrary objects.
- `chat_bodies`: near-valid Chat Completions bodies: every role and some that are not, content as
  a string, "", null, or a parts array (text, image_url, input_audio, file, unknown parts, parts
  that are not objects), tool calls with null or invalid-JSON arguments, parallel calls, tool
  messages with an unknown or missing `tool_call_id`, `n` > 1, `stream` true/false/odd, huge
  numbers, odd metadata.
- `mutated_chat_bodies`: a well-formed conversation with one to three fields broken deep inside.
- `valid_chat_bodies`: well-formed conversations (plain turns, parallel tool calls answered in
  order, parts arrays, images), which the gateway must answer with 200.
- `upstream_answers`: what a broken upstream may answer (odd completions and tool calls, bytes
  that are not JSON, odd SSE), for the gateway's own parsing of answers (the recall loop).
- `header_sets`: request headers: session and project ids with odd characters (any byte HTTP
  allows in a header value), long values, and auth variants (`auth_headers`).
- `structural_mutations`: the structure-aware fuzz, deterministic: valid requests (`BASES`: chat,
  tools, tool calls and results, streaming, metadata) with the value at every JSON path replaced by
  every JSON type and every key dropped; `Mutation.refusal` says, by `SPEC` (OpenAI's types), when
  the gateway must answer 400 naming the path. `sweep` is the one part that sends: the mutations
  over one keep-alive connection (`OneConnection`), counted in a `SweepTally` (5xx, dropped
  connections, refusals not in OpenAI's shape, wrong types let through or misnamed).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

ROLES = ("system", "developer", "user", "assistant", "tool")
ODD_ROLES = ("function", "", "USER", "model", "ai", "human")
MODELS = ("gpt-4o", "gpt-4o-mini", "fake-model", "anthropic-lookalike", "o1", "x" * 300)
HUGE_NUMBERS = (
    10**30,
    -(10**30),
    2**63,
    2**64 + 1,
    1e308,
    -1e308,
    5e-324,
    0,
    -1,
    1.5,
)
MAX_DEPTH = 60  # nesting of `deeply_nested`; the body parser must neither crash nor recurse forever


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` three times in four, `rare` otherwise."""
    return st.one_of(common, common, common, rare)


def text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Unicode text, lone surrogates included (categories Cs), plus a few fixed odd strings."""
    drawn = st.text(st.characters(codec=None, exclude_categories=()), max_size=max_size)
    odd = st.sampled_from(["", " ", "\x00", "\ud83d", "\udfff\ud800", "🙂" * 3, "p:000000000000", "\u202e", "a\r\nb"])
    return st.one_of(drawn, odd)


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from(HUGE_NUMBERS),
        st.floats(allow_nan=False, allow_infinity=False),
        text(),
    )


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values (objects, arrays, scalars), nested."""
    return st.recursive(
        json_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(text(12), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def deeply_nested(depth: int = MAX_DEPTH) -> st.SearchStrategy[Any]:
    """A value nested `depth` deep in arrays or objects."""

    def nest(kinds: list[bool]) -> Any:
        value: Any = "deep"
        for as_list in kinds:
            value = [value] if as_list else {"k": value}
        return value

    return st.lists(st.booleans(), min_size=depth, max_size=depth).map(nest)


def encode(body: Any) -> bytes:
    """The JSON text of `body`, ASCII-escaped so that lone surrogates travel as `\\udXXX`."""
    return json.dumps(body, ensure_ascii=True).encode("ascii")


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Any request body: bytes, broken or truncated JSON, JSON that is not an object, objects."""
    objects = st.dictionaries(text(12), json_values(), max_size=6).map(encode)
    truncated = st.tuples(chat_bodies().map(encode), st.integers(min_value=0, max_value=200)).map(
        lambda pair: pair[0][: pair[1]]
    )
    return st.one_of(
        st.binary(max_size=200),
        json_values().map(encode),
        objects,
        truncated,
        deeply_nested().map(lambda v: encode({"model": "gpt-4o", "messages": [{"role": "user", "content": v}]})),
        st.sampled_from([b"", b"{", b"null", b"[]", b'{"model": NaN}', b'{"a": 1e999}', b"\xff\xfe{}", b'"\\ud800"']),
    )


# -- near-valid chat bodies -------------------------------------------------------------------


def content_parts() -> st.SearchStrategy[Any]:
    """One entry of a content parts array, valid or not."""
    return st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, text()),
        st.builds(
            lambda url, detail: {"type": "image_url", "image_url": {"url": url, "detail": detail}},
            st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo=", "", "not a url"]),
            st.sampled_from(["auto", "low", "high", None, 7]),
        ),
        st.just({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
        st.just({"type": "file", "file": {"file_id": "file-abc"}}),
        st.just({"type": "refusal", "refusal": "I cannot."}),
        st.builds(lambda t, v: {"type": t, "value": v}, text(10), json_scalars()),
        st.builds(lambda t: {"text": t}, text()),  # no type
        st.just({"type": "text", "text": None}),
        st.just({"type": 5}),
        json_scalars(),
        st.lists(st.just("nested"), max_size=2),
    )


def contents() -> st.SearchStrategy[Any]:
    return mostly(
        st.one_of(text(200), st.lists(content_parts(), min_size=1, max_size=4)),
        st.one_of(st.just(""), st.none(), st.just([]), json_values(6)),
    )


def arguments() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just('{"path": "src/a.py"}'),
        st.just("{}"),
        st.just(""),
        st.none(),
        st.just("{not json"),
        st.just("null"),
        st.just('{"page_ids": ["p:000000000000"]}'),
        text(30),
        json_values(4),
    )


def tool_calls() -> st.SearchStrategy[Any]:
    call = st.fixed_dictionaries(
        {
            "id": mostly(
                st.sampled_from(["call_1", "call_2", "call_3"]), st.one_of(st.just(""), text(12), json_scalars())
            )
        },
        optional={
            "type": st.sampled_from(["function", "custom", ""]),
            "function": st.one_of(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["get_order", "read_file", "clawvm_recall", ""]), text(12))},
                    optional={"arguments": arguments()},
                ),
                json_scalars(),
            ),
        },
    )
    return mostly(st.lists(call, min_size=1, max_size=3), st.one_of(st.just([]), st.none(), json_scalars()))


def messages() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {"role": mostly(st.sampled_from(ROLES), st.one_of(st.sampled_from(ODD_ROLES), json_scalars()))},
        optional={
            "content": contents(),
            "tool_calls": tool_calls(),
            "tool_call_id": mostly(st.sampled_from(["call_1", "call_2", "call_3"]), st.one_of(text(8), json_scalars())),
            "name": st.one_of(st.sampled_from(["bot", ""]), json_scalars()),
            "refusal": st.one_of(st.none(), text(20)),
        },
    )
    return mostly(message, json_scalars())


def options() -> st.SearchStrategy[dict[str, Any]]:
    """The optional fields of a chat body, valid or odd."""
    return st.fixed_dictionaries(
        {},
        optional={
            "stream": st.one_of(st.booleans(), st.none(), st.sampled_from([0, 1, "true"])),
            "n": st.one_of(st.sampled_from([1, 2, 3, 0, -1, None, 10**20, "2"])),
            "max_tokens": st.one_of(st.sampled_from(HUGE_NUMBERS), st.none()),
            "max_completion_tokens": st.sampled_from(HUGE_NUMBERS),
            "temperature": st.one_of(st.sampled_from(HUGE_NUMBERS), st.floats(allow_nan=False)),
            "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), json_values(4)),
            "tools": st.one_of(st.lists(json_values(6), max_size=2), json_scalars()),
            "user": st.one_of(text(40), json_scalars()),
            "metadata": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "session_id": st.one_of(text(120), json_scalars()),
                        "project_id": st.one_of(text(120), json_scalars()),
                        "clawvm_event": st.one_of(st.sampled_from(["compaction", "prune", "reset", "bogus"]), text()),
                    },
                ),
                json_scalars(),
            ),
            "stream_options": st.one_of(st.just({"include_usage": True}), json_values(3)),
            "response_format": json_values(4),
            "logit_bias": st.dictionaries(text(6), st.sampled_from(HUGE_NUMBERS), max_size=3),
        },
    )


def chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Near-valid chat completion bodies: right keys, any values."""
    model = mostly(st.sampled_from(MODELS), json_scalars())
    msgs = mostly(st.lists(messages(), min_size=1, max_size=6), st.one_of(st.just([]), json_scalars()))
    base = st.fixed_dictionaries({"model": model, "messages": msgs})
    return st.tuples(base, options()).map(lambda pair: {**pair[0], **pair[1]})


# -- valid chat bodies --------------------------------------------------------------------------


def _turn(kind: str, number: int, words: str) -> list[dict[str, Any]]:
    if kind == "plain":
        return [{"role": "user", "content": f"Question {number}: {words}"}, {"role": "assistant", "content": words}]
    if kind == "parts":
        parts = [
            {"type": "text", "text": f"Look at picture {number}: {words}"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]
        return [{"role": "user", "content": parts}, {"role": "assistant", "content": "I see it."}]
    ids = [f"call_{number}_{k}" for k in range(2 if kind == "parallel" else 1)]
    call_args = None if kind == "null_args" else json.dumps({"path": f"src/{number}.py"})
    calls = [{"id": i, "type": "function", "function": {"name": "read_file", "arguments": call_args}} for i in ids]
    results = [{"role": "tool", "tool_call_id": i, "content": f"contents of {i}: {words}"} for i in ids]
    call = {"role": "assistant", "content": None, "tool_calls": calls}
    return [{"role": "user", "content": f"Read file {number}"}, call, *results]


def valid_chat_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed conversations the gateway must accept: system prompt, turns of several shapes,
    a final user message; streaming or not."""
    words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=80)
    kinds = st.sampled_from(["plain", "parts", "tool", "parallel", "null_args"])

    def build(turns: list[tuple[str, str]], last: str, stream: bool, system: str) -> dict[str, Any]:
        body: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for number, (kind, said) in enumerate(turns):
            body += _turn(kind, number, said)
        body.append({"role": "user", "content": last})
        return {"model": "gpt-4o", "messages": body, "stream": stream}

    system = st.sampled_from(["You are a careful agent. Never delete files.", "You are terse.", ""])
    return st.builds(build, st.lists(st.tuples(kinds, words), max_size=6), words, st.booleans(), system)


MUTATIONS = ("content", "role", "tool_calls", "arguments", "tool_call_id", "drop", "extra", "insert", "remove", "top")


@st.composite
def mutated_chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed conversation with one to three fields broken: the bad value sits deep inside
    an otherwise valid request, so it reaches the later stages (pairing, ingest, assembly)."""
    body = copy.deepcopy(draw(valid_chat_bodies()))
    turns: list[Any] = body["messages"]
    for kind in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        index = draw(st.integers(min_value=0, max_value=len(turns) - 1)) if turns else 0
        target = turns[index] if turns and isinstance(turns[index], dict) else None
        if kind == "top":
            body.update(draw(options()))
        elif kind == "insert":
            turns.insert(index, draw(messages()))
        elif kind == "remove" and len(turns) > 1:
            del turns[index]
        elif target is None:
            continue
        elif kind == "content":
            target["content"] = draw(contents())
        elif kind == "role":
            target["role"] = draw(st.one_of(st.sampled_from(ROLES + ODD_ROLES), json_scalars()))
        elif kind == "tool_calls":
            target["tool_calls"] = draw(tool_calls())
        elif kind == "arguments" and _first_function(target) is not None:
            _first_function(target)["arguments"] = draw(arguments())  # type: ignore[index]
        elif kind == "tool_call_id":
            target["tool_call_id"] = draw(
                st.one_of(st.sampled_from(["call_0_0", "call_1_1", "nobody"]), json_scalars())
            )
        elif kind == "drop" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        elif kind == "extra":
            target[draw(text(10))] = draw(json_values(6))
    return body


def _first_function(message: dict[str, Any]) -> dict[str, Any] | None:
    calls = message.get("tool_calls")
    first = calls[0] if isinstance(calls, list) and calls else None
    function = first.get("function") if isinstance(first, dict) else None
    return function if isinstance(function, dict) else None


# -- upstream answers ---------------------------------------------------------------------------


def odd_tool_calls() -> st.SearchStrategy[Any]:
    """What a model (or a broken upstream) may put in `tool_calls`: the gateway's own recall tool
    or another, with any id, name and arguments, or no proper call at all."""
    function = st.fixed_dictionaries(
        {},
        optional={
            "name": st.one_of(st.sampled_from(["clawvm_recall", "read_file"]), json_scalars()),
            "arguments": st.one_of(arguments(), st.just('{"page_ids": ["p:000000000000"]}')),
        },
    )
    call = st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.sampled_from(["rc1", "rc2"]), json_scalars()),
            "type": st.just("function"),
            "function": mostly(function, json_scalars()),
            "index": st.one_of(st.integers(min_value=-2, max_value=3), json_scalars()),
        },
    )
    return mostly(st.lists(call, min_size=1, max_size=3), json_values(4))


def _completion(message: Any, usage: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return {"id": "chatcmpl-odd", "object": "chat.completion", "choices": [choice], "usage": usage}


def _chunks(deltas: list[Any], done: bool) -> bytes:
    events = [
        f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'choices': [{'index': 0, 'delta': d}]})}\n\n"
        for d in deltas
    ]
    return ("".join(events) + ("data: [DONE]\n\n" if done else "")).encode()


def upstream_answers() -> st.SearchStrategy[tuple[int, str, bytes]]:
    """(status, content type, body) of an upstream's answer to a chat completion: odd JSON
    completions (tool calls of every shape, the recall tool among them), JSON that is not a
    completion, bytes that are not JSON, and SSE streams with odd deltas, garbage events or no end."""
    message = st.fixed_dictionaries(
        {"role": st.just("assistant")},
        optional={"content": st.one_of(st.none(), text(30), json_scalars()), "tool_calls": odd_tool_calls()},
    )
    usage = st.one_of(
        st.none(), st.just({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}), json_values(4)
    )
    completions = st.builds(_completion, message, usage).map(encode)
    delta = st.fixed_dictionaries(
        {}, optional={"content": st.one_of(text(10), json_scalars()), "tool_calls": odd_tool_calls()}
    )
    streams = st.builds(_chunks, st.lists(st.one_of(delta, json_scalars()), max_size=4), st.booleans())
    garbage_events = st.sampled_from(
        [b"data: {not json\n\n", b"data: [DONE]\n\n", b": comment\n\n", b"event: x\ndata: 1\n\n", b"data:\n\n"]
    )
    return st.one_of(
        st.tuples(st.just(200), st.just("application/json"), completions),
        st.tuples(
            st.just(200), st.just("application/json"), st.one_of(json_values().map(encode), st.binary(max_size=40))
        ),
        st.tuples(st.just(200), st.just("text/event-stream"), st.one_of(streams, garbage_events)),
        st.tuples(st.sampled_from([400, 404, 429, 500, 503]), st.just("application/json"), st.binary(max_size=40)),
    )


# -- headers ------------------------------------------------------------------------------------

# Bytes HTTP allows inside a header value (RFC 9110 field-vchar, plus inner spaces and tabs).
_VCHAR = [bytes([b]) for b in (*range(0x21, 0x7F), *range(0x80, 0x100))]


def header_values(max_size: int = 200) -> st.SearchStrategy[bytes]:
    """A header value: any field-vchar bytes (latin-1 on the server side), with inner spaces."""
    inner = st.lists(st.sampled_from([*_VCHAR, b" ", b"\t"]), max_size=max_size).map(b"".join)
    return st.tuples(st.sampled_from(_VCHAR), inner).map(lambda pair: pair[0] + pair[1].rstrip(b" \t"))


def long_values() -> st.SearchStrategy[bytes]:
    return st.sampled_from([1_000, 4_000, 20_000, 70_000]).map(lambda n: b"s" * n)


def auth_headers(key: str) -> st.SearchStrategy[dict[str, bytes]]:
    """Ways to send (or fail to send) the API key `key`."""
    good = key.encode()
    return st.one_of(
        st.just({"authorization": b"Bearer " + good}),
        st.just({"authorization": b"bearer   " + good}),
        st.just({"api-key": good}),
        st.just({"x-api-key": good}),
        st.just({}),
        st.just({"authorization": b"Bearer"}),
        st.just({"authorization": b"Basic " + good}),
        st.just({"authorization": b"Bearer " + good + b"x"}),
        st.builds(lambda v: {"authorization": b"Bearer " + v}, header_values(60)),
        st.builds(lambda v: {"x-api-key": v}, header_values(60)),
        long_values().map(lambda v: {"authorization": b"Bearer " + v}),
    )


def header_sets(key: str) -> st.SearchStrategy[dict[str, bytes]]:
    """Auth variants plus odd session/project/event headers."""
    odd = st.fixed_dictionaries(
        {},
        optional={
            "x-clawvm-session": st.one_of(header_values(), long_values(), st.sampled_from([b"a}b{c", b"x:s:y", b"*"])),
            "x-clawvm-project": st.one_of(header_values(), long_values()),
            "x-clawvm-event": st.one_of(st.sampled_from([b"compaction", b"prune", b"reset"]), header_values(20)),
            "accept": st.sampled_from([b"application/json", b"text/event-stream", b"*/*", b"\xff"]),
        },
    )
    return st.tuples(auth_headers(key), odd).map(lambda pair: {**pair[0], **pair[1]})


# -- structure-aware fuzz -----------------------------------------------------------------------
#
# Each valid request of `BASES`, with the value at one JSON path replaced by a value of each JSON
# type (`JSON_TYPES`), or one object key dropped: every path, every type, every key, in order
# (no randomness). `SPEC` says, as OpenAI documents it, which types each field the gateway reads
# or forwards accepts and whether it is required: a mutation that breaks it must be refused with
# 400 naming the field (`Mutation.refusal`). `sweep` sends mutations over one keep-alive
# connection (`OneConnection`) and counts what went wrong (`SweepTally`).

Path = tuple[str | int, ...]

_CALL = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}
_TOOL = {
    "type": "function",
    "function": {
        "name": "read_file",
        "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
}
BASES: dict[str, dict[str, Any]] = {
    "chat": {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there."}],
    },
    "tools": {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Read a.py"}],
        "tools": [_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "read_file"}},
        "parallel_tool_calls": True,
    },
    "tool_calls": {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is in a.py?"}]},
            {"role": "assistant", "content": None, "tool_calls": [_CALL], "name": "coder"},
            {"role": "tool", "tool_call_id": "call_1", "content": "print('hi')"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ],
            },
        ],
        "tools": [_TOOL],
        "tool_choice": "auto",
    },
    "stream": {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Stream me an answer."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["\n\n"],
    },
    "metadata": {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Remember: I prefer short answers."}],
        "metadata": {"session_id": "sweep-session", "project_id": "sweep-project", "clawvm_event": "reset"},
        "user": "sweep-user",
        "temperature": 0.2,
        "max_tokens": 50,
        "n": 1,
    },
}
JSON_TYPES: tuple[tuple[str, Any], ...] = (
    ("null", None),
    ("boolean", True),
    ("integer", 7),
    ("decimal", 1.5),
    ("string", "x"),
    ("empty array", []),
    ("array", ["x"]),
    ("array of null", [None]),
    ("empty object", {}),
    ("object", {"k": "v"}),
)
_KIND = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
_OPTIONAL = frozenset({"null"})
_STRING, _OBJECT, _ARRAY = frozenset({"string"}), frozenset({"object"}), frozenset({"array"})

# Which JSON types each field accepts (`[]`: any item of an array), and whether it is required
# (then null and absence are refused too). Fields not named here are not constrained.
SPEC: dict[str, tuple[frozenset[str], bool]] = {
    "": (_OBJECT, True),
    "model": (_STRING, True),
    "messages": (_ARRAY, True),
    "messages[]": (_OBJECT, True),
    "messages[].role": (_STRING, True),
    "messages[].content": (_STRING | _ARRAY, False),
    "messages[].content[]": (_OBJECT, True),
    "messages[].content[].type": (_STRING, True),
    "messages[].content[].text": (_STRING, True),
    "messages[].content[].image_url": (_OBJECT, True),
    "messages[].content[].image_url.url": (_STRING, True),
    "messages[].content[].image_url.detail": (_STRING, False),
    "messages[].name": (_STRING, False),
    "messages[].tool_calls": (_ARRAY, False),
    "messages[].tool_calls[]": (_OBJECT, True),
    "messages[].tool_calls[].id": (_STRING, True),
    "messages[].tool_calls[].type": (_STRING, False),
    "messages[].tool_calls[].function": (_OBJECT, True),
    "messages[].tool_calls[].function.name": (_STRING, True),
    "messages[].tool_calls[].function.arguments": (_STRING, False),
    "messages[].tool_call_id": (_STRING, True),  # only tool messages carry one in BASES
    "tools": (_ARRAY, False),
    "tools[]": (_OBJECT, True),
    "tools[].type": (_STRING, True),
    "tools[].function": (_OBJECT, True),  # for type "function", the only type in BASES
    "tools[].function.name": (_STRING, True),
    "tools[].function.description": (_STRING, False),
    "tools[].function.parameters": (_OBJECT, False),
    "tool_choice": (_STRING | _OBJECT, False),
    "tool_choice.type": (_STRING, True),
    "tool_choice.function": (_OBJECT, True),
    "tool_choice.function.name": (_STRING, True),
    "parallel_tool_calls": (frozenset({"boolean"}), False),
    "stream": (frozenset({"boolean"}), False),
    "stream_options": (_OBJECT, False),
    "stream_options.include_usage": (frozenset({"boolean"}), False),
    "stop": (_STRING | _ARRAY, False),
    "stop[]": (_STRING, True),
    "n": (frozenset({"integer"}), False),
    "max_tokens": (frozenset({"integer"}), False),
    "temperature": (frozenset({"integer", "number"}), False),
    "user": (_STRING, False),
    "metadata": (_OBJECT, False),
    "metadata.session_id": (_STRING, False),
    "metadata.project_id": (_STRING, False),
    "metadata.clawvm_event": (_STRING, False),
}


def shown(path: Path) -> str:
    """`messages[2].tool_calls[0].id`: a path as OpenAI's error messages write it."""
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).removeprefix(".")


def param(path: Path) -> str | None:
    """`messages.[2].tool_calls.[0].id`: a path as OpenAI's `param` writes it (None: the body)."""
    return shown(path).replace("[", ".[") or None


def _pattern(path: Path) -> str:
    return "".join("[]" if isinstance(key, int) else f".{key}" for key in path).removeprefix(".")


def kind(value: Any) -> str:
    return "object" if isinstance(value, dict) else _KIND[type(value)]


@dataclass(frozen=True, slots=True)
class Mutation:
    base: str
    path: Path
    change: str  # a JSON_TYPES name, or "dropped"
    body: Any

    def __str__(self) -> str:
        return f"{self.base}: {shown(self.path) or '(body)'} {self.change}"

    @property
    def refusal(self) -> tuple[bool, str | None]:
        """(must be refused, the `param` naming the field): by `SPEC`, a 400 naming the path."""
        found = SPEC.get(_pattern(self.path))
        if found is None:
            return False, None
        kinds, required = found
        if self.change == "dropped":
            return required, param(self.path)
        value = _at(self.body, self.path)
        accepted = kinds if required else kinds | _OPTIONAL
        return kind(value) not in accepted, param(self.path)


def json_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every path in `value`, itself first, then depth first."""
    yield path
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from json_paths(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from json_paths(inner, (*path, index))


def _at(value: Any, path: Path) -> Any:
    for key in path:
        value = value[key]
    return value


def _replaced(body: Any, path: Path, new: Any) -> Any:
    if not path:
        return copy.deepcopy(new)
    changed = copy.deepcopy(body)
    _at(changed, path[:-1])[path[-1]] = copy.deepcopy(new)
    return changed


def _dropped(body: Any, path: Path) -> Any:
    changed = copy.deepcopy(body)
    del _at(changed, path[:-1])[path[-1]]
    return changed


def structural_mutations(bases: Mapping[str, Any] = BASES) -> list[Mutation]:
    """Every base with the value at every path replaced by every JSON type, and with every object
    key dropped; replacements equal to the original value are left out."""
    found = []
    for name, body in bases.items():
        for path in json_paths(body):
            original = _at(body, path)
            for change, value in JSON_TYPES:
                if not (kind(value) == kind(original) and value == original):
                    found.append(Mutation(name, path, change, _replaced(body, path, value)))
            if path and isinstance(path[-1], str):
                found.append(Mutation(name, path, "dropped", _dropped(body, path)))
    return found


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: the request failed on the connection
    body: bytes
    content_type: str
    dropped: bool  # the connection was dropped: before this request (it had to open a new one), or by it


class OneConnection:
    """An HTTP client that keeps one keep-alive connection to `root` and notices when the server
    drops it: a request that needs a new connection although one was open, a transport failure,
    or an answer saying `connection: close`."""

    def __init__(self, root: str, headers: Mapping[str, str], timeout: float = 60.0) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.client = httpx.Client(
            base_url=root, headers=dict(headers), limits=limits, timeout=timeout, trust_env=False
        )
        self.local: Any = None  # (host, port) of our end of the open connection

    def __enter__(self) -> OneConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Answer:
        sent = {"content-type": "application/json", **(headers or {})}
        try:
            with self.client.stream("POST", path, content=body, headers=sent) as response:
                local = response.extensions["network_stream"].get_extra_info("client_addr")
                content = response.read()
        except httpx.TransportError:
            self.local = None
            return Answer(None, b"", "", True)
        reopened = self.local is not None and local != self.local
        closing = response.headers.get("connection", "").lower() == "close"
        self.local = None if closing else local
        return Answer(response.status_code, content, response.headers.get("content-type", ""), reopened or closing)


EXAMPLES_KEPT = 10


@dataclass
class SweepTally:
    """What a sweep found. Its bars: every count but `requests` and `statuses` is 0."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx answers
    dropped_connections: int = 0
    not_openai_errors: int = 0  # refusals whose body is not OpenAI's error object
    wrong_types_accepted: int = 0  # mutations SPEC refuses, answered 2xx
    misnamed: int = 0  # mutations SPEC refuses, refused otherwise than 400 naming the field
    incomplete_streams: int = 0  # 200 event streams not ending with `data: [DONE]`
    examples: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (
            self.server_errors
            + self.dropped_connections
            + self.not_openai_errors
            + self.wrong_types_accepted
            + self.misnamed
            + self.incomplete_streams
        )

    def note(self, what: str, mutation: Mutation, answer: Answer) -> None:
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"{what}: {mutation} -> {answer.status} {answer.body[:200]!r}")

    def as_dict(self) -> dict[str, Any]:
        figures = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "statuses"}
        statuses = {str(k): v for k, v in sorted(self.statuses.items())}
        return {**figures, "statuses": statuses, "problems": self.problems}


def sweep(connection: OneConnection, mutations: Sequence[Mutation], path: str = "/v1/chat/completions") -> SweepTally:
    """Send every mutation over `connection`, in order, and count what went wrong."""
    tally = SweepTally()
    previous: Mutation | None = None
    for mutation in mutations:
        answer = connection.post(path, encode(mutation.body))
        tally.requests += 1
        if answer.dropped:
            tally.dropped_connections += 1
            tally.note("connection dropped (after the previous request or by this one)", previous or mutation, answer)
        previous = mutation
        if answer.status is None:
            continue
        tally.statuses[answer.status] += 1
        _judge(tally, mutation, answer)
    return tally


def _judge(tally: SweepTally, mutation: Mutation, answer: Answer) -> None:
    status = answer.status or 0
    refuse, named = mutation.refusal
    if status >= 500:
        tally.server_errors += 1
        tally.note("5xx", mutation, answer)
    if status >= 400 and not _openai_error(answer.body):
        tally.not_openai_errors += 1
        tally.note("not OpenAI's error shape", mutation, answer)
    if refuse and status < 400:
        tally.wrong_types_accepted += 1
        tally.note(f"accepted, should be refused naming {named}", mutation, answer)
    elif refuse and (status != 400 or _param(answer.body) != named):
        tally.misnamed += 1
        tally.note(f"should be a 400 naming {named}", mutation, answer)
    if status == 200 and answer.content_type.startswith("text/event-stream"):
        if not answer.body.endswith(b"data: [DONE]\n\n"):
            tally.incomplete_streams += 1
            tally.note("stream cut short", mutation, answer)


def _openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) and set(data) == {"error"} else None
    return (
        isinstance(error, dict)
        and set(error) == {"message", "type", "param", "code"}
        and isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
    )


def _param(body: bytes) -> Any:
    try:
        return json.loads(body)["error"]["param"]
    except (ValueError, KeyError, TypeError):
        return None
