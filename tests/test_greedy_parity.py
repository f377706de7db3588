"""Our loop, greedy, must reproduce each backend's own greedy loop token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPTS
from slmflow.runtime import load_model

NEW_TOKENS = 48


def native_onnx_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """onnxruntime-genai's own loop and sampler (generate_next_token), no slmflow code involved."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model.backend.model)
    params.set_search_options(max_length=len(prompt_ids) + n, do_sample=False)
    generator = og.Generator(model.backend.model, params)
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt_ids):]]


def native_hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    hf = model.backend.model
    out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                      eos_token_id=sorted(model.tokenizer.eos_token_ids))
    return out[0, len(prompt_ids):].tolist()


def ours(model, prompt_ids: list[int], n: int) -> list[int]:
    return model.generate(prompt_ids, max_tokens=n).result().token_ids


def without_eos(model, ids: list[int]) -> list[int]:
    """onnxruntime-genai leaves the EOS token out of its sequence; we and transformers keep it."""
    return ids[:-1] if ids and ids[-1] in model.tokenizer.eos_token_ids else ids


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_onnxruntime_genai_native_loop(onnx_model, prompt):
    ids = onnx_model.prompt_ids(prompt)
    mine = ours(onnx_model, ids, NEW_TOKENS)
    assert without_eos(onnx_model, mine) == native_onnx_greedy(onnx_model, ids, NEW_TOKENS)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate(hf_model, prompt):
    ids = hf_model.prompt_ids(prompt)
    assert ours(hf_model, ids, NEW_TOKENS) == native_hf_greedy(hf_model, ids, NEW_TOKENS)


def test_tiny_phi3_backends_agree_token_for_token(tiny_phi3_dirs):
    hf_dir, onnx_dir = tiny_phi3_dirs
    via_hf = load_model(f"hf:{hf_dir}")
    via_onnx = load_model(f"onnx:{onnx_dir}")
    assert via_hf.backend.name == "transformers" and via_onnx.backend.name == "onnxruntime-genai"
    for prompt in PROMPTS:
        ids = via_hf.prompt_ids(prompt)
        a = ours(via_hf, ids, 24)
        b = ours(via_onnx, ids, 24)
        assert len(a) == 24
        assert a == b


def test_embedded_model_answers_a_simple_question(onnx_model):
    text = onnx_model.generate("What is the capital of France?", max_tokens=40).text()
    assert "Paris" in text
