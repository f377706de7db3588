"""What a running server holds: its settings and, per served model name, the model and its worker."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from pydantic import BaseModel, Field
from slmflow.runtime.worker import ModelWorker


class ServeSettings(BaseModel):
    """Limits and access. The defaults suit one user on one machine: loopback only, no key."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="required as 'Authorization: Bearer KEY' when set")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_tokens: int = Field(2048, ge=1, description="the most tokens one reply may ask for")
    default_max_tokens: int = Field(512, ge=1, description="a reply's length when the request sets none (a "
                                                           "small model left unbounded can talk for minutes)")
    max_queue: int = Field(64, ge=1, description="requests running or waiting per model; more get 429")
    tool_selector: bool = Field(True, description="decide tool_choice='auto' turns with the embedding selector, "
                                                  "as agents do (runtime/tool_selection.py)")


@dataclass
class ServedModel:
    model: object  # a runtime Model or EndpointModel
    worker: ModelWorker


class ServeError(Exception):
    """A request the server refuses: the status code and a message naming the field and value."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def served(request: Request, name: str) -> ServedModel:
    models: dict[str, ServedModel] = request.app.state.models
    if name not in models:
        raise ServeError(404, f"model '{name}' is not served here; served: {', '.join(models)}", "model")
    return models[name]
