"""A loaded model seen through its one worker (runtime/worker.py): the view agents and graph nodes
get, so that however many threads run agents, graphs and served requests on one model, its
generations run one at a time on its own thread, in arrival order, as issue #25 asks and as the
batching scheduler will take them over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slmflow.runtime.loop import Response
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.protocol import GenerativeModel, ModelView
from slmflow.runtime.registry import worker_for
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.tool_calling import ToolChoice, ToolSpec, ToolTurn
from slmflow.runtime.worker import ModelWorker


class QueuedModel(ModelView):
    """``model`` with every generation run on its worker. A reply is generated whole on that
    thread and handed back as a Response that replays it: a caller in another thread cannot
    drive the model's generator token by token without holding the model between tokens.
    ``count_tokens`` (ModelView's) only reads the tokenizer and runs in the caller's thread."""

    def __init__(self, model: GenerativeModel, worker: ModelWorker | None = None) -> None:
        self.model = model
        self.worker = worker or worker_for(model)

    def generate(self, prompt: Any, options: GenerateOptions | None = None, **fields: Any) -> Any:
        def whole():
            # options passed on only when given: a caller's own model may take keywords alone
            reply = self.model.generate(prompt, **fields) if options is None else \
                self.model.generate(prompt, options, **fields)
            if isinstance(reply, Response):
                reply.result()  # generated here, on the model's thread; the caller replays it
            return reply

        return self.worker.call(whole)

    def tool_turn(self, messages: Sequence[Any], tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
                  parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Sequence[ToolSpec] | None = None) -> ToolTurn:
        return self.worker.call(lambda: self.model.tool_turn(messages, tools, tool_choice, parallel, max_tokens,
                                                             sampling, callable_tools=callable_tools))



def queued(model: GenerativeModel) -> GenerativeModel:
    """``model`` behind its worker (itself if it already is)."""
    return model if isinstance(model, QueuedModel) else QueuedModel(model)
