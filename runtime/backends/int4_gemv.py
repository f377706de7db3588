"""int4 weight-only linear layers whose one-row (decode) product runs on our tensor-core GEMV.

ATen's tinygemm kernel, which the int4 path used first, streams Phi-3.5-mini's int4 weights at
~1.4 TB/s on an H100 and cannot take the RMSNorm, SiLU gate or residual adds around it, so those
stayed kernels of their own. ``int4_gemv.cu`` does what ``decode_gemv``'s Triton kernel does for
bf16 (prologue, GEMV, epilogue in one kernel) on weights packed for ``mma.m16n8k16``: one lop3 turns
two nibbles into a bf16 pair and the tensor cores do the multiply-adds, so the integer work per
weight stays under the memory time (Triton int4 kernels of ours that unpacked on the CUDA cores were
slower than tinygemm; bench/RESULTS.md).

On sm_90+ each GEMV is launched as a programmatic dependent of the kernel before it (usually the
previous GEMV, which lets it launch once all its blocks are running): its blocks take the room the
finishing kernel leaves, ask L2 for their weights and wait for their input, instead of starting
from a cold launch. That took the Phi-3.5-mini-shaped int4 step from 1,620 to 1,524 us on an H100.

The kernel is CUDA C++ compiled at run time by NVRTC through NVIDIA's ``cuda-bindings`` (one
compile per layer shape and fusion, cached for the process). Without it, or on a GPU older than sm_80, the int4
layers use tinygemm (as they do with ``SLMFLOW_INT4_GEMV=0``): :func:`available` says why, and
``weight_only`` logs which kernel runs.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

GROUP_SIZE = 128
TILE_ROWS = 16
MAX_CHUNKS = 16  # 64-column chunks one warp holds in registers (64 registers of weights)
SOURCE = Path(__file__).with_name("int4_gemv.cu")
PLAIN, RMS_NORM, SILU_MUL, ADD_RMS_NORM = 0, 1, 2, 3


def available() -> str | None:
    """``None`` when the kernel can run here, else why not (for the log line)."""
    return "SLMFLOW_INT4_GEMV=0" if os.environ.get("SLMFLOW_INT4_GEMV") == "0" else _buildable()


@functools.cache
def _buildable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability() < (8, 0):
        return f"{torch.cuda.get_device_name()} is older than sm_80 (no bf16 mma)"
    try:
        from cuda.bindings import driver, nvrtc  # noqa: F401
    except ImportError:
        return "the cuda-bindings package is not installed (pip install cuda-bindings)"
    try:
        _module(torch.cuda.current_device(), 2)
    except Exception as error:  # noqa: BLE001 - any compile or load failure means: use tinygemm
        return f"NVRTC could not build the kernel ({error})"
    return None


def launch_shape(n: int, k: int, prologue: int = PLAIN) -> tuple[int, int]:
    """``(warps per block, 16-row tiles per block)`` for an ``n x k`` weight; each warp takes
    whole 128-column groups, at most MAX_CHUNKS 64-column chunks over all its tiles.

    The numbers are the fastest of a sweep on an H100 over Phi-3.5-mini's four GEMVs with the
    fusions each gets (bench/RESULTS.md): 12 chunks a warp in front of an RMSNorm (qkv), 4 in
    front of the residual add and norm (gate_up: its prologue reads three rows, so more warps
    share it) with 2 tiles a block (half the blocks repeating that prologue), 6 without a prologue
    (o, down), and 2 tiles for inputs of 8,192 columns or more (down)."""
    chunks = k // 64
    options = [s for s in range(1, 33) if chunks % s == 0 and (chunks // s) % 2 == 0 and chunks // s <= MAX_CHUNKS]
    if k % GROUP_SIZE or not options:
        raise ValueError(f"int4 GEMV needs in_features divisible by 128 and at most {MAX_CHUNKS * 64 * 32}, got {k}")
    target = {RMS_NORM: 12, ADD_RMS_NORM: 4}.get(prologue, 6)
    ksplit = min(options, key=lambda s: (abs(chunks // s - target), s))
    two = prologue == ADD_RMS_NORM or (k >= 8192 and prologue != RMS_NORM)
    fits = (n // 16) % 2 == 0 and chunks // ksplit * 2 <= MAX_CHUNKS
    return ksplit, 2 if two and fits else 1


def _check(result) -> tuple:
    from cuda.bindings import driver, nvrtc

    error, *values = result if isinstance(result, tuple) else (result,)
    if error not in (driver.CUresult.CUDA_SUCCESS, nvrtc.nvrtcResult.NVRTC_SUCCESS):
        raise RuntimeError(f"CUDA call failed: {error}")
    return tuple(values)


@functools.cache
def _module(device: int, ksplit: int, k: int = 0, prologue: int = PLAIN, bias: bool = False,
            residual: bool = False, silu_pairs: bool = False, tiles: int = 1) -> dict:
    from cuda.bindings import driver, nvrtc

    k = k or ksplit * 128
    major, minor = torch.cuda.get_device_capability(device)
    dependent = major >= 9  # programmatic dependent launch (griddepcontrol) needs sm_90
    defines = {"KSPLIT": ksplit, "CHUNKS": k // 64 // ksplit, "PROLOGUE": prologue, "HAS_BIAS": int(bias),
               "HAS_RESIDUAL": int(residual), "SILU_PAIRS": int(silu_pairs), "TILES": tiles, "PDL": int(dependent)}
    (program,) = _check(nvrtc.nvrtcCreateProgram(SOURCE.read_bytes(), b"int4_gemv.cu", 0, [], []))
    options = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"--std=c++17",
               *(f"-D{name}={value}".encode() for name, value in defines.items())]
    (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        (size,) = _check(nvrtc.nvrtcGetProgramLogSize(program))
        text = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(program, text))
        raise RuntimeError(f"NVRTC failed on int4_gemv.cu with {defines}:\n{text.decode(errors='replace')}")
    (size,) = _check(nvrtc.nvrtcGetCUBINSize(program))
    cubin = b" " * size
    _check(nvrtc.nvrtcGetCUBIN(program, cubin))
    _check(nvrtc.nvrtcDestroyProgram(program))
    with torch.cuda.device(device):
        torch.cuda.current_stream()  # makes the primary context current in this thread
        (module,) = _check(driver.cuModuleLoadData(cubin))
    return {"module": module, "gemv": _check(driver.cuModuleGetFunction(module, b"int4_gemv"))[0],
            "dequantize": _check(driver.cuModuleGetFunction(module, b"int4_dequantize"))[0], "dependent": dependent}


def _launch(function, grid: int, block: int, args: list, dependent: bool = False) -> None:
    """Launch on torch's current stream; ``dependent`` (sm_90+) with programmatic stream
    serialization, so the kernel's blocks may start before the previous kernel ends: the GEMV
    waits (``griddepcontrol.wait``) before it reads anything that kernel wrote."""
    from cuda.bindings import driver

    values = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
    types = tuple(ctypes.c_float if isinstance(a, float) else ctypes.c_int if isinstance(a, int) else ctypes.c_void_p
                  for a in args)
    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = block, 1, 1
    config.sharedMemBytes = 0
    config.hStream = driver.CUstream(torch.cuda.current_stream().cuda_stream)
    if dependent:
        attribute = driver.CUlaunchAttribute()
        attribute.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attribute.value.programmaticStreamSerializationAllowed = 1
        config.attrs, config.numAttrs = [attribute], 1
    _check(driver.cuLaunchKernelEx(config, function, (values, types), 0))


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, scale, low)``: ``weight`` (n x k) as integers 0-15 in groups of 128 inputs, each group
    ``q * scale + low`` with its own minimum and step (tinygemm's recipe, also ours); q is int64
    n x k, scale and low fp32 n x k/128."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // GROUP_SIZE, GROUP_SIZE)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int64).reshape(n, k)
    return q, scale, low


def pack(weight: torch.Tensor, silu_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(words, scales)``: ``weight`` quantized to int4 in groups of 128 inputs (scale and minimum
    per group, tinygemm's recipe) and laid out as int4_gemv.cu reads it. With ``silu_pairs`` the
    weight is ``[gate; up]`` and each 16-row tile takes 8 rows of each."""
    n, k = weight.shape
    if n % (TILE_ROWS * (2 if silu_pairs else 1)) or k % GROUP_SIZE:
        raise ValueError(f"int4 GEMV needs out_features % {TILE_ROWS} == 0 (x2 for gate/up pairs) and in_features"
                         f" % {GROUP_SIZE} == 0, got {n} x {k}")
    launch_shape(n, k)  # in_features the kernel can split
    weight = weight.detach()
    if silu_pairs:
        weight = weight.reshape(2, n // 16, 8, k).transpose(0, 1).reshape(n, k)
    q, scale, low = quantize_groups(weight)
    # (tile, row half h, g, chunk, step j, column half, t, pair e) -> (tile, chunk, lane = 4 g + t, j, nibble)
    # with nibble n = 4 e + 2 (column half) + h, as int4_gemv.cu reads it.
    nibbles = q.reshape(n // 16, 2, 8, k // 64, 4, 2, 4, 2).permute(0, 3, 2, 6, 4, 7, 5, 1).reshape(-1, 8)
    words = (nibbles << (4 * torch.arange(8, device=q.device))).sum(dim=1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).reshape(n // 16, k // 64, 32, 4)
    pairs = torch.stack([scale.to(torch.bfloat16), low.to(torch.bfloat16)], dim=-1)  # n, groups, 2
    scales = pairs.reshape(n // 16, 2, 8, k // GROUP_SIZE, 2).permute(0, 3, 2, 1, 4)
    return words.contiguous(), scales.contiguous()


def dequantize(words: torch.Tensor, scales: torch.Tensor, silu_pairs: bool = False) -> torch.Tensor:
    """The bf16 weight the kernel multiplies by, rows in the order :func:`pack` was given them."""
    n, k = words.shape[0] * TILE_ROWS, words.shape[1] * 64
    out = torch.empty((n, k), dtype=torch.bfloat16, device=words.device)
    lanes = words.numel() // 4
    kernels = _module(words.device.index or 0, launch_shape(n, k)[0], k)
    _launch(kernels["dequantize"], -(-lanes // 256), 256, [words, scales, out, k, lanes, n // 2 if silu_pairs else 0])
    return out


@torch.library.custom_op("slmflow::int4_gemv", mutates_args=())
def int4_gemv(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None,  # noqa: UP045 (schema)
              norm_weight: Optional[torch.Tensor] = None, eps: float = 0.0, up: Optional[torch.Tensor] = None,  # noqa: UP045
              residual: Optional[torch.Tensor] = None, silu_pairs: bool = False) -> torch.Tensor:  # noqa: UP045
    """:func:`decode_gemv.gemv`'s contract on a packed int4 weight: ``linear`` of one bf16 row,
    after ``rms_norm(x) * norm_weight`` or ``up * silu(x)``, plus ``residual``. With
    ``silu_pairs`` (a ``[gate; up]`` weight packed so) the result is ``up * silu(gate)``.

    A custom op, so torch.compile keeps it as one opaque call and the CUDA graph captures it."""
    prologue = RMS_NORM if norm_weight is not None else SILU_MUL if up is not None else PLAIN
    return _run(x, words, scales, prologue, up, norm_weight, eps, bias, residual, silu_pairs)


@int4_gemv.register_fake
def _(x, words, scales, bias=None, norm_weight=None, eps=0.0, up=None, residual=None, silu_pairs=False):
    return x.new_empty((*x.shape[:-1], words.shape[0] * TILE_ROWS // (2 if silu_pairs else 1)))


@torch.library.custom_op("slmflow::int4_add_norm_gemv", mutates_args=())
def int4_add_norm_gemv(x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                       words: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045
                       silu_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_gemv.add_norm_gemv` on a packed int4 weight (``silu_pairs`` as in :func:`int4_gemv`)."""
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y = _run(x, words, scales, ADD_RMS_NORM, residual, norm_weight, eps, bias, None, silu_pairs, total)
    return y, total


@int4_add_norm_gemv.register_fake
def _(x, residual, norm_weight, eps, words, scales, bias, silu_pairs=False):
    rows = words.shape[0] * TILE_ROWS // (2 if silu_pairs else 1)
    return x.new_empty((*x.shape[:-1], rows)), torch.empty_like(x)


def _run(x, words, scales, prologue, second, norm_weight, eps, bias, residual, silu_pairs, sum_out=None):
    n, k = words.shape[0] * TILE_ROWS, words.shape[1] * 64
    ksplit, tiles = launch_shape(n, k, prologue)
    kernels = _module(x.device.index or 0, ksplit, k, prologue, bias is not None, residual is not None, silu_pairs, tiles)
    y = torch.empty((*x.shape[:-1], n // 2 if silu_pairs else n), dtype=torch.bfloat16, device=x.device)
    flat = x.reshape(-1).contiguous()
    _launch(kernels["gemv"], n // TILE_ROWS // tiles, ksplit * 32, [
        words, scales, flat, second.reshape(-1).contiguous() if second is not None else flat,
        norm_weight if norm_weight is not None else flat, bias if bias is not None else flat,
        residual.reshape(-1).contiguous() if residual is not None else flat, y,
        sum_out if sum_out is not None else y, float(eps)], dependent=kernels["dependent"])
    return y


class Int4Linear(nn.Module):
    """``nn.Linear`` with its weight packed by :func:`pack`. One bf16 row on CUDA goes through the
    kernel; several rows (prefill) through cuBLAS on the dequantized weight, one layer at a time.
    ``decode_gemv.use_decode_gemv`` fuses norms, gates and residual adds into it as it does for
    bf16 layers; ``silu_pairs`` marks a ``[gate; up]`` layer packed for its SiLU epilogue."""

    def __init__(self, linear: nn.Linear, silu_pairs: bool = False) -> None:
        super().__init__()
        if silu_pairs and linear.bias is not None:
            raise ValueError("gate/up pairs are packed for layers without bias")
        words, scales = pack(linear.weight, silu_pairs)
        self.register_buffer("words", words)
        self.register_buffer("scales", scales)
        self.bias = linear.bias
        self.silu_pairs = silu_pairs
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def covers(self, x: torch.Tensor) -> bool:
        return x.is_cuda and x.numel() == x.shape[-1] and x.dtype == torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.covers(x):
            return nn.functional.linear(x, dequantize(self.words, self.scales, self.silu_pairs).to(x.dtype), self.bias)
        return self.unpaired(int4_gemv(x, self.words, self.scales, self.bias))

    def unpaired(self, y: torch.Tensor) -> torch.Tensor:
        """The kernel's rows in the layer's order (with ``silu_pairs``, tiles of 8 gate rows then 8
        up rows go back to ``[gate, up]``)."""
        if not self.silu_pairs:
            return y
        return y.reshape(-1, 2, 8).transpose(0, 1).reshape(y.shape[:-1] + (self.out_features,))
