"""Prefix reuse, rewind and snapshots never change greedy outputs, only speed."""

from __future__ import annotations

import pytest
from slmflow.runtime.prefix_cache import CacheBudget, PrefixCache

SYSTEM = ("You are a helpful assistant for a bookshop. Answer briefly and politely. "
          "The shop opens at 9am and closes at 6pm, Monday to Saturday. ") * 3
TURNS = ["What time do you open?", "And on Sunday?", "Can I order a book by phone?"]


def conversation(model, use_cache: bool) -> list[list[int]]:
    """A multi-turn chat, each turn's prompt re-rendered by the chat template from the history."""
    history = [{"role": "system", "content": SYSTEM}]
    outputs = []
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        if not use_cache:
            model.cache.clear()
        result = model.generate(history, max_tokens=24).result()
        outputs.append(result.token_ids)
        history.append({"role": "assistant", "content": result.text})
    return outputs


@pytest.fixture(params=["onnx_model", "hf_model"])
def model(request):
    m = request.getfixturevalue(request.param)
    m.cache.clear()
    yield m
    m.cache.clear()


def test_multi_turn_outputs_identical_with_and_without_prefix_reuse(model):
    without = conversation(model, use_cache=False)
    before = model.cache.stats.tokens_reused
    with_cache = conversation(model, use_cache=True)
    assert with_cache == without
    assert model.cache.stats.tokens_reused - before > 2 * len(model.prompt_ids(SYSTEM))


def test_turn_two_prefills_only_the_new_suffix(model):
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[0]}]
    first = model.generate(history, max_tokens=16).result()
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": TURNS[1]}]
    second = model.generate(history, max_tokens=16).result()
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 2
    assert second.cache.hits >= 1


def test_rewind_then_continue_equals_a_fresh_run_on_the_truncated_prompt(model):
    session = model.session()
    prompt = model.prompt_ids("Describe the sea in two sentences.")
    session.generate(prompt, max_tokens=20).result()
    session.rewind(len(session.tokens) - (len(prompt) - 3))  # back into the prompt
    truncated = list(session.tokens)
    continued = session.generate(max_tokens=20).result().token_ids
    model.cache.clear()
    assert continued == model.generate(truncated, max_tokens=20).result().token_ids


def test_restore_a_snapshot_branches_without_changing_outputs(model):
    session = model.session()
    base = [{"role": "user", "content": "Name a colour."}]
    session.generate(base, max_tokens=8).result()
    snap = session.snapshot()
    a = session.generate(max_tokens=12).result().token_ids
    session.restore(snap)
    b = session.generate(max_tokens=12).result().token_ids
    assert a == b
    model.cache.clear()
    assert a == model.generate(list(snap.tokens), max_tokens=12).result().token_ids


def test_eviction_under_a_tiny_budget_changes_speed_not_outputs(model):
    reference = conversation(model, use_cache=False)
    model.cache.budget = CacheBudget(max_bytes=None, max_tokens=50)
    try:
        assert conversation(model, use_cache=True) == reference
        assert model.cache.stats.tokens_held <= 50
        assert model.cache.stats.evictions > 0
    finally:
        model.cache.budget = CacheBudget()


def test_cache_stays_within_a_byte_budget(hf_model):
    hf_model.cache.clear()
    budget = 60 * 1024 * 1024
    hf_model.cache.budget = CacheBudget(max_bytes=budget)
    try:
        for i in range(6):
            hf_model.generate(f"{SYSTEM} Question {i}: tell me about book {i}.", max_tokens=8).result()
            assert 0 < hf_model.cache.stats.bytes_held <= budget
    finally:
        hf_model.cache.budget = CacheBudget()


def test_reusable_length_leaves_a_suffix_to_prefill(onnx_model):
    cache = PrefixCache(onnx_model.backend)
    state, _ = cache.acquire([5, 6, 7, 8], needed=10)
    state.tokens, state.exact = [5, 6, 7, 8], 4
    assert cache.reusable(state, [5, 6, 7, 8]) == 2  # int4 ONNX: never a one-token prefill
    assert cache.reusable(state, [5, 6, 9, 9, 9]) == 2
    assert cache.reusable(state, [1, 2, 3]) == 0
