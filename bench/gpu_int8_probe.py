"""One 8192x3072 GEMV on CUDA: bf16 ``linear`` against three int8 weight-only forms, to see which
int8 form (if any) beats bf16 on bandwidth.

    python bench/gpu_int8_probe.py
"""

import time

import torch
import torch._inductor.config as inductor


def per_call_us(fn, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    torch.manual_seed(0)
    n, k = 8192, 3072
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    scale = w.float().abs().amax(1) / 127
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    scale_bf16 = scale.to(torch.bfloat16)
    print(f"bf16 linear {per_call_us(lambda: torch.nn.functional.linear(x, w)):.1f} us")
    try:
        out = torch.ops.aten._weight_int8pack_mm(x, q, scale_bf16)
        ref = torch.nn.functional.linear(x, w).float()
        print("int8pack rel err", ((out.float() - ref).norm() / ref.norm()).item())
        print(f"int8pack_mm {per_call_us(lambda: torch.ops.aten._weight_int8pack_mm(x, q, scale_bf16)):.1f} us")
    except RuntimeError as err:
        print("int8pack failed", err)
    dequant = torch.compile(lambda x: torch.nn.functional.linear(x, q.to(x.dtype)) * scale_bf16)
    print(f"compiled dequant linear {per_call_us(lambda: dequant(x)):.1f} us")
    inductor.coordinate_descent_tuning = True
    gemv = torch.compile(lambda x: (x.float()[:, None, :] * q.float()[None]).sum(-1).to(x.dtype) * scale_bf16)
    print(f"compiled mul-sum gemv {per_call_us(lambda: gemv(x)):.1f} us")


if __name__ == "__main__":
    main()
