"""BFCL (Berkeley Function Calling Leaderboard) data: questions and their function schemas.

BFCL writes parameter types with its own names; ``to_json_schema`` maps them to JSON Schema as the
data's README says (dict → object, float → number, tuple → array, any → no type), and closes every
object so a call can name no parameter the function does not have.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import jsonschema
from pydantic import BaseModel
from slmflow.evals.harness import find_shared_data
from slmflow.evals.results import EvalItem, ItemResult
from slmflow.runtime.tool_calling import ToolSpec, generate_with_tools
from slmflow.runtime.tool_selection import ToolSelector

TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "any": None}


class BfclFunction(BaseModel):
    name: str
    description: str = ""
    parameters: dict


class BfclQuestion(BaseModel):
    id: str
    question: list[list[dict]]
    function: list[BfclFunction]


def to_json_schema(node: dict) -> dict:
    """A BFCL parameter schema as standard JSON Schema."""
    out = {}
    for key, value in node.items():
        if key == "type":
            mapped = TYPE_MAP.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties":
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_json_schema(value)
        elif key in ("description", "enum", "required", "default"):
            out[key] = value
    if out.get("type") == "object":
        out.setdefault("properties", {})
        for name in out.get("required", []):  # required but undeclared (it happens in the data): any value
            out["properties"].setdefault(name, {})
        out["additionalProperties"] = False
    return out


def load_questions(path: Path) -> list[BfclQuestion]:
    with path.open(encoding="utf-8") as f:
        return [BfclQuestion.model_validate(json.loads(line)) for line in f if line.strip()]


# --- the BFCL suite: constrained tool calling vs plain prompting, scored by AST match ------------



def find_data(data: Path | None = None) -> Path:
    """The BFCL data folder: ``data``, or shared/data/bfcl in or beside the working directory."""
    return find_shared_data("bfcl", "BFCL_v4_simple_python.json", data)


CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
# BFCL's prompt-mode system prompt (bfcl_eval/constants/default_prompts.py), shortened.
PLAIN_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. "
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. "
    "If none of the functions can be used, point it out. You MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]. "
    "You SHOULD NOT include any other text in the response.\nHere is a list of functions in JSON format "
    "that you can invoke.\n{functions}"
)


def _normalise(value):
    if isinstance(value, str):
        return re.sub(r"[ ,./\-_*^]", "", value.lower()).replace("'", '"')
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _value_ok(value, acceptable: list) -> bool:
    norm = _normalise(value)
    return any(norm == _normalise(a) for a in acceptable if a != "")


def call_matches(call: dict, function: BfclFunction, answer: dict) -> bool:
    """One decoded call against one ground-truth call, with BFCL's AST rules (bfcl/README.md)."""
    (name, params), = call.items()
    (want_name, want_params), = answer.items()
    if name != want_name:
        return False
    props = function.parameters.get("properties", {})
    if any(p not in params for p in function.parameters.get("required", [])):
        return False
    for key, value in params.items():
        if key not in props or key not in want_params or not _value_ok(value, want_params[key]):
            return False
    return all(key in params for key, ok in want_params.items() if "" not in ok)


def calls_match(calls: list[dict], functions: list[BfclFunction], answers: list[dict]) -> bool:
    """Same number of calls as answers, matched in any order, each call used once."""
    if len(calls) != len(answers):
        return False
    by_name = {f.name: f for f in functions}
    remaining = list(range(len(calls)))
    for answer in answers:
        hit = next((i for i in remaining if next(iter(calls[i])) in by_name
                    and call_matches(calls[i], by_name[next(iter(calls[i]))], answer)), None)
        if hit is None:
            return False
        remaining.remove(hit)
    return True


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError("not a function name")


def parse_plain_calls(text: str) -> list[dict] | None:
    """``[f(a=1), g.h(b='x')]`` → calls; None when the text is no such list (an answer in words)."""
    match = re.search(r"\[.*\]", text, re.S)
    if not match:
        return None
    try:
        tree = ast.parse(match.group(0), mode="eval")
        if not isinstance(tree.body, ast.List):
            return None
        return [{_dotted(c.func): {kw.arg: ast.literal_eval(kw.value) for kw in c.keywords}}
                for c in tree.body.elts]
    except (SyntaxError, ValueError, AttributeError, TypeError):
        return None


