"""A LangChain chat model over the slmflow runtime, so LangGraph (prebuilt agents included) and any
LangChain code run on local small models unchanged.

``bind_tools`` and ``with_structured_output`` are backed by our constrained decoding: tool calls
always name a bound tool with arguments valid for its schema, and structured output always parses.
Every instance naming the same model spec shares one loaded model and its prefix cache (the
runtime caches models per spec), so the nodes of a graph reuse each other's prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, PrivateAttr
from slmflow.runtime import Model, SamplingParams, load_model
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.loop import Usage
from slmflow.runtime.messages import Message
from slmflow.runtime.tool_calling import (
    CALL_CLOSE,
    CALL_OPEN,
    ToolSpec,
    generate_with_tools,
)
from slmflow.runtime.tool_selection import ToolSelector

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def _text(content: str | list) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p if isinstance(p, str) else p.get("text", "") for p in content
                     if isinstance(p, str) or p.get("type") == "text")


def to_runtime_messages(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as runtime messages; an AI message's tool calls are written back in the
    format the model emitted them in, so the next prompt shows the model its own calls."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type)
        if role is None:
            raise ValueError(f"message type '{m.type}' is not supported; use system, human, ai or tool messages")
        content = _text(m.content)
        if role == "assistant" and getattr(m, "tool_calls", None):
            calls = [CALL_OPEN + json.dumps({"name": c["name"], "arguments": c["args"]}) + CALL_CLOSE
                     for c in m.tool_calls]
            content = "\n".join([content, *calls]).strip()
        out.append(Message(role=role, content=content))
    return out


def _usage(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class SlmflowChatModel(BaseChatModel):
    """``SlmflowChatModel(model="embedded")`` or ``SlmflowChatModel(role="moe")``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    role: str | None = None
    max_tokens: int = 512
    sampling: SamplingParams = SamplingParams()
    use_tool_selector: bool = True
    _selector: ToolSelector | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "slmflow"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "role": self.role, "max_tokens": self.max_tokens}

    @property
    def runtime(self) -> Model:
        """The loaded model (shared with every other user of the same spec in this process)."""
        return load_model(self.model, role=self.role if self.model is None else None)

    def bind_tools(self, tools: Sequence, *, tool_choice: str | dict | bool | None = None,
                   parallel_tool_calls: bool = False, **kwargs: Any) -> Runnable:
        """Tools as LangChain accepts them (BaseTool, functions, OpenAI dicts); ``tool_choice``:
        auto, required/any, none, or a tool name, each enforced by the grammar."""
        specs = [convert_to_openai_tool(t)["function"] for t in tools]
        if isinstance(tool_choice, dict):
            tool_choice = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
        choice = {None: "auto", True: "required", False: "none", "any": "required"}.get(tool_choice, tool_choice)
        return self.bind(tools=specs, tool_choice=choice, parallel_tool_calls=parallel_tool_calls, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, stop, **kwargs))])

    def _reply(self, messages, stop=None, tools=None, tool_choice="auto", parallel_tool_calls=False,
               **_: Any) -> AIMessage:
        model, history = self.runtime, to_runtime_messages(messages)
        if tools:
            if self.use_tool_selector and self._selector is None:
                self._selector = ToolSelector()
            turn = generate_with_tools(
                model, history, [ToolSpec(name=t["name"], description=t.get("description", ""),
                                          parameters=t.get("parameters") or {"type": "object", "properties": {}})
                                 for t in tools],
                tool_choice=tool_choice, parallel=parallel_tool_calls, max_tokens=self.max_tokens,
                sampling=self.sampling, selector=self._selector)
            calls = [{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"} for c in turn.tool_calls]
            return AIMessage(content=turn.text, tool_calls=calls, usage_metadata=_usage(turn.result.usage))
        result = model.generate(history, max_tokens=self.max_tokens, sampling=self.sampling,
                                stop=stop or ()).result()
        return AIMessage(content=result.text, usage_metadata=_usage(result.usage),
                         response_metadata={"finish_reason": result.finish_reason})

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if kwargs.get("tools"):  # a tool call is only meaningful whole
            message = self._reply(messages, stop, **kwargs)
            yield ChatGenerationChunk(message=AIMessageChunk(content=message.content,
                                                             tool_call_chunks=[
                                                                 {"name": c["name"], "args": json.dumps(c["args"]),
                                                                  "id": c["id"], "index": i}
                                                                 for i, c in enumerate(message.tool_calls)],
                                                             usage_metadata=message.usage_metadata))
            return
        response = self.runtime.generate(to_runtime_messages(messages), max_tokens=self.max_tokens,
                                         sampling=self.sampling, stop=stop or ())
        for delta in response:
            if run_manager:
                run_manager.on_llm_new_token(delta)
            yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=_usage(response.result().usage)))

    def with_structured_output(self, schema: type[BaseModel] | dict, *, include_raw: bool = False,
                               **kwargs: Any) -> Runnable:
        """Output that always parses: a pydantic class (an instance comes back) or a JSON Schema
        dict (a dict comes back), generated under that schema."""

        def run(value) -> Any:
            messages = to_runtime_messages(self._convert_input(value).to_messages())
            if isinstance(schema, type) and issubclass(schema, BaseModel):
                parsed = self.runtime.generate(messages, output=schema, max_tokens=self.max_tokens)
                raw = parsed.model_dump_json()
            else:
                raw = self.runtime.generate(messages, constraint=JsonSchema(schema), max_tokens=self.max_tokens,
                                            sampling=self.sampling).text()
                parsed = json.loads(raw)
            return {"raw": AIMessage(content=raw), "parsed": parsed, "parsing_error": None} if include_raw else parsed

        return RunnableLambda(run, name="slmflow_structured_output")


def langchain_tool(tool, allow_mutating: bool = False):
    """A slmflow :class:`~slmflow.tools.Tool` as a LangChain ``StructuredTool``; calls still go
    through the ToolRegistry (validation, timeout, errors returned as the tool's result)."""
    from langchain_core.tools import StructuredTool
    from slmflow.runtime.tool_calling import ToolCall
    from slmflow.tools.base import ToolRegistry

    registry = ToolRegistry([tool], allow_mutating=allow_mutating)

    def run(**arguments: Any) -> str:
        return registry.call(ToolCall(name=tool.name, arguments=arguments)).content

    return StructuredTool.from_function(func=run, name=tool.name, description=tool.description,
                                        args_schema=tool.args_model)
