"""What an eval run produces and how two runs compare: the records results.json holds.

Kept apart from the harness that runs suites and the report that draws runs, so both can use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from slmflow.evals.stats import Estimate
from slmflow.runtime.errors import SlmflowError


class EvalItem(BaseModel):
    id: str
    category: str
    data: dict[str, Any]


class ItemResult(BaseModel):
    id: str
    category: str
    mode: str
    passed: bool
    metrics: dict[str, float] = {}
    latency_s: float
    tokens: int
    output: str
    detail: str = ""
    #: Names of the checks this item failed (scenario files; a suite item fails as a whole).
    failed_checks: list[str] = []
    #: The output came from the output cache: its latency is the first run's.
    cached: bool = False


class EvalRun(BaseModel):
    suite: str
    model: str
    summary: dict[str, dict[str, float]]
    items: list[ItemResult]
    #: Items run at once: latencies of a run with more are not comparable with one item alone's.
    concurrency: int = 1
    #: Per mode, each metric's count and 95% interval.
    intervals: dict[str, dict[str, Estimate]] = {}
    #: Per trivial baseline, its metrics on the same items.
    baselines: dict[str, dict[str, Estimate]] = {}
    #: Per mode, the metrics it cannot fail and why: not in its summary.
    withheld: dict[str, dict[str, str]] = {}
    #: sha256 of every data file the items came from, so a comparison knows if two runs saw the same.
    data_files: dict[str, str] = {}
    #: What else chose the items (split, seed, limit).
    settings: dict[str, Any] = {}


def load_run(path: Path) -> EvalRun:
    """A results.json, or an error that names the file and what is wrong with it."""
    path = Path(path)
    try:
        return EvalRun.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SlmflowError(f"cannot read {path}: {err.strerror}", "pass the results.json an eval wrote") from err
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise SlmflowError(f"{path} is not an eval's results.json ({where + ': ' if where else ''}{first['msg']})",
                           "pass the results.json an eval wrote") from err


class Difference(BaseModel):
    mode: str
    metric: str
    a: float
    b: float
    #: Either value lies inside the other's 95% interval: the change may be chance alone.
    noise: bool | None = None

    @property
    def delta(self) -> float:
        return self.b - self.a

    def verdict(self) -> str:
        """``same``, ``noise`` (inside an interval), ``changed``, or empty without intervals."""
        if self.delta == 0:
            return "same"
        return {True: "noise", False: "changed", None: ""}[self.noise]


class Comparison(BaseModel):
    differences: list[Difference]
    #: Both runs hashed the same data files (None when either recorded none).
    same_data: bool | None
    #: Settings (split, seed, limit) that differ: {name: (A's, B's)}.
    settings_differ: dict[str, tuple[Any, Any]]


def compare_runs(run_a: EvalRun, run_b: EvalRun) -> Comparison:
    """B against A, metric by metric, with noise flagged where the intervals say so."""
    differences = []
    for mode, metrics in run_a.summary.items():
        for key, value in metrics.items():
            if key not in run_b.summary.get(mode, {}):
                continue
            ia, ib = run_a.intervals.get(mode, {}).get(key), run_b.intervals.get(mode, {}).get(key)
            other = run_b.summary[mode][key]
            noise = (ia.contains(other) or ib.contains(value)) if ia and ib else None
            differences.append(Difference(mode=mode, metric=key, a=value, b=other, noise=noise))
    same = run_a.data_files == run_b.data_files if run_a.data_files and run_b.data_files else None
    keys = set(run_a.settings) | set(run_b.settings)
    differ = {k: (run_a.settings.get(k), run_b.settings.get(k)) for k in sorted(keys)
              if run_a.settings.get(k) != run_b.settings.get(k)}
    return Comparison(differences=differences, same_data=same, settings_differ=differ)


def compare(a: Path, b: Path) -> Comparison:
    """Two results.json files compared (B minus A)."""
    return compare_runs(load_run(a), load_run(b))
