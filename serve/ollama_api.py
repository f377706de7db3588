"""Ollama's chat API over slmflow models: ``POST /api/chat`` (NDJSON streaming by default, tools,
``format`` as "json" or a JSON Schema, ``options``), ``GET /api/tags``, ``POST /api/show`` and
``GET /api/version``, in the shapes of Ollama's API documentation (tests/data/ollama_api/).

Sampling defaults are Ollama's documented ones (temperature 0.8, top_k 40, top_p 0.9), so a client
moving from Ollama gets the behaviour it expects; ``keep_alive`` is accepted and has nothing to do
(served models stay loaded for the server's life).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from slmflow import __version__
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.sampling import SamplingParams, Seed
from slmflow.serve.chat import (
    ChatJob,
    ChatOutcome,
    start_chat,
    wire_to_messages,
)
from slmflow.serve.openai_api import FunctionTool
from slmflow.serve.state import ServeError, served
from slmflow.serve.wire import WireMessage, WireModel, WireRequest

router = APIRouter(prefix="/api")


class OllamaOptions(WireModel):
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: Seed | None = None
    num_predict: int | None = None
    num_ctx: int | None = Field(None, ge=1)
    stop: list[str] | None = None


class OllamaChatRequest(WireRequest):
    model: str
    messages: list[WireMessage] = []
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: OllamaOptions = OllamaOptions()
    tools: list[FunctionTool] | None = None
    keep_alive: str | float | None = None


class ShowRequest(WireRequest):
    model: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def to_job(body: OllamaChatRequest, max_tokens_limit: int, default_max_tokens: int) -> ChatJob:
    o = body.options
    max_tokens = o.num_predict if o.num_predict and o.num_predict > 0 else min(default_max_tokens, max_tokens_limit)
    if max_tokens > max_tokens_limit:
        raise ServeError(400, f"options.num_predict={max_tokens} is above this server's limit of {max_tokens_limit}")
    constraint = None
    if body.format == "json":
        constraint = JsonSchema({"type": "object"})
    elif isinstance(body.format, dict):
        constraint = JsonSchema(body.format)
    sampling = SamplingParams(temperature=o.temperature, top_k=o.top_k, top_p=o.top_p, min_p=o.min_p,
                              repetition_penalty=o.repeat_penalty, frequency_penalty=o.frequency_penalty,
                              presence_penalty=o.presence_penalty, seed=o.seed)
    return ChatJob(messages=wire_to_messages(body.messages), max_tokens=max_tokens, sampling=sampling,
                   stop=list(o.stop or []), constraint=constraint, tools=[t.function for t in body.tools or []])


def _final(name: str, outcome: ChatOutcome, started: float, content: str) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if outcome.tool_calls:
        message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in outcome.tool_calls]
    total = int((time.perf_counter() - started) * 1e9)
    first = int(outcome.first_token_s * 1e9)
    return {"model": name, "created_at": _now(), "message": message,
            "done_reason": "length" if outcome.finish_reason == "length" else "stop", "done": True,
            "total_duration": total, "load_duration": 0, "prompt_eval_count": outcome.prompt_tokens,
            "prompt_eval_duration": first, "eval_count": outcome.completion_tokens,
            "eval_duration": max(total - first, 0)}


@router.post("/chat")
async def chat(body: OllamaChatRequest, request: Request):
    entry = served(request, body.model)
    if not body.messages:  # Ollama's way of asking for a model to be loaded
        return {"model": body.model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                "done_reason": "load", "done": True}
    settings = request.app.state.settings
    job = to_job(body, settings.max_tokens, settings.default_max_tokens)
    job.selector = request.app.state.selector
    started = time.perf_counter()
    if not body.stream:
        outcome = await entry.worker.finish(lambda: start_chat(entry.model, job), request.is_disconnected)
        return _final(body.model, outcome, started, outcome.text)
    items = await entry.worker.stream(lambda: start_chat(entry.model, job), request.is_disconnected)

    async def lines():
        try:
            async for item in items:
                if isinstance(item, ChatOutcome):
                    yield json.dumps(_final(body.model, item, started, "")) + "\n"
                else:
                    yield json.dumps({"model": body.model, "created_at": _now(),
                                      "message": {"role": "assistant", "content": item}, "done": False}) + "\n"
        except Exception as err:  # the stream has begun: report in-band, as Ollama does
            yield json.dumps({"error": str(err)}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/tags")
async def tags(request: Request):
    return {"models": [{"name": name, "model": name, "modified_at": _now(), "size": 0, "digest": "",
                        "details": {"format": "slmflow", "family": "", "parameter_size": "",
                                    "quantization_level": ""}}
                       for name in request.app.state.models]}


@router.post("/show")
async def show(body: ShowRequest, request: Request):
    entry = served(request, body.model)
    return {"modelfile": "", "parameters": "", "template": "",
            "details": {"format": "slmflow", "family": "", "parameter_size": "", "quantization_level": ""},
            "model_info": {"general.architecture": "slmflow",
                           "slmflow.context_length": entry.model.context_length},
            "capabilities": ["completion", "tools"]}


@router.get("/version")
async def version():
    return {"version": __version__}
