from __future__ import annotations

import pytest

from bench.sim.engine import replay
from bench.sim.oracle import fault_floor, gap, run_oracle
from bench.sim.policies import CLAWVM, ORACLE, RETRIEVAL
from bench.sim.workloads import FAMILIES, generate


@pytest.mark.parametrize("family", FAMILIES)
def test_clawvm_meets_the_floor(family: str) -> None:
    workload = generate(family)
    for budget in (120, 300):
        floor = fault_floor(workload, budget)
        assert replay(workload, budget, CLAWVM).tally.fault_count == floor.fault_count


def test_the_oracle_is_the_oracle_policy() -> None:
    workload = generate("plan_drift")
    result = run_oracle(workload, 180)
    assert result.policy == ORACLE.name
    assert result == replay(workload, 180, ORACLE, 3)


def test_the_horizon_changes_what_the_oracle_keeps() -> None:
    workload = generate("evidence_heavy")
    near, far = run_oracle(workload, 120, horizon=1), run_oracle(workload, 120, horizon=8)
    assert [r.cost for r in near.records] != [r.cost for r in far.records]


def test_gap_is_the_headroom_over_the_floor() -> None:
    workload = generate("evidence_heavy")
    result = gap(workload, 180, RETRIEVAL)
    assert result.policy == "Retrieval"
    assert result.headroom == result.faults - result.floor > 0
    assert gap(workload, 180, CLAWVM).headroom == 0


def test_the_oracle_needs_a_horizon() -> None:
    with pytest.raises(ValueError, match="horizon"):
        run_oracle(generate("churn"), 180, horizon=0)
