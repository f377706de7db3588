"""The eval harness and the BFCL suite, end to end through the CLI, plus the AST checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slmflow.evals.bfcl import (
    BfclFunction,
    call_matches,
    calls_match,
    parse_plain_calls,
)

BFCL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfcl"

FN = BfclFunction(name="math.hypot", description="", parameters={
    "type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}, "z": {"type": "integer"}},
    "required": ["x", "y"]})
ANSWER = {"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}}


def test_ast_checker_rules():
    assert call_matches({"math.hypot": {"x": 4, "y": 5}}, FN, ANSWER)
    assert call_matches({"math.hypot": {"x": 4, "y": 5, "z": 0}}, FN, ANSWER)
    assert not call_matches({"math.hypot": {"x": 4}}, FN, ANSWER)  # required y missing
    assert not call_matches({"math.hypot": {"x": 4, "y": 6}}, FN, ANSWER)  # wrong value
    assert not call_matches({"math.hypot": {"x": 4, "y": 5, "w": 1}}, FN, ANSWER)  # unknown param
    assert not call_matches({"math.pow": {"x": 4, "y": 5}}, FN, ANSWER)
    a, b = {"math.hypot": {"x": 1, "y": 2}}, {"math.hypot": {"x": 4, "y": 5}}
    answers = [{"math.hypot": {"x": [4], "y": [5]}}, {"math.hypot": {"x": [1], "y": [2]}}]
    assert calls_match([a, b], [FN], answers)  # any order
    assert not calls_match([a], [FN], answers)


def test_plain_output_parsing():
    assert parse_plain_calls("[math.hypot(x=4, y=5), f(s='New York, NY')]") == [
        {"math.hypot": {"x": 4, "y": 5}}, {"f": {"s": "New York, NY"}}]
    assert parse_plain_calls("I cannot help with that.") is None


@pytest.mark.slow  # runs the CLI in a subprocess
def test_bfcl_eval_cli_writes_both_reports(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "slmflow.cli", "eval", "bfcl", "--limit", "1", "--out", str(out),
                           "--data", str(BFCL_DATA), "--mode", "constrained", "--mode", "constrained_required",
                           "--mode", "plain"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"constrained", "constrained_required", "plain"}
    assert len(results["items"]) == 5 * 3
    required = [i for i in results["items"] if i["mode"] == "constrained_required"]
    # every relevant item got a call that validates (no call would score 0)
    assert all(i["metrics"]["valid_call"] == 1.0 for i in required if i["category"] != "irrelevance")
    assert "accuracy/irrelevance" in results["withheld"]["constrained_required"]
    assert results["baselines"]["no call"]["accuracy/irrelevance"]["value"] == 1.0
    html = (out / "report.html").read_text()
    assert "<svg" in html and "accuracy/simple_python" in html
    cmp = subprocess.run([sys.executable, "-m", "slmflow.cli", "eval", "compare", str(out / "results.json"),
                          str(out / "results.json")], capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0 and "+0.0000" in cmp.stdout and "same" in cmp.stdout


@pytest.mark.slow  # runs the CLI in a subprocess
def test_missing_data_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slmflow.cli", "eval", "bfcl", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "no bfcl data (BFCL_v4_simple_python.json) in" in proc.stderr and "Traceback" not in proc.stderr


def test_assistant_tools_suite_has_40_requests_with_exact_values():
    from slmflow.evals.assistant_tools import AssistantToolsSuite

    items = AssistantToolsSuite().items(None)
    assert len(items) >= 40
    assert {i.category for i in items} == {"calculator", "clock", "files", "follow_up", "reworded", "held_apart"}
    assert next(i for i in items if i.data["request"] == "What is 17 * 23?").data["value"] == "391"
    assert all(i.data["value"] is not None for i in items if i.data["tool"] != "current_time")


def test_a_read_files_answer_counts_only_as_a_verbatim_passage_of_it():
    from slmflow.evals.assistant_tools import is_passage

    page = "<h1>Bees</h1>\n<p>Honey bees live in colonies of up to\n60,000 bees.</p>"
    assert is_passage("Honey bees live in colonies of up to 60,000 bees.", page)
    assert not is_passage("Honey bees live in colonies of up to 80,000 bees.", page)  # one digit changed
    assert not is_passage("Honey bees", page)  # too short to say what the file says
