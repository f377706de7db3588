"""The runtime: model specs, backends, the generation loop and sampling.

It imports nothing from agents, tools, graphs or evals; they build on it.

The names below are loaded on first use (PEP 562), not when the package is imported: ``import
slmflow.runtime.errors`` must not pull torch and the backends in, or every ``agents`` command,
``--help`` included, would pay seconds of imports before it could answer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GenerateOptions": "options",
    "GenerationResult": "loop",
    "GenerativeModel": "protocol",
    "Message": "messages",
    "Model": "model",
    "ModelSpec": "specs",
    "Response": "loop",
    "Role": "config",
    "SamplingParams": "sampling_params",
    "SlmflowError": "errors",
    "SpecKind": "specs",
    "Usage": "loop",
    "filtered_probs": "sampling",
    "load_config": "config",
    "load_model": "model",
    "parse_spec": "specs",
    "spec_for_role": "config",
}

__all__ = [
    "GenerateOptions",
    "GenerationResult",
    "GenerativeModel",
    "Message",
    "Model",
    "ModelSpec",
    "Response",
    "Role",
    "SamplingParams",
    "SlmflowError",
    "SpecKind",
    "Usage",
    "filtered_probs",
    "load_config",
    "load_model",
    "parse_spec",
    "spec_for_role",
]

if TYPE_CHECKING:
    from slmflow.runtime.config import Role, load_config, spec_for_role
    from slmflow.runtime.errors import SlmflowError
    from slmflow.runtime.loop import GenerationResult, Response, Usage
    from slmflow.runtime.messages import Message
    from slmflow.runtime.model import Model, load_model
    from slmflow.runtime.options import GenerateOptions
    from slmflow.runtime.protocol import GenerativeModel
    from slmflow.runtime.sampling import filtered_probs
    from slmflow.runtime.sampling_params import SamplingParams
    from slmflow.runtime.specs import ModelSpec, SpecKind, parse_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
