"""User scenario files: ``agents eval FILE --target T``.

FILE is a pydantic-evals dataset (YAML, JSON, or a Python file defining ``dataset``) of cases
whose inputs are :class:`ScenarioInput` and whose evaluators are our checks
(:mod:`slmflow.evals.checks`). The cases run concurrently against the target, each output cached
by (target, input and its files' bytes, slmflow's code), and the results are written as an eval
run like any suite's: pass rate per category (a case's ``metadata: {category: ...}``, default
``scenario``) with its interval, the rate of each check, and every case with its failed checks.

A whole run is cached too, keyed by the file's bytes, the files its cases name, the target and
the judge: re-running an unchanged file then reads one entry and imports no model code and not
pydantic-evals itself (half a second of the re-run), which is what makes it cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError
from slmflow.evals.harness import eval_progress, score_run, write_run
from slmflow.evals.judging import use_judge
from slmflow.evals.output_cache import OutputCache, cache_key, use_cache
from slmflow.evals.results import EvalRun, ItemResult
from slmflow.evals.targets import ScenarioInput, TargetOutput
from slmflow.runtime.errors import SlmflowError

if TYPE_CHECKING:
    from pydantic_evals import Dataset


class ScenarioFileError(SlmflowError):
    """A scenario file that cannot be read as a dataset of cases."""


def _rebase(dataset: Dataset, folder: Path) -> None:
    """Images and files named in cases are relative to the scenario file's folder."""
    for case in dataset.cases:
        case.inputs.images = [str((folder / p).resolve()) for p in case.inputs.images]
        case.inputs.files = [str((folder / p).resolve()) for p in case.inputs.files]
        missing = [p for p in [*case.inputs.images, *case.inputs.files] if not Path(p).is_file()]
        if missing:
            raise ScenarioFileError(f"case {case.name}: {missing[0]} does not exist",
                                    "paths in a scenario file are relative to the file's folder")


def load_scenarios(path: Path) -> Dataset:
    """The dataset in ``path``, or an error naming the file, the place and what to change."""
    from pydantic_evals import Dataset
    from slmflow.evals.checks import CHECKS

    path = Path(path)
    if not path.is_file():
        raise ScenarioFileError(f"scenario file {path} does not exist", "check the path")
    if path.suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"slmflow_scenarios_{uuid.uuid4().hex[:8]}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's module may raise anything at import
            raise ScenarioFileError(f"{path} failed to import: {type(err).__name__}: {err}",
                                    "fix the file and run again") from None
        dataset = getattr(module, "dataset", None)
        if not isinstance(dataset, Dataset):
            raise ScenarioFileError(f"{path} defines no pydantic-evals Dataset named 'dataset'",
                                    "assign dataset = Dataset(cases=[...]) in the file")
    elif path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            dataset = Dataset[ScenarioInput, TargetOutput, dict].from_file(path, custom_evaluator_types=CHECKS)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ScenarioFileError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})",
                                    "quote values that hold ':' or start with a special character") from None
        except Exception as err:  # data against the schema, an unknown check, a bad check argument
            first = err.exceptions[0] if hasattr(err, "exceptions") else err  # an ExceptionGroup's first
            # pydantic-evals raises the schema's ValidationError as the cause of a ValueError
            cause = first if isinstance(first, ValidationError) else first.__cause__ or first.__context__
            if isinstance(cause, ValidationError):
                problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in cause.errors()[:3])
            else:
                problem = str(first).split(" Valid choices")[0].split("\n")[0]
            raise ScenarioFileError(f"{path}: {problem}", "checks: " + ", ".join(c.__name__ for c in CHECKS)) \
                from None
    else:
        raise ScenarioFileError(f"{path} is not a scenario file", "use .yaml, .yml, .json or .py")
    if not dataset.cases:
        raise ScenarioFileError(f"{path} has no cases", "add cases: [...] to the file")
    for i, case in enumerate(dataset.cases, start=1):
        case.name = case.name or f"case {i}"
    names = [case.name for case in dataset.cases]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ScenarioFileError(f"{path}: two cases are named {twice!r}", "give every case its own name")
    _rebase(dataset, path.parent)
    return dataset


class _ScenarioRun:
    """What score_run needs of a suite, for a scenario file."""

    def __init__(self, path: Path, target: str, model: str | None) -> None:
        self.name = path.stem
        self.path = path
        self.target = target
        self.model = model

    def data_files(self) -> list[Path]:
        return [self.path]

    def settings(self) -> dict[str, Any]:
        return {"target": self.target, "model": self.model}


