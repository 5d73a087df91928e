"""The OpenAI Responses adapter (`POST /v1/responses`): what Codex and the Agents SDK speak.

Parsing: `instructions` is the leading system message; `input` (a string, or a list of items)
becomes the transcript: user, system and developer messages one each; a run of the model's own
items (assistant messages, `reasoning`, `function_call`, `custom_tool_call` and other calls) one
assistant message whose tool calls are its calls; a `function_call_output` (or
`custom_tool_call_output`) one tool message. A message's `raw` is the client's item (a run's raw
holds its items), so what is kept whole is forwarded byte for byte: `reasoning` with its
`encrypted_content`, parts, ids. Codex's `compaction` item (opaque, encrypted) is a boundary:
the input up to the newest one is forwarded as it came, before the managed rest, and the turn is
hinted a compaction (`event`). `previous_response_id` is resolved from the responses this
gateway served (`gateway.wire.chains`), never forwarded.

The recall tool is flat (`{"type": "function", "name", ...}`); its calls are `function_call`
items, their results `function_call_output` items. In a stream, every event is relayed at once
and in order, renumbered (`sequence_number`, `output_index`) so the agent sees one response,
except the recall call's own events, a later round's `response.created` and `response.in_progress`
and each round's `response.completed`, which is sent once at the end with every item the agent
saw and usage summed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.api.errors import GatewayError, InvalidRequest
from gateway.settings import Tenant
from gateway.upstream.client import UpstreamResponse, UpstreamTarget
from gateway.upstream.targets import upstream_target
from gateway.wire import chat_json
from gateway.wire.base import (
    Body,
    Found,
    Names,
    Owner,
    Parse,
    ToolList,
    WholeAnswer,
    WireRequest,
    add_usage,
    json_events,
    json_object,
    metadata_names,
    passed,
)
from gateway.wire.cache_hints import add_cache_key
from gateway.wire.chains import ResponseChains
from gateway.wire.recall import DESCRIPTION, parameters
from policies.transcript import Message, ToolCall

USAGE = ("input_tokens", "output_tokens", "total_tokens")
CALLS = frozenset({"function_call", "custom_tool_call"})
OUTPUTS = frozenset({"function_call_output", "custom_tool_call_output"})
SPEAKERS = frozenset({"user", "system", "developer"})
GROUP = "clawvm.items"  # the raw of a run of the model's items
INSTRUCTIONS = "clawvm.instructions"  # the raw of the instructions' message
COMPACTION = "compaction"
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text")
PASSED_HEADERS = ("accept", "openai-beta")
HELD = frozenset({"response.completed", "response.incomplete"})
OPENING = frozenset({"response.created", "response.in_progress", "response.queued"})
FAILED = frozenset({"response.failed", "error"})


def tool_schema(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": DESCRIPTION, "parameters": parameters()}


class ResponsesWire(ToolList):
    name = "responses"
    transcript_field = "input"
    path = "/responses"
    litellm = False

    def target(self, tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
        return upstream_target(tenant, headers)

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        return passed(headers, PASSED_HEADERS)

    def owns_account(self, tenant: Tenant) -> bool:
        return tenant.upstream.owns_account

    def parse(self, raw: bytes, parse: Parse | None = None) -> WireRequest:
        return parse_request(raw, parse)

    def schema(self, name: str) -> dict[str, Any]:
        return tool_schema(name)

    def render(self, request: WireRequest, messages: Sequence[Message], tenant: Tenant) -> Body:
        body = dict(request.body)
        instructions, items = to_wire(messages)
        body["input"] = [*compacted(request.body), *items]
        body.pop("instructions", None)
        if instructions is not None:
            body["instructions"] = instructions
        body["model"] = tenant.upstream.upstream_model(request.model)
        body.pop("previous_response_id", None)  # resolved here (`resolve`): the upstream holds nothing
        if not tenant.upstream.owns_account:  # stored on a key tenants share, a response could be read by another
            body["store"] = False
        return body

    def cache_hints(
        self, body: Body, model: str, built: Sequence[Message], stable: int, owner: Owner, litellm: bool
    ) -> None:
        """OpenAI's `prompt_cache_key`."""
        if not litellm:
            add_cache_key(body, *owner)

    def shown(self, request: WireRequest, built: Sequence[Message], body: Body) -> tuple[list[Any], list[Any]]:
        """In chat's shape where the gateway built a message, else as the client sent it (its `raw`)."""
        return chat_json.to_wire(request.messages), chat_json.to_wire(built)

    def offers_recall(self, body: Mapping[str, Any]) -> bool:
        return body.get("tool_choice") != "none"

    def continue_after(self, body: Body, found: Found, replies: Sequence[str]) -> None:
        replayed = [item for item in found.turn if replayable(item)]
        results = [
            {"type": "function_call_output", "call_id": call.id, "output": text}
            for call, text in zip(found.ours, replies, strict=True)
        ]
        body["input"] = [*body["input"], *replayed, *results]

    def answer(self, stream: bool, name: str, body: Mapping[str, Any]) -> ResponsesWhole | ResponsesStream:
        return ResponsesStream(name) if stream else ResponsesWhole(name)

    def error_body(self, exc: GatewayError) -> Any:
        return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}

    def error_event(self, exc: GatewayError) -> bytes:
        data = {"type": "error", "code": exc.code or exc.type, "message": exc.message, "param": exc.param}
        return event("error", data)

    def names(self, request: WireRequest) -> Names:
        """`metadata`'s names, the user else the `user` field; the event else a Codex compaction item
        in the input: a rewrite of the history is a compaction, not a reset."""
        return metadata_names(request.body, "user", COMPACTION if compacted(request.body) else None)

    async def resolve(self, request: WireRequest, tenant: str, chains: ResponseChains) -> WireRequest:
        previous = request.body.get("previous_response_id")
        if previous is None:
            return request
        items = await chains.load(tenant, previous)
        if items is None:
            raise InvalidRequest(
                f"previous_response_id {previous[:80]!r} cannot be served: this gateway forwards responses "
                "without storing them upstream and resolves a chain only from the responses it answered this "
                "tenant itself (with `store` not false, for 7 days). Send the whole conversation in `input` "
                "instead (with `store: false`, as Codex does).",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        body = {**request.body, "input": [*items, *_items(request.body.get("input"))]}
        return parsed(body)  # previous_response_id stays for `remember`; `render` drops it

    def remembers(self, request: WireRequest) -> bool:
        return request.body.get("store") is not False

    async def remember(self, request: WireRequest, answer: Any, tenant: str, chains: ResponseChains) -> None:
        """Keep the conversation of an answered response for a later `previous_response_id`."""
        final = answer.final
        if request.body.get("store") is False or not isinstance(final, dict) or not isinstance(final.get("id"), str):
            return
        output = [item for item in final.get("output") or [] if isinstance(item, dict)]
        given = _items(request.body.get("input"))
        previous = request.body.get("previous_response_id")
        chain = await chains.chain(tenant, previous) if isinstance(previous, str) else None
        if chain is not None and chain.length <= len(given):  # only what this request added
            await chains.save(tenant, final["id"], chain, [*given[chain.length :], *output])
        else:
            await chains.save(tenant, final["id"], None, [*given, *output])


RESPONSES = ResponsesWire()


def refuse_stored_compaction(body: Mapping[str, Any], owns_account: bool) -> None:
    """A `/v1/responses/compact` body naming a stored response, through a key other tenants share:
    `InvalidRequest` (the response is the account's, not the tenant's)."""
    if body.get("previous_response_id") is not None and not owns_account:
        raise InvalidRequest(
            "previous_response_id cannot be compacted through this gateway: the response it names is stored "
            "upstream, under a key other tenants share. Send the items to compact in `input`.",
            param="previous_response_id",
        )


def event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + jsonio.dumps(data) + b"\n\n"


def _named(value: Any, name: str) -> bool:
    return isinstance(value, dict) and value.get("name") == name


def replayable(item: Any) -> bool:
    """An output item the continuation can send back stateless: a reasoning item only with its
    `encrypted_content` (without it, it names an item nothing stored)."""
    return isinstance(item, dict) and (item.get("type") != "reasoning" or bool(item.get("encrypted_content")))


# -- parsing ---------------------------------------------------------------------------------------


def parse_request(raw: bytes, parse: Parse | None = None) -> WireRequest:
    """The request validated; `parse` reads the body and its input reusing earlier requests' work
    (`gateway.wire.chat_transcripts.Reader`)."""
    body = json_object(raw) if parse is None else parse.loads(raw, "input")
    model = body.get("model")
    if type(model) is not str or not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    for key, kinds in (("instructions", (str,)), ("tools", (list,)), ("stream", (bool,)), ("store", (bool,))):
        if body.get(key) is not None and type(body[key]) not in kinds:
            raise InvalidRequest(f"Invalid type for '{key}'.", param=key, code="invalid_type")
    previous = body.get("previous_response_id")
    if previous is not None and (type(previous) is not str or not previous):
        raise InvalidRequest("Invalid 'previous_response_id': expected a response id.", param="previous_response_id")
    given = body.get("input")
    if type(given) not in (str, list) or (previous is None and not given):
        raise InvalidRequest(
            "Missing required parameter: 'input' (a string or a non-empty array of items).",
            param="input",
            code="missing_required_parameter",
        )
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or type(tool.get("type")) is not str:
            raise InvalidRequest(
                f"Invalid 'tools[{index}]': expected a tool object with a type.", param=f"tools[{index}]"
            )
    if previous is not None:  # resolved later (`ResponsesWire.resolve`): its input alone is not the transcript
        return WireRequest(body=body, model=model, messages=[], stream=body.get("stream") is True)
    return parsed(body, parse)


def parsed(body: Body, parse: Parse | None = None) -> WireRequest:
    """The request of a body whose input is the whole conversation."""
    given = body.get("input")
    if parse is not None and isinstance(given, list):
        turns = parse.transcript(given, _input_from)
    else:
        turns = _input_from(_items(given), 0) or []
    messages = [*_instructions(body.get("instructions")), *turns]
    return WireRequest(body=body, model=body["model"], messages=messages, stream=body.get("stream") is True)


def _input_from(items: Sequence[Any], start: int) -> list[Message] | None:
    """The transcript of the items from `start` on (all of them, after the newest compaction, from
    0), checked; None when they do not parse apart from the ones before: a compaction among them
    (the prefix forwarded as it came moves), or the earlier input ending with the model's own
    items (the new ones may join its run)."""
    added = items[start:]
    for index, item in enumerate(added, start):
        _check(item, index)
    if start == 0:
        first = _newest_compaction(items) + 1
        return parse_items(items[first:], first)
    if _newest_compaction(added) >= 0 or not _closes_run(items[start - 1]):
        return None
    return parse_items(added, start)


def _closes_run(item: Any) -> bool:
    """An item after which the model's next items start a message of their own: a tool output,
    or a message of a speaker other than the model."""
    kind = _kind(item)
    return kind in OUTPUTS or (kind == "message" and isinstance(item, dict) and item.get("role") in SPEAKERS)


def _items(given: Any) -> list[Any]:
    if type(given) is str:
        return [{"role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def compacted(body: Mapping[str, Any]) -> list[Any]:
    """The input up to and with its newest `compaction` item (nothing when there is none)."""
    items = _items(body.get("input"))
    return items[: _newest_compaction(items) + 1]


def _newest_compaction(items: Sequence[Any]) -> int:
    return max((i for i, item in enumerate(items) if _kind(item) == COMPACTION), default=-1)


def _kind(item: Any) -> str:
    """An item's type; a bare `{"role", "content"}` is a message."""
    if not isinstance(item, dict):
        return ""
    kind = item.get("type")
    return kind if isinstance(kind, str) else ("message" if "role" in item else "")


_REQUIRED: dict[str, tuple[str, ...]] = {
    "function_call": ("call_id", "name"),
    "custom_tool_call": ("call_id", "name"),
    "function_call_output": ("call_id",),
    "custom_tool_call_output": ("call_id",),
}


def _check(item: Any, index: int) -> None:
    where = f"input[{index}]"
    kind = _kind(item)
    if not kind:
        raise InvalidRequest(f"Invalid '{where}': expected an item object with a type.", param=where)
    if kind == "item_reference":
        raise InvalidRequest(
            f"'{where}': an item_reference names an item stored upstream, and this gateway forwards responses "
            "without storing them; send the item itself.",
            param=where,
        )
    if kind == "message":
        if item.get("role") not in (*SPEAKERS, "assistant"):
            raise InvalidRequest(
                f"Invalid '{where}.role': expected user, assistant, system or developer.", param=f"{where}.role"
            )
        content = item.get("content")
        if type(content) is not str and not (type(content) is list and all(isinstance(p, dict) for p in content)):
            raise InvalidRequest(
                f"Invalid '{where}.content': expected a string or an array of parts.", param=f"{where}.content"
            )
    for key in _REQUIRED.get(kind, ()):
        if type(item.get(key)) is not str or not item[key]:
            raise InvalidRequest(f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}")
    arguments = item.get("arguments", item.get("input")) if kind in CALLS else ""
    if type(arguments) is not str:
        raise InvalidRequest(f"Invalid '{where}': a call's arguments must be a string.", param=where)


def _instructions(instructions: Any) -> list[Message]:
    if not instructions:
        return []
    return [Message("system", instructions, raw={"type": INSTRUCTIONS, "text": instructions})]


def parse_items(items: Sequence[Any], start: int = 0) -> list[Message]:
    messages: list[Message] = []
    run: list[dict[str, Any]] = []
    pending: dict[str, int] = {}
    for index, item in enumerate(items, start):
        kind = _kind(item)
        if kind in OUTPUTS:
            _flush(run, messages)
            if pending.pop(item["call_id"], None) is None:
                raise InvalidRequest(
                    f"'input[{index}]': no tool call found for {kind} with call_id {item['call_id']!r}.",
                    param=f"input[{index}].call_id",
                )
            messages.append(Message("tool", _output_text(item.get("output")), tool_call_id=item["call_id"], raw=item))
            continue
        if kind == "message" and item["role"] in SPEAKERS:
            _flush(run, messages)
            if pending:
                _unanswered(pending)
            text, images = _content(item.get("content"))
            messages.append(Message(item["role"], text, raw=item, images=images))
            continue
        if kind in CALLS:
            pending[item["call_id"]] = index
        run.append(item)
    _flush(run, messages)
    if pending:
        _unanswered(pending)
    return messages


def _unanswered(pending: Mapping[str, int]) -> None:
    call_id, index = next(iter(pending.items()))
    raise InvalidRequest(
        f"'input[{index}]': no tool output found for function call {call_id!r}.", param=f"input[{index}]"
    )


def _flush(run: list[dict[str, Any]], messages: list[Message]) -> None:
    """The model's items so far, one assistant message."""
    if not run:
        return
    calls = tuple(
        ToolCall(item["call_id"], item["name"], item.get("arguments", item.get("input")) or "")
        for item in run
        if _kind(item) in CALLS
    )
    text = "\n".join(_content(item.get("content"))[0] for item in run if _kind(item) == "message")
    raw = run[0] if len(run) == 1 else {"type": GROUP, "items": list(run)}
    messages.append(Message("assistant", text, calls, raw=raw))
    run.clear()


def _content(content: Any) -> tuple[str, int]:
    """(the text of a message's content, its parts that are not text)."""
    if type(content) is str:
        return content, 0
    parts = [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []
    texts = [p["text"] for p in parts if p.get("type") in TEXT_PARTS and type(p.get("text")) is str]
    refusals = [p["refusal"] for p in parts if type(p.get("refusal")) is str]
    return "\n".join([*texts, *refusals]), len(parts) - len(texts) - len(refusals)


def _output_text(output: Any) -> str:
    return output if type(output) is str else _content(output)[0]


# -- rendering -------------------------------------------------------------------------------------


def to_wire(messages: Sequence[Message]) -> tuple[str | None, list[Any]]:
    """(the instructions, or None; the input items)."""
    lead = 0  # the instructions, or what the assembly built in their place (a carried system prompt)
    while lead < len(messages) and _instructs(messages[lead]):
        lead += 1
    leading = messages[:lead]
    instructions = None
    if len(leading) == 1 and leading[0].raw:
        instructions = leading[0].raw["text"]
    elif leading:
        instructions = "\n\n".join(m.text for m in leading if m.text)
    items: list[Any] = []
    for message in messages[lead:]:
        raw = message.raw
        if raw.get("type") == GROUP:
            items.extend(raw["items"])
        elif raw and raw.get("type") != INSTRUCTIONS:
            items.append(raw)
        else:
            items.extend(_built(message))
    return instructions, items


def _instructs(message: Message) -> bool:
    """The instructions, or a system message the assembly built (not an input item of the client's)."""
    return message.is_instruction and (not message.raw or message.raw.get("type") == INSTRUCTIONS)


def _built(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "function_call_output", "call_id": message.tool_call_id or "", "output": message.text}]
    if message.role != "assistant":
        part = {"type": "input_text", "text": message.text}
        return [{"type": "message", "role": message.role, "content": [part]}]
    out: list[dict[str, Any]] = []
    if message.text:
        part = {"type": "output_text", "text": message.text, "annotations": []}
        out.append({"type": "message", "role": "assistant", "content": [part]})
    out += [
        {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
    ]
    return out


# -- answers ---------------------------------------------------------------------------------------


def _found(items: Sequence[Any], name: str) -> Found:
    ours = tuple(
        ToolCall(str(item.get("call_id") or ""), name, _text(item.get("arguments")))
        for item in items
        if _kind(item) == "function_call" and _named(item, name)
    )
    theirs = any(_kind(item) in CALLS and not _named(item, name) for item in items)
    text = "\n".join(_content(item.get("content"))[0] for item in items if _kind(item) == "message")
    return Found(ours, theirs, text, list(items))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _mine(item: Any, name: str) -> bool:
    return _kind(item) == "function_call" and _named(item, name)


def hidden(response: Any, name: str) -> Any:
    """A response object as the agent may see it: the recall tool out of the `tools` it echoes
    (and of a `tool_choice` naming it)."""
    if not isinstance(response, dict):
        return response
    shown = dict(response)
    if isinstance(shown.get("tools"), list):
        shown["tools"] = [t for t in shown["tools"] if not _named(t, name)]
    if _named(shown.get("tool_choice"), name):
        shown["tool_choice"] = "auto"
    return shown


class ResponsesWhole(WholeAnswer):
    """Whole answers: the last round's response, its recall calls stripped, usage summed."""

    usage_keys = USAGE
    final: dict[str, Any] | None = None

    def inspect(self, data: Any) -> Found | None:
        if not isinstance(data, dict) or not isinstance(data.get("output"), list):
            return None
        return _found(data["output"], self.name)

    def finish(self, data: dict[str, Any]) -> None:
        if self.found.ours:
            data["output"] = [item for item in data["output"] if not _mine(item, self.name)]
        if self.usage and isinstance(data.get("usage"), dict):
            data["usage"] = {**data["usage"], **self.usage}
        data.update(hidden(data, self.name))
        self.final = data


@dataclass(slots=True)
class _Round:
    index: dict[int, int] = field(default_factory=dict)  # upstream output_index -> the agent's
    ours: set[int] = field(default_factory=set)
    items: dict[int, Any] = field(default_factory=dict)  # upstream output_index -> the item, when done
    closing: dict[str, Any] | None = None  # the held response.completed (or .incomplete)
    failed: bool = False  # the upstream ended the response with `response.failed` or `error`


class ResponsesStream:
    """Streams (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.final: dict[str, Any] | None = None
        self._sequence = 0
        self._next = 0
        self._head: dict[str, Any] | None = None
        self._shown: list[Any] = []  # the items the agent saw, in its order
        self._usage: dict[str, Any] = {}
        self._round = _Round()
        self._rounds = 0

    @property
    def found(self) -> Found:
        state = self._round
        return _found([state.items[i] for i in sorted(state.items)], self.name)

    async def read(self, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        self._round = state = _Round()
        self._rounds += 1
        async for _, payload in json_events(upstream):
            if not isinstance(payload, dict):
                continue
            out = self._event(payload, state)
            if out is not None:
                yield out

    def _event(self, payload: dict[str, Any], state: _Round) -> bytes | None:
        kind = payload.get("type")
        response = payload.get("response")
        if kind in OPENING:
            if self._rounds > 1:
                return None  # a later round's opening: the agent's response began already
            if self._head is None:
                self._head = dict(response) if isinstance(response, dict) else {}
            return self._relayed({**payload, "response": hidden(response, self.name)})
        if kind in HELD:
            state.closing = payload
            add_usage(self._usage, response.get("usage") if isinstance(response, dict) else None, USAGE)
            return None
        state.failed = state.failed or kind in FAILED
        index = payload.get("output_index")
        if not isinstance(index, int):  # errors, and events this gateway does not know: as they came
            return self._relayed({**payload, "response": hidden(response, self.name)} if response else payload)
        item = payload.get("item")
        if kind == "response.output_item.added":
            if _mine(item, self.name):
                state.ours.add(index)
            elif index not in state.index:
                state.index[index] = self._next
                self._next += 1
        if kind == "response.output_item.done":
            state.items[index] = item
            if index not in state.ours:
                self._shown.append(item)
        if index in state.ours:
            return None
        return self._relayed({**payload, "output_index": state.index.get(index, index)})

    def _relayed(self, payload: dict[str, Any]) -> bytes:
        payload = {**payload, "sequence_number": self._sequence}
        self._sequence += 1
        return event(str(payload.get("type")), payload)

    def closing(self) -> list[bytes]:
        if self._round.failed:  # the failure was the stream's last word, relayed as it came
            return []
        held = self._round.closing
        kind = held.get("type") if held else "response.completed"
        response = dict(held["response"]) if held and isinstance(held.get("response"), dict) else {}
        head = self._head or {}
        response = {**head, **response, "output": list(self._shown)}
        if isinstance(head.get("id"), str):
            response["id"] = head["id"]
        if self._usage:
            usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
            response["usage"] = {**usage, **self._usage}
        if not held:
            response.setdefault("status", "completed")
        response = hidden(response, self.name)
        self.final = response
        return [self._relayed({"type": kind, "response": response})]
