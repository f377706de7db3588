"""The one validation layer for request bodies of both served APIs.

Everything a client sends is checked here, by type, before any model work: a malformed message,
tool call or number is answered 400 with the field and value named (serve/app.py formats it in
each API's error shape), never a 500 from deep inside the prompt builder. What cannot be written as
a type is a validator here: strings must be encodable text (a lone surrogate such as ``"\\ud800"``
cannot be tokenized), a call's ``arguments`` string must hold a JSON object, numbers must be finite.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string in ``value`` that is not valid Unicode text, if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _unencodable(key, path) if isinstance(key, str) else None
        found = found or _unencodable(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


class WireModel(BaseModel):
    """Base of every request model: unknown fields ignored (clients send many), numbers finite."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class WireRequest(WireModel):
    """A whole request body: refuses text that is not valid Unicode wherever it appears."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, data: Any) -> Any:
        where = _unencodable(data, "")
        if where is not None:
            raise ValueError(f"{where or 'body'} holds a lone surrogate (not valid Unicode text); "
                             "send UTF-8 text")
        return data


class WireFunctionCall(WireModel):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_object(cls, value: Any) -> Any:
        """OpenAI sends arguments as a JSON string, Ollama as an object: both become a dict."""
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"arguments is not valid JSON ({err.msg})") from None
            if not isinstance(value, dict):
                raise ValueError("arguments must be a JSON object")
        return value


class WireToolCall(WireModel):
    id: str | None = None
    type: str = "function"
    function: WireFunctionCall


class ContentPart(WireModel):
    type: str = "text"
    text: str | None = None


class WireMessage(WireModel):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[WireToolCall] | None = None
    images: list[str] | None = None
    name: str | None = None
    tool_call_id: str | None = None
