"""Agents: a model, a system prompt, tools and an optional output type, run as an act-observe loop.

Each step is one constrained model turn (runtime/tool_calling.py): the model answers or calls tools;
calls run through the ToolRegistry and their results go back as ``tool`` messages. The loop stops
at an answer, at ``max_steps``, or at the timeout, with a status saying which. Every step is in the
trace: messages, tool calls, results, usage and timings.

Before each model call the prompt is counted against the model's real context window. If history +
tools would not fit, the oldest turns are dropped (the system prompt, tool definitions and the
latest user message stay) and the trace says so; if even that does not fit, the run fails with a
clear error instead of a silent truncation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from slmflow.runtime import Model, SamplingParams, load_model
from slmflow.runtime.errors import PromptError
from slmflow.runtime.loop import Usage
from slmflow.runtime.messages import Message, as_messages, drop_oldest_turns
from slmflow.runtime.queued import queued
from slmflow.runtime.tool_calling import (
    CALL_OPEN,
    ToolCall,
    ToolChoice,
    generate_with_tools,
)
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.tools.base import Tool, ToolRegistry, ToolResult


class AgentLimits(BaseModel):
    max_steps: int = Field(8, ge=1)
    max_tokens: int = Field(512, ge=1, description="most new tokens per model call")
    timeout_s: float = Field(300.0, gt=0)


class AgentEvent(BaseModel):
    """One thing that happened in a run, streamed as it happens and kept in the trace."""

    kind: Literal["model", "tool", "compacted", "final"]
    step: int
    text: str = ""
    tool_calls: list[ToolCall] = []
    tool_result: ToolResult | None = None
    usage: Usage | None = None
    elapsed_s: float = 0.0


class AgentStep(BaseModel):
    """What one model turn of a run came to: its events, then either the calls to run next or,
    when ``done``, the run's output."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    events: list[AgentEvent]
    calls: list[ToolCall] = []
    done: bool = False
    output: Any = None


class AgentResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    status: Literal["done", "max_steps", "timeout"]
    output: Any = None
    messages: list[Message]
    trace: list[AgentEvent]
    steps: int
    elapsed_s: float


