"""Chat messages as they cross the public API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


def as_messages(items) -> list[Message]:
    """Accept Message objects or plain ``{"role": ..., "content": ...}`` dicts."""
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in items]
