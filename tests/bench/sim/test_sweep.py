from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sim.policies import COMPACTION_HYBRID, FEATURES, POLICIES
from bench.sim.sweep import (
    BUDGETS,
    PAPER_TABLE4,
    AblationRow,
    SweepResult,
    format_sweep,
    main,
    run_ablation,
    run_sweep,
    table4,
)
from bench.sim.workloads import FAMILIES


@pytest.fixture(scope="module")
def sweep() -> SweepResult:
    return run_sweep()


@pytest.fixture(scope="module")
def ablation() -> list[AblationRow]:
    return run_ablation()


def test_the_full_grid(sweep: SweepResult) -> None:
    assert len(sweep.rows) == len(FAMILIES) * len(BUDGETS) * len(POLICIES) == 144
    assert all(row.turns == 40 for row in sweep.rows)


def test_clawvm_is_at_the_oracle_on_every_family_and_budget(sweep: SweepResult) -> None:
    for family in FAMILIES:
        for budget in BUDGETS:
            clawvm = sweep.find(family, budget, "ClawVM")
            oracle = sweep.find(family, budget, "Oracle")
            assert clawvm.fault_count == oracle.fault_count, (family, budget)


def test_baselines_order(sweep: SweepResult) -> None:
    for family in FAMILIES:
        for budget in BUDGETS:
            retrieval = sweep.find(family, budget, "Retrieval").fault_count
            cache = sweep.find(family, budget, "Retrieval+Cache").fault_count
            hybrid = sweep.find(family, budget, "Compaction-Hybrid").fault_count
            assert retrieval > cache >= hybrid, (family, budget)


def test_compaction_hybrid_faults_fall_as_the_budget_grows(sweep: SweepResult) -> None:
    for family in FAMILIES:
        counts = [sweep.find(family, b, COMPACTION_HYBRID.name).fault_count for b in BUDGETS]
        assert counts == sorted(counts, reverse=True), family


def test_the_sweep_is_reproducible(sweep: SweepResult) -> None:
    assert run_sweep().to_json() == sweep.to_json()


def test_another_seed_gives_other_numbers_and_the_same_headline() -> None:
    other = run_sweep(families=("churn",), budgets=(120, 500), seed=5)
    assert other.seed == 5
    for budget in (120, 500):
        assert other.find("churn", budget, "ClawVM").fault_count == other.find("churn", budget, "Oracle").fault_count


def test_ablation_attributes_faults_to_the_removed_feature(ablation: list[AblationRow]) -> None:
    rows = {row.removed: row for row in ablation}
    assert list(rows) == ["none", *FEATURES]
    assert rows["none"].total == 0
    assert rows["upgrade"].total == 0
    pointer = rows["pointer_resolution"]
    assert pointer.dup_refetch == pointer.total > 0
    for name in ("writeback_compaction", "writeback_reset"):
        assert rows[name].flush == rows[name].total > 0
    pin = rows["auto_pin_hard"]
    assert pin.bootstrap == pin.total > 0
    assert all(row.total == row.bootstrap + row.flush + row.dup_refetch for row in ablation)


def test_table4_beside_the_paper(sweep: SweepResult) -> None:
    rows = {entry.policy: entry for entry in table4(sweep)}
    assert list(rows) == [p.name for p in POLICIES]
    assert rows["ClawVM"].faults == rows["Oracle"].faults == 0.0
    assert rows["ClawVM"].at_oracle == rows["ClawVM"].rows == 24
    assert (rows["Retrieval"].paper_faults, rows["Retrieval"].paper_thrash) == PAPER_TABLE4["Retrieval"]
    assert rows["Retrieval"].faults > rows["Retrieval+Cache"].faults > rows["Compaction-Hybrid"].faults
    mean = sum(r.fault_count for r in sweep.of("Retrieval")) / 24
    assert rows["Retrieval"].faults == pytest.approx(mean)


def test_format_and_json(sweep: SweepResult, ablation: list[AblationRow]) -> None:
    lines = format_sweep(sweep, ablation)
    text = "\n".join(lines)
    for name in (p.name for p in POLICIES):
        assert name in text
    assert "Table 4" in text and "Table 6" in text
    document = json.loads(json.dumps({**sweep.to_json(), "ablation": [row.to_json() for row in ablation]}))
    assert len(document["rows"]) == 144
    assert document["ablation"][1]["paper"] == [0, 0, 126, 126]


def test_main_prints_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "sweep.json"
    main(["--seed", "0", "--json", str(target)])
    assert "Table 4" in capsys.readouterr().out
    assert json.loads(target.read_text())["seed"] == 0
