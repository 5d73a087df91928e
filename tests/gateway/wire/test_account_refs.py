"""gateway.wire.account_refs: which keys name an object of the upstream account."""

from __future__ import annotations

import json

import pytest

from gateway.api.errors import PermissionDenied
from gateway.wire.account_refs import references, refuse


def _found(body: dict) -> list[str]:
    return references(json.dumps(body).encode(), body)


def test_file_ids_anywhere_are_found_with_their_path() -> None:
    nested = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"file_id": "f"}}]}
    body = {"messages": [{"role": "user", "content": [nested]}]}
    assert _found(body) == ["messages.0.content.0.content.0.source.file_id"]
    tools = {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "x", "container": "cntr_1"}]}
    assert _found(tools) == ["tools.0.vector_store_ids", "tools.1.container"]
    assert _found({"input": "hi", "conversation": {"id": "conv_1"}}) == ["conversation"]


def test_text_that_mentions_a_file_id_and_inline_sources_are_not_references() -> None:
    body = {"messages": [{"role": "user", "content": "my file_id is file-1; container ready"}]}
    assert _found(body) == []
    inline = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    assert _found({"messages": [{"role": "user", "content": [inline]}]}) == []
    assert _found({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}) == []


def test_an_escaped_key_is_still_found() -> None:
    raw = b'{"messages":[{"role":"user","content":[{"type":"document","source":{"type":"file","file\\u005fid":"f"}}]}]}'
    assert references(raw, json.loads(raw)) == ["messages.0.content.0.source.file_id"]


def test_refused_only_through_a_shared_key() -> None:
    body = {"input": [{"type": "input_file", "file_id": "file-1"}]}
    raw = json.dumps(body).encode()
    refuse(raw, body, True, "acme")
    with pytest.raises(PermissionDenied) as refused:
        refuse(raw, body, False, "acme")
    assert refused.value.status_code == 403 and refused.value.param == "input.0.file_id"


def test_prose_and_non_ascii_escapes_skip_the_walk() -> None:
    body = {"messages": [{"role": "user", "content": 'the "container" is caf\u00e9'}], "file_id": "x"}
    raw = json.dumps({"messages": body["messages"]}).encode()  # ensure_ascii: caf\u00e9, \"container\"
    assert references(raw, body) == []  # the raw bytes name no key: nothing is walked
