"""Models served by Ollama: ``ollama:TAG``, through the ``ollama`` client (host from ``OLLAMA_HOST``).

Ollama cuts a prompt longer than its ``num_ctx`` from the front without a word, and its default
``num_ctx`` is small, so system prompts and tool lists vanish first. Every request here therefore
sends ``num_ctx`` itself: the smallest power of two (from 4,096) that holds the estimated prompt and
the reply, within the window the model was trained for (read once from ``/api/show``). A prompt
that cannot fit that window is refused before it is sent. Powers of two keep Ollama from reloading
the model for every new size.

Constraints go through ``format`` (a JSON Schema). Ollama has no ``tool_choice``: with ``auto`` the
tools are passed as tools; with ``required`` or a tool's name the reply is held by ``format`` to a
call of one of the allowed tools, so the choice is enforced, not requested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from slmflow.runtime.constraints import StructuredOutputError, _closed_objects
from slmflow.runtime.endpoints.base import (
    ChatReply,
    ChatRequest,
    EndpointModel,
)
from slmflow.runtime.errors import EndpointError, PromptError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tool_calling import ToolCall, ToolSpec

MIN_NUM_CTX = 4096
KEEP_ALIVE = "30m"  # an agent's steps come seconds apart; Ollama's 5-minute default unloads between sessions


class OllamaModel(EndpointModel):
    """A model behind Ollama's ``/api/chat``."""

    def __init__(self, spec: ModelSpec, keep_alive: str | float = KEEP_ALIVE) -> None:
        import ollama

        self.spec = spec
        self.keep_alive = keep_alive
        self._ollama = ollama
        self.client = ollama.Client()
        self.context_length = self._trained_context()

    def _call(self, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (self._ollama.ResponseError, self._ollama.RequestError, ConnectionError, OSError) as err:
            raise self._error(err) from None

    def _error(self, err: Exception) -> EndpointError:
        """The client's error as one that says what to do."""
        if not isinstance(err, self._ollama.ResponseError):
            return EndpointError(f"cannot reach Ollama at {self.client._client.base_url}: {err}",
                                 "start `ollama serve` or set OLLAMA_HOST")
        error = EndpointError(f"Ollama answered {err.status_code} for '{self.spec.location}': {err.error}",
                              f"pull it with `ollama pull {self.spec.location}`" if err.status_code == 404
                              else "check the request")
        error.status = err.status_code
        return error

    def _trained_context(self) -> int:
        info = self._call(self.client.show, model=self.spec.location).modelinfo or {}
        found = [int(v) for k, v in info.items() if k.endswith(".context_length")]
        if not found:
            raise EndpointError(f"Ollama reports no context length for '{self.spec.location}'",
                                "update Ollama; slmflow will not send prompts it cannot check")
        return found[0]

    def num_ctx(self, prompt_tokens: int, max_tokens: int) -> int:
        """The window to ask for (see the module docstring)."""
        needed = prompt_tokens + max_tokens
        if needed > self.context_length:
            raise PromptError(f"the prompt (about {prompt_tokens} tokens) and reply ({max_tokens}) exceed the "
                              f"{self.context_length}-token window of {self.spec}", "shorten the prompt")
        size = MIN_NUM_CTX
        while size < needed:
            size *= 2
        return min(size, self.context_length)

    def _chat(self, request: ChatRequest) -> Iterator[str]:
        s = request.sampling
        options = {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
                   "repeat_penalty": s.repetition_penalty, "frequency_penalty": s.frequency_penalty,
                   "presence_penalty": s.presence_penalty, "num_predict": request.max_tokens,
                   "num_ctx": self.num_ctx(request.prompt_tokens, request.max_tokens)}
        if s.seed is not None:
            options["seed"] = s.seed
        if request.stop:
            options["stop"] = list(request.stop)
        fmt, tools, forced = request.schema, None, False
        if request.tools and request.tool_choice == "auto":
            tools = [t.openai_format() for t in request.tools]
        elif request.tools and request.tool_choice != "none":
            allowed = [t for t in request.tools if request.tool_choice in ("required", t.name)]
            fmt, forced = call_schema(allowed, request.parallel), True
        stream = self._call(self.client.chat, model=self.spec.location, messages=ollama_messages(request),
                            tools=tools, format=fmt, options=options, keep_alive=self.keep_alive, stream=True)
        pieces, calls, last = [], [], None
        for part in _guarded(self, stream):
            last = part
            calls += [ToolCall(name=c.function.name, arguments=dict(c.function.arguments or {}))
                      for c in part.message.tool_calls or []]
            if part.message.content:
                pieces.append(part.message.content)
                if not forced:
                    yield part.message.content
        text = "".join(pieces)
        if forced:
            calls, text = forced_calls(text), ""
        return ChatReply(text=text, finish_reason="length" if last and last.done_reason == "length" else "stop",
                         prompt_tokens=(last.prompt_eval_count or 0) if last else 0,
                         completion_tokens=(last.eval_count or 0) if last else 0, tool_calls=calls)


def _guarded(model: OllamaModel, stream):
    """Iterate a streamed reply (the request is sent on the first step) with the client's errors
    turned into ours."""
    iterator = iter(stream)
    while True:
        try:
            part = next(iterator)
        except StopIteration:
            return
        except (model._ollama.ResponseError, model._ollama.RequestError, ConnectionError, OSError) as err:
            raise model._error(err) from None
        yield part


def ollama_messages(request: ChatRequest) -> list[dict]:
    """OpenAI wire messages in Ollama's form: call arguments as objects, results named by tool."""
    names: dict[str, str] = {}
    out = []
    for m in request.messages:
        m = dict(m)
        if m.get("tool_calls"):
            for c in m["tool_calls"]:
                names[c["id"]] = c["function"]["name"]
            m["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                             "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        if m["role"] == "tool":
            m = {"role": "tool", "content": m["content"], "tool_name": names.get(m.pop("tool_call_id", ""), "")}
        out.append(m)
    return out


def call_schema(tools: list[ToolSpec], parallel: bool) -> dict:
    """JSON Schema of a call to one of ``tools`` (a list of calls when ``parallel``); objects are
    closed, as in our own call grammar, so a call can invent no parameter."""
    one = {"anyOf": [{"type": "object", "properties": {"name": {"const": t.name},
                                                        "arguments": _closed_objects(t.parameters)},
                      "required": ["name", "arguments"], "additionalProperties": False} for t in tools]}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def forced_calls(text: str) -> list[ToolCall]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StructuredOutputError(f"Ollama's reply is not the required tool call: {err}", text) from None
    items = data if isinstance(data, list) else [data]
    return [ToolCall(name=d["name"], arguments=d.get("arguments", {})) for d in items]
