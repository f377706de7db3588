"""Chat messages as they cross the public API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict
from slmflow.runtime.errors import PromptError


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


def as_messages(items) -> list[Message]:
    """Accept Message objects or plain ``{"role": ..., "content": ...}`` dicts."""
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in items]


def prompt_messages(prompt, system: str | None = None) -> list[Message]:
    """A prompt as chat messages, the same way for every kind of model: a string is one user turn,
    messages (or dicts) are taken as they are, ``system`` goes first. Empty prompts are refused
    here, before any model sees them. Token ids are a local model's business (Model.prompt_ids)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty", "pass a non-empty prompt")
        messages = [Message(role="user", content=prompt)]
    else:
        messages = as_messages(prompt)
    if not messages:
        raise PromptError("the prompt has no messages", "pass a non-empty prompt")
    return [Message(role="system", content=system), *messages] if system is not None else messages


def is_token_ids(prompt) -> bool:
    """Whether a prompt is a list of token ids (what a local model takes ready-made)."""
    return not isinstance(prompt, str) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def drop_oldest_turns(messages: list[Message], fits: Callable[[list[Message]], bool]) -> tuple[int, bool]:
    """Delete the oldest turns of ``messages`` in place until ``fits(messages)``: never a system
    message or the latest user message, and a dropped turn's tool results go with it (a result
    without its call means nothing). Returns how many messages went and whether it now fits.
    This is how a thread's history is kept within a model's context window."""
    dropped = 0
    while not fits(messages):
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        oldest = next((i for i, m in enumerate(messages) if m.role != "system" and i != last_user), None)
        if oldest is None:
            return dropped, False
        del messages[oldest]
        dropped += 1
        while oldest < len(messages) and messages[oldest].role == "tool":
            del messages[oldest]
            dropped += 1
    return dropped, True
