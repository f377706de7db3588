"""Where the captured decode step's GPU time goes: per-kernel times over graph replays.

    python bench/gpu_step_profile.py --tokenizer DIR [--shape phi3.5-mini|smollm2-135m] [--int4] [--no-profile]

Builds the random-weight model of ``bench/gpu_decode.py``, prefills 640 tokens on a 776-slot
sequence, captures the decode step, prints three timings of 100 graph replays (us/step, tok/s),
then (unless ``--no-profile``) the kernels of 10 replays under torch.profiler: time per step,
launches per step, time per launch. With ``--int4`` on sm_90+ the int4 GEMVs start before the
kernel ahead of them ends (programmatic dependent launch), so their times include that overlap and
the kernel total exceeds the replay time. A GPU-only diagnostic; the targets are checked by
``gpu_decode.py``.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from gpu_decode import build
from slmflow.runtime.backends.transformers_backend import TransformersBackend
from slmflow.runtime.backends.weight_only import quantize_weight_only
from slmflow.runtime.specs import ModelSpec, SpecKind
from slmflow.runtime.tokenizer import ChatTokenizer
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer folder")
    parser.add_argument("--shape", default="phi3.5-mini", choices=["phi3.5-mini", "smollm2-135m"])
    parser.add_argument("--int4", action="store_true", help="weight-only int4 linear layers")
    parser.add_argument("--no-profile", action="store_true", help="replay timings only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    hf_tok = AutoTokenizer.from_pretrained(args.tokenizer)
    hf = build(args.shape, len(hf_tok))
    if args.int4:
        quantize_weight_only(hf, 4)
    backend = TransformersBackend(hf, ChatTokenizer(hf_tok, eos_token_ids=[]),
                                  ModelSpec(kind=SpecKind.HF, location=args.shape))
    prompt = torch.randint(10, len(hf_tok), (640,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        seq = backend.new_sequence(512 + 256 + 8)
        seq.extend(prompt)
        seq.extend([5])
        graph = seq._g.graph
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(100):
                graph.replay()
            torch.cuda.synchronize()
            step = (time.perf_counter() - start) / 100
            print(f"graph replay: {step * 1e6:.1f} us/step = {1 / step:.1f} tok/s", flush=True)
        if args.no_profile:
            return
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                graph.replay()
            torch.cuda.synchronize()
    rows = sorted(((e.key, e.count, e.self_device_time_total) for e in prof.key_averages()
                   if e.self_device_time_total > 0), key=lambda r: -r[2])
    total = sum(r[2] for r in rows) / 10
    print(f"\nkernel time {total:.1f} us/step; {sum(r[1] for r in rows) / 10:.0f} kernels/step")
    for key, count, spent in rows[:45]:
        print(f"  {spent / 10:8.1f} us/step  {count / 10:6.1f}/step  {spent / count:7.2f} us each  {key[:150]}")


if __name__ == "__main__":
    main()
