"""Launch parameters of the decode attention kernel, against the kernel without rotary/writes.

    python bench/gpu_attention_sweep.py

For the Phi-3.5-mini shape (32 heads, d 96) and the SmolLM2-135M shape (9 query / 3 KV heads, d 64):
32 separate 768-slot bf16 caches with 645 slots filled (so L2 does not hold them), one
``rope_kv_attention`` launch per cache captured in one CUDA graph; best of 3 x 20 replays, per
launch. Prints the plain split-KV kernel (no rotary, no writes) at its defaults, the fused kernel at
its defaults, and the 8 fastest (target programs, slots per block, warps) of the sweep.
"""

from __future__ import annotations

import itertools
import time

import torch
from slmflow.runtime.backends import decode_attention as da

LAYERS, SLOTS, FILLED = 32, 768, 645


def best_replay(fn, reset, reps: int = 20) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            reset()
            fn()
    torch.cuda.current_stream().wait_stream(side)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    best = float("inf")
    for _ in range(3):
        reset()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def sweep(heads: int, kv_heads: int, d: int) -> None:
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    keys = [torch.randn(1, kv_heads, SLOTS, d, **bf) for _ in range(LAYERS)]
    values = [torch.randn(1, kv_heads, SLOTS, d, **bf) for _ in range(LAYERS)]
    lengths = [torch.tensor(FILLED, device="cuda") for _ in range(LAYERS)]
    q, k, v = (torch.randn(n * d, **bf) for n in (heads, kv_heads, kv_heads))
    cos, sin = torch.randn(d, **bf), torch.randn(d, **bf)
    mask = (torch.arange(SLOTS, device="cuda") <= FILLED + 10).view(1, 1, 1, SLOTS)

    def reset() -> None:
        for length in lengths:
            length.fill_(FILLED)

    def fused(**launch) -> float:
        return best_replay(lambda: [da.launch(q, keys[i], values[i], mask, d ** -0.5,
                                              new=(k, v, cos, sin, lengths[i]), **launch)
                                    for i in range(LAYERS)], reset) / LAYERS

    plain = best_replay(lambda: [da.launch(q.view(1, heads, 1, d), keys[i], values[i], mask, d ** -0.5)
                                 for i in range(LAYERS)], reset) / LAYERS
    print(f"heads {heads}/{kv_heads}, d {d}, {FILLED} of {SLOTS} slots filled")
    print(f"  plain split-KV (defaults): {plain * 1e6:.2f} us")
    print(f"  fused (defaults): {fused() * 1e6:.2f} us", flush=True)
    rows = sorted((fused(target_programs=t, block_n=n, num_warps=w), t, n, w)
                  for t, n, w in itertools.product([264, 528, 1056], [16, 32, 64], [2, 4]))
    for spent, t, n, w in rows[:8]:
        print(f"  fused target_programs={t} block_n={n} warps={w}: {spent * 1e6:.2f} us", flush=True)


def main() -> None:
    for heads, kv_heads, d in [(32, 32, 96), (9, 3, 64)]:
        sweep(heads, kv_heads, d)


if __name__ == "__main__":
    main()
