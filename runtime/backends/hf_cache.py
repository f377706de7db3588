"""What the transformers backend and its CUDA-graph fast path both need to know of a
transformers KV cache. A module of its own, so the two import it and not each other."""

from __future__ import annotations

import inspect

import torch


def cache_keyword(model) -> str:
    """The keyword the model's forward takes its KV cache by: transformers 5.2x renamed
    ``past_key_values`` to ``cache``, and either release may be installed."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_nbytes(cache) -> int:
    """Bytes of key and value tensors a transformers cache holds (allocated, for a static one)."""
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
