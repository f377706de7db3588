"""Sampling filters on the embedded model's real next-token distribution."""

from __future__ import annotations

import pytest
import torch
from slmflow.runtime import SamplingParams, filtered_probs
from slmflow.runtime.sampling import Sampler

PROMPT = "Tell me a story about a cat."


@pytest.fixture(scope="module")
def real_logits(onnx_model):
    seq = onnx_model.backend.new_sequence(capacity=128)
    return torch.as_tensor(seq.extend(onnx_model.prompt_ids(PROMPT))).clone()  # the ONNX path hands numpy


def test_top_k_keeps_exactly_the_k_most_likely(real_logits):
    probs = filtered_probs(real_logits, SamplingParams(temperature=1.0, top_k=5))
    support = set(torch.nonzero(probs).flatten().tolist())
    assert support == set(torch.topk(real_logits, 5).indices.tolist())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_top_p_keeps_the_smallest_set_reaching_p(real_logits):
    p = 0.9
    probs = filtered_probs(real_logits, SamplingParams(temperature=1.0, top_p=p))
    full = real_logits.float().softmax(-1)
    ordered = torch.sort(full, descending=True)
    needed = int(torch.searchsorted(ordered.values.cumsum(-1), torch.tensor(p))) + 1
    support = set(torch.nonzero(probs).flatten().tolist())
    assert support == set(ordered.indices[:needed].tolist())


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 3.0])
def test_top_p_from_the_top_candidates_equals_the_full_sort(real_logits, top_p, temperature):
    from slmflow.runtime import sampling

    params = SamplingParams(temperature=temperature, top_p=top_p)
    shortcut = filtered_probs(real_logits, params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "NUCLEUS_CANDIDATES", ())  # forces the full sort
        full = filtered_probs(real_logits, params)
    assert torch.equal(shortcut > 0, full > 0)
    assert torch.allclose(shortcut, full, atol=1e-6)


def test_min_p_drops_tokens_below_the_fraction_of_the_top(real_logits):
    probs = filtered_probs(real_logits, SamplingParams(temperature=1.0, min_p=0.05))
    full = real_logits.float().softmax(-1)
    support = set(torch.nonzero(probs).flatten().tolist())
    assert support == set(torch.nonzero(full >= 0.05 * full.max()).flatten().tolist())
    assert len(support) > 1


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7, top_p=0.9, seed=3),
                                    SamplingParams(temperature=1.3, top_k=4, min_p=0.1, seed=4)])
def test_sampled_tokens_follow_the_filtered_distribution(params):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, 0.25])
    expected = filtered_probs(logits, params)
    sampler = Sampler(params, vocab_size=8, prompt_ids=[], device="cpu")
    draws = 20_000
    counts = torch.bincount(torch.tensor([sampler.pick(logits).wait() for _ in range(draws)]), minlength=8)
    observed = counts.float() / draws
    assert set(torch.nonzero(counts).flatten().tolist()) == set(torch.nonzero(expected).flatten().tolist())
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert torch.all((observed - expected).abs() <= 5 * sigma + 1e-9), (observed, expected)


def test_same_seed_gives_the_same_text(onnx_model):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)
    a = onnx_model.generate(PROMPT, max_tokens=40, sampling=params).result()
    b = onnx_model.generate(PROMPT, max_tokens=40, sampling=params).result()
    assert a.token_ids == b.token_ids


def test_different_seeds_give_different_text(onnx_model):
    outs = {
        tuple(onnx_model.generate(PROMPT, max_tokens=40, sampling=SamplingParams(temperature=1.0, seed=s))
              .result().token_ids)
        for s in (1, 2, 3)
    }
    assert len(outs) > 1


def test_top_k_one_is_greedy(onnx_model):
    greedy = onnx_model.generate(PROMPT, max_tokens=30).result().token_ids
    sampled = onnx_model.generate(PROMPT, max_tokens=30, sampling=SamplingParams(temperature=1.5, top_k=1, seed=7))
    assert sampled.result().token_ids == greedy


def test_repetition_penalty_changes_a_repetitive_output(onnx_model):
    prompt = "Repeat the word 'apple' twenty times."
    plain = onnx_model.generate(prompt, max_tokens=40).result().token_ids
    penalised = onnx_model.generate(prompt, max_tokens=40, sampling=SamplingParams(repetition_penalty=1.5))
    ids = penalised.result().token_ids
    assert ids != plain
    assert len(set(ids)) > len(set(plain))


def test_invalid_sampling_values_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