def _item(case, output: TargetOutput | None, error: str | None) -> ItemResult:
    """One case as an ItemResult: passed when every check passed; each check's rate a metric."""
    category = (case.metadata or {}).get("category", "scenario")
    if output is None:
        return ItemResult(id=case.name, category=category, mode="scenario", passed=False, latency_s=0.0, tokens=0,
                          output=f"error: {error}", failed_checks=["the target raised an error"],
                          metrics={"errors": 1.0})
    failed = [f"{name}: {result.reason}" if result.reason else name
              for name, result in case.assertions.items() if not result.value]
    failed += [f"{f.name}: could not run ({f.error_message})" for f in case.evaluator_failures]
    metrics = {f"check/{name.split('(')[0]}": float(result.value) for name, result in case.assertions.items()}
    detail = output.model_dump_json(include={"tool_calls", "citations", "route", "found"})
    return ItemResult(id=case.name, category=category, mode="scenario", passed=not failed, metrics=metrics,
                      latency_s=output.latency_s, tokens=output.tokens, output=output.answer, detail=detail,
                      failed_checks=failed, cached=output.cached)


def _digest(paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def _run_key(path: Path, target, judge_model: str | None) -> str | None:
    """The whole run's cache key: the file's bytes, those of the files and images its cases name,
    the target and the judge. None for a Python dataset (its cases exist only once it runs)."""
    if path.suffix == ".py" or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        named = [str((path.parent / p).resolve()) for case in data["cases"]
                 for p in [*(case["inputs"].get("files") or []), *(case["inputs"].get("images") or [])]]
    except (yaml.YAMLError, TypeError, KeyError, AttributeError):  # load_scenarios will say what is wrong
        return None
    return cache_key(kind="run", file=hashlib.sha256(path.read_bytes()).hexdigest(), named=_digest(named),
                     target=target.fingerprint, judge=judge_model)


def run_scenarios(path: Path, target, target_text: str, out_dir: Path, model: str | None = None,
                  judge_model: str | None = None, concurrency: int = 4,
                  cache: OutputCache | None = None) -> EvalRun:
    """Every case of ``path`` through ``target`` (a resolved target), then results.json and
    report.html in ``out_dir``. Up to ``concurrency`` cases run at once; cached outputs are reused
    (each item says whether its output was)."""
    path = Path(path)
    cache = cache if cache is not None else OutputCache()
    run_key = _run_key(path, target, judge_model)
    if run_key is not None and (hit := cache.get(run_key)) is not None:
        run = EvalRun.model_validate(hit)
        for item in run.items:
            item.cached = True
        write_run(run, out_dir)
        return run
    dataset = load_scenarios(path)

    def key_of(case: ScenarioInput) -> str:
        return cache_key(kind="output", target=target.fingerprint, input=case.model_dump(),
                         files=_digest([*case.files, *case.images]))

    prepare = getattr(target, "prepare", None)
    if prepare is not None and not all(cache.has(key_of(c.inputs)) for c in dataset.cases):
        from slmflow.progress_bars import index_progress_bar

        with index_progress_bar() as shown:  # loading and indexing, shown and timed in no case
            prepare(shown)
    done = threading.Lock()

    with eval_progress() as bar, use_cache(cache), use_judge(judge_model):
        task = bar.add_task(f"{path.name} → {target_text}", total=len(dataset.cases))

        def run_case(case: ScenarioInput) -> TargetOutput:
            key = key_of(case)
            hit = cache.get(key)
            if hit is not None:
                out = TargetOutput.model_validate(hit).model_copy(update={"cached": True})
            else:
                out = target(case)
                cache.put(key, out.model_dump())
            with done:
                bar.advance(task)
            return out

        report = dataset.evaluate_sync(run_case, name=path.stem, max_concurrency=concurrency, progress=False)
    by_name = {c.name: _item(c, c.output, None) for c in report.cases}
    by_name |= {f.name: _item(f, None, f.error_message.splitlines()[0]) for f in report.failures}
    results = [by_name[case.name] for case in dataset.cases]  # the file's order
    run = score_run(_ScenarioRun(path, target_text, model), model or "embedded", [], results, concurrency, None)
    write_run(run, out_dir)
    if run_key is not None and not any(r.metrics.get("errors") for r in results):  # an error may not recur
        cache.put(run_key, json.loads(run.model_dump_json()))
    return run
