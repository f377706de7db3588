"""The checks a scenario case can name: pydantic-evals Evaluators over a :class:`TargetOutput`.

In a scenario file each is written under the case's ``evaluators`` (or the dataset's, for every
case) by its class name: ``- AnswerContains: "1889"``, ``- ToolCalls: {calls: [{name: calculator,
arguments: {expression: "17 * 23"}}]}``, ``- Judge: "The reply is polite."``. A check returns a
pass/fail with the reason it failed, so the report can say what was wrong, not only that it was.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

import anyio
import jsonschema
from pydantic_evals.evaluators import EvaluationReason, Evaluator, EvaluatorContext
from slmflow.evals.targets import TargetOutput


class Check:
    """A check, named in the report by its class and first value (two AnswerContains of one case
    stay apart), and run off the event loop so a slow one (Judge) holds no other case up."""

    def get_default_evaluation_name(self) -> str:
        first = next(iter(dataclasses.asdict(self).values()), None)
        return type(self).__name__ + (f"({str(first)[:40]})" if first is not None else "")

    async def evaluate_async(self, ctx: EvaluatorContext) -> EvaluationReason:
        return await anyio.to_thread.run_sync(self.evaluate, ctx)


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def _values(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@dataclass
class AnswerIs(Check, Evaluator):
    """The answer is exactly ``value`` (surrounding white space and a final full stop aside)."""

    value: str
    case_sensitive: bool = False

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        said = ctx.output.answer.strip().removesuffix(".")
        ok = _fold(said, self.case_sensitive) == _fold(self.value.strip().removesuffix("."), self.case_sensitive)
        return EvaluationReason(ok, None if ok else f"answer is {said[:120]!r}, not {self.value!r}")


@dataclass
class AnswerContains(Check, Evaluator):
    """Every one of ``value`` (a string or a list) stands in the answer."""

    value: str | list[str]
    case_sensitive: bool = False
    #: Whether the values must stand in the answer (False: AnswerLacks, none may).
    wanted = True

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        said = _fold(ctx.output.answer, self.case_sensitive)
        wrong = [v for v in _values(self.value) if (_fold(v, self.case_sensitive) in said) != self.wanted]
        why = f"answer {'lacks' if self.wanted else 'contains'} {wrong}"
        return EvaluationReason(not wrong, why if wrong else None)


@dataclass
class AnswerLacks(AnswerContains):
    """None of ``value`` stands in the answer (a wrong figure, a forbidden claim)."""

    wanted = False


@dataclass
class AnswerMatches(Check, Evaluator):
    """The regular expression ``pattern`` matches somewhere in the answer."""

    pattern: str

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        ok = re.search(self.pattern, ctx.output.answer) is not None
        return EvaluationReason(ok, None if ok else f"no match for /{self.pattern}/ in {ctx.output.answer[:120]!r}")


@dataclass
class OutputSchema(Check, Evaluator):
    """The answer is JSON that validates against the JSON Schema ``schema``."""

    schema: dict

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        try:
            jsonschema.validate(json.loads(ctx.output.answer), self.schema)
        except json.JSONDecodeError as err:
            return EvaluationReason(False, f"answer is not JSON ({err.msg} at character {err.pos})")
        except jsonschema.ValidationError as err:
            return EvaluationReason(False, f"schema: {err.message} at {'/'.join(map(str, err.path)) or 'top'}")
        return EvaluationReason(True)


@dataclass
class ToolCalls(Check, Evaluator):
    """Each expected call (``{name, arguments}``) was made, in any order, each call counted once;
    a call's arguments must hold the expected ones (others may be there unless ``exact``, which
    also forbids calls beyond the expected)."""

    calls: list[dict]
    exact: bool = False

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        made = list(ctx.output.tool_calls)
        for want in self.calls:
            args = want.get("arguments") or {}

            def fits(call: dict, want=want, args=args) -> bool:
                got = call.get("arguments") or {}
                return call.get("name") == want["name"] and (got == args if self.exact else
                                                             all(got.get(k) == v for k, v in args.items()))

            hit = next((c for c in made if fits(c)), None)
            if hit is None:
                return EvaluationReason(False, f"no call {want['name']}({json.dumps(args)}) among "
                                               f"{[c.get('name') for c in ctx.output.tool_calls]}")
            made.remove(hit)
        if self.exact and made:
            return EvaluationReason(False, f"unexpected calls {[c.get('name') for c in made]}")
        return EvaluationReason(True)


@dataclass
class Cites(Check, Evaluator):
    """Every file in ``files`` is among the answer's citations (matched by path ending)."""

    files: list[str]

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        missing = [f for f in self.files if not any(c == f or c.endswith("/" + f) for c in ctx.output.citations)]
        return EvaluationReason(not missing, f"not cited: {missing} (cited {ctx.output.citations})" if missing
                                else None)


@dataclass
class Abstains(Check, Evaluator):
    """The target said it could not answer (``expected: false``: it answered)."""

    expected: bool = True

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        abstained = not ctx.output.found
        ok = abstained == self.expected
        return EvaluationReason(ok, None if ok else ("answered " + repr(ctx.output.answer[:120]) if self.expected
                                                     else "abstained"))


@dataclass
class RoutedTo(Check, Evaluator):
    """The router graph sent the request to ``route`` (docs, tools, reasoning, chat)."""

    route: str

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        ok = ctx.output.route == self.route
        return EvaluationReason(ok, None if ok else f"routed to {ctx.output.route}")


@dataclass
class Budget(Check, Evaluator):
    """The case ran within ``max_latency_s`` seconds and ``max_tokens`` generated tokens (as the
    first, uncached run measured them)."""

    max_latency_s: float | None = None
    max_tokens: int | None = None

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        over = []
        if self.max_latency_s is not None and ctx.output.latency_s > self.max_latency_s:
            over.append(f"{ctx.output.latency_s:.2f} s > {self.max_latency_s} s")
        if self.max_tokens is not None and ctx.output.tokens > self.max_tokens:
            over.append(f"{ctx.output.tokens} tokens > {self.max_tokens}")
        return EvaluationReason(not over, "; ".join(over) or None)


JUDGE_PROMPT = ("You check answers. Question: {question}\nAnswer: {answer}\n"
                "Criterion: {criterion}\nDoes the answer meet the criterion? Reply yes or no.")


@dataclass
class Judge(Check, Evaluator):
    """A local model decides whether the answer meets ``criterion`` under a constrained yes/no
    (``Choice``), so its verdict is always one of the two; the judge is ``--judge-model``
    (default: the embedded model) and its verdicts are cached with the outputs."""

    criterion: str

    def evaluate(self, ctx: EvaluatorContext[Any, TargetOutput, Any]) -> EvaluationReason:
        from slmflow.evals.judging import verdict

        question = ctx.inputs.prompt_text() if hasattr(ctx.inputs, "prompt_text") else str(ctx.inputs)
        said = verdict(JUDGE_PROMPT.format(question=question, answer=ctx.output.answer, criterion=self.criterion))
        return EvaluationReason(said == "yes", None if said == "yes" else f"judge said no to: {self.criterion}")


#: Every check a scenario file may name.
CHECKS: list[type[Evaluator]] = [AnswerIs, AnswerContains, AnswerLacks, AnswerMatches, OutputSchema, ToolCalls,
                                 Cites, Abstains, RoutedTo, Budget, Judge]