class Agent:
    """A model with a system prompt, tools and an optional output type, run as an act-observe
    loop (the module docstring). ``run``/``stream`` drive the whole loop; ``start``, ``step`` and
    ``registry.call`` are its parts, for a graph that runs them in nodes of its own."""

    def __init__(
        self,
        model: str | Model | None = None,
        *,
        role: str | None = None,
        system: str | None = None,
        tools: Sequence[Tool] = (),
        output_type: type[BaseModel] | None = None,
        limits: AgentLimits | None = None,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = False,
        allow_mutating_tools: bool = False,
        sampling: SamplingParams | None = None,
        tool_selector: ToolSelector | Literal["default"] | None = "default",
        approve: Callable[[Tool, ToolCall], bool] | None = None,
    ) -> None:
        """``tool_selector``: who decides, under ``tool_choice="auto"``, whether a user message gets a
        tool call: "default" is the embedding selector (runtime/tool_selection.py), None the model alone.
        """
        # Through its worker: an agent in any thread shares the model with every other caller.
        self.model = queued(load_model(model, role=None if model is not None else role))
        self.system = system
        self.registry = ToolRegistry(tools, allow_mutating=allow_mutating_tools)
        self.output_type = output_type
        self.limits = limits or AgentLimits()
        self.tool_choice = tool_choice
        self.parallel = parallel_tool_calls
        self.sampling = sampling
        if tool_selector == "default":
            tool_selector = ToolSelector() if tools and tool_choice == "auto" else None
        self.tool_selector = tool_selector
        self.approve = approve

    def _fit(self, messages: list[Message], step: int) -> Iterator[AgentEvent]:
        """Drop the oldest turns until the prompt fits the context window (see the module docstring)."""
        budget = self.model.context_length - self.limits.max_tokens
        dropped, fits = drop_oldest_turns(
            messages, lambda kept: self.model.count_tokens(kept, self.registry.specs) <= budget)
        if not fits:
            raise PromptError(
                f"the system prompt, tools and latest message need more than the {budget} tokens "
                f"{self.model.spec} leaves after {self.limits.max_tokens} for the reply",
                "shorten them, lower max_tokens or use a model with a longer context",
            )
        if dropped:
            yield AgentEvent(kind="compacted", step=step, text=f"dropped the {dropped} oldest messages to fit")

    def stream(self, user_input: str, history: Sequence[Message | dict] = ()) -> Iterator[AgentEvent]:
        """Run the loop, yielding events; the generator's return value is the :class:`AgentResult`.
        ``history``: earlier turns of the conversation (user and assistant messages)."""
        start = time.perf_counter()
        messages = self.start(user_input, history)
        trace: list[AgentEvent] = []

        def emit(event: AgentEvent) -> AgentEvent:
            event.elapsed_s = time.perf_counter() - start
            trace.append(event)
            return event

        def finish(status, output, steps) -> AgentResult:
            return AgentResult(status=status, output=output, messages=messages, trace=trace, steps=steps,
                               elapsed_s=time.perf_counter() - start)

        for step in range(1, self.limits.max_steps + 1):
            if time.perf_counter() - start > self.limits.timeout_s:
                return finish("timeout", None, step - 1)
            taken = self.step(messages, step)
            for event in taken.events:
                yield emit(event)
            if taken.done:
                return finish("done", taken.output, step)
            for call in taken.calls:
                result = self.registry.call(call, self.approve)
                messages.append(Message(**result.as_message()))
                yield emit(AgentEvent(kind="tool", step=step, tool_result=result))
        return finish("max_steps", None, self.limits.max_steps)

    def start(self, user_input: str, history: Sequence[Message | dict] = ()) -> list[Message]:
        """The run's first messages: the system prompt, ``history``, then ``user_input``."""
        messages: list[Message] = [Message(role="system", content=self.system)] if self.system else []
        return [*messages, *as_messages(history), Message(role="user", content=user_input)]

    def step(self, messages: list[Message], step: int) -> AgentStep:
        """One model turn over ``messages``, which it extends with the turn (and, for a call cut
        off by ``max_tokens``, a tool result telling the model so). The calls it makes are
        returned, not run: :meth:`stream` runs them at once, a graph in a node of their own, so
        that an approval can pause between the turn and the tools (graphs/assistant.py)."""
        events = list(self._fit(messages, step))
        turn = generate_with_tools(self.model, messages, self.registry.specs, tool_choice=self.tool_choice,
                                   parallel=self.parallel, max_tokens=self.limits.max_tokens,
                                   sampling=self.sampling, selector=self.tool_selector)
        events.append(AgentEvent(kind="model", step=step, text=turn.raw, tool_calls=turn.tool_calls,
                                 usage=turn.result.usage))
        messages.append(Message(role="assistant", content=turn.raw))
        if not turn.tool_calls and turn.raw.lstrip().startswith(CALL_OPEN):
            # A call cut off by max_tokens: tell the model, as a tool result, and go on.
            cut = ToolResult(call_id="", name="", ok=False,
                             content=f"the tool call was cut off after {self.limits.max_tokens} tokens; "
                                     "make it shorter")
            messages.append(Message(**cut.as_message()))
            events.append(AgentEvent(kind="tool", step=step, tool_result=cut))
            return AgentStep(events=events)
        if turn.tool_calls:
            return AgentStep(events=events, calls=turn.tool_calls)
        output = turn.text
        if self.output_type is not None:
            output = self.model.generate(messages[:-1], output=self.output_type, max_tokens=self.limits.max_tokens)
        events.append(AgentEvent(kind="final", step=step, text=turn.text))
        return AgentStep(events=events, done=True, output=output)

    def run(self, user_input: str, history: Sequence[Message | dict] = ()) -> AgentResult:
        events = self.stream(user_input, history)
        while True:
            try:
                next(events)
            except StopIteration as done:
                return done.value

    async def arun(self, user_input: str, history: Sequence[Message | dict] = ()) -> AgentResult:
        """The same run in a worker thread, so an event loop stays responsive."""
        return await asyncio.to_thread(self.run, user_input, history)
