"""Which end user, session and project a request belongs to.

User, the person behind the request (ClawVM does not authenticate users; the tenant's client
names them): the `X-ClawVM-User` header, else `metadata.user_id`, else OpenAI's `user` field.
The ClawVM-specific names come first, as for sessions and projects, so a client that already
fills `user` for the upstream's abuse monitoring can still name a different ClawVM user. A
user id is only ever part of a digest, never of a store key, so e-mail addresses used as ids
are not written anywhere in clear.

Session: the `X-ClawVM-Session` header, else `metadata.session_id`, else a fingerprint of the
transcript's opening (system prompt and first user message) and of the user, which is stable
across the turns of one conversation; two users with identical openings get two sessions.
`user` names a person, not a conversation, and is never a session id.

Project, the scope that outlives a session (write-back memory: preferences, project rules;
the reset carry-over): `X-ClawVM-Project`, else `metadata.project_id` (an explicit project is
shared deliberately by every request that names it), else a fingerprint of the tenant, the
user and the system prompt: without a named user, every request of the tenant with that system
prompt shares the project (one tenant key without user ids is one user), though a reset carries
between its sessions only when the gateway derived both session ids (`policies.crossing.may_continue`).
Free-form ids are hashed so nothing a client sends can shape a store key, and a client's id never
takes the gateway's own `fp-` head (`client_id`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.wire.base import Names
from policies.crossing import FINGERPRINT  # the head of an id the gateway derived from the transcript
from policies.transcript import Message

SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,96}")
PER_USER = "pu-"  # the head of a project's per-user id (see `per_user`)


@dataclass(frozen=True, slots=True)
class SessionIds:
    session: str
    project: str
    source: str  # "header" | "body" | "fingerprint"
    user: str = ""  # a digest of the end user's id ("u-..."); "" when the request names none


def resolve(headers: Mapping[str, str], names: Names, messages: Sequence[Message], tenant: str) -> SessionIds:
    """The request's ids: from its headers, else what its body names (`names`, read by its wire
    format), else fingerprints of the transcript."""
    user = user_of(headers, names)
    named, source = _first((headers.get("x-clawvm-session"), "header"), (names.session, "body"))
    if named is None:
        session, source = FINGERPRINT + _digest(_user_part(user) + _opening(messages)), "fingerprint"
    else:
        session = client_id(named)
    project_named, _ = _first((headers.get("x-clawvm-project"), "header"), (names.project, "body"))
    if project_named is None:
        project = FINGERPRINT + _digest(tenant + _user_part(user) + "\x1f" + _system_prompt(messages))
    else:
        project = client_id(project_named)
    return SessionIds(session=session, project=project, source=source, user=user)


def user_of(headers: Mapping[str, str], names: Names) -> str:
    """The end user the request names, as a digest: `X-ClawVM-User`, else the body's (`Names.user`:
    `metadata.user_id`, else the format's own user field)."""
    user, _ = _first((headers.get("x-clawvm-user"), "header"), (names.user, "body"))
    return "" if user is None else "u-" + _digest(user)


def per_user(project: str, user: str) -> str:
    """The id of one user's part of a project (its newest session, for reset detection); the
    project itself when no user is named."""
    return project if not user else PER_USER + _digest(project + "\x1f" + user)


def safe_id(value: str) -> str:
    """The id itself when it is plain and short; otherwise a digest of it."""
    return value if SAFE_ID.fullmatch(value) else "h-" + _digest(value)


def client_id(value: str) -> str:
    """An id the client named, as `safe_id` makes it, never taken for one the gateway derived
    (`FINGERPRINT`): what the gateway infers about its own ids (a reset across sessions, sessions
    that are one agent's) must not be claimed by a name."""
    return "h-" + _digest(value) if value.startswith(FINGERPRINT) else safe_id(value)


def _first(*candidates: tuple[Any, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if isinstance(value, str) and value.strip():
            return value.strip(), source
    return None, ""


def _user_part(user: str) -> str:
    """What a named user adds to a fingerprint: nothing without one, so ids stay as they were.
    The separator cannot occur in a tenant name, nor '\x1e' in a digest."""
    return "\x1e" + user + "\x1e" if user else ""


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
