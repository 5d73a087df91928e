"""`python -m bench intent`: the user-intent classifier's precision and recall on the labelled set.

The set is bench/data/intent_labels.tsv (source, sentence, label, kind), each sentence
labelled `intent` (a wish, a prohibition, an exception, an ordering, an identity fact or the
details of a request; `kind` says which) or `none`. Its sources:
- `trace:<name>#<message>`: every distinct user sentence of the shared traces (bench.traces),
  except the two messages over 3,000 characters (a pasted demonstration and a pasted log), and
  the two sentences of SWE-agent's issue template (pydicom-1458#2) that state the issue; the
  user-intent check of the bench (bench.intent_check) holds every later prompt to these;
- `written`: phrasings, negations, false friends, questions, quoted text and pasted output
  written for the set. The cue table was tuned on these and on the traces;
- `heldout`: sentences written and labelled after the cue table was frozen, never tuned on:
  the honest figure for text the table has not seen.
A sentence counts as found when `extract_facts` makes any fact of it as a user message (a rule,
a preference or an intent): all three are pinned and shown whole for the rest of the session.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policies.classify import extract_facts
from policies.transcript import Message

LABELS = Path(__file__).resolve().parent / "data" / "intent_labels.tsv"
COLUMNS = ("source", "sentence", "label", "kind")


@dataclass(frozen=True, slots=True)
class Labelled:
    source: str
    sentence: str
    intent: bool
    kind: str


@dataclass(frozen=True, slots=True)
class Score:
    sentences: int
    positives: int
    true_pos: int
    false_pos: int
    false_neg: int
    misses: tuple[str, ...]  # labelled intent, not found
    false_alarms: tuple[str, ...]  # labelled none, found

    @property
    def precision(self) -> float:
        found = self.true_pos + self.false_pos
        return self.true_pos / found if found else 0.0

    @property
    def recall(self) -> float:
        return self.true_pos / self.positives if self.positives else 0.0


def load_labels(path: Path = LABELS) -> list[Labelled]:
    """The labelled sentences of `path` (TSV with a header row naming COLUMNS)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if tuple(rows.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: the header must be {COLUMNS}, not {rows.fieldnames}")
        return [Labelled(r["source"], r["sentence"], r["label"] == "intent", r["kind"]) for r in rows]


def found(sentence: str) -> bool:
    """Whether the classifier keeps this sentence, typed by a user, as a fact."""
    return bool(extract_facts(Message(role="user", text=sentence)))


def score(labelled: Sequence[Labelled], source_prefix: str = "") -> Score:
    rows = [row for row in labelled if row.source.startswith(source_prefix)]
    hits = [(row, found(row.sentence)) for row in rows]
    misses = tuple(row.sentence for row, hit in hits if row.intent and not hit)
    alarms = tuple(row.sentence for row, hit in hits if hit and not row.intent)
    true_pos = sum(1 for row, hit in hits if row.intent and hit)
    positives = sum(1 for row in rows if row.intent)
    return Score(len(rows), positives, true_pos, len(alarms), len(misses), misses, alarms)


def format_intent(labelled: Sequence[Labelled], *, verbose: bool = False) -> str:
    lines = [f"User-intent classifier on {LABELS.name} ({len(labelled)} sentences)"]
    for name, prefix in (("all", ""), ("traces", "trace:"), ("written", "written"), ("heldout", "heldout")):
        s = score(labelled, prefix)
        lines.append(
            f"  {name:8} {s.sentences:4} sentences, {s.positives:4} intent: "
            f"precision {s.precision:.3f}, recall {s.recall:.3f} ({s.false_pos} false alarms, {s.false_neg} misses)"
        )
    if verbose:
        s = score(labelled)
        lines += [
            "  misses:",
            *(f"    {m}" for m in s.misses),
            "  false alarms:",
            *(f"    {a}" for a in s.false_alarms),
        ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    top = argparse.ArgumentParser(prog="python -m bench intent", description="User-intent precision and recall.")
    top.add_argument("--verbose", action="store_true", help="list the misses and the false alarms")
    args = top.parse_args(list(argv))
    print(format_intent(load_labels(), verbose=args.verbose))
    return 0
