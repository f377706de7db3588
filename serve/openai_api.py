"""The OpenAI chat-completions API over slmflow models: ``POST /v1/chat/completions`` (streaming,
tools with ``tool_choice``, ``response_format`` with a JSON Schema) and ``GET /v1/models``."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.sampling import SamplingParams, Seed
from slmflow.runtime.tool_calling import ToolSpec
from slmflow.serve.chat import (
    ChatJob,
    ChatOutcome,
    start_chat,
    wire_to_messages,
)
from slmflow.serve.state import ServeError, served
from slmflow.serve.wire import WireMessage, WireModel, WireRequest

router = APIRouter(prefix="/v1")


class FunctionTool(WireModel):
    type: Literal["function"] = "function"
    function: ToolSpec


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: dict[str, str]


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-cpp-python's json_object form


class ChatCompletionRequest(WireRequest):
    model: str
    messages: list[WireMessage] = Field(min_length=1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Seed | None = None
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = False
    response_format: ResponseFormat | None = None


def to_job(body: ChatCompletionRequest, max_tokens_limit: int, default_max_tokens: int) -> ChatJob:
    max_tokens = body.max_completion_tokens or body.max_tokens or min(default_max_tokens, max_tokens_limit)
    if max_tokens > max_tokens_limit:
        raise ServeError(400, f"max_tokens={max_tokens} is above this server's limit of {max_tokens_limit}",
                         "max_tokens")
    constraint = None
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_schema":
        schema = (fmt.json_schema or {}).get("schema")
        if not isinstance(schema, dict):
            raise ServeError(400, "response_format.json_schema.schema must be a JSON Schema object",
                             "response_format")
        constraint = JsonSchema(schema)
    elif fmt is not None and fmt.type == "json_object":
        constraint = JsonSchema(fmt.schema_ or {"type": "object"})
    choice = body.tool_choice
    tool_choice = choice.function.get("name", "") if isinstance(choice, NamedToolChoice) else (choice or "auto")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                              frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty)
    return ChatJob(messages=wire_to_messages(body.messages), max_tokens=max_tokens, sampling=sampling, stop=stop,
                   constraint=constraint, tools=[t.function for t in body.tools or []], tool_choice=tool_choice,
                   parallel=body.parallel_tool_calls)


def _tool_calls(outcome: ChatOutcome) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in outcome.tool_calls]


def _usage(outcome: ChatOutcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    entry = served(request, body.model)
    settings = request.app.state.settings
    job = to_job(body, settings.max_tokens, settings.default_max_tokens)
    job.selector = request.app.state.selector
    ident, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    head = {"id": ident, "created": created, "model": body.model}
    if not body.stream:
        outcome = await entry.worker.finish(lambda: start_chat(entry.model, job), request.is_disconnected)
        message = {"role": "assistant", "content": outcome.text or (None if outcome.tool_calls else "")}
        if outcome.tool_calls:
            message["tool_calls"] = _tool_calls(outcome)
        return {**head, "object": "chat.completion", "usage": _usage(outcome),
                "choices": [{"index": 0, "message": message, "finish_reason": outcome.finish_reason}]}
    items = await entry.worker.stream(lambda: start_chat(entry.model, job), request.is_disconnected)

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        data = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

    async def events():
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for item in items:
                if isinstance(item, ChatOutcome):
                    if item.tool_calls:
                        yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(_tool_calls(item))]})
                    yield chunk({}, item.finish_reason, _usage(item))
                else:
                    yield chunk({"content": item})
        except Exception as err:  # the stream has begun: report in-band, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.get("/models")
async def list_models(request: Request):
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "slmflow",
         "context_length": entry.model.context_length}
        for name, entry in request.app.state.models.items()]}
