"""slmflow: fully on-device assistants built from small language models.

The public entry points live in :mod:`slmflow.runtime`; they are re-exported here so that
``from slmflow import load_model`` is all a script needs.
"""

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
