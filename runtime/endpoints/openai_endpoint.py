"""OpenAI-compatible chat-completions endpoints: ``openai:MODEL@BASE_URL``.

Presets stand for a base URL and the variable that holds its key: ``@github`` (GitHub Models,
``GITHUB_TOKEN``), ``@azure`` (Azure AI inference, the URL in ``AZURE_AI_ENDPOINT``, key in
``AZURE_AI_API_KEY``; the v1 API, https://<resource>.openai.azure.com/openai/v1/), ``@nim`` (NVIDIA NIM, ``NVIDIA_API_KEY``). Any other URL takes its key from
``OPENAI_API_KEY`` when set (local servers need none). Keys are read from the environment only and
never logged. The ``openai`` client retries 429 and 5xx answers with exponential backoff.

Structured output is asked for as ``response_format={"type": "json_schema", ...}``; servers that
know only the older ``{"type": "json_object", "schema": ...}`` form (llama-cpp-python's) refuse it
(with a 4xx, or llama-cpp-python's 500 naming the field), and the endpoint then uses that form from then on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

from slmflow.runtime.constraints import StructuredOutputError
from slmflow.runtime.endpoints.base import ChatReply, ChatRequest, EndpointModel
from slmflow.runtime.errors import EndpointError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tool_calling import ToolCall

log = logging.getLogger("slmflow")

PRESETS = {
    "github": ("https://models.github.ai/inference", "GITHUB_TOKEN"),
    "azure": ("$AZURE_AI_ENDPOINT", "AZURE_AI_API_KEY"),
    "nim": ("https://integrate.api.nvidia.com/v1", "NVIDIA_API_KEY"),
}
DEFAULT_CONTEXT = 8192
TIMEOUT_S = 120.0
MAX_RETRIES = 4
# Fields under which servers report a model's window in GET /models (vLLM, agents serve, others).
_CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length")


def resolve_base_url(base_url: str) -> tuple[str, str]:
    """The URL and the name of the environment variable holding its key."""
    url, key_var = PRESETS.get(base_url, (base_url, "OPENAI_API_KEY"))
    if url.startswith("$"):
        url = os.environ.get(url[1:], "")
        if not url:
            raise EndpointError(f"the '@{base_url}' preset takes its URL from ${PRESETS[base_url][0][1:]}, "
                                "which is not set", "export it, e.g. https://<resource>.openai.azure.com/openai/v1/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"'{base_url}' is neither an http(s) URL nor a preset",
                            f"use a URL or one of: {', '.join('@' + p for p in PRESETS)}")
    return url, key_var


class OpenAIEndpointModel(EndpointModel):
    """A model behind an OpenAI-compatible ``/chat/completions``."""

    def __init__(self, spec: ModelSpec) -> None:
        import openai

        self.spec = spec
        self.base_url, key_var = resolve_base_url(spec.base_url)
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(key_var) or "unused",
                                    timeout=TIMEOUT_S, max_retries=MAX_RETRIES)
        self._schema_form = "json_schema"
        self.context_length = self._find_context_length()

    def _find_context_length(self) -> int:
        """The window the server reports in GET /models, or DEFAULT_CONTEXT (servers answer an
        over-long prompt with an error, never by cutting it)."""
        try:
            models = self._call(self.client.models.list).data
        except EndpointError as err:
            if err.status == 404:  # some gateways have no model list
                return DEFAULT_CONTEXT
            raise
        for m in models:
            if m.id == self.spec.location:
                extra = m.model_dump()
                return next((int(extra[k]) for k in _CONTEXT_FIELDS if extra.get(k)), DEFAULT_CONTEXT)
        log.info("%s does not list model '%s'; assuming a %d-token window", self.base_url, self.spec.location,
                 DEFAULT_CONTEXT)
        return DEFAULT_CONTEXT

    def _call(self, fn, **kwargs):
        """Run a client call, turning the client's errors into ones that say what to do."""
        o = self._openai
        try:
            return fn(**kwargs)
        except o.APIConnectionError as err:
            raise EndpointError(f"cannot reach {self.base_url}: {err}", "start the server or check the URL") from None
        except o.AuthenticationError:
            raise EndpointError(f"{self.base_url} refused the API key (401)",
                                "set the key variable for this endpoint (see `agents models`)") from None
        except o.APIStatusError as err:
            error = EndpointError(f"{self.base_url} answered {err.status_code}: {_message(err)}",
                                  "check the model name and the request")
            error.status = err.status_code
            raise error from None

    def _body(self, request: ChatRequest, stream: bool) -> dict:
        s = request.sampling
        body: dict = {"model": self.spec.location, "messages": request.messages, "max_tokens": request.max_tokens,
                      "temperature": s.temperature, "top_p": s.top_p, "stream": stream}
        if s.seed is not None:
            body["seed"] = s.seed
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
        if request.stop:
            body["stop"] = list(request.stop)
        if request.schema is not None:
            body["response_format"] = self._response_format(request.schema)
        if request.tools:
            body["tools"] = [t.openai_format() for t in request.tools]
            choice = request.tool_choice
            body["tool_choice"] = choice if choice in ("auto", "none", "required") else {
                "type": "function", "function": {"name": choice}}
            if request.parallel:
                body["parallel_tool_calls"] = True
        return body

    def _response_format(self, schema: dict) -> dict:
        if self._schema_form == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}

    def _create(self, body: dict):
        if "response_format" not in body or self._schema_form == "json_object":
            return self._call(self.client.chat.completions.create, **body)
        try:  # the first json_schema request is not retried: a server that refuses the form always will
            return self._call(self.client.with_options(max_retries=0).chat.completions.create, **body)
        except EndpointError as err:
            # llama-cpp-python answers the unknown form with a 500 that names the field.
            refused = err.status in (400, 422) or (err.status == 500 and "response_format" in err.problem)
            if not refused:
                raise
        log.info("%s refused a json_schema response_format; using the json_object form", self.base_url)
        self._schema_form = "json_object"
        schema = body["response_format"]["json_schema"]["schema"]
        return self._call(self.client.chat.completions.create,
                          **{**body, "response_format": self._response_format(schema)})

    def _chat(self, request: ChatRequest) -> Iterator[str]:
        if request.tools:  # calls arrive whole; streaming them gains nothing here
            completion = self._create(self._body(request, stream=False))
            choice = completion.choices[0]
            text = choice.message.content or ""
            if text:
                yield text
            usage = completion.usage
            return ChatReply(text=text, finish_reason=_finish(choice.finish_reason),
                             prompt_tokens=usage.prompt_tokens if usage else 0,
                             completion_tokens=usage.completion_tokens if usage else 0,
                             tool_calls=[_tool_call(c) for c in choice.message.tool_calls or []])
        body = self._body(request, stream=True)
        body["stream_options"] = {"include_usage": True}
        pieces, finish, usage = [], "stop", None
        for chunk in self._create(body):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta.content if choice.delta else None
                if delta:
                    pieces.append(delta)
                    yield delta
                if choice.finish_reason:
                    finish = _finish(choice.finish_reason)
        return ChatReply(text="".join(pieces), finish_reason=finish,
                         prompt_tokens=usage.prompt_tokens if usage else 0,
                         completion_tokens=usage.completion_tokens if usage else len(pieces))


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _tool_call(call) -> ToolCall:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as err:
        raise StructuredOutputError(f"tool call {call.function.name} has arguments that are not JSON: {err}",
                                    call.function.arguments) from None
    return ToolCall(id=call.id or ToolCall.model_fields["id"].default_factory(), name=call.function.name,
                    arguments=arguments)


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        return str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    return str(err)
