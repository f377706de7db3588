"""Cost of choosing one token: our sampler (Gumbel-max over filtered logits, top-p from the top 256 or
4,096 candidates on a CPU) against what it replaced, measured in the same run: top-p by sorting the whole
vocabulary, then softmax + ``torch.multinomial`` over the same filtered distribution.

    python bench/sampler_speed.py [--device cuda|cpu] [--vocab 49152] [--picks 200]

Per pick: wall time of ``picks`` picks in a row (on CUDA, what the host spends launching them, since
nothing waits) and, on CUDA, the kernels' device time from ``torch.profiler``, which is what the
decode step waits for. Prints a table and one JSON line with the ratios baseline / ours.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from slmflow.runtime import sampling
from slmflow.runtime.sampling import Sampler, SamplingParams, filtered_probs

CASES = {
    "temperature 0.8": SamplingParams(temperature=0.8, seed=0),
    "top-p 0.9, T 0.8": SamplingParams(temperature=0.8, top_p=0.9, seed=0),
    "top-k 50, min-p 0.05": SamplingParams(temperature=0.8, top_k=50, min_p=0.05, seed=0),
}


def multinomial_pick(params: SamplingParams, generator: torch.Generator):
    """The baseline: normalised probabilities with top-p by a full sort, then ``torch.multinomial``."""

    def pick(logits: torch.Tensor) -> torch.Tensor:
        shortcut = sampling.NUCLEUS_CANDIDATES
        sampling.NUCLEUS_CANDIDATES = ()  # no top-k shortcut: the full sort
        try:
            return torch.multinomial(filtered_probs(logits, params), 1, generator=generator)[0]
        finally:
            sampling.NUCLEUS_CANDIDATES = shortcut

    return pick


def per_pick(pick, logits: torch.Tensor, picks: int) -> dict[str, float]:
    cuda = logits.is_cuda
    for _ in range(20):
        pick(logits)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(picks):
        pick(logits)
    if cuda:
        torch.cuda.synchronize()
    row = {"wall_us": 1e6 * (time.perf_counter() - start) / picks}
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(50):
                pick(logits)
            torch.cuda.synchronize()
        row["device_us"] = sum(e.self_device_time_total for e in prof.key_averages()) / 50
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--picks", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    logits = (torch.randn(args.vocab) * 3).to(device=args.device, dtype=torch.bfloat16)
    results = []
    for name, params in CASES.items():
        sampler = Sampler(params, args.vocab, [], args.device)
        generator = torch.Generator(device=args.device).manual_seed(0)
        base = per_pick(multinomial_pick(params, generator), logits, args.picks)
        ours = per_pick(lambda x, s=sampler: s.pick(x).on_device, logits, args.picks)
        row = {"case": name, **{f"multinomial_{k}": round(v, 1) for k, v in base.items()},
               **{f"ours_{k}": round(v, 1) for k, v in ours.items()}}
        for key in base:
            row[f"{key}_ratio_multinomial_over_ours"] = round(base[key] / ours[key], 2)
        results.append(row)
    keys = [k for k in results[0] if k != "case"]
    print(f"{'case':<22}" + "".join(f"{k:>36}" for k in keys))
    for row in results:
        print(f"{row['case']:<22}" + "".join(f"{row[k]:>36}" for k in keys))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"device": name, "vocab": args.vocab, "results": results}))


if __name__ == "__main__":
    main()
