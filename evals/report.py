"""report.html: one self-contained page per eval run (inline SVG and CSS, no external assets).

It shows what a reader needs to trust a number: per-category bars with their 95% intervals and
the trivial baselines marked on the same scale, the metrics table with counts, which metrics were
withheld and why, every item with its output and failed checks, and the change from the previous
run in the same folder with noise marked.
"""

from __future__ import annotations

import html

from slmflow.evals.results import Comparison, EvalRun, ItemResult, compare_runs
from slmflow.evals.stats import Estimate

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
_BASELINE = "#ff7f0e"


def _esc(value: object) -> str:
    return html.escape(str(value))


def _bar_metrics(run: EvalRun) -> list[str]:
    """The metrics drawn as bars: those on a 0..1 scale (rates, F1, nDCG), categories first."""
    keys = {k for row in run.intervals.values() for k in row}
    keys = {k for k in keys if all(0.0 <= row[k].low and row[k].high <= 1.0 for row in run.intervals.values()
                                   if k in row)}
    return sorted(keys, key=lambda k: (not k.startswith("accuracy/"), k == "accuracy/all", k))


def svg_bars(run: EvalRun) -> str:
    """One bar per (metric, mode): the value, a whisker over its interval, and a dashed tick for
    each baseline that reports the metric on the same items."""
    metrics = _bar_metrics(run)
    modes = list(run.intervals)
    rows = [(k, m) for k in metrics for m in modes if k in run.intervals[m]]
    if not rows:
        return ""
    label_w, plot_w, row_h, top = 300, 400, 22, 30
    height = top + row_h * len(rows) + 30
    out = [f'<svg class="bars" width="{label_w + plot_w + 40}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
           *(f'<line x1="{label_w + plot_w * t}" y1="{top - 6}" x2="{label_w + plot_w * t}" y2="{height - 24}" '
             f'stroke="#ddd"/><text x="{label_w + plot_w * t - 8}" y="{height - 8}" font-size="11">{t:.2f}</text>'
             for t in (0, 0.25, 0.5, 0.75, 1.0))]
    legend = [f'<text x="{label_w + 110 * i}" y="14" fill="{_COLOURS[i % len(_COLOURS)]}">{_esc(m)}</text>'
              for i, m in enumerate(modes)]
    if run.baselines:
        legend.append(f'<text x="{label_w + 110 * len(modes)}" y="14" fill="{_BASELINE}">- - baseline</text>')
    out += legend
    for i, (key, mode) in enumerate(rows):
        est = run.intervals[mode][key]
        y = top + i * row_h
        colour = _COLOURS[modes.index(mode) % len(_COLOURS)]
        x0, x_value = label_w, label_w + plot_w * est.value
        out.append(f'<text x="4" y="{y + 14}" font-size="12">{_esc(key)} · {_esc(mode)}</text>')
        out.append(f'<rect class="bar" data-metric="{_esc(key)}" data-mode="{_esc(mode)}" x="{x0}" y="{y + 3}" '
                   f'width="{max(0.5, x_value - x0):.1f}" height="{row_h - 8}" fill="{colour}" opacity="0.8">'
                   f'<title>{_esc(est.text())}</title></rect>')
        lo, hi = label_w + plot_w * est.low, label_w + plot_w * est.high
        out.append(f'<line class="interval" x1="{lo:.1f}" y1="{y + 11}" x2="{hi:.1f}" y2="{y + 11}" stroke="#000"/>'
                   f'<line x1="{lo:.1f}" y1="{y + 6}" x2="{lo:.1f}" y2="{y + 16}" stroke="#000"/>'
                   f'<line x1="{hi:.1f}" y1="{y + 6}" x2="{hi:.1f}" y2="{y + 16}" stroke="#000"/>')
        for name, metrics_of in run.baselines.items():
            if key in metrics_of:
                bx = label_w + plot_w * metrics_of[key].value
                out.append(f'<line class="baseline" x1="{bx:.1f}" y1="{y}" x2="{bx:.1f}" y2="{y + row_h - 2}" '
                           f'stroke="{_BASELINE}" stroke-width="3" stroke-dasharray="4,2">'
                           f'<title>{_esc(name)}: {_esc(metrics_of[key].text())}</title></line>')
    out.append("</svg>")
    return "".join(out)


def svg_scatter(results: list[ItemResult]) -> str:
    """Latency (x) against generated tokens (y), one colour per mode."""
    if not results:
        return ""
    w, h, pad = 640, 320, 40
    max_x = max(r.latency_s for r in results) or 1
    max_y = max(r.tokens for r in results) or 1
    modes = list(dict.fromkeys(r.mode for r in results))  # the bars' order and colours
    dots = []
    for r in results:
        x = pad + (w - 2 * pad) * r.latency_s / max_x
        y = h - pad - (h - 2 * pad) * r.tokens / max_y
        c = _COLOURS[modes.index(r.mode) % len(_COLOURS)]
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"><title>{_esc(r.id)} '
                    f'{_esc(r.mode)}: {r.latency_s:.2f} s, {r.tokens} tokens</title></circle>')
    legend = "".join(f'<text x="{pad + 120 * i}" y="16" fill="{_COLOURS[i % len(_COLOURS)]}">{_esc(m)}</text>'
                     for i, m in enumerate(modes))
    return (f'<svg class="scatter" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">'
            f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>'
            f'<text x="{w / 2}" y="{h - 8}">latency (s), max {max_x:.2f}</text>'
            f'<text x="4" y="{pad - 8}">tokens, max {max_y}</text>{legend}{"".join(dots)}</svg>')


