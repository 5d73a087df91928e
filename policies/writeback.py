"""Validated write-back: stage typed updates from a turn, validate them, merge the accepted ones.

The gateway keeps the agent's durable memory per scope (project: rules and preferences that
outlive a session, memory files; session: the plan, evidence references, session rules). Each
turn's new pages become typed `Update`s (`stage`), each update is checked (`validate`), and the
accepted ones are merged into the scope's committed `Memory` (`apply`). Nothing here does I/O:
`gateway.store.journal` stores the memory and journals every update, committed or rejected.

Staging, page by page:
  constraint fact -> APPEND, slot = the fact id (content-addressed: a rule is never rewritten);
  preference fact -> MERGE, slot = `pref:<subject>` when the sentence names a known subject
                     (see SUBJECTS: "call me ..." is `pref:name`, tabs/spaces `pref:indentation`,
                     single/double quotes `pref:quotes`), else the fact id. The subject table is
                     small on purpose: a wrong merge would silently drop a preference;
  intent fact     -> an identity fact ("my e-mail is ...") MERGE, slot = `intent:<key>` (the key
                     `policies.intent.identity_key` names: `intent:email`, `intent:name` ...), so
                     the user's latest word on who they are wins; any other intent APPEND, slot =
                     the fact id: what the user asked for accumulates, like rules;
  plan page       -> SET on `plan`, base_version = the committed plan's version; only the
                     turn's newest plan is staged (it supersedes the others);
  evidence page   -> APPEND, slot = the page id, value = `<page id> sha256:<digest of its text>`
                     (the digest `gateway.store.store.body_digest` keys the body by);
  memory-file write (a tool call of a new assistant page that writes MEMORY.md, memory/*.md,
                     CLAUDE.md, AGENTS.md, USER.md, or a memory_write/save_memory-like tool)
                  -> slot `file:<path>`: SET (no base version) for write/create, APPEND for
                     append/edit/insert. A shell command that writes such a file is not seen.

Validation runs five checks in order; the first failure is the reason (see `Reason`).

Merge rules: a plan SET supersedes (the old value goes to history); constraints and intents
are append-only; a preference or identity MERGE is last writer wins with history (within one batch only the
last accepted MERGE of a slot is written, so a replayed batch changes nothing); evidence is
immutable (the same reference again is a no-op); a file SET replaces (history kept) and a file
APPEND adds text the slot does not hold yet. Writing a slot's committed value again is a no-op.
History keeps the last HISTORY_LIMIT values. `Memory.version` counts the batches that changed
something; `Entry.version` counts a slot's changes (0 = no slot).

Applying a batch shaped like `stage`'s twice gives the memory applying it once gives. Two
versioned SETs of one slot in one batch are not replay-safe by themselves (the first, stale on
the first pass, is fresh on a replay): the store's batch ids (`batch_id`) make retries safe.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from policies.classify import is_plan_call
from policies.intent import identity_key
from policies.pages import Page, PageType, Scope
from policies.pagetable import PAGE_ID, PageTable
from policies.transcript import ROLES, ToolCall

HISTORY_LIMIT = 8
MAX_VALUE_CHARS = 16_000
MAX_PATH_CHARS = 512
FIELDS = frozenset({"body"})
PLAN_SLOT = "plan"
FILE_PREFIX = "file:"
SUBJECT_PREFIX = "pref:"
IDENTITY_PREFIX = "intent:"
DEFAULT_MEMORY_FILE = "MEMORY.md"
FILE_KIND = "file"
INSTRUCTING_ROLES = frozenset({"system", "developer", "user"})
SESSION_ONLY = frozenset({str(PageType.PLAN), str(PageType.EVIDENCE)})
MEMORY_FILES = frozenset({"memory.md", "claude.md", "agents.md", "user.md"})
PATH_KEYS = ("file_path", "path", "filePath", "filename", "file", "target_file", "notebook_path", "input")
VALUE_KEYS = (
    "content",
    "file_text",
    "new_string",
    "new_str",
    "text",
    "insert_text",
    "memory",
    "fact",
    "value",
    "input",
)
COMMAND_KEYS = ("command", "action", "operation")
APPEND_WORDS = ("append", "edit", "replace", "patch", "update", "insert", "add", "save", "store")
OVERWRITE_WORDS = ("write", "create", "overwrite")
SUBJECTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("name", re.compile(r"\bcall\s+me\b", re.IGNORECASE)),
    ("indentation", re.compile(r"\b(?:tabs?|spaces)\b", re.IGNORECASE)),
    ("quotes", re.compile(r"\b(?:single|double)[ -]quot(?:es|ed)\b", re.IGNORECASE)),
)
_SUBJECT_SLOT = re.compile(r"pref:[a-z0-9_-]{1,64}")
_IDENTITY_SLOT = re.compile(r"intent:[a-z0-9_-]{1,64}")
_PATH = re.compile(r"[^\x00-\x1f\x7f]+")
_FILE_NAME = re.compile(r"\S+\.[A-Za-z0-9]{1,8}")  # a memory tool's own target: one word with a suffix
_WORD = re.compile(r"[A-Za-z_]{1,32}")
_LABEL = re.compile(r"^(?:rule|preference|user said): ")


class Op(StrEnum):
    APPEND = "append"
    MERGE = "merge"
    SET = "set_with_version"
    REMOVE = "remove"


class Reason(StrEnum):
    DESTRUCTIVE_OP = "DESTRUCTIVE_OP"
    SCOPE_DENIED = "SCOPE_DENIED"
    SCHEMA_INVALID = "SCHEMA_INVALID"
    PROVENANCE_DANGLING = "PROVENANCE_DANGLING"
    STALE_VERSION = "STALE_VERSION"
    POLICY_VIOLATION = "POLICY_VIOLATION"


OPS: Mapping[str, frozenset[Op]] = {
    str(PageType.EVIDENCE): frozenset({Op.APPEND}),
    str(PageType.CONSTRAINT): frozenset({Op.APPEND, Op.REMOVE}),
    str(PageType.PREFERENCE): frozenset({Op.MERGE, Op.APPEND, Op.REMOVE}),
    str(PageType.INTENT): frozenset({Op.MERGE, Op.APPEND, Op.REMOVE}),
    str(PageType.PLAN): frozenset({Op.SET}),
    str(PageType.BOOTSTRAP): frozenset({Op.SET, Op.APPEND}),
    FILE_KIND: frozenset({Op.SET, Op.APPEND}),
}
FACT_TYPES = frozenset({PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT})
TOOL_DENIED = frozenset({PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT, PageType.BOOTSTRAP})
ASSISTANT_DENIED = frozenset({PageType.CONSTRAINT, PageType.INTENT, PageType.BOOTSTRAP})


@dataclass(frozen=True, slots=True)
class Update:
    """One staged change to one slot."""

    slot: str  # "plan", a fact page id, `pref:<subject>`, `intent:<key>`, an evidence page id, "file:<path>"
    page_id: str  # the page the value comes from
    page_type: PageType
    field: str  # "body" (the text)
    op: Op
    value: str
    scope: Scope
    source_role: str  # role of the message that carried it
    source_ref: str  # the carrier message page id, or the tool_call_id of a tool result
    base_version: int | None = None  # set_with_version: the slot version the writer read


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed slot."""

    slot: str
    page_id: str
    page_type: PageType
    value: str
    version: int
    scope: Scope
    source_role: str
    source_ref: str
    history: tuple[str, ...] = ()  # earlier values, oldest first, at most HISTORY_LIMIT