class BfclSuite:
    """BFCL v4 non-live categories, run in two modes on the same model."""

    name = "bfcl"
    # constrained: our grammar-enforced tool calling with tool_choice="auto" and the default embedding
    # tool selector deciding call-or-answer (what an Agent does); plain: BFCL's prompt, output parsed
    # afterwards (what a user gets today). These two run by default. constrained_required (--mode):
    # tool_choice="required", so a call is always made and irrelevance fails by construction; it
    # shows the quality of the calls themselves.
    modes = ["constrained", "plain"]
    extra_modes = ["constrained_required"]

    def __init__(self, data: Path | None = None, categories: list[str] = CATEGORIES, max_tokens: int = 256) -> None:
        self.data = find_data(data)
        self.categories = categories
        self.max_tokens = max_tokens
        self._selector: ToolSelector | None = None

    @property
    def selector(self) -> ToolSelector:
        if self._selector is None:
            self._selector = ToolSelector()
        return self._selector

    def items(self, limit: int | None) -> list[EvalItem]:
        items = []
        for cat in self.categories:
            questions = load_questions(self.data / f"BFCL_v4_{cat}.json")
            answers = {}
            answer_file = self.data / "possible_answer" / f"BFCL_v4_{cat}.json"
            if answer_file.exists():
                with answer_file.open(encoding="utf-8") as f:
                    answers = {a["id"]: a["ground_truth"] for a in map(json.loads, f) if a}
            for q in questions[:limit]:
                items.append(EvalItem(id=q.id, category=cat,
                                      data={"question": q.model_dump(), "answers": answers.get(q.id, [])}))
        return items

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        q = BfclQuestion.model_validate(item.data["question"])
        answers = item.data["answers"]
        messages = q.question[0]
        specs = [ToolSpec(name=f.name, description=f.description, parameters=to_json_schema(f.parameters))
                 for f in q.function]
        start = time.perf_counter()
        if mode.startswith("constrained"):
            required = mode == "constrained_required"
            turn = generate_with_tools(model, messages, specs, tool_choice="required" if required else "auto",
                                       parallel=item.category.startswith("parallel"), max_tokens=self.max_tokens,
                                       selector=None if required else self.selector)
            output, tokens = turn.raw, turn.result.usage.completion_tokens
            calls = [{c.name: c.arguments} for c in turn.tool_calls]
        else:
            functions = json.dumps([f.model_dump() for f in q.function])
            system = {"role": "system", "content": PLAIN_SYSTEM.format(functions=functions)}
            result = model.generate([system, *messages], max_tokens=self.max_tokens).result()
            output, tokens = result.text, result.usage.completion_tokens
            calls = parse_plain_calls(output) or []
        latency = time.perf_counter() - start
        if item.category == "irrelevance":
            passed = not calls
        else:
            passed = calls_match(calls, q.function, answers)
        metrics = {"calls_emitted": float(len(calls))}
        if item.category != "irrelevance":  # no call where one was due is an invalid call, not a skipped item
            metrics["valid_call"] = sum(self._valid(c, specs) for c in calls) / len(calls) if calls else 0.0
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=passed, metrics=metrics,
                          latency_s=latency, tokens=tokens, output=output,
                          detail=json.dumps({"calls": calls, "answers": answers}, default=str)[:4000])

    def data_files(self) -> list[Path]:
        return [self.data / f"BFCL_v4_{cat}.json" for cat in self.categories] + [
            p for cat in self.categories if (p := self.data / "possible_answer" / f"BFCL_v4_{cat}.json").exists()]

    def settings(self) -> dict:
        return {"categories": self.categories, "max_tokens": self.max_tokens}

    def baselines(self, items: list[EvalItem]) -> dict[str, dict[str, list[float]]]:
        """Never calling: right on every irrelevance item, wrong on every other."""
        by_cat = {c: [float(c == "irrelevance") for i in items if i.category == c]
                  for c in sorted({i.category for i in items})}
        relevant = [0.0 for i in items if i.category != "irrelevance"]
        return {"no call": {"accuracy/all": [float(i.category == "irrelevance") for i in items],
                            **{f"accuracy/{c}": v for c, v in by_cat.items()}, "valid_call": relevant}}

    @staticmethod
    def unfailable(mode: str, results: list[ItemResult]) -> dict[str, str]:
        """Irrelevance passes whenever no call is made, so it says nothing for a mode that makes no
        call anywhere (plain prompting whose output never parses); with tool_choice="required" a call
        is always made, so it fails by construction."""
        if mode == "constrained_required":
            return {"accuracy/irrelevance": "tool_choice=required always calls: it fails by construction"}
        relevant = [r for r in results if r.category != "irrelevance"]
        if relevant and not any(r.metrics.get("calls_emitted") for r in relevant):
            return {"accuracy/irrelevance": f"no call was made on any of the {len(relevant)} relevant items, "
                                            "so passing by making none says nothing"}
        return {}

    @staticmethod
    def _valid(call: dict, specs: list[ToolSpec]) -> bool:
        (name, args), = call.items()
        spec = next((s for s in specs if s.name == name), None)
        if spec is None:
            return False
        try:
            jsonschema.validate(args, spec.parameters)
        except jsonschema.ValidationError:
            return False
        return True
