"""onnxruntime-genai backend: ``og.Generator`` driven token by token.

We feed tokens with ``append_tokens`` and read ``get_logits``; onnxruntime-genai's own sampler is
never used, so sampling and constraints are the loop's. ``rewind_to`` gives cheap truncation. A
generator cannot be copied, so ``fork`` is unavailable here and the prefix cache keeps whole
generators instead.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np
import torch
from slmflow.runtime.errors import ModelLoadError
from slmflow.runtime.specs import ModelSpec
from slmflow.runtime.tokenizer import ChatTokenizer


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

    def extend(self, token_ids: Seq[int]) -> torch.Tensor:
        if self._processed is not None:
            processed, self._processed = self._processed, None
            self._generator.set_inputs(processed)
        else:
            self._generator.append_tokens(np.asarray(token_ids, dtype=np.int32))
        self.length += len(token_ids)
        return torch.from_numpy(self._generator.get_logits()[0, -1])

    def extend_on_device(self, token: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("this backend feeds tokens from the host")

    def extend_all(self, token_ids: Seq[int]) -> torch.Tensor:
        # get_logits keeps the last position only; the decoder's own output has every position.
        self._generator.append_tokens(np.asarray(token_ids, dtype=np.int32))
        self.length += len(token_ids)
        return torch.from_numpy(self._generator.get_output("logits")[0])

    def rewind(self, length: int) -> None:
        self._generator.rewind_to(length)
        self.length = length

    def fork(self) -> OnnxGenaiSequence:
        raise NotImplementedError("onnxruntime-genai generators cannot be copied")

    def nbytes(self) -> int:
        # The generator preallocates its KV buffer for ``capacity`` tokens (past_present_share_buffer).
        return self.capacity * self._kv_bytes_per_token


class OnnxGenaiBackend:
    name = "onnxruntime-genai"
    can_fork = False
    # int4 MatMulNBits takes a different kernel for one row than for many, so a token's KV from
    # decode differs (slightly) from the same token's KV from prefill: reuse only prefilled tokens.
    batch_invariant = False

    def __init__(self, og, model, config: dict, tokenizer: ChatTokenizer, spec: ModelSpec) -> None:
        self._og = og
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = config
        decoder = config["model"]["decoder"]
        self.context_length = int(config["model"].get("context_length") or 2048)
        self.vocab_size = int(config["model"]["vocab_size"])
        self.device = torch.device("cpu")  # logits come back to the host as numpy
        kv_elem = 2 if "fp16" in json.dumps(config).lower() else 4
        self._kv_bytes_per_token = (
            2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * kv_elem
        )

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
        try:
            model = og.Model(str(folder))
        except Exception as err:  # onnxruntime-genai raises RuntimeError with the ORT message
            raise ModelLoadError(
                f"onnxruntime-genai cannot load {folder}: {str(err).splitlines()[0]}",
                "check that model.onnx and its .data file are complete",
            ) from err
        eos = config["model"].get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        tokenizer = ChatTokenizer.from_folder(folder, extra_eos=eos_ids)
        return cls(og, model, config, tokenizer, spec)

    def new_sequence(self, capacity: int, processed=None) -> OnnxGenaiSequence:
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
