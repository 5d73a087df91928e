"""What each wire format reads from a body about whose turn it is (`Wire.names`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.wire.base import NAMELESS, Names, metadata_names
from gateway.wire.chat import CHAT
from gateway.wire.messages import MESSAGES
from gateway.wire.responses import COMPACTION, RESPONSES

NAMED = {"session_id": " s-1 ", "project_id": "repo", "user_id": "alice", "clawvm_event": "reset"}


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def _messages(**fields: Any) -> bytes:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


def _responses(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "input": "hi", **fields}).encode()


@pytest.mark.parametrize(
    ("wire", "raw"),
    [(CHAT, _chat), (MESSAGES, _messages), (RESPONSES, _responses)],
    ids=["chat", "messages", "responses"],
)
def test_every_format_reads_the_metadata_names_stripped(wire: Any, raw: Any) -> None:
    request = wire.parse(raw(metadata=NAMED))
    assert wire.names(request) == Names(session="s-1", project="repo", user="alice", event="reset")
    assert wire.names(wire.parse(raw())) == NAMELESS


def test_the_openai_formats_fall_back_to_their_user_field_and_messages_has_none() -> None:
    assert CHAT.names(CHAT.parse(_chat(user="bob"))).user == "bob"
    assert RESPONSES.names(RESPONSES.parse(_responses(user="bob"))).user == "bob"
    assert CHAT.names(CHAT.parse(_chat(user="bob", metadata={"user_id": "alice"}))).user == "alice"
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "user": "bob"}
    assert metadata_names(body) == NAMELESS  # Anthropic's API has no top-level user


@pytest.mark.parametrize("metadata", ["s", ["s"], None, 5, {"session_id": 3, "user_id": "  ", "clawvm_event": []}])
def test_names_that_are_not_non_empty_strings_are_none(metadata: Any) -> None:
    assert metadata_names({"metadata": metadata, "user": 7}, "user") == NAMELESS


def test_a_codex_compaction_item_is_the_responses_event_unless_the_metadata_names_one() -> None:
    sealed = {"type": COMPACTION, "encrypted_content": "enc-1"}
    items = [{"role": "user", "content": "hi"}, sealed, {"role": "user", "content": "go on"}]
    assert RESPONSES.names(RESPONSES.parse(_responses(input=items))).event == COMPACTION
    named = RESPONSES.parse(_responses(input=items, metadata={"clawvm_event": "reset"}))
    assert RESPONSES.names(named).event == "reset"
