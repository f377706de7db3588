"""Vision-language models (transformers image-text-to-text) through our own generation loop.

The processor turns messages with images into token ids plus pixel inputs; the first forward pass
(prefill) takes both, after which decoding is plain token-by-token work on the KV cache, so the
loop, sampler, constraints and stop strings are the same ones every text model uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from slmflow.runtime.backends.transformers_backend import (
    TransformersSequence,
    default_device,
)
from slmflow.runtime.errors import ModelLoadError, PromptError
from slmflow.runtime.loop import Response, run_generation
from slmflow.runtime.sampling import Sampler, SamplingParams
from slmflow.runtime.tokenizer import ChatTokenizer


class _ImagePrefillSequence(TransformersSequence):
    """A transformers sequence whose first ``extend`` also carries the processor's pixel inputs."""

    def __init__(self, model, capacity: int, image_inputs: dict) -> None:
        super().__init__(model, capacity)
        self._image_inputs = image_inputs

    def extend(self, token_ids: Sequence[int]) -> torch.Tensor:
        inputs, self._image_inputs = self._image_inputs, {}
        return super().extend(token_ids, **inputs)


def load_images(paths: Sequence[str | Path]) -> list[Image.Image]:
    """Decoded RGB images, or PromptError naming the file that is missing or not an image."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except FileNotFoundError:
            raise PromptError(f"image {path} does not exist", "check the path") from None
        except (UnidentifiedImageError, OSError) as err:
            raise PromptError(f"image {path} cannot be decoded ({err.__class__.__name__})",
                              "pass a PNG, JPEG, WebP, BMP or TIFF file") from None
    return images


class VisionModel:
    """An image-text-to-text model from a local Hugging Face folder."""

    def __init__(self, folder: str | Path, device: str | None = None) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} has no config.json", "point the vision role to a Hugging Face model folder")
        dev = torch.device(device) if device else default_device()
        try:
            self.processor = AutoProcessor.from_pretrained(folder)
            self.model = AutoModelForImageTextToText.from_pretrained(
                folder, dtype=torch.float32 if dev.type == "cpu" else torch.bfloat16).to(dev).eval()
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load a vision model from {folder}: {str(err).splitlines()[0]}",
                                 "the folder needs an image-text-to-text model and its processor") from err
        self.spec = f"hf:{folder}"
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.processor.tokenizer.eos_token_id is not None:
            eos_ids.add(self.processor.tokenizer.eos_token_id)
        self.tokenizer = ChatTokenizer(self.processor.tokenizer, sorted(eos_ids))
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])

    def generate(self, prompt: str, images: Sequence[str | Path], *, max_tokens: int = 256,
                 sampling: SamplingParams | None = None) -> Response:
        """A reply about ``images`` (one or more), streamed like any text model's."""
        pictures = load_images(images)
        content = [{"type": "image"} for _ in pictures] + [{"type": "text", "text": prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(text=text, images=pictures, return_tensors="pt").to(self.model.device)
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        image_inputs = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        seq = _ImagePrefillSequence(self.model, len(ids) + max_tokens, image_inputs)
        sampler = Sampler(sampling or SamplingParams(), self.vocab_size, ids, self.model.device)
        stream: Iterator[str] = run_generation(seq, ids, 0, self.tokenizer, sampler, max_tokens, (), self.spec,
                                               list(ids))
        return Response(stream)


@lru_cache(maxsize=2)
def load_vision_model(folder: str) -> VisionModel:
    return VisionModel(folder)

