"""GPU path of the transformers backend; skipped where no CUDA device is present (CI)."""

from __future__ import annotations

import pytest
import torch
from slmflow.runtime.backends.cuda_graph import CudaGraphSequence
from slmflow.runtime.backends.transformers_backend import TransformersBackend
from slmflow.runtime.model import Model
from slmflow.runtime.prefix_cache import CacheBudget
from slmflow.runtime.specs import parse_spec
from slmflow.runtime.tokenizer import ChatTokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def fp32_cuda_backend(tiny_phi3_hf):
    """The tiny Phi-3 on CUDA in fp32, so eager and graph paths can be compared exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_phi3_hf, dtype=torch.float32).to("cuda").eval()
    tokenizer = ChatTokenizer(AutoTokenizer.from_pretrained(tiny_phi3_hf), [2])
    return TransformersBackend(hf, tokenizer, parse_spec(f"hf:{tiny_phi3_hf}"))


def test_fast_path_is_chosen_on_cuda(fp32_cuda_backend):
    assert fp32_cuda_backend.fast_path
    assert isinstance(fp32_cuda_backend.new_sequence(64), CudaGraphSequence)


def test_cuda_graph_greedy_equals_eager_token_for_token(fp32_cuda_backend):
    model = Model(fp32_cuda_backend, CacheBudget())
    model.cache.enabled = False
    ids = model.prompt_ids(PROMPT)
    fast = model.generate(ids, max_tokens=40).result().token_ids
    fp32_cuda_backend.fast_path = False
    try:
        eager = model.generate(ids, max_tokens=40).result().token_ids
    finally:
        fp32_cuda_backend.fast_path = True
    assert len(fast) == 40
    assert fast == eager


def test_static_cache_rewind_then_continue_equals_fresh(fp32_cuda_backend):
    model = Model(fp32_cuda_backend, CacheBudget())
    session = model.session()
    ids = model.prompt_ids(PROMPT)
    session.generate(ids, max_tokens=12).result()
    session.rewind(len(session.tokens) - len(ids) + 3)
    truncated = list(session.tokens)
    continued = session.generate(max_tokens=12).result().token_ids
    model.cache.clear()
    assert continued == model.generate(truncated, max_tokens=12).result().token_ids


def test_cuda_bf16_model_generates(tiny_phi3_hf):
    spec = parse_spec(f"hf:{tiny_phi3_hf}")
    model = Model(TransformersBackend.load(spec, tiny_phi3_hf, device="cuda"))
    assert model.backend.model.dtype == torch.bfloat16
    result = model.generate(PROMPT, max_tokens=16).result()
    assert 1 <= len(result.token_ids) <= 16 and result.finish_reason in ("stop", "length")


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.15)])
def test_weight_only_linear_matches_bf16(bits, tolerance):
    from slmflow.runtime.backends.weight_only import quantize_weight_only

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(1024, 512, bias=False)).to("cuda", torch.bfloat16)
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    reference = layer(x).float()
    assert quantize_weight_only(layer, bits) == 1
    out = layer(x).float()
    relative = ((out - reference).norm() / reference.norm()).item()
    assert relative < tolerance, relative
