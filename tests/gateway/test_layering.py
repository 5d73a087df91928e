"""No code outside `gateway.wire` knows a wire format's field names (issue 14): every format's fields
are read and written by its adapter, and the rest of the gateway sees the neutral transcript,
`WireRequest` and `Names`. Checked on the code's string constants (docstrings aside)."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# Field names, values and event types that belong to one wire format and to no store or API of ours.
WIRE_FIELDS = frozenset(
    {
        # Chat Completions
        "choices",
        "finish_reason",
        "tool_call_id",
        "tool_calls",
        "function",
        "max_completion_tokens",
        # OpenAI Responses
        "instructions",
        "previous_response_id",
        "function_call",
        "function_call_output",
        "input_text",
        "output_text",
        "encrypted_content",
        # Anthropic Messages
        "tool_use",
        "tool_result",
        "stop_reason",
        "content_block_delta",
        "message_delta",
        "cache_control",
        "redacted_thinking",
        # the names a body gives its session, project, user and boundary
        "metadata",
        "session_id",
        "project_id",
        "user_id",
        "clawvm_event",
        "prompt_cache_key",
    }
)
# Our own serialisations that happen to share a word with a format (the page codec's tool calls).
# The page API shows a page's tool calls in one documented shape, OpenAI's; the audit API's path
# parameter is named session_id.
OWN = {
    "store/codec.py": {"tool_calls", "tool_call_id"},
    "api/pages_api.py": {"tool_calls", "tool_call_id", "function"},
    "api/ui_api.py": {"tool_calls"},
    "api/audit_api.py": {"session_id"},
}


def _constants(tree: ast.AST) -> set[str]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_no_module_outside_the_adapters_names_a_wire_field() -> None:
    found = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        relative = path.relative_to(GATEWAY).as_posix()
        if relative.startswith("wire/"):
            continue
        named = (_constants(ast.parse(path.read_text(encoding="utf-8"))) & WIRE_FIELDS) - OWN.get(relative, set())
        if named:
            found[relative] = sorted(named)
    assert found == {}


def test_the_check_sees_a_field_in_code_and_not_in_a_docstring() -> None:
    tree = ast.parse('"""reads choices"""\ndef f(body):\n    """the metadata"""\n    return body["choices"]\n')
    assert _constants(tree) & WIRE_FIELDS == {"choices"}
