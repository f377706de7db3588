"""GPU decode speed: our loop on the CUDA-graph fast path vs transformers' eager ``generate``.

    python bench/gpu_decode.py --tokenizer DIR [--shapes phi3.5-mini,smollm2-135m] [--prompt 512] [--new 256]
        [--decode-attention 0|1] [--weight-only int8,int4] [--skip-hf]

Random-weight bf16 models of real shapes (no weights can be downloaded on the GPU machine):
Phi-3.5-mini (Phi3Config) and SmolLM2-135M (LlamaConfig). Both use SmolLM2's tokenizer (49,152
tokens), the only one available offline, so Phi-3.5-mini's embedding and head here have 49,152
rows instead of 32,064; weight bytes are reported for the model actually run.

For each shape it prints, for a 512-token prompt and 256 new tokens: HF ``generate`` eager tok/s,
our loop's tok/s greedy, with top-p sampling and under a JSON Schema constraint, the CUDA-graph
replay alone (the GPU's share), the host overhead per token, weight bytes, and % of the
bandwidth roofline at 3.0 TB/s. Decode tok/s = (n - 1) / (T(n) - T(1)), median of 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from gpu_shapes import build, timed
from slmflow.runtime.backends.transformers_backend import TransformersBackend
from slmflow.runtime.backends.weight_only import quantize_weight_only
from slmflow.runtime.constraints import JsonSchema
from slmflow.runtime.model import Model
from slmflow.runtime.sampling import SamplingParams
from slmflow.runtime.specs import ModelSpec, SpecKind
from slmflow.runtime.tokenizer import ChatTokenizer

BANDWIDTH = 3.0e12
LONG_ARRAY = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
              "minItems": 400, "maxItems": 400}


def decode_rate(run, n: int, repeats: int = 3) -> float:
    run(8)
    one = statistics.median(timed(lambda: run(1)) for _ in range(repeats))
    full = statistics.median(timed(lambda: run(n)) for _ in range(repeats))
    return (n - 1) / (full - one)


def graph_only_rate(model: Model, prompt: list[int], n: int) -> float:
    """Replays of the captured decode step with nothing else: the GPU-side speed of the very graph
    ``model.generate`` replays (same capacity, so the same compile; another capacity is another
    compile, whose tuned kernels differ by a few %)."""
    seq = model.backend.new_sequence(len(prompt) + n)  # what generate asks for with the cache off
    seq.extend(prompt)
    seq.extend([5])  # takes the pooled graph, as generate's sequences do
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n - 1):  # the n - 1 decode steps of an n-token reply
        seq._g.graph.replay()
    torch.cuda.synchronize()
    return (n - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--shapes", default="phi3.5-mini,smollm2-135m")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--compile", choices=["0", "1"], default="1", help="SLMFLOW_TORCH_COMPILE for this run")
    parser.add_argument("--decode-attention", choices=["0", "1"], default="1",
                        help="SLMFLOW_DECODE_ATTENTION: the split-KV decode attention kernel")
    parser.add_argument("--decode-gemv", choices=["0", "1"], default="1",
                        help="SLMFLOW_DECODE_GEMV: the Triton GEMV for large linear layers")
    parser.add_argument("--weight-only", default="", help="also measure these on the first shape: int8,int4")
    parser.add_argument("--skip-bf16", action="store_true", help="only the --weight-only rows")
    parser.add_argument("--skip-hf", action="store_true", help="leave out HF generate (when comparing our variants)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import os

    os.environ["SLMFLOW_TORCH_COMPILE"] = args.compile
    os.environ["SLMFLOW_DECODE_ATTENTION"] = args.decode_attention
    os.environ["SLMFLOW_DECODE_GEMV"] = args.decode_gemv
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(args.tokenizer)
    vocab = len(hf_tok)
    results = []
    runs = [] if args.skip_bf16 else [(shape, None) for shape in args.shapes.split(",")]
    runs += [(args.shapes.split(",")[0], int(q.removeprefix("int"))) for q in args.weight_only.split(",") if q]
    bf16_greedy: dict[str, float] = {}
    for shape, bits in runs:
        hf = build(shape, vocab)
        bf16_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
        if bits:
            quantize_weight_only(hf, bits)
        weight_bytes = sum(t.numel() * t.element_size() for t in [*hf.parameters(), *hf.buffers()]
                           if t.dtype != torch.float32 or t.dim() > 1)
        roofline = BANDWIDTH / weight_bytes
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(10, vocab, (args.prompt,), generator=g).tolist()
        input_ids = torch.tensor([prompt], device="cuda")
        n = args.new

        def hf_generate(k):
            hf.generate(input_ids, max_new_tokens=k, min_new_tokens=k, do_sample=False)

        name = shape if not bits else f"{shape} int{bits}"
        row = {"shape": name, "weight_bytes": weight_bytes, "roofline_tok_s": round(roofline, 1),
               "bf16_roofline_tok_s": round(BANDWIDTH / bf16_bytes, 1)}
        if not bits and not args.skip_hf:  # before our backend, which may switch the model's attention
            row["hf_generate_eager_tok_s"] = round(decode_rate(hf_generate, n), 1)
        tokenizer = ChatTokenizer(hf_tok, eos_token_ids=[])  # random weights: run the full length
        model = Model(TransformersBackend(hf, tokenizer, ModelSpec(kind=SpecKind.HF, location=shape)))
        model.cache.enabled = False

        def ours(k, **kw):
            # Random weights loop soon; the bench times k tokens, so loops must not end the reply.
            result = model.generate(prompt, max_tokens=k, stop_on_loops=False, **kw).result()
            assert len(result.token_ids) == k, (len(result.token_ids), k)

        row["ours_greedy_tok_s"] = round(decode_rate(ours, n), 1)
        if not bits:
            row["ours_top_p_tok_s"] = round(decode_rate(
                lambda k: ours(k, sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=0)), n), 1)
            row["ours_json_schema_tok_s"] = round(decode_rate(
                lambda k: ours(k, constraint=JsonSchema(LONG_ARRAY, bounded=False), jump_forward=False), n), 1)
            bf16_greedy[shape] = row["ours_greedy_tok_s"]
        elif shape in bf16_greedy:
            row["speedup_vs_our_bf16"] = round(row["ours_greedy_tok_s"] / bf16_greedy[shape], 2)
        row["graph_replay_only_tok_s"] = round(graph_only_rate(model, prompt, n), 1)
        row["host_overhead_ms_per_token"] = round(
            1000 * (1 / row["ours_greedy_tok_s"] - 1 / row["graph_replay_only_tok_s"]), 3)
        for key in ("ours_greedy_tok_s", "ours_top_p_tok_s", "ours_json_schema_tok_s", "graph_replay_only_tok_s"):
            if key in row:
                row[key.replace("_tok_s", "_pct_roofline")] = round(100 * row[key] / roofline, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
        del model, hf
        torch.cuda.empty_cache()
    print(f"{'metric':<34}" + "".join(f"{r['shape']:>16}" for r in results))
    for key in dict.fromkeys(k for r in results for k in r):
        if key != "shape":
            print(f"{key:<34}" + "".join(f"{r.get(key, '-'):>16}" for r in results))
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "compile": args.compile,
                      "decode_attention": args.decode_attention, "decode_gemv": args.decode_gemv, "results": results}))


if __name__ == "__main__":
    main()
