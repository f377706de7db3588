"""One-token attention over a static KV cache, split along the cache (flash-decoding), for the
CUDA-graph fast path.

A decode step's query is one row per head. cuDNN's and the fused SDPA kernels give each head one
thread block, which for 32 heads leaves most of an H100's 132 SMs idle while they stream the cache:
about 11 us per layer for a 768-slot cache that holds 9 MB, against ~3 us to read it. Here each head's
cache is cut into splits that run in parallel, each keeping a running max and sum (online softmax);
the last split of a head to finish (an atomic count) merges them, so there is no second kernel.
Slots the mask marks as empty (the unfilled end of the static cache) are never read from memory.

For Phi-3 and Llama attention (:func:`use_decode_attention`) the same kernel also does what
transformers runs as four small kernels of its own around the attention of a one-token step, each
~1-2 us of launch and latency for a few KB of work: rotary embedding of the query and the new key,
writing the new key and value into the static cache, and advancing the cache's write counter.

Prefill (more than one query row) and anything this kernel does not cover go to transformers' own
code unchanged.
"""

import threading
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn

NAME = "slmflow_decode"
_TARGET_PROGRAMS = 1056  # about eight thread blocks per SM on an H100
ROPE_ATTENTIONS = ("Phi3Attention", "LlamaAttention")  # forwards read and matched to _rope_forward
_locks: dict[tuple[torch.device, int], torch.Tensor] = {}


