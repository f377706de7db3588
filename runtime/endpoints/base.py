"""What every endpoint model shares: the surface agents use on a local :class:`Model` (``generate``,
a tool turn, token counting), built on one ``_chat`` call that each endpoint implements.

A remote engine cannot take our token masks, so constraints travel as the engine's own
structured-output option (a JSON Schema) and every reply is validated again here before anyone
sees it. ``Choice`` and ``Regex`` become a one-property JSON object (``{"value": ...}``), the
form every engine with JSON Schema support accepts; Lark/GBNF grammars need a local model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

from slmflow.runtime.constraints import (
    Choice,
    Constraint,
    ConstraintError,
    JsonSchema,
    Quote,
    Regex,
    StructuredOutputError,
    parse_output,
)
from slmflow.runtime.errors import PromptError
from slmflow.runtime.loop import (
    FinishReason,
    GenerationResult,
    Response,
    Stream,
    Usage,
    drain,
)
from slmflow.runtime.messages import Message, as_messages, is_token_ids, prompt_messages
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tool_calling import (
    CALL_CLOSE,
    CALL_OPEN,
    ToolCall,
    ToolChoice,
    ToolSpec,
    ToolTurn,
    parse_tool_calls,
)

# A conservative count: English BPE averages about 4 characters a token, so a prompt estimated at
# 3 per token is over-counted, and a window check that passes here passes on the server.
CHARS_PER_TOKEN = 3
_WRAP_KEY = "value"


@dataclass
class ChatRequest:
    """One chat call, already in the OpenAI wire format that endpoints translate from."""

    messages: list[dict]
    max_tokens: int
    sampling: SamplingParams
    stop: Seq[str] = ()
    schema: dict | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel: bool = False
    prompt_tokens: int = 0  # the estimate the window was checked with (Ollama sizes num_ctx by it)


@dataclass
class ChatReply:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[ToolCall] = field(default_factory=list)


def wire_schema(constraint: Constraint) -> tuple[dict | None, bool]:
    """The JSON Schema an engine is given for ``constraint``, and whether the reply is wrapped in
    ``{"value": ...}`` (Choice and Regex are strings, which not every engine accepts at top level).
    A :class:`Quote` has no schema form (no engine takes a substring pattern): the reply comes as
    free text, and the caller checks it on arrival (``Quote.snap``) and marks it unverified when it
    is no span of the sources."""
    if isinstance(constraint, Quote):
        return None, False
    if isinstance(constraint, JsonSchema):
        return constraint.schema_dict, False
    if isinstance(constraint, Choice):
        value = {"type": "string", "enum": list(constraint.options)}
    elif isinstance(constraint, Regex):
        # A plain group: llama.cpp's schema converter rejects "(?:".
        value = {"type": "string", "pattern": f"^({constraint.pattern})$"}
    else:
        raise ConstraintError("a model behind an HTTP endpoint cannot be held to a Lark/GBNF grammar",
                              "use a local model, or a JsonSchema, Regex or Choice constraint")
    return ({"type": "object", "properties": {_WRAP_KEY: value}, "required": [_WRAP_KEY],
             "additionalProperties": False}, True)


def to_wire_messages(messages: Seq[Message]) -> list[dict]:
    """Messages in the OpenAI wire format. Our own convention keeps an assistant's calls as
    ``<tool_call>`` text and tool results in call order; endpoints want structured calls with ids,
    and each result tied to its call's id."""
    out: list[dict] = []
    pending: list[str] = []
    for n, m in enumerate(messages):
        if m.role == "assistant" and m.content.lstrip().startswith(CALL_OPEN):
            calls = parse_tool_calls(m.content)
            ids = [f"call_{n}_{i}" for i in range(len(calls))]
            pending = list(ids)
            out.append({"role": "assistant", "content": "", "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for i, c in zip(ids, calls)]})
        elif m.role == "tool":
            call_id = pending.pop(0) if pending else f"call_{n}"
            out.append({"role": "tool", "content": m.content, "tool_call_id": call_id})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def estimate_tokens(wire_messages: list[dict], tools: Seq[ToolSpec]) -> int:
    """An upper estimate of the tokens of a prompt in the wire format (see CHARS_PER_TOKEN)."""
    return len(json.dumps(wire_messages) + json.dumps([t.model_dump() for t in tools])) // CHARS_PER_TOKEN + 1


def calls_as_text(calls: Seq[ToolCall]) -> str:
    """Calls written the way our agents keep them in the conversation."""
    return "\n".join(CALL_OPEN + json.dumps({"name": c.name, "arguments": c.arguments}) + CALL_CLOSE
                     for c in calls)


class EndpointModel:
    """Base of the endpoint models; subclasses set ``spec`` and ``context_length`` and implement ``_chat``."""

    spec: ModelSpec
    context_length: int
    #: Requests in flight at once (runtime/worker.py): the server batches them itself (vLLM, NIM,
    #: llama.cpp's slots, Ollama's parallel requests) and queues what it cannot take; the client
    #: libraries' HTTP clients are thread-safe.
    concurrency = 8

    def _chat(self, request: ChatRequest) -> Iterator[str]:
        """Stream text deltas; the generator's return value is the :class:`ChatReply`."""
        raise NotImplementedError

    def count_tokens(self, messages: Seq[Message | dict], tools: Seq[ToolSpec] = ()) -> int:
        """An upper estimate of the prompt's tokens (the server's tokenizer is not at hand)."""
        return estimate_tokens(to_wire_messages(as_messages(messages)), tools)

    def _chat_request(self, messages: list[Message], max_tokens: int, sampling: SamplingParams | None,
                 **options) -> ChatRequest:
        """The wire request, with the prompt checked against the window and the reply's room."""
        wire = to_wire_messages(messages)
        needed = estimate_tokens(wire, options.get("tools", ()))
        if needed + 1 > self.context_length:
            raise PromptError(f"the prompt has about {needed} tokens but {self.spec} has a context window of "
                              f"{self.context_length}", "shorten the prompt or use a model with a longer context")
        return ChatRequest(wire, min(max_tokens, self.context_length - needed), sampling or SamplingParams(),
                           prompt_tokens=needed, **options)

    def generate(self, prompt, options: GenerateOptions | None = None, **fields):
        """As :meth:`Model.generate`: a streaming :class:`Response`, or a validated ``output`` instance.
        ``jump_forward``, ``stop_on_loops`` and ``speculate`` are how our loop decodes; here the
        engine decides how it decodes and when it stops."""
        opts = GenerateOptions.of(options, fields)
        if is_token_ids(prompt):
            raise PromptError("a prompt of token ids needs a local model", "pass text or chat messages")
        if opts.images:
            raise PromptError(f"images cannot be sent to {self.spec} yet",
                              "send them to a local vision model (roles.vision in slmflow.toml)")
        constraint = JsonSchema(opts.output) if opts.output is not None else opts.constraint
        schema, wrapped = wire_schema(constraint) if constraint is not None else (None, False)
        request = self._chat_request(prompt_messages(prompt, opts.system), opts.max_tokens, opts.sampling,
                                     stop=opts.stop, schema=schema)
        response = Response(self._validated(request, constraint, wrapped))
        return response if opts.output is None else parse_output(opts.output, response.text())

    def _validated(self, request: ChatRequest, constraint: Constraint | None, wrapped: bool) -> Iterator[str]:
        start = time.perf_counter()
        chat: Stream[str, ChatReply] = Stream(self._chat(request))
        first = None
        for delta in chat:
            first = first or time.perf_counter()
            if not wrapped:
                yield delta
        reply = chat.value()
        text = "".join(chat.items)
        if constraint is not None and not isinstance(constraint, Quote) and reply.finish_reason == "stop":
            if wrapped:
                text = _unwrap(text)
                yield text
            constraint.validate_text(text)
        elif wrapped:  # cut off inside the JSON wrapper: there is no value to give
            raise StructuredOutputError(f"the reply was cut off after {reply.completion_tokens} tokens", text)
        return _result(str(self.spec), text, reply, start, first)

    def tool_turn(self, messages: Seq[Message], tools: Seq[ToolSpec], tool_choice: ToolChoice = "auto",
                  parallel: bool = False, max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Seq[ToolSpec] | None = None) -> ToolTurn:
        """One turn with tools, the engine choosing between words and calls as ``tool_choice`` allows;
        the server is offered ``callable_tools`` (default: ``tools``), and calls are checked
        against their names before they are returned."""
        messages = as_messages(messages)
        offered = list(tools if callable_tools is None else callable_tools)
        if max_tokens < 1:
            raise PromptError(f"max_tokens must be at least 1, got {max_tokens}", "pass --max-tokens 1 or more")
        request = self._chat_request(messages, max_tokens, sampling, tools=offered, tool_choice=tool_choice,
                                     parallel=parallel)
        start = time.perf_counter()
        pieces, reply = drain(self._chat(request))
        names = {t.name for t in offered}
        unknown = [c.name for c in reply.tool_calls if c.name not in names]
        if unknown:
            raise StructuredOutputError(f"the endpoint called tools that were not offered: {unknown}",
                                        calls_as_text(reply.tool_calls))
        text = "".join(pieces)
        raw = calls_as_text(reply.tool_calls) if reply.tool_calls else text
        return ToolTurn(text="" if reply.tool_calls else text, tool_calls=reply.tool_calls, raw=raw,
                        result=_result(str(self.spec), raw, reply, start, None))


def _unwrap(text: str) -> str:
    try:
        value = json.loads(text)[_WRAP_KEY]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StructuredOutputError(f"the endpoint's reply is not the requested JSON object: {err}", text) from err
    if not isinstance(value, str):
        raise StructuredOutputError(f"the endpoint's reply holds {value!r}, not a string", text)
    return value


def _result(model: str, text: str, reply: ChatReply, start: float, first: float | None) -> GenerationResult:
    usage = Usage.timed(reply.prompt_tokens, reply.completion_tokens, start, first, time.perf_counter())
    return GenerationResult(text=text, token_ids=[], finish_reason=reply.finish_reason, usage=usage, model=model)
