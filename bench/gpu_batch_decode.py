"""GPU: aggregate decode tok/s of the slot arena at several batch sizes against today's batch-1 path.

    python bench/gpu_batch_decode.py [--shape phi3.5-mini] [--context 512] [--batches 1,8,32] [--steps 32]

A random-weight bf16 model of a real shape (bench/gpu_shapes.py) on one GPU. The
baseline is the CUDA-graph fast path (backends/cuda_graph.py, one sequence per pass, what a
transformers model on CUDA runs today); against it, the packed slot arena (backends/torch_slots.py,
eager, no graphs) decodes ``batch`` sequences of ``--context`` tokens each per pass. Also the GPU's
copy bandwidth, measured in the same run (a device-to-device copy of 4 GiB), and each path's share
of it counting the weights and the KV read per token. Runs alternate (A B A B); medians. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from gpu_shapes import build, timed
from slmflow.runtime.backends.cuda_graph import CudaGraphSequence, GraphPool
from slmflow.runtime.backends.slots import SlotState
from slmflow.runtime.backends.torch_slots import TorchSlotArena


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = torch.empty(4 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = statistics.median(timed(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * (4 << 30) / seconds


def graph_rate(model, context: int, steps: int) -> float:
    seq = CudaGraphSequence(model, context + steps + 8, GraphPool())
    seq.extend(list(range(10, 10 + context)))
    seq.extend([5])  # capture
    start_length = seq.length

    def run():
        for _ in range(steps):
            seq.extend([5])
        seq.rewind(start_length)

    run()
    return steps / statistics.median(timed(run) for _ in range(3))


def arena_rate(arena: TorchSlotArena, batch: int, context: int, steps: int) -> float:
    states = [SlotState() for _ in range(batch)]
    with arena.lock:
        for state in states:
            arena.prefill(state, list(range(10, 10 + context)), False)

        def run():
            for _ in range(steps):
                arena.decode(states, [5] * batch)
            for state in states:
                state.length = context

        run()
        seconds = statistics.median(timed(run) for _ in range(3))
        for state in states:
            arena.park(state)
    return batch * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="phi3.5-mini")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    bandwidth = copy_bandwidth()
    model = build(args.shape, args.vocab)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    arena = TorchSlotArena(model, max_slots=max(int(b) for b in args.batches.split(",")), room=args.context + 64)
    kv_per_token = arena.bytes_per_token
    graph, arenas = [], {int(b): [] for b in args.batches.split(",")}
    for _ in range(args.rounds):
        graph.append(graph_rate(model, args.context, args.steps))
        for batch in arenas:
            arenas[batch].append(arena_rate(arena, batch, args.context, args.steps))
    base = statistics.median(graph)

    def share(tok_s: float, batch: int) -> float:
        """Bytes read per pass (weights once, every row's KV) over bandwidth, as a fraction."""
        per_pass = weight_bytes + batch * args.context * kv_per_token
        return per_pass * tok_s / batch / bandwidth

    print(json.dumps({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape,
        "copy_bandwidth_tb_s": round(bandwidth / 1e12, 2), "weight_bytes": weight_bytes, "context": args.context,
        "graph_batch1_tok_s": round(base, 1), "graph_batch1_bandwidth_share": round(share(base, 1), 3),
        "arena": {str(b): {"tok_s": round(statistics.median(v), 1),
                           "vs_graph_batch1": round(statistics.median(v) / base, 2),
                           "bandwidth_share": round(share(statistics.median(v), b), 3)} for b, v in arenas.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