@triton.jit
def _rotated(x_ptr, cos_ptr, sin_ptr, d, D: tl.constexpr, ROTARY: tl.constexpr):
    """A head's vector after transformers' ``apply_rotary_pos_emb`` (rotate-half form, the first
    ``ROTARY`` dims rotated), rounded as it rounds: each product and their sum in the input's dtype."""
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + d, mask=d < D, other=0.0).to(tl.float32)
    rotated = d < ROTARY
    first_half = d < ROTARY // 2
    partner = tl.load(x_ptr + tl.where(first_half, d + ROTARY // 2, d - ROTARY // 2), mask=rotated, other=0.0)
    partner = tl.where(first_half, -partner.to(tl.float32), partner.to(tl.float32))
    cos = tl.load(cos_ptr + d, mask=rotated, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + d, mask=rotated, other=0.0).to(tl.float32)
    out = ((x * cos).to(dt).to(tl.float32) + (partner * sin).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    return tl.where(rotated, out, x)


@triton.jit
def split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, part_ptr, ml_ptr, out_ptr, lock_ptr,
                 new_k_ptr, new_v_ptr, cos_ptr, sin_ptr, length_ptr,
                 stride_qh, stride_kh, stride_kn, stride_vh, stride_vn, stride_mn, stride_oh,
                 kv_len, n_splits, scale,
                 GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                 SPLIT: tl.constexpr, BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr,
                 NEW_KV: tl.constexpr, ROTARY: tl.constexpr):
    h = tl.program_id(0)
    s = tl.program_id(1)
    kvh = h // GROUP
    d = tl.arange(0, BLOCK_D)
    in_d = d < D
    if NEW_KV:  # this step's token: rotary on q and its key here, its slot is the write counter
        pos = tl.load(length_ptr)
        q = _rotated(q_ptr + h * stride_qh, cos_ptr, sin_ptr, d, D, ROTARY)
        new_k = _rotated(new_k_ptr + kvh * D, cos_ptr, sin_ptr, d, D, ROTARY)
        new_v = tl.load(new_v_ptr + kvh * D + d, mask=in_d, other=0.0).to(tl.float32)
        end = pos + 1
    else:
        pos = -1
        q = tl.load(q_ptr + h * stride_qh + d, mask=in_d, other=0.0).to(tl.float32)
        end = kv_len
    q = q * scale
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for off in tl.range(0, SPLIT, BLOCK_N, num_stages=1):  # prefetching the next block measured no faster
        n = s * SPLIT + off + tl.arange(0, BLOCK_N)
        inside = (n < kv_len) & (n < end)
        # With a new token, slots past it are never read and its own comes from new_k/new_v; the
        # mask is loaded after the cache blocks, so they are not held back waiting for it. Without
        # one, the loads wait for the mask (skipping empty slots was faster). V is loaded with K,
        # before the scores need it: the two reads overlap instead of costing two latencies.
        if NEW_KV:
            load = inside & (n != pos)
        else:
            load = inside
            if HAS_MASK:
                load = load & (tl.load(mask_ptr + n * stride_mn, mask=inside, other=0) != 0)
        k = tl.load(k_ptr + kvh * stride_kh + n[:, None] * stride_kn + d[None, :],
                    mask=load[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + kvh * stride_vh + n[:, None] * stride_vn + d[None, :],
                    mask=load[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        valid = load
        if NEW_KV:
            valid = inside
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + n * stride_mn, mask=inside, other=0) != 0)
            k = tl.where((n == pos)[:, None], new_k[None, :], k)
            v = tl.where((n == pos)[:, None], new_v[None, :], v)
        scores = tl.where(valid, tl.sum(k * q[None, :], 1), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(scores - m_safe)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    if NEW_KV:  # one program per KV head writes the new key and value into their slot
        mine = (h % GROUP == 0) & (s * SPLIT <= pos) & (pos < s * SPLIT + SPLIT) & (pos < kv_len)
        tl.store(k_ptr + kvh * stride_kh + pos * stride_kn + d, new_k.to(k_ptr.dtype.element_ty), mask=in_d & mine)
        tl.store(v_ptr + kvh * stride_vh + pos * stride_vn + d, new_v.to(v_ptr.dtype.element_ty), mask=in_d & mine)
    row = h * n_splits + s
    tl.store(part_ptr + row * BLOCK_D + d, acc)
    tl.store(ml_ptr + row * 2, m_i)
    tl.store(ml_ptr + row * 2 + 1, l_i)
    # The head's last split to finish merges all of them (its acquire sees the others' stores,
    # released after a barrier over this block's threads) and re-arms the count for the next call.
    tl.debug_barrier()
    if tl.atomic_add(lock_ptr + h, 1, sem="acq_rel", scope="gpu") == n_splits - 1:
        rows = h * n_splits + tl.arange(0, BLOCK_S)
        in_s = tl.arange(0, BLOCK_S) < n_splits
        m = tl.load(ml_ptr + rows * 2, mask=in_s, other=float("-inf"), cache_modifier=".cg")
        l_s = tl.load(ml_ptr + rows * 2 + 1, mask=in_s, other=0.0, cache_modifier=".cg")
        top = tl.max(m, 0)
        top = tl.where(top == float("-inf"), 0.0, top)
        w = tl.exp(m - top)
        parts = tl.load(part_ptr + rows[:, None] * BLOCK_D + d[None, :], mask=in_s[:, None], other=0.0,
                        cache_modifier=".cg")
        out = tl.sum(parts * w[:, None], 0) / tl.sum(l_s * w, 0)
        tl.store(out_ptr + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=in_d)
        tl.store(lock_ptr + h, 0)
        if NEW_KV:  # the last head merged: every program has read the counter, so advance it
            heads = tl.num_programs(0)
            if tl.atomic_add(lock_ptr + heads, 1, sem="acq_rel", scope="gpu") == heads - 1:
                tl.store(length_ptr, pos + 1)
                tl.store(lock_ptr + heads, 0)


def _lock(device: torch.device, heads: int) -> torch.Tensor:
    """Zeroed counters the kernel leaves zeroed. One set per device and thread, never freed, since
    captured graphs hold its address: one thread's kernels run one after another, but two threads
    (the worker threads of two served models) may run theirs at the same time."""
    key = (device, threading.get_ident())
    if key not in _locks:
        _locks[key] = torch.zeros(4096, dtype=torch.int32, device=device)
    if heads + 1 > _locks[key].numel():
        raise ValueError(f"split-KV attention supports up to {_locks[key].numel() - 1} heads, got {heads}")
    return _locks[key]


def launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor],  # noqa: UP045
           scale: float, new: tuple | None = None, block_n: int = 32, target_programs: int = _TARGET_PROGRAMS,
           num_warps: int = 2) -> torch.Tensor:
    """The kernel with explicit launch parameters, for sweeps over them (bench/RESULTS.md has the
    one that chose these defaults). query: heads of one row, (1, H, 1, D) or (H * D,); ``new``:
    (new_key, new_value, cos, sin, length) when the step's key and value still have to be rotated
    and written (see :func:`rope_kv_attention`)."""
    kv_heads, kv_len, d = key.shape[1], key.shape[2], key.shape[3]
    heads = query.numel() // d
    wanted = -(-target_programs // heads)
    split = max(block_n, triton.next_power_of_2(-(-kv_len // wanted)))
    n_splits = -(-kv_len // split)
    block_d = triton.next_power_of_2(d)
    part = torch.empty((heads, n_splits, block_d), dtype=torch.float32, device=query.device)
    ml = torch.empty((heads, n_splits, 2), dtype=torch.float32, device=query.device)
    out = torch.empty((1, 1, heads, d), dtype=query.dtype, device=query.device)
    if mask is not None:
        mask = mask.reshape(-1, mask.shape[-1])[0]
    new_k, new_v, cos, sin, length = new if new is not None else (query,) * 5
    split_kernel[(heads, n_splits)](
        query, key, value, mask if mask is not None else query, part, ml, out, _lock(query.device, heads),
        new_k, new_v, cos, sin, length,
        d if query.dim() == 1 else query.stride(1), key.stride(1), key.stride(2), value.stride(1), value.stride(2),
        mask.stride(0) if mask is not None else 0, out.stride(2),
        kv_len, n_splits, scale,
        GROUP=heads // kv_heads, D=d, BLOCK_D=block_d, BLOCK_N=block_n, SPLIT=split,
        BLOCK_S=triton.next_power_of_2(n_splits), HAS_MASK=mask is not None, NEW_KV=new is not None,
        ROTARY=cos.shape[-1] if new is not None else 0, num_warps=num_warps,
        enable_fp_fusion=False,  # no fused multiply-add: rotary must round as transformers' eager ops do
    )
    return out


@torch.library.custom_op("slmflow::split_kv_attention", mutates_args=())
def split_kv_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:  # noqa: UP045 (schema)
    """Attention of one query row per head: query (1, H, 1, D), key/value (1, H_kv, L, D), mask
    broadcastable to (1, 1, 1, L) with True where a slot may be attended. Returns (1, 1, H, D).

    A custom op, so torch.compile treats it as one opaque call (inductor does not re-trace the
    Triton kernel) and the CUDA graph captures its launch like any other kernel."""
    return launch(query, key, value, mask, scale)


@split_kv_attention.register_fake
def _(query, key, value, mask, scale):
    return query.new_empty((1, 1, query.shape[1], query.shape[3]))


@torch.library.custom_op("slmflow::rope_kv_attention", mutates_args=("key_cache", "value_cache", "length"))
def rope_kv_attention(query: torch.Tensor, new_key: torch.Tensor, new_value: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, length: torch.Tensor,
                      mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:  # noqa: UP045 (schema)
    """One decode step of a static-cache attention layer: rotary on ``query`` (H * D values) and
    ``new_key`` (H_kv * D), the new key and value written at slot ``length`` of the caches
    (1, H_kv, L, D), attention of the query over slots 0..length, then ``length`` + 1: what
    transformers' attention forward with a ``StaticLayer`` computes. Returns (1, 1, H, D)."""
    return launch(query, key_cache, value_cache, mask, scale, new=(new_key, new_value, cos, sin, length))


@rope_kv_attention.register_fake
def _(query, new_key, new_value, cos, sin, key_cache, value_cache, length, mask, scale):
    return query.new_empty((1, 1, query.numel() // key_cache.shape[3], key_cache.shape[3]))


def _mask_covered(mask: torch.Tensor | None) -> bool:
    return mask is None or (mask.dtype == torch.bool and mask.shape[-2] == 1)


def covers(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
           dropout: float) -> bool:
    """Whether :func:`split_kv_attention` computes exactly what SDPA would for these inputs."""
    return (query.is_cuda and query.shape[0] == 1 and query.shape[2] == 1 and dropout == 0.0
            and query.stride(3) == 1 and key.stride(3) == 1 and value.stride(3) == 1 and _mask_covered(mask))


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: split-KV kernel for one-token steps, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not covers(query, key, value, attention_mask, dropout):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return split_kv_attention(query, key, value, attention_mask, scale), None


def _static_layer(cache, index: int):
    """The cache layer a one-token step can write itself: transformers' ``StaticLayer``, already
    allocated (prefill did that), counting its length in a device tensor; else None."""
    layers = getattr(cache, "layers", None)
    layer = layers[index] if layers is not None and index < len(layers) else None
    if type(layer).__name__ != "StaticLayer" or not getattr(layer, "is_initialized", False):
        return None
    counter = getattr(layer, "cumulative_length", None)
    return layer if isinstance(counter, torch.Tensor) and counter.is_cuda and layer.keys.is_contiguous() else None


def _projections(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value of one row, flat: Phi-3's fused ``qkv_proj`` split, or Llama's three."""
    heads, kv_heads, d = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    if hasattr(attn, "qkv_proj"):
        qkv = attn.qkv_proj(x).reshape(-1)
        return qkv[: heads * d], qkv[heads * d: (heads + kv_heads) * d], qkv[(heads + kv_heads) * d:]
    return attn.q_proj(x).reshape(-1), attn.k_proj(x).reshape(-1), attn.v_proj(x).reshape(-1)


def _rope_forward(attn: nn.Module):
    """Phi-3's or Llama's attention forward with a one-token step on a static cache as one
    :func:`rope_kv_attention` between the projections; everything else runs the module's own code."""
    plain = attn.forward

    def forward(hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layer = _static_layer(cache, attn.layer_idx) if hidden_states.shape[:2] == (1, 1) else None
        if args or attn.training or layer is None or position_embeddings is None or not _mask_covered(attention_mask):
            return plain(hidden_states, position_embeddings, attention_mask, *args, **kwargs)
        q, k, v = _projections(attn, hidden_states)
        cos, sin = position_embeddings
        out = rope_kv_attention(q, k, v, cos.reshape(-1), sin.reshape(-1), layer.keys, layer.values,
                                layer.cumulative_length, attention_mask, attn.scaling)
        return attn.o_proj(out.reshape(1, 1, -1)), None

    return forward


def use_decode_attention(model) -> str | None:
    """Switch a loaded transformers model to this attention (its masks stay SDPA's) and Phi-3's
    and Llama's attention layers to :func:`rope_kv_attention`; returns what was switched, for the
    log line, or None where the model keeps another implementation (eager-only models, say)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return None
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return None
    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME
    fused = 0
    for module in model.modules():
        if type(module).__name__ in ROPE_ATTENTIONS and getattr(module, "layer_idx", None) is not None:
            module.forward = _rope_forward(module)
            fused += 1
    return f"split-KV decode attention, rotary and cache writes fused in {fused} layers"
