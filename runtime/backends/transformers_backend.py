"""transformers backend: any causal LM the installed transformers can load, with our own cache.

``past_key_values`` stays under our control (a DynamicCache per sequence) so the loop can rewind it,
copy it and keep it across turns.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence as Seq
from pathlib import Path

import torch
from slmflow.runtime.backends.hf_cache import cache_keyword, cache_nbytes
from slmflow.runtime.errors import ModelLoadError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tokenizer import ChatTokenizer

log = logging.getLogger("slmflow")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class TransformersSequence:
    feeds_on_device = False

    def __init__(self, model, capacity: int) -> None:
        from transformers import DynamicCache

        self._model = model
        self._device = model.device
        self.cache = DynamicCache(config=model.config)
        self.length = 0
        self.capacity = capacity
        self._cache_arg = cache_keyword(model)

    def extend(self, token_ids: Seq[int], **model_inputs) -> torch.Tensor:
        """Append tokens; ``model_inputs`` (pixel values, say) go to the same forward pass."""
        return self._forward(token_ids, 1, model_inputs)[-1]

    def extend_on_device(self, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("this backend feeds tokens from the host")

    def extend_all(self, token_ids: Seq[int]) -> torch.Tensor:
        return self._forward(token_ids, len(token_ids), {})

    @torch.inference_mode()
    def _forward(self, token_ids: Seq[int], keep: int, model_inputs: dict) -> torch.Tensor:
        input_ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
        out = self._model(input_ids=input_ids, use_cache=True, logits_to_keep=keep, **model_inputs,
                          **{self._cache_arg: self.cache})
        self.length += len(token_ids)
        return out.logits[0]

    def rewind(self, length: int) -> None:
        # A negative crop means "remove this many" in every transformers release since 4.4x; a
        # positive one changed meaning in 5.2x, so only the negative form is used.
        if length < self.length:
            self.cache.crop(length - self.length)
        self.length = length

    def fork(self) -> TransformersSequence:
        twin = copy.copy(self)
        twin.cache = copy.deepcopy(self.cache)
        return twin

    def nbytes(self) -> int:
        return cache_nbytes(self.cache)


class TransformersBackend:
    """A Hugging Face causal LM (a folder, or a GGUF file dequantised by transformers) stepped
    token by token by our loop. On CPU, a model of plain full-attention layers runs its sequences
    in a slot arena (backends/torch_slots.py), their passes batched by the scheduler; on CUDA
    the captured-graph fast path (backends/cuda_graph.py) runs one sequence per pass; elsewhere
    sequences are transformers' own KV cache classes. All of them fork."""

    name = "transformers"
    can_fork = True

    def __init__(self, model, tokenizer: ChatTokenizer, spec: ModelSpec) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = model.device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(model.config.vocab_size)
        # fp32 CPU matmuls for one row and for many agree to rounding; half precision and GPU
        # kernels pick different algorithms by shape, so reuse of decoded tokens is not exact there.
        self.batch_invariant = self.device.type == "cpu" and model.dtype == torch.float32
        from slmflow.runtime.backends.cuda_graph import (
            GraphPool,
            cuda_graphs_usable,
            triton_kernel_wanted,
        )

        self.fast_path, why = cuda_graphs_usable(self.device)
        self._graphs = GraphPool() if self.fast_path else None
        if self.fast_path and triton_kernel_wanted("SLMFLOW_DECODE_ATTENTION"):
            from slmflow.runtime.backends.decode_attention import use_decode_attention

            attention = use_decode_attention(model)
            if attention:
                why += f" + {attention}"
        if self.fast_path and triton_kernel_wanted("SLMFLOW_DECODE_GEMV"):
            from slmflow.runtime.backends.decode_gemv import use_decode_gemv

            why += f" + decode GEMV ({use_decode_gemv(model)})"
        self.scheduler = None
        if not self.fast_path and self.device.type == "cpu":
            from slmflow.runtime.backends.torch_slots import TorchSlotArena, slot_ready

            if slot_ready(model):
                from slmflow.runtime.scheduler import BatchScheduler

                self.scheduler = BatchScheduler(TorchSlotArena(model), str(spec))
                why += "; sequences batched by the scheduler"
        log.info("transformers backend on %s: %s", self.device, why if self.fast_path else f"eager ({why})")

    @classmethod
    def load(cls, spec: ModelSpec, folder: Path, gguf_file: str | None = None, device: str | None = None):
        from transformers import AutoModelForCausalLM

        dev = torch.device(device) if device else default_device()
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
        if gguf_file is None and not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} has no config.json", "point to a Hugging Face model folder")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
        except Exception as err:  # transformers raises OSError, ValueError, safetensors errors...
            where = folder / gguf_file if gguf_file else folder
            raise ModelLoadError(
                f"cannot load model weights from {where}: {str(err).splitlines()[0]}",
                "check that the files are complete and of an architecture transformers supports",
            ) from err
        model.to(dev).eval()
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        tokenizer = ChatTokenizer.from_folder(folder, extra_eos=eos_ids, gguf_file=gguf_file)
        return cls(model, tokenizer, spec)

    def new_sequence(self, capacity: int):
        if self.scheduler is not None:
            return self.scheduler.new_sequence(capacity)
        if self.fast_path:
            from slmflow.runtime.backends.cuda_graph import CudaGraphSequence

            return CudaGraphSequence(self.model, capacity, self._graphs)
        return TransformersSequence(self.model, capacity)

