"""What a caller sets to choose how tokens are sampled: the parameters alone, without torch, so
the command line can build its flags from them (and ``agents --help`` answer) without loading
the tensor library the sampler itself needs."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: A sampling seed: the range torch's generators take, so no seed is refused deep in the loop.
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]


class SamplingParams(BaseModel):
    """How the next token is chosen. ``temperature == 0`` means greedy. Every number must be finite:
    a NaN penalty would turn every logit into NaN."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; higher = more random")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="keep the smallest set with this total probability")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="drop tokens below min_p x the top probability")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="divide logits of tokens already in prompt or output (HF semantics)"
    )
    frequency_penalty: float = Field(0.0, description="subtract this x count of each generated token")
    presence_penalty: float = Field(0.0, description="subtract this once from every generated token")
    seed: Seed | None = Field(None, description="seed for reproducible sampling")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return (
            self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        )
