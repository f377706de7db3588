"""A tiny random-weight PhiMoE as an onnxruntime-genai folder (genai_config type ``phimoe``), built offline.

onnxruntime-genai's model builder cannot make one on a CPU machine: version 0.18.0 emits PhiMoE's
experts only as the CUDA ``QMoE`` op, and only for long-RoPE configs, whose RoPE setup it then
rejects. So the fixture exports the transformers model itself with ``torch.onnx.export`` (the
dynamo exporter), one decoder step with a growing KV cache, the experts in transformers'
``batched_mm`` form (gathered expert weights, no data-dependent loop), and writes the
genai_config.json that onnxruntime-genai reads for any decoder-only ONNX model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


class _DecoderStep(torch.nn.Module):
    """(input_ids, attention_mask, past keys/values) -> (logits, present keys/values)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def export_onnx_folder(hf_folder: Path, out: Path, context: int = 512) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, experts_implementation="batched_mm").eval()
    config = model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_size = config.hidden_size // config.num_attention_heads
    out.mkdir(parents=True, exist_ok=True)

    past_names = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    example = (torch.tensor([[5, 6, 7]]), torch.ones(1, 5, dtype=torch.long),
               *[torch.zeros(1, kv_heads, 2, head_size) for _ in past_names])
    batch, seq = torch.export.Dim("batch", max=8), torch.export.Dim("seq", max=context)
    past, total = torch.export.Dim("past", max=context), torch.export.Dim("total", max=2 * context)
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: past} for _ in past_names))
    torch.onnx.export(_DecoderStep(model), example, out / "model.onnx", dynamo=True, dynamic_shapes=dynamic,
                      input_names=["input_ids", "attention_mask", *past_names],
                      output_names=["logits", *present_names], external_data=False)

    genai = {
        "model": {
            "type": "phimoe", "context_length": context, "vocab_size": config.vocab_size,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
            "decoder": {
                "filename": "model.onnx", "head_size": head_size, "hidden_size": config.hidden_size,
                "num_attention_heads": config.num_attention_heads, "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads, "session_options": {"provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        # the exported step concatenates the cache, so present is a new buffer each step
        "search": {"max_length": context, "past_present_share_buffer": False},
    }
    (out / "genai_config.json").write_text(json.dumps(genai, indent=2))
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (hf_folder / tokenizer_file).exists():
            shutil.copy(hf_folder / tokenizer_file, out / tokenizer_file)
    return out
