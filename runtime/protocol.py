"""What agents and graphs need of a text model, as one typed interface.

Local models (runtime/model.py) and endpoint models (runtime/endpoints/) both satisfy it, and so
can a caller's own object (a test's scripted model, a remote service wrapped by hand):
``load_model`` hands any of them back unchanged, so an Agent or the assistant graph runs on it.
An object that also has ``tool_turn`` decides tool turns itself (a server enforcing the choice);
otherwise runtime/tool_calling.py constrains ``generate`` to the call grammar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class GenerativeModel(Protocol):
    """``generate`` returns a :class:`~slmflow.runtime.loop.Response` (iterate it for text deltas,
    ``result()`` for the whole :class:`~slmflow.runtime.loop.GenerationResult`)."""

    spec: Any
    context_length: int

    def generate(self, prompt: Any, *, max_tokens: int = 256, **options: Any) -> Any: ...

    def count_tokens(self, messages: Sequence[Any], tools: Sequence[Any] = ()) -> int: ...
