"""What everything that generates offers, as one typed interface; its ``generate`` takes the one
options type of runtime/options.py.

Local models and their sessions (runtime/model.py), endpoint models (runtime/endpoints/), vision
models (runtime/vision.py) and a caller's own object (a test's scripted model, a remote service
wrapped by hand) all satisfy :class:`GenerativeModel`: ``load_model`` hands any of them back
unchanged, so an Agent or the assistant graph runs on it. Every kind takes the same
:class:`GenerateOptions`, as one object or as keywords; an option a kind cannot honour (images on
a text model, a grammar behind an endpoint) is refused with a clear error, never ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from slmflow.runtime.tool_calling import ToolChoice, ToolSpec, ToolTurn

__all__ = ["GenerateOptions", "GenerativeModel", "ModelView"]


@runtime_checkable
class GenerativeModel(Protocol):
    """``generate`` returns a :class:`~slmflow.runtime.loop.Response` (iterate it for text deltas,
    ``result()`` for the whole :class:`~slmflow.runtime.loop.GenerationResult`), or the validated
    instance when ``output`` is set. ``tool_turn`` is one turn with tools that is either words or
    calls as ``tool_choice`` allows, shown ``tools`` and calling only ``callable_tools`` (default: all
    shown; the tool selector narrows it): a local model holds the turn to the call grammar, an
    endpoint offers ``callable_tools`` and lets the server enforce the choice."""

    spec: Any
    context_length: int

    def generate(self, prompt: Any, options: GenerateOptions | None = None, **fields: Any) -> Any: ...

    def tool_turn(self, messages: Sequence[Any], tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
                  parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Sequence[ToolSpec] | None = None) -> ToolTurn: ...

    def count_tokens(self, messages: Sequence[Any], tools: Sequence[Any] = ()) -> int: ...


class ModelView:
    """Base of what generates on another model's behalf (a session on it, a view through its
    worker): the spec, the window and token counts are that model's."""

    model: GenerativeModel

    @property
    def spec(self) -> Any:
        return self.model.spec

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def count_tokens(self, messages: Sequence[Any], tools: Sequence[Any] = ()) -> int:
        return self.model.count_tokens(messages, tools)
