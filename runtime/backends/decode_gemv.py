"""The decode step's linear layers as one Triton matrix-vector kernel, for the CUDA-graph fast path.

A one-token step multiplies one activation row by every weight matrix, so each layer is a GEMV
bound by the bytes of its weight. Left to torch.compile, each becomes an inductor reduction whose
block sizes coordinate-descent tuning picks by timing candidates while compiling; those timings are
noisy, and the same Phi-3.5-mini-shaped step came out at 265-288 tok/s over four compiles on one
H100 (bench/RESULTS.md). This kernel has fixed tiles that stream a weight at 2.3-3.0 TB/s on an
H100 whatever the compile does: each program owns ``BLOCK_N`` output rows and walks the input in
``BLOCK_K`` chunks, several loads in flight (``num_stages``).

What inductor fused into its matmuls is fused here too, or each would cost a kernel of its own
(~1-3 us, latency-bound): the RMSNorm in front of a layer (each program computes the row's norm
itself, from a 6 KB input that sits in L2) and Phi-3/Llama's ``silu(gate) * up`` in front of the
down projection. So are the two residual adds of Phi-3/Llama decoder layers, which inductor left
as kernels of their own once the matmuls were opaque to it: the attention's in front of the MLP's
norm, the MLP's after the down projection (1.3% of the Phi-3.5-mini step). All round where the
eager modules round: in fp32 greedy output equals the modules' token for token; in bf16 the norm's
sum of squares, added in another order, can move a rounding and so a near-tie between two tokens.

Only layers whose weight is large enough for bandwidth to matter are switched: for small ones the
launch dominates and inductor's fusion of the layer with its neighbours wins. (Programmatic
dependent launch, loading the first weight tile before the previous kernel ends, was measured
and made the Phi-3.5-mini step 2% slower, so it is not used.)
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from slmflow.runtime.backends.int4_gemv import Int4Linear, int4_add_norm_gemv, int4_gemv
from torch import nn

BLOCK_N = 4
BLOCK_K = 512
MIN_WEIGHT_BYTES = 8 << 20


PLAIN, RMS_NORM, SILU_MUL, ADD_RMS_NORM = 0, 1, 2, 3
RMS_NORMS = ("LlamaRMSNorm", "Phi3RMSNorm")
# Decoder layers whose forward is exactly "x + attn(norm(x)), then h + mlp(norm(h))" (Phi-3's
# dropouts are identities in eval mode), so _layer_forward may compute it with the adds fused.
RESIDUAL_LAYERS = ("LlamaDecoderLayer", "Phi3DecoderLayer")


@triton.jit
def _summed(x_ptr, up_ptr, c, K: tl.constexpr, PROLOGUE: tl.constexpr):
    """Columns ``c`` of ``x``, plus the residual ``up`` points at with ADD_RMS_NORM, as fp32
    after the add's rounding to the activations' dtype (where the decoder layer rounds it)."""
    x = tl.load(x_ptr + c, mask=c < K, other=0.0).to(tl.float32)
    if PROLOGUE == 3:
        residual = tl.load(up_ptr + c, mask=c < K, other=0.0).to(tl.float32)
        x = (x + residual).to(x_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _input_chunk(x_ptr, up_ptr, norm_ptr, c, inv_rms, K: tl.constexpr, PROLOGUE: tl.constexpr):
    """Columns ``c`` of the layer's input, as fp32, after the fused prologue."""
    dt = x_ptr.dtype.element_ty
    x = _summed(x_ptr, up_ptr, c, K, PROLOGUE)
    if PROLOGUE == 1 or PROLOGUE == 3:  # weight * (x * inv_rms).to(dtype), as the RMSNorm modules round
        gamma = tl.load(norm_ptr + c, mask=c < K, other=0.0).to(tl.float32)
        x = (gamma * (x * inv_rms).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    if PROLOGUE == 2:  # up * silu(gate), x being the gate
        up = tl.load(up_ptr + c, mask=c < K, other=0.0).to(tl.float32)
        x = (up * (x * tl.sigmoid(x)).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    return x


@triton.jit
def gemv_kernel(x_ptr, up_ptr, norm_ptr, w_ptr, b_ptr, res_ptr, y_ptr, sum_ptr, n_rows, stride_wn, eps,
                K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                HAS_BIAS: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_rows = rows < n_rows
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + rows[:, None] * stride_wn
    # The first weight tile is requested before the norm's pass over the input, so that pass
    # (a few L2 round trips) hides behind the weight's memory latency instead of adding to it.
    w = tl.load(w_rows + cols[None, :], mask=in_rows[:, None] & (cols[None, :] < K), other=0.0,
                eviction_policy="evict_first")
    inv_rms = 1.0
    if PROLOGUE == 1 or PROLOGUE == 3:  # rsqrt(mean(x^2) + eps), in fp32 as the RMSNorm modules
        squares = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = _summed(x_ptr, up_ptr, k0 + cols, K, PROLOGUE)
            squares += x * x
            if PROLOGUE == 3:  # the sum is the next residual: the first program writes it out
                tl.store(sum_ptr + k0 + cols, x.to(sum_ptr.dtype.element_ty),
                         mask=(k0 + cols < K) & (tl.program_id(0) == 0))
        inv_rms = tl.rsqrt(tl.sum(squares, 0) / K + eps)
    acc = w.to(tl.float32) * _input_chunk(x_ptr, up_ptr, norm_ptr, cols, inv_rms, K, PROLOGUE)[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        c = k0 + cols
        w = tl.load(w_rows + c[None, :], mask=in_rows[:, None] & (c[None, :] < K), other=0.0,
                    eviction_policy="evict_first")
        acc += w.to(tl.float32) * _input_chunk(x_ptr, up_ptr, norm_ptr, c, inv_rms, K, PROLOGUE)[None, :]
    y = tl.sum(acc, 1)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=in_rows, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:  # residual + layer(x), the layer's output rounded first as the modules do
        y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + tl.load(res_ptr + rows, mask=in_rows, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=in_rows)


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prologue: int,
            second: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            residual: torch.Tensor | None = None, sum_out: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel over one row; ``second`` is the prologue's other input (SiLU's ``up``, or the
    residual added before the norm)."""
    n_rows, k = weight.shape
    flat = x.reshape(-1).contiguous()
    y = torch.empty((n_rows,), dtype=x.dtype, device=x.device)
    gemv_kernel[(triton.cdiv(n_rows, BLOCK_N),)](
        flat, second.reshape(-1).contiguous() if second is not None else flat,
        norm_weight if norm_weight is not None else flat, weight, bias if bias is not None else weight,
        residual.reshape(-1).contiguous() if residual is not None else flat, y,
        sum_out if sum_out is not None else y, n_rows, weight.stride(0), eps,
        K=k, BLOCK_N=BLOCK_N, BLOCK_K=min(BLOCK_K, triton.next_power_of_2(k)), HAS_BIAS=bias is not None,
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, num_warps=4, num_stages=3,
    )
    return y.view(*x.shape[:-1], n_rows)


@torch.library.custom_op("slmflow::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045 (schema)
         norm_weight: Optional[torch.Tensor] = None, eps: float = 0.0,  # noqa: UP045
         up: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
    """``linear(x, weight, bias)`` for an ``x`` holding one row (any leading shape of size 1);
    ``linear(rms_norm(x) * norm_weight, ...)`` with ``norm_weight``; ``linear(up * silu(x), ...)``
    with ``up``; plus ``residual`` when given.

    A custom op, so torch.compile keeps it as one opaque call and the CUDA graph captures it."""
    prologue = RMS_NORM if norm_weight is not None else SILU_MUL if up is not None else PLAIN
    return _launch(x, weight, bias, prologue, up, norm_weight, eps, residual)


@gemv.register_fake
def _(x, weight, bias, norm_weight=None, eps=0.0, up=None, residual=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("slmflow::add_norm_gemv", mutates_args=())
def add_norm_gemv(x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                  weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: UP045
    """``(linear(rms_norm(residual + x) * norm_weight, weight, bias), residual + x)``: a decoder
    layer's residual add and the norm after it, in front of the next linear layer. The sum comes
    back because it is the residual of the layer's second half."""
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y = _launch(x, weight, bias, ADD_RMS_NORM, residual, norm_weight, eps, sum_out=total.view(-1))
    return y, total


@add_norm_gemv.register_fake
def _(x, residual, norm_weight, eps, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0])), torch.empty_like(x)


def covers(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`gemv` computes this layer: one row on CUDA, a plain dense weight."""
    return (x.is_cuda and x.numel() == x.shape[-1] and x.dtype == weight.dtype
            and weight.dim() == 2 and weight.stride(1) == 1 and type(weight) in (torch.Tensor, nn.Parameter))


def _covers(x: torch.Tensor, layer: nn.Module) -> bool:
    return layer.covers(x) if isinstance(layer, Int4Linear) else covers(x, layer.weight)


def _norm_args(norm) -> dict:
    return {} if norm is None else {"norm_weight": norm.weight, "eps": norm.variance_epsilon}


def _gemv(layer: nn.Module, x: torch.Tensor, **fused) -> torch.Tensor:
    """:func:`gemv` on a bf16 layer, :func:`int4_gemv` on an int4 one; ``fused`` as they take it."""
    if isinstance(layer, Int4Linear):
        return int4_gemv(x, layer.words, layer.scales, layer.bias, **fused)
    return gemv(x, layer.weight, layer.bias, **fused)


def _add_norm_gemv(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(layer, Int4Linear):
        return int4_add_norm_gemv(x, residual, norm.weight, norm.variance_epsilon, layer.words, layer.scales,
                                  layer.bias, layer.silu_pairs)
    return add_norm_gemv(x, residual, norm.weight, norm.variance_epsilon, layer.weight, layer.bias)


def _silu_pairs(mlp_in: list) -> bool:
    """Whether the MLP's gate_up is int4 packed in gate/up pairs: its GEMV then returns the
    activation ``up * silu(gate)`` and the down projection needs no prologue."""
    return len(mlp_in) == 1 and getattr(mlp_in[0], "silu_pairs", False)


def _linear_forward(layer: nn.Module):
    plain = layer.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _covers(x, layer):
            return plain(x)
        y = _gemv(layer, x, **_norm_args(getattr(layer, "_slmflow_norm", None)))
        return layer.unpaired(y) if isinstance(layer, Int4Linear) else y

    return forward


def _skipped_norm_forward(norm: nn.Module, consumer: nn.Module):
    """The norm passes one-row inputs through untouched: its consumers apply it in their GEMV."""
    plain = norm.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        return x if _covers(x, consumer) else plain(x)

    return forward


def _mlp_inputs(mlp: nn.Module) -> list:
    """The MLP's layers in front of ``silu(gate) * up``: Phi-3's fused ``gate_up_proj``, or
    Llama's ``gate_proj`` and ``up_proj``; empty for other layouts."""
    return _children(mlp, "gate_up_proj") or _children(mlp, "gate_proj", "up_proj")


def _gate_and_up(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate and up from the outputs of :func:`_mlp_inputs`' layers, in that order."""
    return outputs[0].chunk(2, dim=-1) if len(outputs) == 1 else (outputs[0], outputs[1])


def _mlp_forward(mlp: nn.Module):
    """Phi-3's and Llama's MLP with ``silu(gate) * up`` computed inside the down projection (or,
    for gate/up pairs, in gate_up's epilogue)."""
    plain, mlp_in = mlp.forward, _mlp_inputs(mlp)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _covers(x, mlp_in[0]):
            return plain(x)
        if _silu_pairs(mlp_in):
            norm = getattr(mlp_in[0], "_slmflow_norm", None)
            return _gemv(mlp.down_proj, _gemv(mlp_in[0], x, **_norm_args(norm), silu_pairs=True))
        gate, up = _gate_and_up([lin(x) for lin in mlp_in])
        return _gemv(mlp.down_proj, gate, up=up)

    return forward


def _layer_forward(layer: nn.Module):
    """The decoder layer with both residual adds inside GEMVs: the first in front of the MLP's
    norm (``add_norm_gemv``), the second after ``down_proj`` (its epilogue), instead of two
    elementwise kernels of their own (~1 us each, 64 of the Phi-3.5-mini step's ~390 kernels)."""
    plain, attn, mlp, norm = layer.forward, layer.self_attn, layer.mlp, layer.post_attention_layernorm
    mlp_in = _mlp_inputs(mlp)

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or layer.training or not _covers(hidden_states, mlp_in[0]):
            return plain(hidden_states, *args, **kwargs)
        attn_out = attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)[0]
        if _silu_pairs(mlp_in):
            act, total = _add_norm_gemv(mlp_in[0], attn_out, hidden_states, norm)
            return _gemv(mlp.down_proj, act, residual=total)
        outs = [_add_norm_gemv(lin, attn_out, hidden_states, norm) for lin in mlp_in]
        gate, up = _gate_and_up([y for y, _ in outs])
        return _gemv(mlp.down_proj, gate, up=up, residual=outs[0][1])

    return forward


def _switched(layer) -> bool:
    return getattr(layer, "_slmflow_gemv", False)


def _fold_norm(norm, consumers: list) -> bool:
    if type(norm).__name__ not in RMS_NORMS or not consumers or not all(map(_switched, consumers)):
        return False
    for layer in consumers:
        layer._slmflow_norm = norm
    norm.forward = _skipped_norm_forward(norm, consumers[0])
    return True


def _children(module, *names: str) -> list:
    found = [getattr(module, n, None) for n in names]
    return found if all(f is not None for f in found) else []


def use_decode_gemv(model: nn.Module, min_weight_bytes: int | None = None) -> str:
    """Route the one-row calls of the model's large ``nn.Linear`` layers through :func:`gemv`
    and of its int4 layers (all of them) through :func:`int4_gemv` (prefill keeps the modules'
    own code), fold RMSNorms and SiLU gates into them where the model
    is laid out as Phi-3 and Llama are; returns what was switched, for the log line.

    The model is meant for our decode step afterwards: a one-row forward's ``last_hidden_state``
    is then the final norm's input (the norm runs inside ``lm_head``); logits are unchanged."""
    min_weight_bytes = MIN_WEIGHT_BYTES if min_weight_bytes is None else min_weight_bytes
    switched = int4 = norms = gates = adds = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, Int4Linear) or (type(module) is nn.Linear and isinstance(weight, torch.Tensor)
                                               and weight.numel() * weight.element_size() >= min_weight_bytes):
            module.forward = _linear_forward(module)
            module._slmflow_gemv = True
            switched += 1
            int4 += isinstance(module, Int4Linear)
    for module in list(model.modules()):
        attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)
        if attn is None or mlp is None:
            continue
        mlp_in = _mlp_inputs(mlp)
        norms += _fold_norm(getattr(module, "input_layernorm", None),
                            _children(attn, "qkv_proj") or _children(attn, "q_proj", "k_proj", "v_proj"))
        mlp_norm = _fold_norm(getattr(module, "post_attention_layernorm", None), mlp_in)
        norms += mlp_norm
        act = getattr(mlp, "activation_fn", None) or getattr(mlp, "act_fn", None)
        if type(act).__name__ in ("SiLU", "SiLUActivation") and mlp_in and _switched(getattr(mlp, "down_proj", None)):
            mlp.forward = _mlp_forward(mlp)
            gates += 1
            if mlp_norm and type(module).__name__ in RESIDUAL_LAYERS:
                module.forward = _layer_forward(module)
                adds += 2
    head, decoder = model.get_output_embeddings(), getattr(model, "model", None)
    if head is not None and decoder is not None:
        norms += _fold_norm(getattr(decoder, "norm", None), [head])
    kernels = f" ({int4} int4 on our CUDA kernel, {switched - int4} on Triton)" if int4 else " on Triton"
    return f"{switched} linear layers{kernels}, {norms} RMSNorms, {gates} SiLU gates and {adds} residual adds fused"
