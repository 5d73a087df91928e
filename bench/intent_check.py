"""The user-intent check: what the user asked for stays in front of the model.

The labelled set of user sentences (`bench/data/intent_labels.tsv`, read by bench.intent, the
same set the classifier is scored on) names, for each sentence of the shared traces, its trace
and message (`trace:<name>#<message>`) and a label given by hand: `intent` for a sentence that
steers the rest of the session (a wish, a prohibition, an exception, an ordering, an identity
fact, the specifics of the request), `none` for the rest. The labels are data, not our
classifier's output.

For every forwarded prompt, every `intent` sentence of a message the agent already sent (its
index in the trace is below the number of trace messages sent so far) must be there: at least
`COVERAGE` of its content words (lower-cased words, stop words aside) appear among the prompt's
words. A sentence below that is a miss, counted as a fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.intent import LABELS
from bench.intent import load_labels as load_labelled

INTENT = "intent"
TRACE_SOURCE = re.compile(r"^trace:(?P<trace>[^#]+)#(?P<message>\d+)$")
COVERAGE = 0.8
WORD = re.compile(r"[a-z0-9][a-z0-9@._'-]*[a-z0-9]|[a-z0-9]")
STOP_WORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours out over own same she should so some such than that the their them then there these they this
    those through to too under until up very was we were what when where which while who whom why will with would
    you your yours yourself""".split()
)


@dataclass(frozen=True, slots=True)
class Label:
    trace: str
    message: int  # index of the user message in the trace's `messages`
    sentence: str
    label: str


def load_labels(path: Path = LABELS) -> list[Label]:
    """The labelled sentences of `path` that come from a trace's user message (`trace:<name>#<n>`)."""
    found = []
    for row in load_labelled(path):
        if (source := TRACE_SOURCE.match(row.source)) is not None:
            label = INTENT if row.intent else "none"
            found.append(Label(source["trace"], int(source["message"]), row.sentence, label))
    return found


def intents(labels: Iterable[Label]) -> dict[str, list[Label]]:
    """The `intent` sentences per trace, in message order."""
    found: dict[str, list[Label]] = {}
    for label in sorted((x for x in labels if x.label == INTENT), key=lambda x: (x.trace, x.message)):
        found.setdefault(label.trace, []).append(label)
    return found


def content_words(text: str) -> set[str]:
    return {w.strip("'") for w in WORD.findall(text.lower())} - STOP_WORDS - {""}


def covered(sentence: str, seen_words: set[str]) -> bool:
    """At least COVERAGE of the sentence's content words are among `seen_words`."""
    wanted = content_words(sentence)
    return not wanted or len(wanted & seen_words) >= COVERAGE * len(wanted)


def prompt_words(messages: Sequence[Mapping[str, Any]]) -> set[str]:
    """The content words of everything a prompt shows: texts and tool-call arguments."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        parts += [str((c.get("function") or {}).get("arguments") or "") for c in message.get("tool_calls") or []]
    return content_words("\n".join(parts))


def missing_intents(labels: Sequence[Label], sent: int, seen: Sequence[Mapping[str, Any]]) -> list[str]:
    """The intent sentences (of one trace) of messages among the first `sent` that `seen` lacks."""
    due = [x for x in labels if x.message < sent]
    if not due:
        return []
    words = prompt_words(seen)
    return [x.sentence for x in due if not covered(x.sentence, words)]
