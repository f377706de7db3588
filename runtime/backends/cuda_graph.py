"""The transformers backend's GPU fast path: a static KV cache and a decode step replayed as a
CUDA graph.

Single-stream decoding on a GPU is bound by memory bandwidth, but eager PyTorch spends most of each
step launching a few hundred small kernels from Python. Here the KV cache is allocated once per
sequence (a ``StaticCache``), the one-token decode step is a pure function of (token, position,
cache) whose inputs live in fixed device buffers, and that step is captured once as a CUDA graph and
replayed for every token: one launch per token instead of hundreds.

Rewinding a static cache only moves the write position (transformers' per-layer
``cumulative_length`` device counter, which also sets the attention mask's query offset): entries
past it are masked as future positions and overwritten by the next tokens, so prefix reuse keeps
positions instead of copying them.

Prefill runs eagerly, padded on the right to a bucket length so few shapes occur; pads sit after the
real tokens, so causal attention never lets a real token see them, and moving the write position
back to the real length makes their slots future positions that decoding overwrites.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence as Seq

import torch
from slmflow.runtime.errors import PromptError

log = logging.getLogger("slmflow")

PREFILL_BUCKETS = (16, 64, 256, 1024)
CAPACITY_STEP = 256


def bucket(n: int) -> int:
    for b in PREFILL_BUCKETS:
        if n <= b:
            return b
    return -(-n // PREFILL_BUCKETS[-1]) * PREFILL_BUCKETS[-1]


class CudaGraphSequence:
    """A Sequence whose one-token steps replay a captured CUDA graph."""

    def __init__(self, model, capacity: int) -> None:
        from transformers import StaticCache

        self._model = model
        self.capacity = -(-capacity // CAPACITY_STEP) * CAPACITY_STEP
        self.cache = StaticCache(config=model.config, max_cache_len=self.capacity)
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.length = 0
        device = model.device
        self._token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self._position = torch.zeros((1,), dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self._graph_failed = False

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return _step_function(self._model, input_ids, positions, self.cache, self._cache_arg)

    def _decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The one-token step that the graph captures: compiled (fused kernels) when enabled."""
        step = _compiled_step(self._model) if compile_enabled() else None
        if step is None:
            return self._forward(input_ids, positions)
        return step(self._model, input_ids, positions, self.cache, self._cache_arg)

    @torch.inference_mode()
    def extend(self, token_ids: Seq[int]) -> torch.Tensor:
        n = len(token_ids)
        if self.length + n > self.capacity:
            raise PromptError(
                f"the sequence needs {self.length + n} tokens but its static cache holds {self.capacity}",
                "start a new session or raise its capacity",
            )
        if n == 1 and self._ensure_graph():
            self._token.fill_(token_ids[0])
            self._position.fill_(self.length)
            self._graph.replay()
            self.length += 1
            return self._graph_logits
        padded = min(bucket(n), self.capacity - self.length)
        ids = torch.zeros((1, padded), dtype=torch.long, device=self._model.device)
        ids[0, :n] = torch.tensor(list(token_ids), dtype=torch.long)
        positions = torch.arange(self.length, self.length + padded, device=self._model.device)
        logits = self._forward(ids, positions)[n - 1]
        self.length += n
        self._set_write_position(self.length)
        return logits

    @torch.inference_mode()
    def _set_write_position(self, length: int) -> None:
        """Point every layer's write counter at ``length`` (in place: the graph holds its address)."""
        for layer in self.cache.layers:
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(length)

    def _ensure_graph(self) -> bool:
        """Capture the decode step on first use (the cache must already hold the prompt)."""
        if self._graph is not None:
            return True
        if self._graph_failed or self.length == 0:
            return False
        self._position.fill_(self.length)  # warm-up writes land in the slot the next token overwrites
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._decode_step(self._token, self._position)
            torch.cuda.current_stream().wait_stream(stream)
            self._set_write_position(self.length)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_logits = self._decode_step(self._token, self._position)[0]
            self._set_write_position(self.length)
        except Exception as err:  # capture refuses host syncs or dynamic shapes inside the model
            self._graph_failed = True
            log.warning("CUDA graph capture failed (%s); decoding eagerly on the static cache",
                        str(err).splitlines()[0])
            return False
        self._graph = graph
        return True

    def rewind(self, length: int) -> None:
        self.length = length  # later slots become future positions: masked, then overwritten
        self._set_write_position(length)

    def fork(self) -> CudaGraphSequence:
        twin = CudaGraphSequence(self._model, self.capacity)
        if self.length:
            twin.extend([0])  # initialise the twin's buffers, then copy the KV over them
            for mine, theirs in zip(self.cache.layers, twin.cache.layers):
                theirs.keys.copy_(mine.keys)
                theirs.values.copy_(mine.values)
        twin.length = self.length
        twin._set_write_position(self.length)
        return twin

    def nbytes(self) -> int:
        from slmflow.runtime.backends.transformers_backend import cache_nbytes

        return cache_nbytes(self.cache)


def compile_enabled() -> bool:
    import os

    return os.environ.get("SLMFLOW_TORCH_COMPILE", "1") != "0"


def _step_function(model, input_ids, positions, cache, cache_arg):
    out = model(input_ids=input_ids, cache_position=positions, position_ids=positions.unsqueeze(0),
                use_cache=True, **{cache_arg: cache})
    return out.logits[0]


_compiled: dict[int, object] = {}


def _compiled_step(model):
    """torch.compile of the decode step, one per model (shapes are static, so no recompiles per
    sequence of the same capacity); None where compile is unavailable, after one log line."""
    import os

    key = id(model)
    if key not in _compiled:
        try:
            import torch._inductor.config as inductor

            # Tunes the block sizes of the one-row matmuls that dominate decoding (as gpt-fast does).
            inductor.coordinate_descent_tuning = True
            # SLMFLOW_TORCH_COMPILE_MODE, e.g. "max-autotune-no-cudagraphs" (we capture the graph
            # ourselves), trades a longer first compile for tuned matmul kernels.
            mode = os.environ.get("SLMFLOW_TORCH_COMPILE_MODE") or None
            _compiled[key] = torch.compile(_step_function, dynamic=False, mode=mode)
        except Exception as err:  # no inductor/triton for this device or torch build
            log.warning("torch.compile unavailable (%s); the CUDA graph replays eager kernels", err)
            _compiled[key] = None
    return _compiled[key]


def cuda_graphs_usable(device: torch.device) -> tuple[bool, str]:
    """Whether the fast path can run here, and why not when it cannot."""
    import os

    if device.type != "cuda":
        return False, f"device is {device.type}"
    if os.environ.get("SLMFLOW_CUDA_GRAPHS", "1") == "0":
        return False, "SLMFLOW_CUDA_GRAPHS=0"
    if not hasattr(torch.cuda, "CUDAGraph"):
        return False, f"torch {torch.__version__} has no CUDA graphs"
    how = "torch.compile + " if compile_enabled() else ""
    return True, f"static KV cache + {how}CUDA-graph decode"
