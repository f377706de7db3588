"""Backends: thin classes that load a model and run forward steps over a KV cache they own.

Sampling, constraints, stopping, prefix reuse and streaming live once, in the loop; a backend only
answers "here are new tokens, give me the next-token logits" and can rewind or copy its cache.
"""

from slmflow.runtime.backends.base import Backend, Sequence

__all__ = ["Backend", "Sequence"]