@dataclass(frozen=True, slots=True)
class Memory:
    """One scope's committed state; `version` counts the commits that changed it."""

    entries: Mapping[str, Entry]
    version: int

    @classmethod
    def empty(cls) -> Memory:
        return cls({}, 0)


@dataclass(frozen=True, slots=True)
class Context:
    """What validation may consult."""

    scope: Scope  # the scope being committed
    allowed: frozenset[Scope]  # scopes this principal may write
    refs: frozenset[str]  # provenance refs that resolve (page ids and tool_call_ids known)
    max_value_chars: int = MAX_VALUE_CHARS


@dataclass(frozen=True, slots=True)
class Rejection:
    update: Update
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Outcome:
    memory: Memory
    committed: tuple[Update, ...]
    rejected: tuple[Rejection, ...]


# -- staging -------------------------------------------------------------------------------


def stage(table: PageTable, new_pages: Sequence[Page], memory_plan_version: int) -> list[Update]:
    """The typed updates one ingest's new pages bring, in page order. Only the newest plan
    of the turn is staged: it supersedes the others, and one base version fits one writer. A
    plan tool's echo of its checklist (a tool result) is not staged: the agent's call is."""
    plans = [page.id for page in new_pages if page.type is PageType.PLAN and page.provenance.role != "tool"]
    current_plan = plans[-1] if plans else None
    updates: list[Update] = []
    for page in new_pages:
        if page.type is PageType.PLAN and page.id == current_plan:
            updates.append(_update(page, PLAN_SLOT, Op.SET, plan_text(page), page.id, base_version=memory_plan_version))
        elif page.type in FACT_TYPES:
            updates.append(_fact_update(table, page))
        elif page.type is PageType.EVIDENCE:
            updates.append(_evidence_update(page))
        if page.provenance.role == "assistant":
            updates.extend(file_updates(page))
    return updates


