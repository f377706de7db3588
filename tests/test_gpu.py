"""GPU path of the transformers backend; skipped where no CUDA device is present (CI)."""

from __future__ import annotations

import pytest
import torch

from slmflow.runtime.backends.transformers_backend import TransformersBackend
from slmflow.runtime.model import Model
from slmflow.runtime.specs import parse_spec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_greedy_matches_cpu_on_tiny_phi3(tiny_phi3_dirs):
    hf_dir = tiny_phi3_dirs[0]
    spec = parse_spec(f"hf:{hf_dir}")
    cpu = Model(TransformersBackend.load(spec, hf_dir, device="cpu"))
    gpu = Model(TransformersBackend.load(spec, hf_dir, device="cuda"))
    assert gpu.backend.device.type == "cuda"
    ids = cpu.prompt_ids("What is the capital of France?")
    assert gpu.generate(ids, max_tokens=16).result().token_ids == cpu.generate(ids, max_tokens=16).result().token_ids
