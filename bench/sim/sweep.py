"""The paper's Tier-2 synthetic sweep: 4 workload families x 6 budgets x 6 policies (144 rows),
the Table-4 style summary (mean faults and thrash per policy, the paper's figures beside) and the
Table-6 style subtractive ablation at budget 180 (ClawVM minus one feature at a time).

Our workloads are ours (the paper's three other families are not public), so our numbers are
reported beside the paper's, not fitted to them. Physical insufficiency (turns whose minimum set
exceeded the budget) is reported apart and is never a fault.

    python -m bench.sim.sweep [--seed N] [--horizon H] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from types import MappingProxyType

from bench.sim.engine import DEFAULT_HORIZON, RunResult, replay
from bench.sim.policies import CLAWVM, FEATURES, ORACLE, POLICIES, SimPolicy, without
from bench.sim.workloads import FAMILIES, Workload, generate
from policies.faults import FaultKind

BUDGETS: tuple[int, ...] = (120, 180, 240, 300, 380, 500)
ABLATION_BUDGET = 180

# Table 4 of the paper: mean explicit faults and thrash over its 24 configurations (LRU is not in it).
PAPER_TABLE4: Mapping[str, tuple[float | None, float | None]] = MappingProxyType(
    {
        "Retrieval": (67.75, 3.993),
        "Retrieval+Cache": (10.75, 1.642),
        "Compaction-Hybrid": (1.42, 1.017),
        "LRU": (None, None),
        "ClawVM": (0.0, 0.901),
        "Oracle": (0.0, 0.901),
    }
)
# Table 6 of the paper (budget 180, faults summed over its 4 workloads): bootstrap, flush, dup+refetch, total.
PAPER_TABLE6: Mapping[str, tuple[int, int, int, int]] = MappingProxyType(
    {
        "none": (0, 0, 0, 0),
        "pointer_resolution": (0, 0, 126, 126),
        "writeback_compaction": (0, 20, 0, 20),
        "auto_pin_hard": (9, 0, 0, 9),
        "writeback_reset": (0, 3, 0, 3),
        "upgrade": (0, 0, 0, 0),
        "prefetch_pointer": (0, 0, 0, 0),
    }
)
BOOTSTRAP_KINDS = (FaultKind.POST_COMPACTION_BOOTSTRAP.value, FaultKind.PINNED_INVARIANT_MISS.value)
FLUSH_KINDS = (FaultKind.FLUSH_MISS.value,)
DUP_KINDS = (FaultKind.DUPLICATE_TOOL.value, FaultKind.REFETCH.value)


@dataclass(frozen=True, slots=True)
class Row:
    family: str
    budget: int
    policy: str
    faults: Mapping[str, int]  # per fault kind, zeros left out
    alerts: int
    hits: int
    recalls: int  # of the hits, those served by a recall
    insufficient: int  # turns whose minimum set exceeded the budget
    turns: int

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    @property
    def thrash(self) -> float:
        return (self.fault_count + self.alerts) / (self.hits + 1)

    def count(self, kinds: Iterable[str]) -> int:
        return sum(self.faults.get(kind, 0) for kind in kinds)

    def to_json(self) -> dict[str, object]:
        return {
            "family": self.family,
            "budget": self.budget,
            "policy": self.policy,
            "faults": dict(self.faults),
            "fault_count": self.fault_count,
            "alerts": self.alerts,
            "hits": self.hits,
            "recalls": self.recalls,
            "thrash": round(self.thrash, 6),
            "insufficient_turns": self.insufficient,
            "turns": self.turns,
        }


def row_of(result: RunResult, turns: int) -> Row:
    tally = result.tally
    faults = dict(tally.faults)
    return Row(
        result.family,
        result.budget,
        result.policy,
        faults,
        tally.alerts,
        tally.hits,
        result.recalls,
        tally.insufficient,
        turns,
    )


@dataclass(frozen=True, slots=True)
class SweepResult:
    rows: tuple[Row, ...]
    seed: int
    horizon: int

    def of(self, policy: str) -> list[Row]:
        return [row for row in self.rows if row.policy == policy]

    def find(self, family: str, budget: int, policy: str) -> Row:
        for row in self.rows:
            if (row.family, row.budget, row.policy) == (family, budget, policy):
                return row
        raise KeyError((family, budget, policy))

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "horizon": self.horizon,
            "rows": [row.to_json() for row in self.rows],
            "table4": [entry.to_json() for entry in table4(self)],
        }


@dataclass(frozen=True, slots=True)
class Table4Row:
    policy: str
    faults: float  # mean explicit faults over the rows
    thrash: float  # mean thrash over the rows
    insufficient: int  # insufficient turns summed over the rows
    at_oracle: int  # rows whose faults equal the oracle's on the same family and budget
    rows: int
    paper_faults: float | None
    paper_thrash: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "mean_faults": round(self.faults, 4),
            "mean_thrash": round(self.thrash, 4),
            "insufficient_turns": self.insufficient,
            "rows_at_oracle": self.at_oracle,
            "rows": self.rows,
            "paper_faults": self.paper_faults,
            "paper_thrash": self.paper_thrash,
        }


@dataclass(frozen=True, slots=True)
class AblationRow:
    removed: str  # a feature of `policies.FEATURES`, or "none" for full ClawVM
    bootstrap: int  # post-compaction bootstrap and pinned-invariant misses
    flush: int
    dup_refetch: int
    total: int
    insufficient: int

    @property
    def paper(self) -> tuple[int, int, int, int] | None:
        return PAPER_TABLE6.get(self.removed)

    def to_json(self) -> dict[str, object]:
        return {
            "removed": self.removed,
            "bootstrap": self.bootstrap,
            "flush": self.flush,
            "dup_refetch": self.dup_refetch,
            "total": self.total,
            "insufficient_turns": self.insufficient,
            "paper": list(self.paper) if self.paper else None,
        }


def workloads_for(families: Sequence[str], seed: int) -> list[Workload]:
    return [generate(family, seed) for family in families]


def run_sweep(
    families: Sequence[str] = FAMILIES,
    budgets: Sequence[int] = BUDGETS,
    policies: Sequence[SimPolicy] = POLICIES,
    seed: int = 0,
    horizon: int = DEFAULT_HORIZON,
) -> SweepResult:
    rows = []
    for workload in workloads_for(families, seed):
        for budget in budgets:
            for policy in policies:
                rows.append(row_of(replay(workload, budget, policy, horizon), len(workload.turns)))
    return SweepResult(tuple(rows), seed, horizon)


def run_ablation(
    budget: int = ABLATION_BUDGET,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    horizon: int = DEFAULT_HORIZON,
    base: SimPolicy = CLAWVM,
) -> list[AblationRow]:
    """ClawVM, then ClawVM minus each feature; faults summed over the families."""
    loads = workloads_for(families, seed)
    variants = [("none", base), *((feature, without(base, feature)) for feature in FEATURES)]
    return [_ablation_row(name, [replay(w, budget, p, horizon) for w in loads]) for name, p in variants]


def _ablation_row(removed: str, results: Sequence[RunResult]) -> AblationRow:
    rows = [row_of(result, 0) for result in results]
    bootstrap = sum(row.count(BOOTSTRAP_KINDS) for row in rows)
    flush = sum(row.count(FLUSH_KINDS) for row in rows)
    dup = sum(row.count(DUP_KINDS) for row in rows)
    total = sum(row.fault_count for row in rows)
    return AblationRow(removed, bootstrap, flush, dup, total, sum(row.insufficient for row in rows))


def table4(result: SweepResult) -> list[Table4Row]:
    """Mean faults and thrash per policy over all rows of the sweep, with the paper's figures."""
    names = list(dict.fromkeys(row.policy for row in result.rows))
    floors = {(r.family, r.budget): r.fault_count for r in result.rows if r.policy == ORACLE.name}
    out = []
    for name in names:
        rows = result.of(name)
        at_oracle = sum(1 for r in rows if floors.get((r.family, r.budget)) == r.fault_count)
        paper = PAPER_TABLE4.get(name, (None, None))
        faults, thrash = fmean(r.fault_count for r in rows), fmean(r.thrash for r in rows)
        insufficient = sum(r.insufficient for r in rows)
        out.append(Table4Row(name, faults, thrash, insufficient, at_oracle, len(rows), *paper))
    return out


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table4(result: SweepResult) -> list[str]:
    lines = [
        f"Table 4 (ours, seed {result.seed}, oracle h={result.horizon}): mean over "
        f"{len({(r.family, r.budget) for r in result.rows})} family x budget configurations",
        f"{'policy':<18} {'faults':>8} {'paper':>7} {'thrash':>8} {'paper':>7} {'at oracle':>10} {'insuff.':>8}",
    ]
    for entry in table4(result):
        lines.append(
            f"{entry.policy:<18} {entry.faults:>8.2f} {_figure(entry.paper_faults, 2):>7} "
            f"{entry.thrash:>8.3f} {_figure(entry.paper_thrash, 3):>7} "
            f"{f'{entry.at_oracle}/{entry.rows}':>10} {entry.insufficient:>8}"
        )
    return lines


