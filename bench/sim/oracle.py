"""The offline replay oracle: the fault floor of a workload at a budget.

The oracle has ClawVM's structural features (auto-pin, pointer prefetch, write-back at
compaction and reset, pointer resolution) and sees h turns ahead (h = 3 as in the paper): each
page's utility gains ORACLE_BONUS (2.2) per demand of it in the next h turns, the current turn
included (`bench.sim.workloads.upcoming`, applied in `bench.sim.policies`). Its faults are the
workload's unavoidable pressure at that budget; a policy's faults minus the oracle's are that
policy's headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.sim.engine import DEFAULT_HORIZON, RunResult, replay
from bench.sim.policies import ORACLE, SimPolicy
from bench.sim.workloads import Workload
from policies.faults import Tally


@dataclass(frozen=True, slots=True)
class Gap:
    policy: str
    faults: int
    floor: int  # the oracle's faults

    @property
    def headroom(self) -> int:
        return self.faults - self.floor


def run_oracle(workload: Workload, budget: int, horizon: int = DEFAULT_HORIZON) -> RunResult:
    if horizon < 1:
        raise ValueError(f"the oracle needs a horizon of at least one turn, got {horizon}")
    return replay(workload, budget, ORACLE, horizon)


def fault_floor(workload: Workload, budget: int, horizon: int = DEFAULT_HORIZON) -> Tally:
    """The oracle's tally: its fault count is the floor for this workload and budget."""
    return run_oracle(workload, budget, horizon).tally


def gap(workload: Workload, budget: int, policy: SimPolicy, horizon: int = DEFAULT_HORIZON) -> Gap:
    """A policy's faults beside the oracle's on the same workload and budget."""
    faults = replay(workload, budget, policy, horizon).tally.fault_count
    return Gap(policy.name, faults, fault_floor(workload, budget, horizon).fault_count)
