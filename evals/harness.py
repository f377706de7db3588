"""The eval harness: run a suite's items through one or more modes, score them, write
``results.json`` and a self-contained ``report.html``, and compare two runs.

A suite is any object with ``name``, ``modes``, ``items(limit)`` and ``run(item, mode, model)``;
metrics are plain values in each ItemResult, so the harness is tied to no one suite.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from slmflow.runtime.errors import SlmflowError
from slmflow.runtime.registry import concurrency_of


def find_shared_data(name: str, marker: str, data: Path | None = None) -> Path:
    """A data folder: ``data`` if given, else shared/data/NAME in or beside the working directory;
    ``marker`` is a file the folder must hold."""
    places = [Path(data)] if data is not None else [Path.cwd() / p / name for p in ("shared/data", "../shared/data")]
    for candidate in places:
        if (candidate / marker).is_file():
            return candidate.resolve()
    raise SlmflowError(f"no {name} data ({marker}) in {', '.join(str(c) for c in places)}",
                       f"pass --data PATH to the folder that holds {marker}")


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


class Suite(Protocol):
    """A suite may also define ``prepare(model, modes, on_progress)``: work every item shares (an
    index to build), run before the first item with its progress shown, and timed in no item."""

    name: str
    modes: list[str]  # run by default; a suite may also list ``extra_modes`` that run only when named

    def items(self, limit: int | None) -> list[EvalItem]: ...

    def run(self, item: EvalItem, mode: str, model) -> ItemResult: ...


class EvalRun(BaseModel):
    suite: str
    model: str
    summary: dict[str, dict[str, float]]
    items: list[ItemResult]
    #: Items run at once: latencies of a run with more are not comparable with one item alone's.
    concurrency: int = 1


#: Items run at once unless the caller says otherwise; capped by what the model runs at once.
DEFAULT_CONCURRENCY = 4


def summarise(results: list[ItemResult],
              derived: Callable[[dict[str, float]], dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Per mode: accuracy per category, overall, mean of each metric, latency p50/p95, and what
    ``derived`` (a suite's own) computes from those means."""
    by_mode: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_mode[r.mode].append(r)
    summary = {}
    for mode, rs in by_mode.items():
        row: dict[str, float] = {}
        for cat in sorted({r.category for r in rs}):
            cat_rs = [r for r in rs if r.category == cat]
            row[f"accuracy/{cat}"] = sum(r.passed for r in cat_rs) / len(cat_rs)
        row["accuracy/all"] = sum(r.passed for r in rs) / len(rs)
        for key in sorted({k for r in rs for k in r.metrics}):
            values = [r.metrics[key] for r in rs if key in r.metrics]
            row[key] = sum(values) / len(values)
        latencies = sorted(r.latency_s for r in rs)
        row["latency_p50_s"] = statistics.median(latencies)
        row["latency_p95_s"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        row["tokens_mean"] = sum(r.tokens for r in rs) / len(rs)
        row.update(derived(row) if derived else {})
        summary[mode] = {k: round(v, 4) for k, v in row.items()}
    return summary


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
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar, \
            ThreadPoolExecutor(workers, thread_name_prefix="eval") as pool:
        task = bar.add_task(f"{suite.name}", total=len(jobs))
        running = [pool.submit(one, job) for job in jobs]
        results = []
        for (mode, item), future in zip(jobs, running):
            bar.update(task, description=f"{suite.name} [{mode}] {item.id}")
            results.append(future.result())
            bar.advance(task)
    summary = summarise(results, getattr(suite, "derived", None))
    run = EvalRun(suite=suite.name, model=str(model.spec), summary=summary, items=results, concurrency=workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(run.model_dump_json(indent=2), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(run), encoding="utf-8")
    return run


def _svg_scatter(results: list[ItemResult]) -> str:
    """Latency (x) against generated tokens (y), one colour per mode: no external assets."""
    if not results:
        return ""
    w, h, pad = 640, 320, 40
    max_x = max(r.latency_s for r in results) or 1
    max_y = max(r.tokens for r in results) or 1
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    modes = sorted({r.mode for r in results})
    dots = []
    for r in results:
        x = pad + (w - 2 * pad) * r.latency_s / max_x
        y = h - pad - (h - 2 * pad) * r.tokens / max_y
        c = colours[modes.index(r.mode) % len(colours)]
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"><title>{html.escape(r.id)} '
                    f'{r.mode}: {r.latency_s:.2f} s, {r.tokens} tokens</title></circle>')
    legend = "".join(f'<text x="{pad + 120 * i}" y="16" fill="{colours[i % len(colours)]}">{html.escape(m)}</text>'
                     for i, m in enumerate(modes))
    return (f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>'
            f'<text x="{w / 2}" y="{h - 8}">latency (s), max {max_x:.2f}</text>'
            f'<text x="4" y="{pad - 8}">tokens, max {max_y}</text>{legend}{"".join(dots)}</svg>')


def render_html(run: EvalRun) -> str:
    at_once = (f", {run.concurrency} at once (each latency includes the others' share of the model)"
               if run.concurrency > 1 else ", one at a time")
    metrics = sorted({k for row in run.summary.values() for k in row})
    modes = list(run.summary)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in modes)
    rows = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(
        f"<td>{run.summary[m].get(k, '')}</td>" for m in modes) + "</tr>" for k in metrics)
    items = "".join(
        f'<tr class="{"pass" if r.passed else "fail"}"><td>{html.escape(r.id)}</td><td>{html.escape(r.category)}</td>'
        f"<td>{html.escape(r.mode)}</td><td>{'pass' if r.passed else 'FAIL'}</td><td>{r.latency_s:.2f}</td>"
        f"<td>{r.tokens}</td><td><details><summary>output</summary><pre>{html.escape(r.output)}</pre>"
        f"<pre>{html.escape(r.detail)}</pre></details></td></tr>"
        for r in run.items)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(run.suite)} — slmflow eval</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.fail td:nth-child(4){{color:#c00;font-weight:bold}}
pre{{white-space:pre-wrap;max-width:60em}}</style></head><body>
<h1>{html.escape(run.suite)}</h1><p>model: <code>{html.escape(run.model)}</code>, {len(run.items)} item runs{at_once}</p>
<h2>Metrics</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>
<h2>Latency and tokens</h2>{_svg_scatter(run.items)}
<h2>Items</h2><table><tr><th>id</th><th>category</th><th>mode</th><th>result</th><th>latency s</th><th>tokens</th><th>trace</th></tr>{items}</table>
</body></html>"""


def compare(a: Path, b: Path) -> list[tuple[str, str, float, float]]:
    """(mode, metric, value in A, value in B) for every metric the two runs share."""
    run_a = EvalRun.model_validate_json(Path(a).read_text(encoding="utf-8"))
    run_b = EvalRun.model_validate_json(Path(b).read_text(encoding="utf-8"))
    rows = []
    for mode, metrics in run_a.summary.items():
        for key, value in metrics.items():
            if key in run_b.summary.get(mode, {}):
                rows.append((mode, key, value, run_b.summary[mode][key]))
    return rows

