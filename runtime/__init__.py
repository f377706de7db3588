"""The runtime: model specs, backends, the generation loop and sampling.

It imports nothing from agents, tools, graphs or evals; they build on it.
"""

from slmflow.runtime.config import Role, load_config, spec_for_role
from slmflow.runtime.errors import SlmflowError
from slmflow.runtime.loop import GenerationResult, Response, Usage
from slmflow.runtime.messages import Message
from slmflow.runtime.model import Model, load_model
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.protocol import GenerativeModel
from slmflow.runtime.sampling import SamplingParams, filtered_probs
from slmflow.runtime.specs import ModelSpec, SpecKind, parse_spec

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
