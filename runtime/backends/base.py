"""The protocol every backend implements.

Logits come back as the backend computes them: a torch tensor (transformers, on its device) or a
numpy array (onnxruntime, on the host). The loop, the sampler and the constraint masks take
either, so a process running an ONNX model never imports torch (runtime/sampling.py says why).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING, Protocol, Union

from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tokenizer import ChatTokenizer

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Next-token scores: ``[vocab]`` for one position, ``[positions, vocab]`` for several.
Logits = Union["torch.Tensor", "np.ndarray"]


class Sequence(Protocol):
    """One KV cache holding the tokens fed so far."""

    length: int
    capacity: int
    #: True where the sequence takes a token still on the device (``extend_on_device``).
    feeds_on_device: bool

    def extend(self, token_ids: Seq[int]) -> Logits:
        """Run the new tokens through the model; return the last position's logits (1-D)."""

    def extend_all(self, token_ids: Seq[int]) -> Logits:
        """As ``extend``, but the logits of every new position (``[len(token_ids), vocab]``): one
        pass verifies a guess of several tokens (speculative decoding)."""

    def extend_on_device(self, token: torch.Tensor) -> Logits:
        """Feed one sampled token without reading it to the host first (a 0-d device tensor), so
        the next step is queued behind the sampler and the host's work overlaps the GPU's; return
        the next logits. Only called where ``feeds_on_device``; others raise NotImplementedError."""

    def rewind(self, length: int) -> None:
        """Forget every token after the first ``length``."""

    def fork(self) -> Sequence:
        """An independent copy (raises NotImplementedError where the backend cannot copy)."""

    def nbytes(self) -> int:
        """Bytes of KV cache held."""


class Backend(Protocol):
    name: str
    spec: ModelSpec
    tokenizer: ChatTokenizer
    context_length: int
    #: Length of the logits vector (may exceed the tokenizer's vocabulary because of padding).
    vocab_size: int
    #: Where the logits are: a torch device, or "cpu" for a host backend's numpy logits.
    device: torch.device | str
    can_fork: bool
    #: True when a token's KV computed one at a time (decode) is bitwise equal to the same token's
    #: KV computed in a batch (prefill). Prefix reuse of generated tokens is exact only then.
    batch_invariant: bool

    def new_sequence(self, capacity: int) -> Sequence:
        """A fresh, empty KV cache with room for ``capacity`` tokens."""
