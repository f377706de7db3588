"""What both served APIs (OpenAI's and Ollama's) ask of a model, in one form: a :class:`ChatJob`.

Each API module parses its own request into a job and formats the :class:`ChatOutcome` back; the
model work (constrained generation, tool turns, streaming) is written once here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from slmflow.runtime.constraints import Constraint
from slmflow.runtime.endpoints.base import calls_as_text
from slmflow.runtime.errors import PromptError
from slmflow.runtime.messages import Message
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.tool_calling import (
    ToolCall,
    ToolChoice,
    ToolSpec,
    generate_with_tools,
)
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.serve.wire import WireMessage

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatJob:
    messages: list[Message]
    max_tokens: int
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    constraint: Constraint | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel: bool = False
    selector: ToolSelector | None = None


@dataclass
class ChatOutcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)
    first_token_s: float = 0.0


def wire_to_messages(items: list[WireMessage]) -> list[Message]:
    """Chat messages from either API's validated wire form into ours: an assistant's calls become
    the ``<tool_call>`` text our models were prompted with, text parts of a content list are joined."""
    out = []
    for i, m in enumerate(items):
        if m.role not in ROLES:
            raise PromptError(f"messages[{i}].role {m.role!r} is not a chat role", f"use one of: {', '.join(ROLES)}")
        content = m.content or ""
        if isinstance(content, list):
            if any(p.type != "text" or p.text is None for p in content):
                raise PromptError(f"messages[{i}] has non-text content parts",
                                  "this server's models take text; send parts of type 'text' with a 'text' string")
            content = "".join(p.text for p in content)
        if m.images:
            raise PromptError(f"messages[{i}] has images", "this server's models take text only")
        if m.tool_calls:
            parsed = [ToolCall(name=c.function.name, arguments=c.function.arguments) for c in m.tool_calls]
            content = "\n".join(filter(None, [content, calls_as_text(parsed)]))
        out.append(Message(role=m.role, content=content))
    return out


def start_chat(model, job: ChatJob) -> Iterator[str | ChatOutcome]:
    """Check the job against the model (schema compiles, prompt fits) and return a stream of text
    deltas closed by the :class:`ChatOutcome`. Checking happens here, before the first delta, so a
    bad request is refused with a status code rather than a broken stream. A tool turn is decided
    whole before its text is streamed: a reply cannot be known to be words until it is done."""
    if job.tools:
        turn = generate_with_tools(model, job.messages, job.tools, tool_choice=job.tool_choice,
                                   parallel=job.parallel, max_tokens=job.max_tokens, sampling=job.sampling,
                                   selector=job.selector)
        u = turn.result.usage
        outcome = ChatOutcome(text=turn.text, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                              finish_reason="tool_calls" if turn.tool_calls else turn.result.finish_reason,
                              tool_calls=turn.tool_calls, first_token_s=u.time_to_first_token_s)
        return iter([turn.text, outcome] if turn.text else [outcome])
    response = model.generate(job.messages, max_tokens=job.max_tokens, sampling=job.sampling, stop=job.stop,
                              constraint=job.constraint)
    return _text_stream(response)


def _text_stream(response) -> Iterator[str | ChatOutcome]:
    yield from response
    r = response.result()
    yield ChatOutcome(text=r.text, finish_reason=r.finish_reason, prompt_tokens=r.usage.prompt_tokens,
                      completion_tokens=r.usage.completion_tokens, first_token_s=r.usage.time_to_first_token_s)
