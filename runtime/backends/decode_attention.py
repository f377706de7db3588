"""One-token attention over a static KV cache, split along the cache (flash-decoding), for the
CUDA-graph fast path.

A decode step's query is one row per head. cuDNN's and the fused SDPA kernels give each head one
thread block, which for 32 heads leaves most of an H100's 132 SMs idle while they stream the cache:
about 11 us per layer for a 768-slot cache that holds 9 MB, against ~3 us to read it. Here each head's
cache is cut into splits that run in parallel, each keeping a running max and sum (online softmax),
and a second small kernel merges the splits. Slots the mask marks as empty (the unfilled end of the
static cache) are never read from memory.

Prefill (more than one query row) and anything this kernel does not cover go to transformers' own
SDPA function unchanged.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

NAME = "slmflow_decode"
_TARGET_PROGRAMS = 1056  # about eight thread blocks per SM on an H100


@triton.jit
def split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, part_ptr, ml_ptr,
                 stride_qh, stride_kh, stride_kn, stride_vh, stride_vn, stride_mn,
                 kv_len, n_splits, scale,
                 GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 SPLIT: tl.constexpr, HAS_MASK: tl.constexpr):
    h = tl.program_id(0)
    s = tl.program_id(1)
    kvh = h // GROUP
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    q = tl.load(q_ptr + h * stride_qh + d, mask=in_d, other=0.0).to(tl.float32) * scale
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for off in range(0, SPLIT, BLOCK_N):
        n = s * SPLIT + off + tl.arange(0, BLOCK_N)
        valid = n < kv_len
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + n * stride_mn, mask=valid, other=0) != 0)
        # V is loaded with K, before the scores need it: the two reads overlap instead of
        # costing two memory latencies per block (~1 us of ~10.5 per layer on an H100).
        k = tl.load(k_ptr + kvh * stride_kh + n[:, None] * stride_kn + d[None, :],
                    mask=valid[:, None] & in_d[None, :], other=0.0)
        v = tl.load(v_ptr + kvh * stride_vh + n[:, None] * stride_vn + d[None, :],
                    mask=valid[:, None] & in_d[None, :], other=0.0)
        scores = tl.where(valid, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(scores - m_safe)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
        m_i = m_new
    row = h * n_splits + s
    tl.store(part_ptr + row * BLOCK_D + d, acc)
    tl.store(ml_ptr + row * 2, m_i)
    tl.store(ml_ptr + row * 2 + 1, l_i)


@triton.jit
def combine_kernel(part_ptr, ml_ptr, out_ptr, stride_oh, n_splits,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    h = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    in_s = s < n_splits
    d = tl.arange(0, BLOCK_D)
    rows = h * n_splits + s
    m = tl.load(ml_ptr + rows * 2, mask=in_s, other=float("-inf"))
    l_s = tl.load(ml_ptr + rows * 2 + 1, mask=in_s, other=0.0)
    top = tl.max(m, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(m - top)
    total = tl.sum(l_s * w, 0)
    acc = tl.load(part_ptr + rows[:, None] * BLOCK_D + d[None, :], mask=in_s[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / total
    tl.store(out_ptr + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


def launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],  # noqa: UP045
           scale: float, block_n: int = 64, target_programs: int = _TARGET_PROGRAMS, num_warps: int = 4) -> torch.Tensor:
    """The two kernels with explicit launch parameters, for sweeps over them (bench/RESULTS.md has
    the one that chose these defaults)."""
    heads, d = query.shape[1], query.shape[3]
    kv_heads, kv_len = key.shape[1], key.shape[2]
    wanted = -(-target_programs // heads)
    split = max(block_n, triton.next_power_of_2(-(-kv_len // wanted)))
    n_splits = -(-kv_len // split)
    block_d = triton.next_power_of_2(d)
    part = torch.empty((heads, n_splits, block_d), dtype=torch.float32, device=query.device)
    ml = torch.empty((heads, n_splits, 2), dtype=torch.float32, device=query.device)
    out = torch.empty((1, 1, heads, d), dtype=query.dtype, device=query.device)
    if mask is not None:
        mask = mask.reshape(-1, mask.shape[-1])[0]
    split_kernel[(heads, n_splits)](
        query, key, value, mask if mask is not None else query, part, ml,
        query.stride(1), key.stride(1), key.stride(2), value.stride(1), value.stride(2),
        mask.stride(0) if mask is not None else 0,
        kv_len, n_splits, scale,
        GROUP=heads // kv_heads, D=d, BLOCK_D=block_d, BLOCK_N=block_n, SPLIT=split, HAS_MASK=mask is not None,
        num_warps=num_warps,
    )
    combine_kernel[(heads,)](part, ml, out, out.stride(2), n_splits, D=d, BLOCK_D=block_d,
                             BLOCK_S=triton.next_power_of_2(n_splits))
    return out


@torch.library.custom_op("slmflow::split_kv_attention", mutates_args=())
def split_kv_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:  # noqa: UP045 (schema)
    """Attention of one query row per head: query (1, H, 1, D), key/value (1, H_kv, L, D), mask
    broadcastable to (1, 1, 1, L) with True where a slot may be attended. Returns (1, 1, H, D).

    A custom op, so torch.compile treats it as one opaque call (inductor does not re-trace the
    Triton kernels) and the CUDA graph captures its two launches like any other kernel."""
    return launch(query, key, value, mask, scale)


@split_kv_attention.register_fake
def _(query, key, value, mask, scale):
    return query.new_empty((1, 1, query.shape[1], query.shape[3]))


def covers(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
           dropout: float) -> bool:
    """Whether :func:`split_kv_attention` computes exactly what SDPA would for these inputs."""
    return (query.is_cuda and query.shape[0] == 1 and query.shape[2] == 1 and dropout == 0.0
            and query.stride(3) == 1 and key.stride(3) == 1 and value.stride(3) == 1
            and (mask is None or (mask.dtype == torch.bool and mask.shape[-2] == 1)))


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: split-KV kernel for one-token steps, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not covers(query, key, value, attention_mask, dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return split_kv_attention(query, key, value, attention_mask, scale), None


def use_decode_attention(model) -> bool:
    """Switch a loaded transformers model to this attention (its masks stay SDPA's); False where
    the model keeps another implementation (eager-only models, say)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME
    return True
