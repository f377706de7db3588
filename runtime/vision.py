"""Vision-language models through our own generation loop: transformers image-text-to-text
folders, and onnxruntime-genai folders in Phi-3.5-vision's ONNX layout.

A processor turns the prompt and its images into token ids plus pixel inputs; the first forward
pass (prefill) takes both, after which decoding is plain token-by-token work on the KV cache, so the
loop, sampler, constraints and stop strings are the same ones every text model uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from slmflow.runtime.backends.onnx_backend import OnnxGenaiBackend
from slmflow.runtime.backends.transformers_backend import (
    TransformersSequence,
    default_device,
)
from slmflow.runtime.constraints import ConstraintEngine, JsonSchema, parse_output
from slmflow.runtime.errors import BackendUnavailableError, ModelLoadError, PromptError
from slmflow.runtime.loop import Decoding, Response, run_generation
from slmflow.runtime.messages import Message, is_token_ids, prompt_messages
from slmflow.runtime.options import GenerateOptions
from slmflow.runtime.registry import REGISTRY
from slmflow.runtime.sampling import Sampler, SamplingParams
from slmflow.runtime.specs import SpecKind, parse_spec
from slmflow.runtime.tokenizer import ChatTokenizer
from slmflow.runtime.tool_calling import ToolChoice, ToolSpec, ToolTurn, local_tool_turn, tool_prompt

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


class _ImageTextModel:
    """What both vision kinds share: the one ``generate`` / ``tool_turn`` / ``count_tokens`` of
    every model (runtime/protocol.py) over our loop, with constraints, stop strings and loop stop
    as for text models. A subclass turns messages and pictures into prompt ids and a sequence
    whose first ``extend`` carries the pixels (``_image_prompt``), and token ids into a plain
    sequence (``_text_sequence``). Each call starts a fresh KV sequence: image prompts are not
    prefix-cached."""

    spec: str
    tokenizer: ChatTokenizer
    vocab_size: int
    context_length: int

    @cached_property
    def constraints(self) -> ConstraintEngine:
        return ConstraintEngine(self.tokenizer.hf, self.vocab_size, self.tokenizer.eos_token_ids)

    def generate(self, prompt, options: GenerateOptions | None = None, **fields):
        """A reply about ``images`` (none, one or more), streamed like any text model's; options
        as in :meth:`~slmflow.runtime.model.Model.generate` (no prompt-lookup speculation: the
        image prefill is not batch-invariant)."""
        opts = GenerateOptions.of(options, fields)
        if is_token_ids(prompt) and opts.images:
            raise PromptError("a prompt of token ids cannot carry images", "pass text or chat messages")
        if opts.images:
            ids, new_sequence = self._image_prompt(prompt_messages(prompt, opts.system), load_images(opts.images))
        else:  # text alone: the text model's template, as count_tokens and tool turns see it
            ids = list(prompt) if is_token_ids(prompt) else \
                self.tokenizer.apply_chat_template(prompt_messages(prompt, opts.system))
            new_sequence = self._text_sequence
        if len(ids) + opts.max_tokens > self.context_length:
            raise PromptError(
                f"the prompt with {len(opts.images)} image(s) takes {len(ids)} tokens; with "
                f"max_tokens={opts.max_tokens} it does not fit the model's context of {self.context_length}",
                "pass fewer or smaller images, or lower max_tokens")
        seq = new_sequence(len(ids) + opts.max_tokens)
        constraint = JsonSchema(opts.output) if opts.output is not None else opts.constraint
        matcher = self.constraints.matcher(constraint) if constraint is not None else None
        decoding = Decoding.local(opts, opts.max_tokens, self.spec, matcher, ids, batch_invariant=False)
        # Image positions are left out of the penalties' history: they are not vocabulary tokens.
        sampler = Sampler(opts.sampler_params, self.vocab_size, [i for i in ids if 0 <= i < self.vocab_size],
                          self._device)
        response = Response(run_generation(seq, ids, 0, self.tokenizer, sampler, decoding, list(ids)))
        return response if opts.output is None else parse_output(opts.output, response.text())

    def tool_turn(self, messages, tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto", parallel: bool = False,
                  max_tokens: int = 512, sampling: SamplingParams | None = None, *,
                  callable_tools: Sequence[ToolSpec] | None = None) -> ToolTurn:
        """A tool turn in text (no images), held to the call grammar as a text model's is."""
        return local_tool_turn(self, messages, tools, tool_choice, parallel, max_tokens, sampling,
                               callable_tools=callable_tools)

    def count_tokens(self, messages, tools: Sequence = ()) -> int:
        """The text prompt's length in tokens (images add what their processor expands them to)."""
        return len(tool_prompt(self, messages, tools))

    @property
    def _device(self) -> torch.device:
        raise NotImplementedError

    def _image_prompt(self, messages: list[Message], pictures: list[Image.Image]):
        """Prompt ids with the pictures' positions, and how to make a sequence of a given capacity
        whose first ``extend`` carries the pixels."""
        raise NotImplementedError

    def _text_sequence(self, capacity: int):
        raise NotImplementedError


class VisionModel(_ImageTextModel):
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
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.context_length = int(getattr(text_config, "max_position_embeddings", 0) or 4096)

    @property
    def _device(self) -> torch.device:
        return self.model.device

    def _image_prompt(self, messages: list[Message], pictures: list[Image.Image]):
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
        chat = [{"role": m.role, "content": [{"type": "image"} for _ in pictures if i == last_user]
                 + [{"type": "text", "text": m.content}]} for i, m in enumerate(messages)]
        text = self.processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = self.processor(text=text, images=pictures or None, return_tensors="pt").to(self.model.device)
        ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        image_inputs = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        return ids, lambda capacity: _ImagePrefillSequence(self.model, capacity, image_inputs)

    def _text_sequence(self, capacity: int):
        return TransformersSequence(self.model, capacity)


class OnnxVisionModel(_ImageTextModel):
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
        self.vocab_size = self.backend.vocab_size
        self.context_length = self.backend.context_length
        with self._processor_errors():
            self.processor = self.backend.model.create_multimodal_processor()

    @property
    def _device(self) -> torch.device:
        return self.backend.device

    def _image_prompt(self, messages: list[Message], pictures: list[Image.Image]):
        tags = "".join(f"<|image_{i}|>\n" for i in range(1, len(pictures) + 1))
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
        tagged = [m.model_copy(update={"content": tags + m.content}) if i == last_user else m
                  for i, m in enumerate(messages)]
        text = self.tokenizer.render_chat(tagged)
        with self._processor_errors():
            processed = self.processor(text, images=self.backend.images(pictures))
        ids = processed["input_ids"].as_numpy()[0].tolist()  # image positions hold -N for image N
        return ids, lambda capacity: self.backend.new_sequence(capacity, processed)

    def _text_sequence(self, capacity: int):
        return self.backend.new_sequence(capacity)

    @contextmanager
    def _processor_errors(self) -> Iterator[None]:
        """onnxruntime-genai reads processor_config.json when the processor is made or first used
        (the version decides) and raises a bare RuntimeError for a missing or broken one."""
        try:
            yield
        except RuntimeError as err:
            raise ModelLoadError(f"onnxruntime-genai's image processor for {self.spec} failed: {err}",
                                 "the folder needs the processor_config.json it was exported with") from err


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

