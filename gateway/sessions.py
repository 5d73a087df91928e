"""Which session and project a request belongs to.

Session: the `X-ClawVM-Session` header, else `metadata.session_id`, else `user`, else a
fingerprint of the transcript's opening (system prompt and first user message), which is
stable across the turns of one conversation. Project, the scope that outlives a session:
`X-ClawVM-Project`, else `metadata.project_id`, else the tenant plus a fingerprint of the
system prompt. Free-form ids are hashed so nothing a client sends can shape a store key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.transcript import Message

SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,96}")
FINGERPRINT = "fp-"  # the head of an id the gateway derived from the transcript


@dataclass(frozen=True, slots=True)
class SessionIds:
    session: str
    project: str
    source: str  # "header" | "metadata" | "user" | "fingerprint"


def resolve(
    headers: Mapping[str, str], body: Mapping[str, Any], messages: Sequence[Message], tenant: str
) -> SessionIds:
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    session, source = _first(
        (headers.get("x-clawvm-session"), "header"),
        (metadata.get("session_id"), "metadata"),
        (body.get("user"), "user"),
    )
    if session is None:
        session, source = FINGERPRINT + _digest(_opening(messages)), "fingerprint"
    project, _ = _first((headers.get("x-clawvm-project"), "header"), (metadata.get("project_id"), "metadata"))
    if project is None:
        project = FINGERPRINT + _digest(tenant + "\x1f" + _system_prompt(messages))
    return SessionIds(session=safe_id(session), project=safe_id(project), source=source)


def safe_id(value: str) -> str:
    """The id itself when it is plain and short; otherwise a digest of it."""
    return value if SAFE_ID.fullmatch(value) else "h-" + _digest(value)


def _first(*candidates: tuple[Any, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip(), source
    return None, ""


def _opening(messages: Sequence[Message]) -> str:
    system = _system_prompt(messages)
    first_user = next((m.text for m in messages if m.role == "user"), "")
    return system + "\x1f" + first_user


def _system_prompt(messages: Sequence[Message]) -> str:
    leading = []
    for message in messages:
        if not message.is_instruction:
            break
        leading.append(message.text)
    return "\x1f".join(leading)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]
