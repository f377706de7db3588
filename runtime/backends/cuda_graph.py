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

import logging
import weakref
from collections.abc import Sequence as Seq

import torch
from slmflow.runtime.backends.hf_cache import cache_keyword, cache_nbytes
from slmflow.runtime.errors import PromptError

log = logging.getLogger("slmflow")

PREFILL_BUCKETS = (16, 64, 256, 1024)
CAPACITY_STEP = 256


def bucket(n: int) -> int:
    for b in PREFILL_BUCKETS:
        if n <= b:
            return b
    return -(-n // PREFILL_BUCKETS[-1]) * PREFILL_BUCKETS[-1]


class DecodeGraph:
    """A static KV cache, the fixed input buffers of the decode step and the graph captured over
    them. Capturing costs three warm-up steps plus the capture itself, so these outlive the
    sequence that made them: see :class:`GraphPool`."""

    def __init__(self, model, capacity: int) -> None:
        from transformers import StaticCache

        self.capacity = capacity
        self.cache = StaticCache(config=model.config, max_cache_len=capacity)
        device = model.device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((1,), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.failed = False

    def nbytes(self) -> int:
        return cache_nbytes(self.cache)


class GraphPool:
    """Decode graphs of sequences that are gone, kept for the next sequence of a similar capacity.

    A new sequence takes an idle graph (captured ones first) whose capacity is at least what it
    asks for and at most twice that (SDPA reads the whole static cache, and the split-KV kernel
    still launches over all of it, so a much larger one would slow every step); a forked or
    re-created conversation then starts decoding without a new capture. At most ``max_idle``
    graphs wait here; their memory is outside the prefix cache's budget."""

    def __init__(self, max_idle: int = 2) -> None:
        self.max_idle = max_idle
        self._idle: list[DecodeGraph] = []

    def take(self, model, capacity: int) -> DecodeGraph:
        fitting = [g for g in self._idle if capacity <= g.capacity <= 2 * capacity]
        if fitting:
            best = min(fitting, key=lambda g: (g.graph is None, g.capacity))  # captured ones first
            self._idle.remove(best)
            return best
        return DecodeGraph(model, capacity)

    def give(self, graph: DecodeGraph) -> None:
        self._idle.append(graph)
        del self._idle[: -self.max_idle or len(self._idle)]


class CudaGraphSequence:
    """A Sequence whose one-token steps replay a captured CUDA graph."""

    feeds_on_device = True

    def __init__(self, model, capacity: int, pool: GraphPool | None = None) -> None:
        self._model = model
        self._pool = pool or GraphPool(max_idle=0)
        self._g = self._pool.take(model, -(-capacity // CAPACITY_STEP) * CAPACITY_STEP)
        weakref.finalize(self, self._pool.give, self._g)
        self.capacity = self._g.capacity
        self.cache = self._g.cache
        self._cache_arg = cache_keyword(model)
        self.length = 0
        self._set_write_position(0)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return _step_function(self._model, input_ids, positions, self.cache, self._cache_arg)

    def _decode_step(self) -> torch.Tensor:
        """The one-token step that the graph captures: compiled (fused kernels) when enabled."""
        step = _compiled_step(self._model) if compile_enabled() else None
        if step is None:
            return self._forward(self._g.token, self._g.position)
        return step(self._model, self._g.token, self._g.position, self.cache, self._cache_arg)

    @torch.inference_mode()
    def extend(self, token_ids: Seq[int]) -> torch.Tensor:
        self._check_room(len(token_ids))
        if len(token_ids) == 1 and self._ensure_graph():
            self._g.token.fill_(token_ids[0])
            return self._replay()
        return self._extend_eager(token_ids)[-1]

    @torch.inference_mode()
    def extend_all(self, token_ids: Seq[int]) -> torch.Tensor:
        self._check_room(len(token_ids))
        return self._extend_eager(token_ids)

    def _check_room(self, n: int) -> None:
        if self.length + n > self.capacity:
            raise PromptError(
                f"the sequence needs {self.length + n} tokens but its static cache holds {self.capacity}",
                "start a new session or raise its capacity",
            )

    def _extend_eager(self, token_ids: Seq[int]) -> torch.Tensor:
        """Several tokens in one eager pass (padded to a size bucket); the logits of each."""
        n = len(token_ids)
        padded = min(bucket(n), self.capacity - self.length)
        ids = torch.zeros((1, padded), dtype=torch.long, device=self._model.device)
        ids[0, :n] = torch.tensor(list(token_ids), dtype=torch.long)
        positions = torch.arange(self.length, self.length + padded, device=self._model.device)
        logits = self._forward(ids, positions)[:n]
        self.length += n
        self._set_write_position(self.length)
        return logits

    @torch.inference_mode()
    def extend_on_device(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token that is still on the device (a 0-d tensor the sampler just produced):
        nothing waits for it, so the step is queued right behind the sampling kernels."""
        if self.length + 1 > self.capacity or not self._ensure_graph():
            return self.extend([int(token)])
        self._g.token.copy_(token.view(1, 1))
        return self._replay()

    def _replay(self) -> torch.Tensor:
        self._g.position.fill_(self.length)
        self._g.graph.replay()
        self.length += 1
        return self._g.logits

    @torch.inference_mode()
    def _set_write_position(self, length: int) -> None:
        """Point every layer's write counter at ``length`` (in place: the graph holds its address)."""
        for layer in self.cache.layers:
            counter = getattr(layer, "cumulative_length", None)
            if isinstance(counter, torch.Tensor):
                counter.fill_(length)

    def _ensure_graph(self) -> bool:
        """Capture the decode step on first use (the cache must already hold the prompt)."""
        g = self._g
        if g.graph is not None:
            return True
        if g.failed or self.length == 0:
            return False
        g.position.fill_(self.length)  # warm-up writes land in the slot the next token overwrites
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._decode_step()
            torch.cuda.current_stream().wait_stream(stream)
            self._set_write_position(self.length)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                g.logits = self._decode_step()[0]
            self._set_write_position(self.length)
        except Exception as err:  # capture refuses host syncs or dynamic shapes inside the model
            g.failed = True
            log.warning("CUDA graph capture failed (%s); decoding eagerly on the static cache",
                        str(err).splitlines()[0])
            return False
        g.graph = graph
        return True

    def rewind(self, length: int) -> None:
        self.length = length  # later slots become future positions: masked, then overwritten
        self._set_write_position(length)

    @torch.inference_mode()
    def fork(self) -> CudaGraphSequence:
        twin = CudaGraphSequence(self._model, self.capacity, self._pool)
        if self.length:
            if not all(getattr(layer, "is_initialized", True) for layer in twin.cache.layers):
                twin.extend([0])  # a new static cache allocates its buffers on first use
            for mine, theirs in zip(self.cache.layers, twin.cache.layers):
                theirs.keys.copy_(mine.keys)
                theirs.values.copy_(mine.values)
        twin.length = self.length
        twin._set_write_position(self.length)
        return twin

    def nbytes(self) -> int:
        return self._g.nbytes()


def compile_enabled() -> bool:
    import os

    return os.environ.get("SLMFLOW_TORCH_COMPILE", "1") != "0"


def _step_function(model, input_ids, positions, cache, cache_arg):
    out = model(input_ids=input_ids, cache_position=positions, position_ids=positions.unsqueeze(0),
                use_cache=True, **{cache_arg: cache})
    return out.logits[0]


_compiled: dict[int, object] = {}


def _lower_our_ops_as_fallbacks() -> None:
    """Registers each ``slmflow::`` custom op with inductor as a fallback (a call to the op, what
    inductor does anyway for ops it cannot lower) before compiling.

    Without this, torch 2.11's inductor met each op without a lowering as an "implicit fallback" and
    first built a log line printing its operands; each operand prints the ops that produced it,
    down to the graph inputs, so the text doubles with each layer whose residual stream feeds two
    fused ops. In the int4 recipe the first ``slmflow::gemv`` is the bf16 lm_head's, 32 layers
    deep in the Phi-3.5-mini shape: its compile had not finished after 180 s, twice on an H100
    (bench/RESULTS.md). Torch 2.13 builds that line lazily; registering first skips it in both."""
    try:
        from torch._inductor.lowering import (
            lowerings,
            make_fallback,
            tag_to_layout_constraint,
        )
        from torch._library.utils import get_layout_constraint_tag

        for name in torch._C._dispatch_get_all_op_names():
            if name.startswith("slmflow::"):
                op_name, _, overload = name.removeprefix("slmflow::").partition(".")
                op = getattr(getattr(torch.ops.slmflow, op_name), overload or "default")
                if op not in lowerings:
                    tag = get_layout_constraint_tag(op, with_default=True)
                    make_fallback(op, layout_constraint=tag_to_layout_constraint(tag))
    except (ImportError, AttributeError, TypeError) as err:  # inductor internals of another torch
        log.debug("slmflow ops left to inductor's implicit fallbacks (%s)", err)


def _compiled_step(model):
    """torch.compile of the decode step, one per model; None where compile is unavailable, after
    one log line.

    The first capacity compiles with static shapes. A second capacity compiles once more with the
    cache length symbolic (dynamo's automatic dynamic shapes), and that compile serves every later
    capacity: with ``dynamic=False`` each new capacity (a longer conversation, a bigger prompt)
    cost a full recompile, 29 s for the Phi-3.5-mini shape on an H100 (bench/RESULTS.md).

    Each model gets a code object of its own: dynamo keeps compiles, their recompile limit and the
    sizes it has seen per code object, so with one shared function a second model of another
    shape (the MoE role beside the mini one) would count as the first one's shapes changing and be
    compiled with every size symbolic."""
    import os
    import types

    key = id(model)
    if key not in _compiled:
        try:
            code = _step_function.__code__.replace(co_name=f"_step_function_{len(_compiled)}")
            step = types.FunctionType(code, _step_function.__globals__, code.co_name)
            import torch._inductor.config as inductor

            # Tunes the block sizes of the one-row matmuls that dominate decoding (as gpt-fast does).
            inductor.coordinate_descent_tuning = True
            # SLMFLOW_TORCH_COMPILE_MODE, e.g. "max-autotune-no-cudagraphs" (we capture the graph
            # ourselves), trades a longer first compile for tuned matmul kernels.
            mode = os.environ.get("SLMFLOW_TORCH_COMPILE_MODE") or None
            _lower_our_ops_as_fallbacks()
            _compiled[key] = torch.compile(step, dynamic=None, mode=mode)
        except Exception as err:  # no inductor/triton for this device or torch build
            log.warning("torch.compile unavailable (%s); the CUDA graph replays eager kernels", err)
            _compiled[key] = None
    return _compiled[key]


def triton_kernel_wanted(variable: str) -> bool:
    """Whether one of our Triton decode kernels should run: Triton importable (CUDA builds of torch
    ship it) and the kernel's switch not set to 0. On by default because each measured faster on
    the H100 (bench/RESULTS.md): ``SLMFLOW_DECODE_ATTENTION`` (split-KV attention, the captured
    step of the SmolLM2-135M shape 31% faster, Phi-3.5-mini's 4%) and ``SLMFLOW_DECODE_GEMV``
    (the large linear layers as one fixed-tile GEMV)."""
    import importlib.util
    import os

    return os.environ.get(variable, "1") != "0" and importlib.util.find_spec("triton") is not None


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
