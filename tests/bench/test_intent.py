"""`python -m bench intent`: prints the classifier's precision and recall per source of the set."""

from __future__ import annotations

import pytest

from bench.__main__ import main
from bench.intent import load_labels, score


def test_bench_intent_prints_precision_and_recall_per_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["intent"]) == 0
    lines = capsys.readouterr().out.splitlines()
    overall = score(load_labels())
    assert f"precision {overall.precision:.3f}, recall {overall.recall:.3f}" in lines[1]
    assert [line.split()[0] for line in lines[1:]] == ["all", "traces", "written", "heldout"]


def test_bench_intent_verbose_lists_every_miss_and_false_alarm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["intent", "--verbose"]) == 0
    out = capsys.readouterr().out
    overall = score(load_labels())
    assert all(sentence in out for sentence in (*overall.misses, *overall.false_alarms))
