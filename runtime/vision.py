"""Vision-language models through our own generation loop: transformers image-text-to-text
folders, and onnxruntime-genai folders in Phi-3.5-vision's ONNX layout.

A processor turns the prompt and its images into token ids plus pixel inputs; the first forward
pass (prefill) takes both, after which decoding is plain token-by-token work on the KV cache, so the
loop, sampler, constraints and stop strings are the same ones every text model uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend
from slmflow.runtime.backends.transformers_backend import (
    TransformersSequence,
    default_device,
)
from slmflow.runtime.errors import BackendUnavailableError, ModelLoadError, PromptError
from slmflow.runtime.loop import Response, run_generation
from slmflow.runtime.messages import Message
from slmflow.runtime.registry import REGISTRY
from slmflow.runtime.sampling import Sampler, SamplingParams
from slmflow.runtime.specs import SpecKind, parse_spec
from slmflow.runtime.tokenizer import ChatTokenizer

# onnxruntime-genai model types whose processor expands "<|image_N|>" tags (Phi-3.5-vision's layout:
# a vision, an embedding and a text ONNX session).
ONNX_IMAGE_TAG_TYPES = ("phi3v",)


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
        return _respond(seq, ids, self.tokenizer, self.vocab_size, self.model.device, self.spec, max_tokens, sampling)


class OnnxVisionModel:
    """An onnxruntime-genai folder in Phi-3.5-vision's ONNX layout (genai_config type ``phi3v``),
    such as microsoft/Phi-3.5-vision-instruct-onnx. Images go through onnxruntime-genai's own
    processor (Phi-3.5-vision's HD crops), so the pixels and image-token counts are the ones the
    model was exported for; our loop then samples from the text decoder's logits."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.backend = OnnxGenaiBackend.load(parse_spec(f"onnx:{folder}"), folder)
        model_type = self.backend.config["model"].get("type")
        if model_type not in ONNX_IMAGE_TAG_TYPES or "vision" not in self.backend.config["model"]:
            raise ModelLoadError(
                f"{folder} holds an onnxruntime-genai '{model_type}' model without Phi-3.5-vision's vision session",
                "point the vision role to a Phi-3.5-vision ONNX folder (genai_config type phi3v) "
                "or to a transformers image-text-to-text folder")
        self.tokenizer = self.backend.tokenizer
        self.spec = str(self.backend.spec)
        with self._processor_errors():
            self.processor = self.backend.model.create_multimodal_processor()

    def generate(self, prompt: str, images: Sequence[str | Path], *, max_tokens: int = 256,
                 sampling: SamplingParams | None = None) -> Response:
        """A reply about ``images`` (one or more), streamed like any text model's."""
        pictures = load_images(images)  # a missing or undecodable file fails here, with its name
        tags = "".join(f"<|image_{i}|>\n" for i in range(1, len(images) + 1))
        text = self.tokenizer.render_chat([Message(role="user", content=tags + prompt)])
        with self._processor_errors():
            processed = self.processor(text, images=self.backend.images(pictures))
        ids = processed["input_ids"].as_numpy()[0].tolist()  # image positions hold -N for image N
        context = self.backend.context_length
        if len(ids) + max_tokens > context:
            raise PromptError(
                f"the prompt with {len(images)} image(s) takes {len(ids)} tokens; with max_tokens={max_tokens} "
                f"it does not fit the model's context of {context}",
                "pass fewer or smaller images, or lower max_tokens")
        seq = self.backend.new_sequence(len(ids) + max_tokens, processed)
        return _respond(seq, ids, self.tokenizer, self.backend.vocab_size, self.backend.device, self.spec,
                        max_tokens, sampling)

    @contextmanager
    def _processor_errors(self) -> Iterator[None]:
        """onnxruntime-genai reads processor_config.json when the processor is made or first used
        (the version decides) and raises a bare RuntimeError for a missing or broken one."""
        try:
            yield
        except RuntimeError as err:
            raise ModelLoadError(f"onnxruntime-genai's image processor for {self.spec} failed: {err}",
                                 "the folder needs the processor_config.json it was exported with") from err


def _respond(seq, ids: list[int], tokenizer: ChatTokenizer, vocab_size: int, device, spec: str, max_tokens: int,
             sampling: SamplingParams | None) -> Response:
    """The loop over a sequence whose first ``extend`` carries the images. Image positions are
    left out of the penalties' history: they are not vocabulary tokens."""
    sampler = Sampler(sampling or SamplingParams(), vocab_size, [i for i in ids if 0 <= i < vocab_size], device)
    stream: Iterator[str] = run_generation(seq, ids, 0, tokenizer, sampler, max_tokens, (), spec, list(ids))
    return Response(stream)


def load_vision_model(spec: str) -> VisionModel | OnnxVisionModel:
    """The vision role's model from its spec: ``hf:PATH`` (transformers) or ``onnx:PATH``
    (Phi-3.5-vision's ONNX layout); one per spec in the process (runtime/registry.py,
    ``vision:SPEC``)."""
    return REGISTRY.get(f"vision:{spec}", lambda: _load_vision_model(spec))


def _load_vision_model(spec: str) -> VisionModel | OnnxVisionModel:
    parsed = parse_spec(spec)
    if parsed.kind is SpecKind.HF:
        return VisionModel(parsed.path)
    if parsed.kind is SpecKind.ONNX:
        return OnnxVisionModel(parsed.path)
    raise BackendUnavailableError(
        f"roles.vision = '{spec}': vision models run from a local hf:PATH or onnx:PATH folder",
        "point roles.vision to a Hugging Face image-text-to-text folder or a Phi-3.5-vision ONNX folder, "
        "or remove it to use OCR")

