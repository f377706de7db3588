"""The per-call options of a generation, one type for every kind of model (runtime/protocol.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmflow.runtime.errors import PromptError
from slmflow.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from pydantic import BaseModel
    from slmflow.runtime.constraints import Constraint


@dataclass(frozen=True)
class GenerateOptions:
    """The per-call options of one generation, the same for every kind of model.

    ``constraint`` holds the reply to a grammar, pattern, choice or quote (runtime/constraints.py);
    ``output`` generates under a pydantic model's JSON Schema and returns a validated instance
    instead of a Response. ``stop_on_loops`` ends a reply that keeps repeating one block of
    tokens; ``jump_forward`` appends the tokens a constraint forces without sampling them;
    ``speculate`` lets greedy decoding take tokens it copies from the prompt several per forward
    pass where that leaves the output unchanged (the last three are how our loop decodes; an
    endpoint's engine decides for itself). ``images`` are files attached to the prompt, for the
    models that see them.
    """

    max_tokens: int = 256
    sampling: SamplingParams | None = None
    stop: Sequence[str] = ()
    system: str | None = None
    constraint: Constraint | None = None
    output: type[BaseModel] | None = None
    jump_forward: bool = True
    stop_on_loops: bool = True
    speculate: bool = True
    images: Sequence[str | Path] = ()

    @classmethod
    def of(cls, options: GenerateOptions | None, fields: dict[str, Any]) -> GenerateOptions:
        """``options`` (default: all defaults) with ``fields`` set on top; a field that is no
        option is refused by name, so a misspelt keyword is an error rather than ignored."""
        unknown = sorted(set(fields) - _OPTION_NAMES)
        if unknown:
            raise PromptError(f"generate() has no option {', '.join(map(repr, unknown))}",
                              f"use one of: {', '.join(sorted(_OPTION_NAMES))}")
        if options is not None and not isinstance(options, GenerateOptions):
            raise PromptError(f"generate()'s options must be GenerateOptions, not {type(options).__name__}",
                              "pass GenerateOptions(...) or the options as keywords")
        chosen = dataclasses.replace(options or cls(), **fields)
        if chosen.max_tokens < 1:
            raise PromptError(f"max_tokens must be at least 1, got {chosen.max_tokens}",
                              "pass --max-tokens 1 or more")
        return chosen

    @property
    def sampler_params(self) -> SamplingParams:
        return self.sampling or SamplingParams()


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(GenerateOptions))
