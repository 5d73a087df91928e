"""bench.live_read: a long live predecessor read whole and read for what carries, side by side."""

from __future__ import annotations

import pytest

from bench.live_read import format_reads, main, run


def test_both_reads_carry_the_same_pages_and_the_plan_is_found() -> None:
    reads = run(turns=40, repeats=2)  # raises if the two reads carry different pages
    assert [(r.name, r.plans) for r in reads] == [("no plan", 0), ("plan", 1)]
    no_plan, plan = reads
    assert plan.messages == no_plan.messages + 2 and plan.carried == no_plan.carried + 1
    assert all(r.whole_ms > 0 and r.live_ms > 0 for r in reads)
    lines = format_reads(reads, 2)
    assert lines[0].startswith("a new session's read of its live predecessor, medians of 2 reads")
    assert "plan: 82 messages" in lines[2] and "whole " in lines[2] and "live " in lines[2]


@pytest.mark.parametrize("argv", [["--turns", "0"], ["--repeats", "0"], ["--turns", "many"]])
def test_bad_sizes_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "usage:" in capsys.readouterr().err