def format_grid(result: SweepResult) -> list[str]:
    """Faults per family and budget, one column per policy (insufficient turns in brackets)."""
    names = list(dict.fromkeys(row.policy for row in result.rows))
    lines = [f"{'family':<17} {'budget':>6} " + " ".join(f"{name[:17]:>17}" for name in names)]
    configs = list(dict.fromkeys((row.family, row.budget) for row in result.rows))
    for family, budget in configs:
        cells = []
        for name in names:
            row = result.find(family, budget, name)
            cells.append(f"{f'{row.fault_count} [{row.insufficient}]':>17}")
        lines.append(f"{family:<17} {budget:>6} " + " ".join(cells))
    return lines


def format_ablation(rows: Sequence[AblationRow], budget: int = ABLATION_BUDGET) -> list[str]:
    lines = [
        f"Table 6 (ours): ClawVM minus one feature at budget {budget}, faults summed over the families "
        "(paper in brackets)",
        f"{'removed':<22} {'bootstrap':>10} {'flush':>10} {'dup+refetch':>12} {'total':>10}",
    ]
    for row in rows:
        paper = row.paper or (None, None, None, None)
        values = (row.bootstrap, row.flush, row.dup_refetch, row.total)
        pairs = zip(values, paper, (10, 10, 12, 10), strict=True)
        cells = [f"{f'{ours} [{_paper(theirs)}]':>{width}}" for ours, theirs, width in pairs]
        lines.append(f"{row.removed:<22} " + " ".join(cells))
    return lines


def _paper(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_sweep(result: SweepResult, ablation: Sequence[AblationRow] | None = None) -> list[str]:
    lines = [*format_table4(result), "", "Faults per configuration [insufficient turns]:", *format_grid(result)]
    if ablation is not None:
        lines += ["", *format_ablation(ablation)]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=DEFAULT_HORIZON)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    result = run_sweep(seed=args.seed, horizon=args.horizon)
    ablation = run_ablation(seed=args.seed, horizon=args.horizon)
    print("\n".join(format_sweep(result, ablation)))
    if args.json is not None:
        document = {**result.to_json(), "ablation": [row.to_json() for row in ablation]}
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
