"""Weight-only int8 and int4 quantization of a transformers model's linear layers, for CUDA decode.

Single-stream decoding reads every weight once per token, so halving (int8) or quartering (int4)
the bytes read raises the bandwidth roofline by 2x or 4x; activations stay bf16. Both follow
gpt-fast's recipes:

* int8: per-output-channel symmetric scales; the layer computes ``linear(x, w.to(bf16)) * scale``,
  which torch.compile fuses into one kernel that reads the int8 weight.
* int4: asymmetric per-group (128 inputs) scales and minimums, packed for our tensor-core GEMV
  (``int4_gemv``, which decode_gemv fuses with the norms, SiLU gate and residual adds); where that
  cannot be built (no ``cuda-bindings``, no NVRTC, a GPU older than sm_80), packed for ATen's
  tinygemm kernel (``_weight_int4pack_mm``) instead, which one log line says.

The embeddings and the output head (``lm_head``) stay in bf16: the head decides the token, and
its error would show in every greedy choice.
"""

from __future__ import annotations

import logging

import torch
from slmflow.runtime.backends import int4_gemv
from torch import nn

log = logging.getLogger("slmflow")

GROUP_SIZE = int4_gemv.GROUP_SIZE
INNER_K_TILES = 8


class Int8WeightOnlyLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight.to(x.dtype)) * self.scale
        return out + self.bias if self.bias is not None else out


class Int4WeightOnlyLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16)
        n = weight.shape[0]
        q, scale, low = int4_gemv.quantize_groups(weight)
        zero = low + scale * 8  # tinygemm dequantizes (q - 8) * scale + zero
        packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack(packed, INNER_K_TILES))
        scales_and_zeros = torch.stack([scale, zero], dim=2)  # n, groups, 2
        self.register_buffer("scales_and_zeros", scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16))
        self.out_features = n
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight,
                                                 GROUP_SIZE, self.scales_and_zeros)
        out = out.reshape(*shape[:-1], self.out_features).to(x.dtype)
        return out + self.bias if self.bias is not None else out


def quantize_weight_only(model: nn.Module, bits: int) -> int:
    """Replace the model's linear layers (not ``lm_head``) in place; returns how many were replaced.
    int4 needs in_features divisible by 256 (other layers are left in bf16)."""
    if bits not in (4, 8):
        raise ValueError(f"weight-only quantization is int8 or int4, not int{bits}")
    why_not = int4_gemv.available() if bits == 4 else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name == "lm_head":
                continue
            if bits == 8:
                setattr(parent, name, Int8WeightOnlyLinear(child))
            elif child.in_features % (GROUP_SIZE * 2) != 0:
                continue
            elif why_not is None and child.out_features % 32 == 0:
                # gate_up packed in gate/up pairs, so that its GEMV can end in the MLP's SiLU gate
                pairs = name == "gate_up_proj" and child.bias is None
                setattr(parent, name, int4_gemv.Int4Linear(child, silu_pairs=pairs))
            else:
                setattr(parent, name, Int4WeightOnlyLinear(child))
            replaced += 1
    kernel = "" if bits == 8 else " (tensor-core int4 GEMV)" if why_not is None else f" (ATen tinygemm: {why_not})"
    log.info("weight-only int%d: %d linear layers quantized%s", bits, replaced, kernel)
    return replaced
