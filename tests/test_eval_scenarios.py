"""Evals a user can trust and write: scenario files through the CLI, the output cache, intervals,
baselines, withheld metrics, splits, comparisons, and the report as a browser renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from slmflow.cli import main
from slmflow.evals.harness import intervals_of, score_run, summarise
from slmflow.evals.results import EvalItem, EvalRun, ItemResult, compare_runs
from slmflow.evals.stats import bootstrap_mean, estimate, wilson

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"

TARGET = '''
def answer(case):
    q = case.question
    if "capital" in q:
        return "Paris is the capital of France."
    if "add" in q:
        return {"answer": "5", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2 + 3"}}]}
    return "I do not know."
'''

SCENARIOS = '''
cases:
  - name: capital
    inputs: {question: "What is the capital of France?"}
    evaluators:
      - AnswerContains: Paris
      - AnswerMatches: "^Paris"
  - name: adds
    inputs: {question: "Please add 2 and 3."}
    metadata: {category: tools}
    evaluators:
      - AnswerIs: "5"
      - ToolCalls: {calls: [{name: calculator, arguments: {expression: "2 + 3"}}]}
  - name: wrong
    inputs: {question: "Who wrote Hamlet?"}
    evaluators:
      - AnswerContains: Shakespeare
      - AnswerLacks: know
'''


@pytest.fixture
def scenario_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SLMFLOW_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "target.py").write_text(TARGET)
    (tmp_path / "cases.yaml").write_text(SCENARIOS)
    return tmp_path


def _eval(*args: str):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


# --- intervals ---------------------------------------------------------------------------------


def test_wilson_interval_of_8_in_10_is_the_textbook_one():
    est = wilson(8, 10)
    assert (round(est.low, 3), round(est.high, 3)) == (0.490, 0.943) and est.value == 0.8
    assert wilson(0, 5).low == 0.0 and wilson(0, 5).high > 0.4  # 0 of 5 is not "certainly 0"


def test_bootstrap_interval_is_seeded_and_holds_the_mean():
    values = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    a, b = bootstrap_mean(values), bootstrap_mean(values)
    assert a == b and a.low < a.value < a.high and a.kind == "bootstrap"
    assert estimate([1.0, 0.0, 1.0]).kind == "wilson"


# --- scenario files ----------------------------------------------------------------------------


def test_a_scenario_file_runs_against_a_function_and_reports_failed_checks(scenario_files):
    out = scenario_files / "out"
    result = _eval(str(scenario_files / "cases.yaml"), "--target", f"{scenario_files / 'target.py'}:answer",
                   "--out", str(out))
    assert result.exit_code == 1  # a case failed
    assert "2 of 3 cases passed" in result.output
    run = json.loads((out / "results.json").read_text())
    by_id = {i["id"]: i for i in run["items"]}
    assert by_id["capital"]["passed"] and by_id["adds"]["passed"] and by_id["adds"]["category"] == "tools"
    assert by_id["wrong"]["failed_checks"] == ["AnswerContains(Shakespeare): answer lacks ['Shakespeare']",
                                               "AnswerLacks(know): answer contains ['know']"]
    assert run["intervals"]["scenario"]["accuracy/all"]["n"] == 3
    assert set(run["data_files"]) == {"cases.yaml"}


def test_rerunning_an_unchanged_file_reuses_every_output_and_a_changed_target_runs_again(scenario_files):
    args = [str(scenario_files / "cases.yaml"), "--target", f"{scenario_files / 'target.py'}:answer",
            "--out", str(scenario_files / "out")]
    assert "reused from the cache: 0, run: 3" in _eval(*args).output
    again = _eval(*args)
    assert "reused from the cache: 3, run: 0" in again.output and "cached" in again.output
    with (scenario_files / "cases.yaml").open("a") as f:  # one case more: only it runs
        f.write('  - name: new\n    inputs: {question: "What is the capital of Italy?"}\n')
    assert "reused from the cache: 3, run: 1" in _eval(*args).output
    (scenario_files / "target.py").write_text(TARGET.replace("I do not know.", "Shakespeare."))
    changed = _eval(*args)
    assert "reused from the cache: 0, run: 4" in changed.output and "4 of 4 cases passed" in changed.output
    assert changed.exit_code == 0
    assert (scenario_files / "out" / "previous.json").exists()  # the run before, kept for the comparison
    assert "Compared with the previous run" in (scenario_files / "out" / "report.html").read_text()


def test_a_python_scenario_file_defines_its_dataset_in_code(scenario_files):
    (scenario_files / "cases.py").write_text(
        "from pydantic_evals import Case, Dataset\n"
        "from slmflow.evals.checks import AnswerContains\n"
        "from slmflow.evals.targets import ScenarioInput\n"
        "dataset = Dataset(name='capitals', cases=[Case(name=f'capital {i}',\n"
        "                 inputs=ScenarioInput(question='the capital?'))\n"
        "                         for i in range(3)], evaluators=[AnswerContains('Paris')])\n")
    result = _eval(str(scenario_files / "cases.py"), "--target", f"{scenario_files / 'target.py'}:answer",
                   "--out", str(scenario_files / "out"))
    assert result.exit_code == 0 and "3 of 3 cases passed" in result.output


@pytest.mark.parametrize(("text", "said"), [
    ("cases:\n  - name: a\n    inputs: {question: What: now?}\n", "line 3"),
    ("cases:\n  - name: a\n    inputs: {question: hi}\n    evaluators: [NoSuchCheck]\n", "NoSuchCheck"),
    ("cases:\n  - name: a\n    inputs: {files: [x.txt]}\n", "question or messages"),
    ("cases: []\n", "has no cases"),
])
def test_a_bad_scenario_file_is_a_clear_error(scenario_files, text, said):
    bad = scenario_files / "bad.yaml"
    bad.write_text(text)
    result = _eval(str(bad), "--target", f"{scenario_files / 'target.py'}:answer")
    assert result.exit_code == 2 and said in result.output and "bad.yaml" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_target_names_the_forms_it_takes(scenario_files):
    result = _eval(str(scenario_files / "cases.yaml"), "--target", "nonsense")
    assert result.exit_code == 2 and "docs-qa:FOLDER" in result.output


# --- comparisons -------------------------------------------------------------------------------


def _run(passed: list[bool], data: dict[str, str] | None = None) -> EvalRun:
    results = [ItemResult(id=str(i), category="c", mode="m", passed=p, latency_s=0.1, tokens=1, output="")
               for i, p in enumerate(passed)]
    return EvalRun(suite="s", model="x", summary=summarise(results), items=results,
                   intervals=intervals_of(results), data_files=data or {"q.jsonl": "aa"})


def test_a_change_inside_the_interval_is_noise_and_one_outside_is_not():
    base = _run([True] * 10 + [False] * 10)  # 0.50 [0.30, 0.70]
    near = compare_runs(base, _run([True] * 12 + [False] * 8))  # 0.60
    far = compare_runs(base, _run([True] * 19 + [False] * 1))  # 0.95
    assert next(d for d in near.differences if d.metric == "accuracy/all").noise is True
    assert next(d for d in far.differences if d.metric == "accuracy/all").noise is False
    assert next(d for d in near.differences if d.metric == "accuracy/all").verdict() == "noise"
    assert compare_runs(base, base).differences[0].verdict() == "same"
    assert near.same_data is True
    assert compare_runs(base, _run([True], {"q.jsonl": "bb"})).same_data is False


# --- the four problems the issue found ---------------------------------------------------------


needs_data = pytest.mark.skipif(not (DATA / "wikiqa" / "qa_dev.jsonl").exists(), reason="shared data not here")


@needs_data
def test_routing_has_no_category_it_cannot_fail(monkeypatch):
    """A router that always answers "tools" fails every other category (vision, routed by the
    attachment alone, is gone)."""
    import slmflow.evals.routing as routing

    suite = routing.RoutingSuite(data=DATA)
    items = suite.items(3)
    assert {i.category for i in items} == {"docs", "tools", "reasoning"}
    monkeypatch.setattr(routing, "decide_route", lambda model, request, signals: ("tools", None, "always"))
    results = [suite.run(item, "choice", model=None) for item in items]
    run = score_run(suite, "none", items, results, 1, 3)
    assert run.summary["choice"]["accuracy/tools"] == 1.0
    assert run.summary["choice"]["accuracy/docs"] == 0.0 and run.summary["choice"]["accuracy/reasoning"] == 0.0
    assert run.baselines["always tools"]["accuracy/all"].value == pytest.approx(1 / 3)


@needs_data
def test_routing_scores_no_request_its_thresholds_were_read_from(monkeypatch):
    import slmflow.evals.routing as routing

    n = routing.TUNING_REQUESTS
    with (DATA / "wikiqa" / "qa_dev.jsonl").open() as f:
        tuning = {json.loads(line)["id"] for line in list(f)[:n]}
    with (DATA / "bfcl" / "BFCL_v4_simple_python.json").open() as f:
        tuning |= {json.loads(line)["id"] for line in list(f)[:n]}
    assert not tuning & {i.id for i in routing.RoutingSuite(data=DATA).items(n)}
    scored = routing.word_problems(10, seed=0)
    monkeypatch.setattr(routing, "TUNING_SEED", -1)  # seed 0's whole sequence, tuning problems first
    assert scored == routing.word_problems(n + 10, seed=0)[n:]


@needs_data
def test_routings_word_problems_come_from_the_seed_it_records():
    from slmflow.evals.routing import RoutingSuite

    def problems(seed: int) -> list[str]:
        return [i.data["request"] for i in RoutingSuite(data=DATA, seed=seed).items(10) if i.category == "reasoning"]

    assert problems(7) == problems(7) and problems(7) != problems(8)
    assert RoutingSuite(data=DATA, seed=7).settings()["seed"] == 7


@needs_data
def test_routings_tool_list_holds_no_gold_function_of_a_tool_request():
    from slmflow.evals.routing import DISTRACTORS, RoutingSuite

    suite = RoutingSuite(data=DATA)
    suite.items(None)
    with (DATA / "bfcl" / "BFCL_v4_simple_python.json").open() as f:
        gold = {fn["name"] for q in map(json.loads, f) for fn in q["function"]}
    names = {t.spec.name if hasattr(t, "spec") else t.name for t in suite.tools}
    assert len(names) == DISTRACTORS + 2 and not names & gold


class WordsOnly:
    """A model that answers every prompt in words: no call can be parsed from it."""

    spec = "words-only"

    def generate(self, messages, max_tokens=None, **_):
        class Usage:
            completion_tokens = 4

        class Result:
            text, usage = "I cannot do that.", Usage()

        class Response:
            def result(self):
                return Result()

        return Response()


@needs_data
def test_bfcl_plain_mode_that_never_calls_gets_no_irrelevance_score_and_zero_valid_calls():
    from slmflow.evals.bfcl import BfclSuite

    suite = BfclSuite(data=DATA / "bfcl")
    items = suite.items(2)
    results = [suite.run(item, "plain", WordsOnly()) for item in items]
    run = score_run(suite, "words-only", items, results, 1, 2)
    assert "accuracy/irrelevance" not in run.summary["plain"] and "accuracy/irrelevance" in run.withheld["plain"]
    assert run.summary["plain"]["valid_call"] == 0.0 and run.intervals["plain"]["valid_call"].n == 8
    assert run.summary["plain"]["accuracy/all"] == 0.0  # the withheld category counts in no overall rate
    assert run.baselines["no call"]["accuracy/irrelevance"].value == 1.0


@needs_data
def test_wikiqa_reports_the_always_yes_baseline_beside_yes_no_accuracy():
    from slmflow.evals.docs_qa import WikiQASuite, said_yes_no

    suite = WikiQASuite(data=DATA / "wikiqa")
    items = suite.items(40)
    polar = [i for i in items if i.category == "yes_no"]
    baseline = suite.baselines(items)["always yes"]["yes_no_accuracy"]
    assert len(baseline) == len(polar) == 40
    assert sum(baseline) == sum(said_yes_no(i.data["answers"][0]) == "yes" for i in polar)
    assert 0.6 < sum(baseline) / 40  # most of these questions are "yes": the bar a method must clear
    assert suite.settings()["split"] == "dev" and [p.name for p in suite.data_files()] == ["qa_dev.jsonl"]


def test_scifact_names_its_category_and_split_from_the_data(tmp_path):
    from slmflow.evals.docs_qa import SciFactSuite
    from slmflow.runtime.errors import SlmflowError

    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "t", "text": "x"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a claim"}) + "\n")
    suite = SciFactSuite(data=tmp_path)
    assert [i.category for i in suite.items(None)] == ["test"] and suite.settings() == {"split": "test"}
    with pytest.raises(SlmflowError, match="no split 'train'.*test"):
        SciFactSuite(data=tmp_path, split="train")


# --- the report in a browser -------------------------------------------------------------------


def _bar_widths(png: Path, colour: tuple[int, int, int]) -> list[int]:
    """Widths of the horizontal bars of ``colour`` (as blended on white), top to bottom."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = image.load()
    spans = []
    for y in range(height):
        xs = [x for x in range(width) if all(abs(a - b) <= 12 for a, b in zip(pixels[x, y], colour))]
        spans.append((min(xs), max(xs)) if len(xs) > 3 else None)
    bars, last = [], None
    for span in spans:  # one bar = consecutive pixel rows with a span
        if span and last is None:
            bars.append(span)
        elif span:
            bars[-1] = (min(bars[-1][0], span[0]), max(bars[-1][1], span[1]))
        last = span
    return [right - left + 1 for left, right in bars]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium to render the report")
