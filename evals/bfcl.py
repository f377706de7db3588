"""BFCL (Berkeley Function Calling Leaderboard) data: questions and their function schemas.

BFCL writes parameter types with its own names; ``to_json_schema`` maps them to JSON Schema as the
data's README says (dict → object, float → number, tuple → array, any → no type), and closes every
object so a call can name no parameter the function does not have.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

TYPE_MAP = {"dict": "object", "float": "number", "tuple": "array", "any": None}


class BfclFunction(BaseModel):
    name: str
    description: str = ""
    parameters: dict


class BfclQuestion(BaseModel):
    id: str
    question: list[list[dict]]
    function: list[BfclFunction]


def to_json_schema(node: dict) -> dict:
    """A BFCL parameter schema as standard JSON Schema."""
    out = {}
    for key, value in node.items():
        if key == "type":
            mapped = TYPE_MAP.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties":
            out["properties"] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_json_schema(value)
        elif key in ("description", "enum", "required", "default"):
            out[key] = value
    if out.get("type") == "object":
        out.setdefault("properties", {})
        out["additionalProperties"] = False
    return out


def load_questions(path: Path) -> list[BfclQuestion]:
    with path.open(encoding="utf-8") as f:
        return [BfclQuestion.model_validate(json.loads(line)) for line in f if line.strip()]