def _evidence_update(page: Page) -> Update:
    ref = page.provenance.tool_call_id or page.id
    return _update(page, page.id, Op.APPEND, evidence_reference(page), ref)


def _fact_update(table: PageTable, page: Page) -> Update:
    carrier_id = page.provenance.parent_id or page.id
    carrier = table.pages.get(carrier_id)
    role = carrier.provenance.role if carrier is not None else page.provenance.role
    text = page.reprs.full.text
    if page.type is PageType.CONSTRAINT:
        return _update(page, page.id, Op.APPEND, text, carrier_id, role=role)
    if page.type is PageType.INTENT:
        slot = intent_slot(page.id, text)
        return _update(page, slot, Op.APPEND if slot == page.id else Op.MERGE, text, carrier_id, role=role)
    return _update(page, preference_slot(page.id, text), Op.MERGE, text, carrier_id, role=role)


def _update(
    page: Page,
    slot: str,
    op: Op,
    value: str,
    ref: str,
    *,
    role: str | None = None,
    base_version: int | None = None,
) -> Update:
    role = role or page.provenance.role
    return Update(slot, page.id, page.type, "body", op, value, page.scope, role, ref, base_version)


def preference_slot(fact_id: str, text: str) -> str:
    """`pref:<subject>` for a sentence about a known subject (the first in SUBJECTS), else the fact id."""
    sentence = _LABEL.sub("", text)
    subject = next((name for name, pattern in SUBJECTS if pattern.search(sentence)), None)
    return fact_id if subject is None else SUBJECT_PREFIX + subject


def intent_slot(fact_id: str, text: str) -> str:
    """`intent:<key>` for an identity fact (`intent:email`, `intent:name` ...), else the fact id."""
    key = identity_key(_LABEL.sub("", text))
    return fact_id if key is None else IDENTITY_PREFIX + key


def opens_sessions(entry: Entry) -> bool:
    """Whether a committed entry seeds a new session of its scope: everything but an intent
    that is not about who the user is (a request belongs to the session that made it; a reset
    carries the live session's intents, not this)."""
    return entry.page_type is not PageType.INTENT or entry.slot.startswith(IDENTITY_PREFIX)


def plan_text(page: Page) -> str:
    """The plan's text and, for a plan tool call (TodoWrite ...), the call itself."""
    full = page.reprs.full
    calls = [f"{c.name}({c.arguments})" for c in full.tool_calls if is_plan_call(c)]
    return "\n".join(part for part in (full.text, *calls) if part)


