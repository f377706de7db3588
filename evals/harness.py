"""The eval harness: run a suite's items through one or more modes, score them, write
``results.json`` and a self-contained ``report.html``, and compare two runs.

A suite is any object with ``name``, ``modes``, ``items(limit)`` and ``run(item, mode, model)``;
metrics are plain values in each ItemResult, so the harness is tied to no one suite. Every
summary value comes with its count and 95% interval (:mod:`slmflow.evals.stats`), beside the
suite's trivial baselines on the same items, and a metric a mode cannot fail is withheld for it.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from slmflow.evals.report import render_html
from slmflow.evals.results import EvalItem, EvalRun, ItemResult, load_run
from slmflow.evals.stats import Estimate, estimate
from slmflow.runtime.errors import SlmflowError
from slmflow.runtime.registry import concurrency_of


def find_shared_data(name: str, marker: str, data: Path | None = None) -> Path:
    """A data folder: ``data`` if given, else shared/data/NAME in or beside the working directory;
    ``marker`` is a file or folder it must hold."""
    places = [Path(data)] if data is not None else [Path.cwd() / p / name for p in ("shared/data", "../shared/data")]
    for candidate in places:
        if (candidate / marker).exists():
            return candidate.resolve()
    raise SlmflowError(f"no {name} data ({marker}) in {', '.join(str(c) for c in places)}",
                       f"pass --data PATH to the folder that holds {marker}")


def data_splits(folder: Path, pattern: str) -> list[str]:
    """Split names as the data's file names give them: ``qa_*.jsonl`` over a folder holding
    qa_dev.jsonl and qa_test.jsonl → ``["dev", "test"]``."""
    prefix, suffix = pattern.split("*")
    return sorted(p.name[len(prefix):len(p.name) - len(suffix)] for p in Path(folder).glob(pattern))


def pick_split(folder: Path, pattern: str, split: str | None) -> str:
    """``split`` if the data has it, else an error naming the ones it has; None picks ``dev``
    where there is one, else the only split."""
    names = data_splits(folder, pattern)
    if split is None and ("dev" in names or len(names) == 1):
        return "dev" if "dev" in names else names[0]
    if split not in names:
        raise SlmflowError(f"no split {split!r} in {folder} (split files are {pattern})",
                           f"pass --split with one of: {', '.join(names) or 'none found'}")
    return split


class Suite(Protocol):
    """A suite may also define:

    * ``prepare(model, modes, on_progress)``: work every item shares (an index to build), run
      before the first item with its progress shown, and timed in no item;
    * ``baselines(items) -> {name: {metric: [per-item values]}}``: trivial methods (majority
      class, always-yes, no call, BM25) scored on the same items, shown beside every mode;
    * ``unfailable(mode, results) -> {metric: why}``: metrics this mode cannot fail, withheld;
    * ``data_files() -> [Path]``: the files its items come from, hashed into results.json;
    * ``settings() -> dict``: what else decides its items (split, seed), recorded likewise."""

    name: str
    modes: list[str]  # run by default; a suite may also list ``extra_modes`` that run only when named

    def items(self, limit: int | None) -> list[EvalItem]: ...

    def run(self, item: EvalItem, mode: str, model) -> ItemResult: ...


#: Items run at once unless the caller says otherwise; capped by what the model runs at once.
DEFAULT_CONCURRENCY = 4


def _by_mode(results: list[ItemResult]) -> dict[str, list[ItemResult]]:
    by_mode: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_mode[r.mode].append(r)
    return by_mode


def _metric_values(rs: list[ItemResult]) -> dict[str, list[float]]:
    """Every per-item value a summary averages: pass rate per category and overall, each metric."""
    values: dict[str, list[float]] = {}
    for cat in sorted({r.category for r in rs}):
        values[f"accuracy/{cat}"] = [float(r.passed) for r in rs if r.category == cat]
    values["accuracy/all"] = [float(r.passed) for r in rs]
    for key in sorted({k for r in rs for k in r.metrics}):
        values[key] = [r.metrics[key] for r in rs if key in r.metrics]
    return values


def summarise(results: list[ItemResult],
              derived: Callable[[dict[str, float]], dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Per mode: accuracy per category, overall, mean of each metric, latency p50/p95, and what
    ``derived`` (a suite's own) computes from those means."""
    summary = {}
    for mode, rs in _by_mode(results).items():
        row = {key: statistics.fmean(values) for key, values in _metric_values(rs).items()}
        latencies = sorted(r.latency_s for r in rs)
        row["latency_p50_s"] = statistics.median(latencies)
        row["latency_p95_s"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        row["tokens_mean"] = sum(r.tokens for r in rs) / len(rs)
        row.update(derived(row) if derived else {})
        summary[mode] = {k: round(v, 4) for k, v in row.items()}
    return summary


def intervals_of(results: list[ItemResult]) -> dict[str, dict[str, Estimate]]:
    """Per mode, each averaged metric's estimate (Wilson for rates, bootstrap otherwise)."""
    return {mode: {key: estimate(values) for key, values in _metric_values(rs).items()}
            for mode, rs in _by_mode(results).items()}


def file_hashes(paths: list[Path]) -> dict[str, str]:
    """``{file name: sha256}``; names relative to the files' common folder, so two checkouts of one
    data set hash alike."""
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        return {}
    root = Path(os.path.commonpath(paths)) if len(set(paths)) > 1 else paths[0].parent
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)}