def test_the_report_draws_bars_in_proportion_with_baselines_as_a_browser_shows_it(tmp_path):
    from slmflow.evals.report import render_html

    results = [ItemResult(id=f"{c}{i}", category=c, mode="m", passed=i < k, latency_s=0.1, tokens=1, output="o")
               for c, k in (("a", 1), ("b", 3)) for i in range(4)]  # a: 1 of 4, b: 3 of 4, all: 4 of 8
    items = [EvalItem(id=r.id, category=r.category, data={}) for r in results]

    class Suite:
        name = "s"

        def baselines(self, items):
            return {"always b": {"accuracy/b": [1.0] * 4}}

    run = score_run(Suite(), "x", items, results, 1, None)
    page = tmp_path / "report.html"
    page.write_text(render_html(run))
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    # the mode's blue (#1f77b4) at opacity 0.8 over white
    widths = _bar_widths(shot, (76, 146, 195))
    assert len(widths) == 3, widths  # accuracy/a, accuracy/b, accuracy/all
    a, b, overall = widths
    assert b / a == pytest.approx(3, rel=0.1) and overall / a == pytest.approx(2, rel=0.1)
    assert _bar_widths(shot, (255, 127, 14)), "the baseline tick is drawn"


# --- the example files, through the CLI ---------------------------------------------------------


@pytest.mark.slow  # runs the embedded model
@pytest.mark.parametrize(("file", "target", "failing"), [
    ("docs-qa.yaml", "docs-qa:examples/docs", {"construction-years"}),
    ("router.yaml", "assistant:examples/docs", {"follow-up", "word-problem", "greeting"}),
])
def test_the_example_scenario_files_pass_and_fail_as_their_comments_say(tmp_path, file, target, failing):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "slmflow.cli", "eval", f"examples/scenarios/{file}", "--target",
                           target, "--out", str(out), "--no-cache"], capture_output=True, text=True, timeout=1200,
                          cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    assert {i["id"] for i in run["items"] if not i["passed"]} == failing
    html = (out / "report.html").read_text()
    assert 'class="bars"' in html and "failed checks" in html