def _cell(est: Estimate | None, value: float | None) -> str:
    if est is not None:
        return f"{est.value:.3f} <small>[{est.low:.3f}, {est.high:.3f}] n={est.n}</small>"
    return "" if value is None else f"{value:g}"


def metrics_table(run: EvalRun) -> str:
    """Every metric per mode with its interval and count, then each baseline's column."""
    modes, baselines = list(run.summary), list(run.baselines)
    keys = sorted({k for row in run.summary.values() for k in row})
    head = "".join(f"<th>{_esc(m)}</th>" for m in modes) + "".join(
        f'<th class="baseline">baseline: {_esc(b)}</th>' for b in baselines)
    rows = []
    for key in keys:
        cells = "".join(f"<td>{_cell(run.intervals.get(m, {}).get(key), run.summary[m].get(key))}</td>"
                        for m in modes)
        cells += "".join(f'<td class="baseline">{_cell(run.baselines[b].get(key), None)}</td>' for b in baselines)
        rows.append(f"<tr><td>{_esc(key)}</td>{cells}</tr>")
    return f'<table class="metrics"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>'


def withheld_note(run: EvalRun) -> str:
    if not run.withheld:
        return ""
    lines = "".join(f"<li><b>{_esc(key)}</b> for <b>{_esc(mode)}</b>: {_esc(why)}</li>"
                    for mode, metrics in run.withheld.items() for key, why in metrics.items())
    return f'<h3>Withheld (this mode cannot fail them)</h3><ul class="withheld">{lines}</ul>'


def comparison_section(comparison: Comparison) -> str:
    """The change from the previous run: changed rows first, noise greyed."""
    notes = []
    if comparison.same_data is False:
        notes.append("<p><b>The runs saw different data files</b>: their numbers are not comparable item for item.</p>")
    if comparison.settings_differ:
        notes.append("<p>Settings differ: " + ", ".join(
            f"{_esc(k)} {_esc(a)} → {_esc(b)}" for k, (a, b) in comparison.settings_differ.items()) + "</p>")
    rows = []
    for d in sorted(comparison.differences, key=lambda d: (d.verdict() != "changed", d.verdict() == "same")):
        verdict = d.verdict()
        rows.append(f'<tr class="{verdict}"><td>{_esc(d.mode)}</td><td>{_esc(d.metric)}</td><td>{d.a:g}</td>'
                    f"<td>{d.b:g}</td><td>{d.delta:+.4f}</td><td>{verdict}</td></tr>")
    return ("<h2>Compared with the previous run</h2>" + "".join(notes)
            + '<table class="comparison"><tr><th>mode</th><th>metric</th><th>previous</th><th>this run</th>'
            f'<th>change</th><th></th></tr>{"".join(rows)}</table>')


def items_table(results: list[ItemResult]) -> str:
    rows = "".join(
        f'<tr class="{"pass" if r.passed else "fail"}"><td>{_esc(r.id)}</td><td>{_esc(r.category)}</td>'
        f"<td>{_esc(r.mode)}</td><td>{'pass' if r.passed else 'FAIL'}</td>"
        f"<td>{_esc(', '.join(r.failed_checks))}</td><td>{r.latency_s:.2f}{' (cached)' if r.cached else ''}</td>"
        f"<td>{r.tokens}</td><td><details><summary>{_esc(r.output[:80])}</summary><pre>{_esc(r.output)}</pre>"
        f"<pre>{_esc(r.detail)}</pre></details></td></tr>"
        for r in results)
    return ('<table class="items"><tr><th>id</th><th>category</th><th>mode</th><th>result</th>'
            f'<th>failed checks</th><th>latency s</th><th>tokens</th><th>output</th></tr>{rows}</table>')


def render_html(run: EvalRun, previous: EvalRun | None = None) -> str:
    at_once = (f", {run.concurrency} at once (each latency includes the others' share of the model)"
               if run.concurrency > 1 else ", one at a time")
    settings = ", ".join(f"{_esc(k)}={_esc(v)}" for k, v in run.settings.items() if v is not None)
    data = ", ".join(f"{_esc(name)} <code>{digest[:12]}</code>" for name, digest in run.data_files.items())
    compared = comparison_section(compare_runs(previous, run)) if previous is not None else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{_esc(run.suite)} — slmflow eval</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.fail td:nth-child(4){{color:#c00;font-weight:bold}}
th.baseline,td.baseline{{color:#a0522d}}tr.noise td{{color:#888}}tr.changed td{{font-weight:bold}}
pre{{white-space:pre-wrap;max-width:60em}}</style></head><body>
<h1>{_esc(run.suite)}</h1><p>model: <code>{_esc(run.model)}</code>, {len(run.items)} item runs{at_once}</p>
<p>settings: {settings or "defaults"}</p><p>data: {data or "not recorded"}</p>
<h2>Per category, with 95% intervals and baselines</h2>{svg_bars(run)}
<h2>Metrics</h2><p>value [95% interval] n=items; Wilson for rates, bootstrap for means.</p>{metrics_table(run)}
{withheld_note(run)}{compared}
<h2>Latency and tokens</h2>{svg_scatter(run.items)}
<h2>Items</h2>{items_table(run.items)}
</body></html>"""
