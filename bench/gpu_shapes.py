"""Random-weight bf16 models of real shapes on the GPU, and a synchronised timer: what the GPU
benches share (no weights can be downloaded on the GPU machine; SmolLM2's 49,152-token vocabulary
is the only tokenizer available offline, so the Phi-3.5-mini shape's embedding and head have
49,152 rows instead of 32,064)."""

from __future__ import annotations

import time

import torch


def build(shape: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    if shape == "phi3.5-mini":
        config = Phi3Config(vocab_size=vocab, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                            original_max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        cls = Phi3ForCausalLM
    else:
        config = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             tie_word_embeddings=True, rope_theta=100000.0, pad_token_id=2, bos_token_id=1,
                             eos_token_id=2)
        cls = LlamaForCausalLM
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = cls(config).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start
