"""onnxruntime-genai backend: text models run many sequences per pass, multimodal ones one.

A text-only model's decoder is run by us through onnxruntime (backends/onnx_slots.py), every
sequence's passes batched by the model's scheduler (runtime/scheduler.py); its KV is ours, so
sequences fork. A multimodal model (Phi-3.5-vision: an image and an embedding session feed the
decoder) goes through ``og.Generator``, fed with ``append_tokens`` and read with ``get_logits``;
a generator cannot be copied, so ``fork`` is unavailable there. onnxruntime-genai's own sampler
is never used either way, so sampling and constraints are the loop's.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence as Seq
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from slmflow.runtime.errors import ModelLoadError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tokenizer import ChatTokenizer

if TYPE_CHECKING:
    import torch
    from slmflow.runtime.scheduler import BatchScheduler


class OnnxGenaiSequence:
    """With ``processed`` (a multimodal processor's output for the prompt), the first ``extend``
    hands it to ``set_inputs``, which runs the vision and embedding sessions and prefills the
    decoder; its token ids (image positions hold -N for image N) must be what ``extend`` gets."""

    feeds_on_device = False

    def __init__(self, og, model, capacity: int, kv_bytes_per_token: int, processed=None) -> None:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=capacity)
        self._generator = og.Generator(model, params)
        self._kv_bytes_per_token = kv_bytes_per_token
        self._processed = processed
        self.length = 0
        self.capacity = capacity

    def extend(self, token_ids: Seq[int]) -> np.ndarray:
        if self._processed is not None:
            processed, self._processed = self._processed, None
            self._generator.set_inputs(processed)
        else:
            self._generator.append_tokens(np.asarray(token_ids, dtype=np.int32))
        self.length += len(token_ids)
        return self._generator.get_logits()[0, -1]

    def extend_on_device(self, token: torch.Tensor) -> np.ndarray:
        raise NotImplementedError("this backend feeds tokens from the host")

    def extend_all(self, token_ids: Seq[int]) -> np.ndarray:
        # get_logits keeps the last position only; the decoder's own output has every position.
        self._generator.append_tokens(np.asarray(token_ids, dtype=np.int32))
        self.length += len(token_ids)
        return self._generator.get_output("logits")[0]

    def rewind(self, length: int) -> None:
        self._generator.rewind_to(length)
        self.length = length

    def fork(self) -> OnnxGenaiSequence:
        raise NotImplementedError("onnxruntime-genai generators cannot be copied")

    def nbytes(self) -> int:
        # The generator preallocates its KV buffer for ``capacity`` tokens (past_present_share_buffer).
        return self.capacity * self._kv_bytes_per_token


#: Sections of genai_config.json that feed the decoder from other sessions (it takes embeddings).
MULTIMODAL_SECTIONS = ("vision", "embedding", "speech")


def batchable(config: dict) -> bool:
    """Whether our arena can run this folder's decoder: a text model (its decoder takes token ids)
    whose attention shares one past/present buffer per layer (the builder's GroupQueryAttention
    models). A decoder that concatenates past and new KV into a fresh output cannot be bound to
    the arena's buffers, and runs through ``og.Generator`` like a multimodal one."""
    return (not any(section in config["model"] for section in MULTIMODAL_SECTIONS)
            and bool(config.get("search", {}).get("past_present_share_buffer")))


class OnnxGenaiBackend:
    """A model folder from onnxruntime-genai's model builder. ``scheduler`` (text models) batches
    every sequence's passes; without one (multimodal models) each sequence is a generator."""

    name = "onnxruntime-genai"
    # int4 MatMulNBits takes a different kernel for one row than for many, so a token's KV from
    # decode differs (slightly) from the same token's KV from prefill: reuse only prefilled tokens.
    batch_invariant = False

    def __init__(self, og, folder: Path, config: dict, tokenizer: ChatTokenizer, spec: ModelSpec,
                 scheduler: BatchScheduler | None) -> None:
        self._og = og
        self._folder = folder
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = config
        self.scheduler = scheduler
        self.can_fork = scheduler is not None
        decoder = config["model"]["decoder"]
        self.context_length = int(config["model"].get("context_length") or 2048)
        self.vocab_size = int(config["model"]["vocab_size"])
        self.device = "cpu"  # logits come back to the host as numpy arrays
        kv_elem = 2 if "fp16" in json.dumps(config).lower() else 4
        self._kv_bytes_per_token = (
            2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * kv_elem
        )

    @cached_property
    def model(self):
        """onnxruntime-genai's own model: loaded at once for a multimodal folder, on first use (a
        baseline bench) for a text one, whose decoder the arena runs instead."""
        try:
            return self._og.Model(str(self._folder))
        except Exception as err:  # onnxruntime-genai raises RuntimeError with the ORT message
            raise ModelLoadError(
                f"onnxruntime-genai cannot load {self._folder}: {str(err).splitlines()[0]}",
                "check that model.onnx and its .data file are complete",
            ) from err

    @classmethod
    def load(cls, spec: ModelSpec, folder: Path):
        import onnxruntime_genai as og

        config_path = folder / "genai_config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["model"]["decoder"]["num_hidden_layers"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ModelLoadError(
                f"{config_path} is missing or corrupt ({err})",
                "rebuild the folder with onnxruntime-genai's model builder",
            ) from err
        scheduler = None
        if batchable(config):
            from slmflow.runtime.backends.onnx_slots import OnnxSlotArena
            from slmflow.runtime.scheduler import BatchScheduler

            try:
                arena = OnnxSlotArena(folder, config)
            except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile errors
                raise ModelLoadError(
                    f"onnxruntime cannot load {folder}: {str(err).splitlines()[0]}",
                    "check that model.onnx and its .data file are complete",
                ) from err
            scheduler = BatchScheduler(arena, str(spec))
        eos = config["model"].get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        tokenizer = ChatTokenizer.from_folder(folder, extra_eos=eos_ids)
        backend = cls(og, folder, config, tokenizer, spec, scheduler)
        if scheduler is None:
            backend.model  # a multimodal model is checked at load, as before
        return backend

    def new_sequence(self, capacity: int, processed=None):
        if self.scheduler is not None and processed is None:
            return self.scheduler.new_sequence(capacity)
        return OnnxGenaiSequence(self._og, self.model, capacity, self._kv_bytes_per_token, processed)

    def images(self, pictures: Seq) -> object | None:
        """Decoded (PIL) images for the model's multimodal processor, handed over as PNG: its own
        decoders take PNG and JPEG only, and on another format libjpeg ends the whole process."""
        blobs = []
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            blobs.append(buffer.getvalue())
        return self._og.Images.open_bytes(*blobs) if blobs else None