def withhold(summary: dict[str, dict[str, float]], intervals: dict[str, dict[str, Estimate]],
             withheld: dict[str, dict[str, str]]) -> None:
    """Drop each mode's unfailable metrics from its summary and intervals (in place)."""
    for mode, metrics in withheld.items():
        for key in metrics:
            summary.get(mode, {}).pop(key, None)
            intervals.get(mode, {}).pop(key, None)


def eval_progress() -> Progress:
    """The bar every eval shows: what runs, done of total, elapsed and the time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn())


def run_suite(suite: Suite, model, out_dir: Path, limit: int | None = None,
              modes: list[str] | None = None, concurrency: int = DEFAULT_CONCURRENCY) -> EvalRun:
    """Every item through every mode (or the ``modes`` named), then the two report files.

    Up to ``concurrency`` items run at once, as many as the model itself runs at once (a batching
    model's scheduler shares its passes among them; others run one at a time) and one where the
    suite sets ``concurrent = False`` (its items share state); results keep the items' order."""
    known = suite.modes + getattr(suite, "extra_modes", [])  # extra modes run only when named
    unknown = [m for m in modes or [] if m not in known]
    if unknown:
        raise SlmflowError(f"suite {suite.name} has no mode {', '.join(unknown)}", f"choose from {known}")
    modes = modes or suite.modes
    items = suite.items(limit)
    if not items:
        raise SlmflowError(f"suite {suite.name} has no items for these settings", "check --split and --limit")
    prepare = getattr(suite, "prepare", None)
    if prepare is not None:  # set-up (indexing a corpus, say) is shown, and kept out of every item's latency
        from slmflow.progress_bars import index_progress_bar

        with index_progress_bar() as shown:
            prepare(model, modes, on_progress=shown)
    workers = max(1, min(concurrency, concurrency_of(model))) if getattr(suite, "concurrent", True) else 1

    def one(job: tuple[str, EvalItem]) -> ItemResult:
        mode, item = job
        try:
            return suite.run(item, mode, model)
        except SlmflowError as err:  # one bad item is a failed item, not a failed run
            return ItemResult(id=item.id, category=item.category, mode=mode, passed=False,
                              metrics={"errors": 1.0}, latency_s=0.0, tokens=0, output=f"error: {err}")

    jobs = [(mode, item) for mode in modes for item in items]
    with eval_progress() as bar, ThreadPoolExecutor(workers, thread_name_prefix="eval") as pool:
        task = bar.add_task(f"{suite.name}", total=len(jobs))
        running = [pool.submit(one, job) for job in jobs]
        results = []
        for (mode, item), future in zip(jobs, running):
            bar.update(task, description=f"{suite.name} [{mode}] {item.id}")
            results.append(future.result())
            bar.advance(task)
    run = score_run(suite, str(model.spec), items, results, workers, limit)
    write_run(run, out_dir)
    return run


def score_run(suite: Suite, model: str, items: list[EvalItem], results: list[ItemResult], concurrency: int,
              limit: int | None) -> EvalRun:
    """Results → an EvalRun: summary, intervals, baselines, withheld metrics, data hashes, settings."""
    summary = summarise(results, getattr(suite, "derived", None))
    intervals = intervals_of(results)
    unfailable = getattr(suite, "unfailable", None)
    withheld = {}
    if unfailable is not None:
        withheld = {mode: why for mode, rs in _by_mode(results).items() if (why := unfailable(mode, rs))}
    withhold(summary, intervals, withheld)
    for mode, metrics in withheld.items():  # an unfailable category counts in no overall rate either
        skipped = {k.removeprefix("accuracy/") for k in metrics if k.startswith("accuracy/") and k != "accuracy/all"}
        kept = [float(r.passed) for r in results if r.mode == mode and r.category not in skipped]
        if skipped and kept:
            intervals[mode]["accuracy/all"] = estimate(kept)
            summary[mode]["accuracy/all"] = round(statistics.fmean(kept), 4)
            for key in metrics:
                metrics[key] += " (left out of accuracy/all too)" if key != "accuracy/all" else ""
    baselines_of = getattr(suite, "baselines", None)
    baselines = {name: {key: estimate(values) for key, values in metrics.items() if values}
                 for name, metrics in (baselines_of(items) if baselines_of else {}).items()}
    data_files = getattr(suite, "data_files", None)
    settings = {"limit": limit, **(suite.settings() if hasattr(suite, "settings") else {})}
    return EvalRun(suite=suite.name, model=model, summary=summary, items=results, concurrency=concurrency,
                   intervals=intervals, baselines=baselines, withheld=withheld,
                   data_files=file_hashes(data_files()) if data_files else {}, settings=settings)


def write_run(run: EvalRun, out_dir: Path) -> None:
    """results.json and report.html into ``out_dir``; a results.json already there becomes
    previous.json, and the report compares the new run with it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    current, previous_path = out_dir / "results.json", out_dir / "previous.json"
    previous = None
    if current.exists():
        try:
            previous = load_run(current)
            current.replace(previous_path)
        except SlmflowError:  # not ours (or damaged): kept as it was, beside the new one
            current.replace(out_dir / "results.json.unreadable")
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(run.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(current)
    (out_dir / "report.html").write_text(render_html(run, previous), encoding="utf-8")
