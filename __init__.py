"""slmflow: fully on-device assistants built from small language models.

The public entry points live in :mod:`slmflow.runtime`; they are re-exported here so that
``from slmflow import load_model`` is all a script needs. Like the runtime's, they load on first
use, so importing one light submodule (the CLI's) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "GenerateOptions",
    "GenerationResult",
    "GenerativeModel",
    "Message",
    "Response",
    "SamplingParams",
    "SlmflowError",
    "Usage",
    "load_model",
]

if TYPE_CHECKING:
    from slmflow.runtime import (
        GenerateOptions,
        GenerationResult,
        GenerativeModel,
        Message,
        Response,
        SamplingParams,
        SlmflowError,
        Usage,
        load_model,
    )


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from slmflow import runtime

    value = getattr(runtime, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