def evidence_reference(page: Page) -> str:
    """`<page id> sha256:<hex>`: the body's address, not the body."""
    digest = hashlib.sha256(page.reprs.full.text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{page.id} sha256:{digest}"


def file_updates(page: Page) -> list[Update]:
    """Memory-file writes among an assistant page's tool calls."""
    updates = []
    for call in page.reprs.full.tool_calls:
        write = memory_write(call)
        if write is not None:
            op, path, value = write
            slot = FILE_PREFIX + path
            updates.append(Update(slot, page.id, page.type, "body", op, value, Scope.PROJECT, "assistant", page.id))
    return updates


def memory_write(call: ToolCall) -> tuple[Op, str, str] | None:
    """(op, path, value) when `call` writes a memory file, else None."""
    args = _arguments(call.arguments)
    op = _write_op(call.name, args)
    if op is None:
        return None
    path = _path(args)
    if path is None or not is_memory_path(path):
        if not is_memory_tool(call.name):
            return None
        path = path if path is not None and _FILE_NAME.fullmatch(path) else DEFAULT_MEMORY_FILE
    value = next((args[k] for k in VALUE_KEYS if isinstance(args.get(k), str)), call.arguments)
    return op, path, value


def is_memory_path(path: str) -> bool:
    """MEMORY.md, CLAUDE.md, AGENTS.md, USER.md (any directory, any case) or memory/*.md."""
    pure = PurePosixPath(path)
    if pure.name.lower() in MEMORY_FILES:
        return True
    return pure.suffix.lower() == ".md" and pure.parent.name.lower() == "memory"


def is_memory_tool(name: str) -> bool:
    """memory_write, save_memory, update_memory, add_memory, MemoryAppend ..."""
    flat = re.sub(r"[^a-z]", "", name.lower())
    return "memory" in flat and any(word in flat for word in (*APPEND_WORDS, *OVERWRITE_WORDS))


def _write_op(name: str, args: Mapping[str, Any]) -> Op | None:
    """APPEND for an edit or append, SET for a write or create, None for anything else (a read).
    A one-word `command` argument (str_replace_based_edit_tool: view, create, str_replace)
    decides first; a shell command line does not."""
    command = next((args[k] for k in COMMAND_KEYS if isinstance(args.get(k), str)), "")
    words = (command if _WORD.fullmatch(command) else name).lower()
    if any(word in words for word in APPEND_WORDS):
        return Op.APPEND
    if any(word in words for word in OVERWRITE_WORDS):
        return Op.SET
    return None


def _path(args: Mapping[str, Any]) -> str | None:
    raw = next((args[k] for k in PATH_KEYS if isinstance(args.get(k), str) and args[k].strip()), None)
    if raw is None:
        return None
    path = raw.strip()
    return path[2:] if path.startswith("./") else path


def _arguments(raw: str) -> Mapping[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def known_refs(table: PageTable) -> frozenset[str]:
    """The provenance refs that resolve in a session: its page ids and tool call ids."""
    return frozenset(table.pages) | frozenset(table.calls)


def plan_version(memory: Memory) -> int:
    """The committed plan's version (0 when there is none): `stage`'s `memory_plan_version`."""
    entry = memory.entries.get(PLAN_SLOT)
    return 0 if entry is None else entry.version


# -- validation ----------------------------------------------------------------------------


def validate(update: Update, memory: Memory, context: Context) -> Rejection | None:
    """The first failed check, in order: schema, provenance, scope, non-destructive, policy."""
    for check in CHECKS:
        rejection = check(update, memory, context)
        if rejection is not None:
            return rejection
    return None


def slot_kind(update: Update) -> str:
    """`file` for a memory-file slot, else the page type."""
    return FILE_KIND if update.slot.startswith(FILE_PREFIX) else str(update.page_type)


def _reject(update: Update, reason: Reason, detail: str) -> Rejection:
    return Rejection(update, reason, detail)


def _schema(update: Update, memory: Memory, context: Context) -> Rejection | None:
    kind = slot_kind(update)
    problem = None
    if update.field not in FIELDS:
        problem = f"unknown field {update.field!r}"
    elif update.op not in OPS.get(kind, frozenset()):
        problem = f"{update.op} is not allowed on a {kind} slot"
    elif not _slot_ok(update, kind):
        problem = f"malformed {kind} slot {update.slot[:80]!r}"
    elif update.source_role not in ROLES:
        problem = f"unknown source role {update.source_role!r}"
    elif len(update.value) > context.max_value_chars:
        problem = f"value of {len(update.value)} chars exceeds {context.max_value_chars}"
    elif update.op is not Op.REMOVE and not update.value.strip():
        problem = "empty value"
    return None if problem is None else _reject(update, Reason.SCHEMA_INVALID, problem)


def _slot_ok(update: Update, kind: str) -> bool:
    slot = update.slot
    if kind == FILE_KIND:
        path = slot[len(FILE_PREFIX) :]
        return len(path) <= MAX_PATH_CHARS and _PATH.fullmatch(path) is not None
    if kind == PageType.PLAN:
        return slot == PLAN_SLOT
    if kind == PageType.PREFERENCE and _SUBJECT_SLOT.fullmatch(slot):
        return True
    if kind == PageType.INTENT and _IDENTITY_SLOT.fullmatch(slot):
        return True
    return slot == update.page_id and PAGE_ID.fullmatch(slot) is not None


def _provenance(update: Update, memory: Memory, context: Context) -> Rejection | None:
    if update.source_ref and update.source_ref in context.refs:
        return None
    return _reject(update, Reason.PROVENANCE_DANGLING, f"source {update.source_ref[:80]!r} does not resolve")


def _scope(update: Update, memory: Memory, context: Context) -> Rejection | None:
    problem = None
    if update.scope != context.scope:
        problem = f"a {update.scope} update in a {context.scope} commit"
    elif update.scope not in context.allowed:
        problem = f"this principal may not write {update.scope} scope"
    elif slot_kind(update) in SESSION_ONLY and update.scope is not Scope.SESSION:
        problem = f"a {slot_kind(update)} slot is session scope only"
    return None if problem is None else _reject(update, Reason.SCOPE_DENIED, problem)


def _non_destructive(update: Update, memory: Memory, context: Context) -> Rejection | None:
    if update.op is Op.REMOVE:
        if update.page_type in FACT_TYPES and update.source_role not in INSTRUCTING_ROLES:
            return _reject(update, Reason.DESTRUCTIVE_OP, f"{update.source_role} may not remove a {update.page_type}")
        return None
    current = memory.entries.get(update.slot)
    if current is None:
        if update.op is Op.SET and update.base_version not in (None, 0):
            return _reject(update, Reason.STALE_VERSION, f"no slot yet; the writer read v{update.base_version}")
        return None
    if update.value == current.value:
        return None  # the committed value again: an idempotent no-op
    return _overwrite(update, current)


def _overwrite(update: Update, current: Entry) -> Rejection | None:
    """A write that would change a committed value."""
    if update.op is Op.APPEND and slot_kind(update) != FILE_KIND:
        return _reject(update, Reason.DESTRUCTIVE_OP, f"committed {slot_kind(update)} slot is immutable")
    if update.op is not Op.SET:
        return None
    if update.base_version is None and current.value not in update.value:
        return _reject(update, Reason.DESTRUCTIVE_OP, "overwrite drops committed content")
    if update.base_version is not None and update.base_version != current.version:
        return _reject(
            update, Reason.STALE_VERSION, f"slot is v{current.version}, the writer read v{update.base_version}"
        )
    return None


def _policy(update: Update, memory: Memory, context: Context) -> Rejection | None:
    role, page_type = update.source_role, update.page_type
    if (role == "tool" and page_type in TOOL_DENIED) or (role == "assistant" and page_type in ASSISTANT_DENIED):
        return _reject(update, Reason.POLICY_VIOLATION, f"{role} provenance may not write a {page_type} slot")
    return None


CHECKS: tuple[Callable[[Update, Memory, Context], Rejection | None], ...] = (
    _schema,
    _provenance,
    _scope,
    _non_destructive,
    _policy,
)


# -- merge ---------------------------------------------------------------------------------


def apply(memory: Memory, updates: Sequence[Update], context: Context) -> Outcome:
    """Validate each update against the memory as the earlier ones left it; merge the accepted."""
    entries = dict(memory.entries)
    merges = _merges(updates, memory, context)
    superseded = _superseded(updates, merges)
    committed: list[Update] = []
    rejected: list[Rejection] = []

    for index, update in enumerate(updates):
        if index in merges:
            rejection = merges[index]
        else:
            rejection = validate(update, Memory(entries, memory.version), context)
        if rejection is not None:
            rejected.append(rejection)
            continue
        committed.append(update)
        if index not in superseded:
            _merge(entries, update)
    before = memory.entries
    if all(entries.get(u.slot) == before.get(u.slot) for u in committed):  # the batch, not the memory
        return Outcome(memory, tuple(committed), tuple(rejected))
    return Outcome(Memory(entries, memory.version + 1), tuple(committed), tuple(rejected))


def _merges(updates: Sequence[Update], memory: Memory, context: Context) -> dict[int, Rejection | None]:
    """Each MERGE's validation, by index: it does not depend on the memory (a MERGE never fails
    the non-destructive check, and no other check reads the memory), so it is decided once, up
    front, on the memory as it was."""
    return {i: validate(u, memory, context) for i, u in enumerate(updates) if u.op is Op.MERGE}


def _superseded(updates: Sequence[Update], merges: Mapping[int, Rejection | None]) -> frozenset[int]:
    """MERGEs that a later accepted MERGE of the same slot in the batch overrides."""
    later: set[str] = set()
    found: set[int] = set()
    for index in sorted(merges, reverse=True):
        update = updates[index]
        if update.slot in later:
            found.add(index)
        elif merges[index] is None:
            later.add(update.slot)
    return frozenset(found)


def _merge(entries: dict[str, Entry], update: Update) -> None:
    current = entries.get(update.slot)
    if update.op is Op.REMOVE:
        entries.pop(update.slot, None)
    elif current is None:
        entries[update.slot] = _entry(update, update.value, 1, ())
    elif update.op is Op.APPEND:
        if update.value not in current.value:  # only file slots get here with a new value
            value = f"{current.value}\n{update.value}"
            entries[update.slot] = _entry(update, value, current.version + 1, current.history)
    elif update.value != current.value:
        history = (*current.history, current.value)[-HISTORY_LIMIT:]
        entries[update.slot] = _entry(update, update.value, current.version + 1, history)


def _entry(update: Update, value: str, version: int, history: tuple[str, ...]) -> Entry:
    return Entry(
        slot=update.slot,
        page_id=update.page_id,
        page_type=update.page_type,
        value=value,
        version=version,
        scope=update.scope,
        source_role=update.source_role,
        source_ref=update.source_ref,
        history=history,
    )


def batch_id(tenant: str, scope_id: str, updates: Sequence[Update]) -> str:
    """`wb:` + 32 hex of a digest of the scope and the updates: a retry has the same id."""
    digest = hashlib.sha256(f"{tenant}\x1f{scope_id}".encode("utf-8", "surrogatepass"))
    for update in updates:
        digest.update(b"\x1e" + _update_key(update).encode("utf-8", "surrogatepass"))
    return "wb:" + digest.hexdigest()[:32]


def _update_key(update: Update) -> str:
    fields = [update.slot, update.page_id, str(update.page_type), update.field, str(update.op), update.value]
    fields += [str(update.scope), update.source_role, update.source_ref, update.base_version]
    return json.dumps(fields, ensure_ascii=False)
