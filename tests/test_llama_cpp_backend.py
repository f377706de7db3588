"""llama.cpp under our loop (runtime/backends/llama_cpp_backend.py): the embedded GGUF as it is."""

from __future__ import annotations

import json

import pytest
from slmflow.runtime import embedded, load_model
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.errors import ModelLoadError, ModelSpecError

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "Write a long story about a dragon who learns to paint."


@pytest.fixture(scope="module")
def llama_cpp_model():
    return load_model("embedded:llamacpp")


def native_greedy(ids: list[int], n: int) -> list[int]:
    """llama.cpp's own loop: its decode and its greedy sampler, nothing of ours (flash attention
    off, as the backend runs it)."""
    from llama_cpp import _internals
    from slmflow.runtime.backends.llama_cpp_backend import load_gguf

    model = load_gguf(llama_cpp, embedded.find_gguf())  # the backend's model parameters (AMX: no repacking)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.flash_attn_type = 1024, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    llm = _internals.LlamaContext(model=model, params=params, verbose=False)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    tokens = (llama_cpp.llama_token * len(ids))(*ids)
    assert llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(tokens, len(ids))) == 0
    out = []
    one = (llama_cpp.llama_token * 1)()
    for _ in range(n):
        one[0] = llama_cpp.llama_sampler_sample(chain, llm.ctx, -1)
        out.append(one[0])
        assert llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
    llama_cpp.llama_sampler_free(chain)
    llm.close()
    model.close()
    return out


def test_our_greedy_loop_on_llama_cpp_equals_llama_cpps_own(llama_cpp_model):
    ids = llama_cpp_model.prompt_ids(PROMPT)
    ours = llama_cpp_model.generate(ids, max_tokens=48, stop_on_loops=False).result().token_ids
    assert ours == native_greedy(ids, 48)


def test_prefix_reuse_and_snapshots_keep_outputs(llama_cpp_model):
    first = llama_cpp_model.generate("Name three fruits.", max_tokens=24).result()
    reused_before = llama_cpp_model.cache.stats.tokens_reused
    again = llama_cpp_model.generate("Name three fruits.", max_tokens=24).result()
    assert again.token_ids == first.token_ids
    assert llama_cpp_model.cache.stats.tokens_reused > reused_before
    session = llama_cpp_model.session()
    session.generate("Tell me a joke.", max_tokens=8).text()
    snap = session.snapshot()
    after = session.generate(max_tokens=8).text()
    session.restore(snap)
    assert session.generate(max_tokens=8).text() == after


def test_json_schema_through_our_masks(llama_cpp_model):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    result = llama_cpp_model.generate("A JSON person, please.", max_tokens=40, constraint=JsonSchema(schema)).result()
    assert set(json.loads(result.text)) == {"name", "age"}
    assert result.usage.forced_tokens > 0


def test_bad_gguf_paths_are_named(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model(f"llamacpp:{tmp_path / 'missing.gguf'}")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load_model(f"llamacpp:{broken}")
