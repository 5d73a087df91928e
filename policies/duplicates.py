"""Duplicate tool calls: the agent re-running a call whose result the gateway already holds.

A call's canonical signature is its tool name plus its arguments as sorted, compact JSON (the
raw text when it is not JSON). When the model issues a call whose signature matches a stored
evidence page, that is a *duplicate-tool fault* if the page had been degraded below full in
the prompt the model saw (it re-ran the tool instead of recalling), and a *duplicate-signature
alert* if the page was resident at full (a workload signal, not a policy fault).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.pages import Fidelity, Page, PageType
from policies.pagetable import CALL_ARGUMENTS_KEPT, IngestResult, PageTable

FAULT = "duplicate_tool"
ALERT = "duplicate_signature"


@dataclass(frozen=True, slots=True)
class Duplicate:
    kind: str  # FAULT | ALERT
    call_id: str  # the new call
    earlier: str  # the evidence page holding the earlier result
    level: Fidelity  # that page's level in the last prompt


def signature(name: str, arguments: str | None) -> str:
    try:
        canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = (arguments or "").strip()
    return f"{name}\x1f{canonical}"


def evidence_signatures(pages: Mapping[str, Page], order: Sequence[str]) -> dict[str, str]:
    """Signature -> the latest evidence page in `order` answering a call with that signature."""
    found: dict[str, str] = {}
    for page_id in order:
        page = pages[page_id]
        if page.type is PageType.EVIDENCE and page.provenance.tool_name:
            found[signature(page.provenance.tool_name, page.provenance.tool_arguments)] = page_id
    return found


def find(new_pages: Sequence[Page], known: Mapping[str, str], levels: Mapping[str, Fidelity]) -> list[Duplicate]:
    """Duplicates among the calls of `new_pages` against the evidence in `known` (earlier turns)."""
    out = []
    for page in new_pages:
        for call in page.reprs.full.tool_calls:
            earlier = known.get(signature(call.name, call.arguments[:CALL_ARGUMENTS_KEPT]))
            if earlier is None:
                continue
            level = levels.get(earlier, Fidelity.FULL)
            out.append(Duplicate(FAULT if level < Fidelity.FULL else ALERT, call.id, earlier, level))
    return out


def after_ingest(
    table: PageTable, result: IngestResult, levels: Mapping[str, Fidelity] | None = None
) -> list[Duplicate]:
    """Duplicates issued in this turn's new messages, judged against the previous prompt (its
    `levels`; the table's, when the turn is not yet assembled).

    The signature index of the earlier evidence lives on the table and grows with each turn's
    new evidence, so an appending turn costs its new messages, not the session; a rewrite (or a
    table fresh from the store) rebuilds it once."""
    index = table.signatures
    if index is None or table.signed != result.kept:
        index = evidence_signatures(table.pages, table.order[: result.kept])
    calling = [p for p in result.new_pages if p.reprs.full.tool_calls]
    found = find(calling, index, table.levels if levels is None else levels) if calling else []
    index.update(evidence_signatures(table.pages, table.order[result.kept :]))
    table.signatures, table.signed = index, len(table.order)
    return found
