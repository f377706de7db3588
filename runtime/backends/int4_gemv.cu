// int4 weight-only GEMV for one bf16 activation row, on the tensor cores (mma.m16n8k16, sm_80+).
//
// Compiled at run time by NVRTC with these macros set (see int4_gemv.py):
//   KSPLIT    warps per block; each takes CHUNKS consecutive 64-column chunks of the input
//   TILES     16-row tiles per block (each warp does its chunks of every tile): more rows per block
//             means fewer blocks repeating the prologue's pass over the input
//   CHUNKS    64-column chunks per warp (even: a 128-column quantization group is two chunks)
//   PROLOGUE  0 plain, 1 RMSNorm, 2 up * silu(gate), 3 residual add then RMSNorm
//   HAS_BIAS, HAS_RESIDUAL  0 or 1
//   PDL       1 on sm_90+: launched as a programmatic dependent of the kernel before it (see int4_gemv)
//   SILU_PAIRS  1: each 16-row tile holds 8 gate rows then the 8 matching up rows (Phi-3's gate_up
//               packed so), and the block writes up * silu(gate) for its 8 pairs: the MLP's
//               activation comes out of the gate_up GEMV and the down projection needs no prologue
// No CUDA headers are included, so NVRTC needs none: bf16 values travel as raw 16-bit patterns.
//
// Layout (packed by int4_gemv.pack): a block owns 16 output rows. For each 64-column chunk, lane
// l = 4 g + t of a warp reads 16 bytes: four 32-bit words, one per 16-column step, each holding
// the 8 nibbles that lane needs as its A fragment of mma.m16n8k16 (rows g and g + 8, columns
// 2t, 2t+1, 2t+8, 2t+9), placed so that one lop3 turns two of them into a bf16 pair 128 + q.
// The activation is the B operand (all 8 columns equal), so the accumulator holds
// sum(128 + q) x per row; scale and minimum are applied per 128-column group in fp32:
//   y = sum_groups s (acc - 128 sum(x)) + m sum(x).

typedef unsigned short bf16_t;
typedef unsigned int u32;
struct alignas(16) u32x4 { u32 x, y, z, w; };
struct alignas(8) u32x2 { u32 x, y; };

#define K_COLS (KSPLIT * CHUNKS * 64)
#define GROUPS (K_COLS / 128)

__device__ __forceinline__ float bf2f(u32 v) { return __uint_as_float((v & 0xffffu) << 16); }

__device__ __forceinline__ bf16_t f2bf(float f) {  // round to nearest even, as torch does
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)0x7fc0u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float round_bf(float f) { return bf2f(f2bf(f)); }

__device__ __forceinline__ u32 nibbles_to_bf16x2(u32 w) {  // bits 0-3 and 16-19 -> (128 + q) pair
    u32 r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(w), "r"(0x000F000Fu), "r"(0x43004300u));
    return r;
}

__device__ __forceinline__ void mma(float* c, u32 w, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(nibbles_to_bf16x2(w)), "r"(nibbles_to_bf16x2(w >> 4)), "r"(nibbles_to_bf16x2(w >> 8)),
          "r"(nibbles_to_bf16x2(w >> 12)), "r"(b0), "r"(b1));
}

// Read once: no L1 allocation. Not ld.global.nc: ptxas moved non-coherent loads below the
// prologue's __syncthreads (for the o and down projections' shapes), so a block asked for part of
// its weights only after the prologue; a coherent load stays on the side of the barrier it was put.
__device__ __forceinline__ u32x4 load_stream(const u32x4* p) {
    u32x4 v;
    asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define THREADS (KSPLIT * 32)
#define VECS ((K_COLS + THREADS * 8 - 1) / (THREADS * 8))  // 8-column vectors of the input per thread

// This thread's share of the layer's input, in registers. It is requested before the weights:
// a warp's loads come back in the order they were issued, so an input requested after the
// weights would wait for them, and the prologue could not run while they stream in.
struct Input {
    u32x4 x[VECS], second[VECS], gamma[VECS];  // what a PROLOGUE does not read, the compiler drops
};

__device__ __forceinline__ u32x4 load_vec(const bf16_t* __restrict__ p, int k) {
    return k < K_COLS ? *reinterpret_cast<const u32x4*>(p + k) : u32x4{0u, 0u, 0u, 0u};
}

__device__ __forceinline__ void load_input(Input& in, const bf16_t* __restrict__ x, const bf16_t* __restrict__ second,
                                           const bf16_t* __restrict__ gamma) {
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
        const int k = (v * THREADS + threadIdx.x) * 8;
        in.x[v] = load_vec(x, k);
#if PROLOGUE == 2 || PROLOGUE == 3
        in.second[v] = load_vec(second, k);
#endif
#if PROLOGUE == 1 || PROLOGUE == 3
        in.gamma[v] = load_vec(gamma, k);
#endif
    }
}

__device__ __forceinline__ u32 pack2(float lo, float hi) { return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16); }

// The input after the prologue, into shared memory as bf16, rounded where the eager modules
// round (RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)).to(bf16); SiLU gate: up * silu(gate).to(bf16);
// the residual add before the norm: (x + residual).to(bf16), which block 0 also writes out).
__device__ __forceinline__ void stage_input(Input& in, bf16_t* xs, float* scratch, bf16_t* __restrict__ sum_out,
                                            float eps) {
    float squares = 0.f;
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
        const int k = (v * THREADS + threadIdx.x) * 8;
        u32 words[4] = {in.x[v].x, in.x[v].y, in.x[v].z, in.x[v].w};
        const u32 other[4] = {in.second[v].x, in.second[v].y, in.second[v].z, in.second[v].w};
        (void)other;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float lo = bf2f(words[i]), hi = bf2f(words[i] >> 16);
#if PROLOGUE == 2
            lo = bf2f(other[i]) * round_bf(lo / (1.f + __expf(-lo)));
            hi = bf2f(other[i] >> 16) * round_bf(hi / (1.f + __expf(-hi)));
#elif PROLOGUE == 3
            lo = round_bf(lo + bf2f(other[i]));
            hi = round_bf(hi + bf2f(other[i] >> 16));
#endif
            squares += lo * lo + hi * hi;
            words[i] = pack2(lo, hi);
        }
        in.x[v] = u32x4{words[0], words[1], words[2], words[3]};
        if (k < K_COLS) {
#if PROLOGUE == 3
            if (blockIdx.x == 0) *reinterpret_cast<u32x4*>(sum_out + k) = in.x[v];
#endif
#if PROLOGUE == 0 || PROLOGUE == 2
            *reinterpret_cast<u32x4*>(xs + k) = in.x[v];
#endif
        }
    }
#if PROLOGUE == 1 || PROLOGUE == 3
    squares = warp_sum(squares);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = squares;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < KSPLIT; ++w) total += scratch[w];
    const float inv_rms = rsqrtf(total / K_COLS + eps);
#pragma unroll
    for (int v = 0; v < VECS; ++v) {
        const int k = (v * THREADS + threadIdx.x) * 8;
        const u32 words[4] = {in.x[v].x, in.x[v].y, in.x[v].z, in.x[v].w};
        const u32 gw[4] = {in.gamma[v].x, in.gamma[v].y, in.gamma[v].z, in.gamma[v].w};
        u32 out[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
            out[i] = pack2(bf2f(gw[i]) * round_bf(bf2f(words[i]) * inv_rms),
                           bf2f(gw[i] >> 16) * round_bf(bf2f(words[i] >> 16) * inv_rms));
        if (k < K_COLS) *reinterpret_cast<u32x4*>(xs + k) = u32x4{out[0], out[1], out[2], out[3]};
    }
#endif
}

extern "C" __global__ void __launch_bounds__(THREADS)
int4_gemv(const u32x4* __restrict__ wq, const u32x2* __restrict__ scales, const bf16_t* __restrict__ x,
          const bf16_t* __restrict__ second, const bf16_t* __restrict__ gamma, const bf16_t* __restrict__ bias,
          const bf16_t* __restrict__ residual, bf16_t* __restrict__ y, bf16_t* __restrict__ sum_out, float eps) {
    __shared__ u32x4 staged[K_COLS / 8];
    bf16_t* xs = reinterpret_cast<bf16_t*>(staged);
    __shared__ float scratch[KSPLIT];
    __shared__ float partial[KSPLIT][TILES * 16];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t tile0 = (size_t)blockIdx.x * TILES;
    const size_t row = tile0 * 16 + (threadIdx.x % (TILES * 16));

#if PDL
    // Launched with programmatic stream serialization (sm_90+): this block can start while the
    // kernel before it (the previous GEMV) is still finishing. Nothing before us writes our weights
    // and scales, so L2 is asked for them now; then wait for that kernel's output (our input).
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < TILES; ++r) {
            const u32x4* wp = wq + ((tile0 + r) * (K_COLS / 64) + warp * CHUNKS) * 32;
            const u32x2* sp = scales + ((tile0 + r) * GROUPS + warp * (CHUNKS / 2)) * 8;
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(wp), "r"(CHUNKS * 512) : "memory");
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(sp), "r"(CHUNKS * 32) : "memory");
        }
    }
    asm volatile("griddepcontrol.wait;" ::: "memory");
    // Every block of ours is resident once each has passed here: the next kernel may launch into
    // the room our finished blocks leave, to prefetch its own weights.
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    Input in;
    load_input(in, x, second, gamma);
    float epilogue = 0.f;  // bias and residual of the row that thread < TILES * 16 writes, also requested early
#if HAS_BIAS
    if (threadIdx.x < TILES * 16) epilogue += bf2f(bias[row]);
#endif
#if HAS_RESIDUAL
    const float res = threadIdx.x < TILES * 16 ? bf2f(residual[row]) : 0.f;
#endif
    u32x4 w[TILES][CHUNKS];
    u32x2 sm[TILES][CHUNKS / 2];
#pragma unroll
    for (int r = 0; r < TILES; ++r) {
        const u32x4* wp = wq + ((tile0 + r) * (K_COLS / 64) + warp * CHUNKS) * 32 + lane;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) w[r][c] = load_stream(wp + c * 32);
    }
#pragma unroll
    for (int r = 0; r < TILES; ++r) {
        const u32x2* sp = scales + ((tile0 + r) * GROUPS + warp * (CHUNKS / 2)) * 8 + g;
#pragma unroll
        for (int i = 0; i < CHUNKS / 2; ++i) sm[r][i] = sp[i * 8];
    }

    stage_input(in, xs, scratch, sum_out, eps);
    __syncthreads();

    float acc[TILES][2] = {};  // rows g and g + 8 of each tile
#pragma unroll
    for (int i = 0; i < CHUNKS / 2; ++i) {
        const int k_group = (warp * CHUNKS + 2 * i) * 64;
        const u32* xg = reinterpret_cast<const u32*>(xs + k_group);
        const float sum_x = warp_sum(bf2f(xg[lane]) + bf2f(xg[lane] >> 16) + bf2f(xg[lane + 32]) + bf2f(xg[lane + 32] >> 16));
#pragma unroll
        for (int r = 0; r < TILES; ++r) {
            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32x4 v = w[r][2 * i + h];
                const u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u32* xp = reinterpret_cast<const u32*>(xs + k_group + h * 64 + j * 16 + 2 * t);
                    mma(c, words[j], xp[0], xp[4]);
                }
            }
            acc[r][0] += bf2f(sm[r][i].x) * (c[0] - 128.f * sum_x) + bf2f(sm[r][i].x >> 16) * sum_x;
            acc[r][1] += bf2f(sm[r][i].y) * (c[2] - 128.f * sum_x) + bf2f(sm[r][i].y >> 16) * sum_x;
        }
    }
    if (t == 0) {
#pragma unroll
        for (int r = 0; r < TILES; ++r) {
            partial[warp][r * 16 + g] = acc[r][0];
            partial[warp][r * 16 + g + 8] = acc[r][1];
        }
    }
    __syncthreads();
#if SILU_PAIRS  // y = up * silu(gate), each rounded where the eager MLP rounds
    (void)row;
    (void)epilogue;
    if (threadIdx.x < TILES * 8) {
        const int r = threadIdx.x / 8, i = threadIdx.x % 8;
        float gate = 0.f, up = 0.f;
#pragma unroll
        for (int w2 = 0; w2 < KSPLIT; ++w2) {
            gate += partial[w2][r * 16 + i];
            up += partial[w2][r * 16 + i + 8];
        }
        gate = round_bf(gate);
        y[(tile0 + r) * 8 + i] = f2bf(round_bf(up) * round_bf(gate / (1.f + __expf(-gate))));
    }
#else
    if (threadIdx.x < TILES * 16) {
        float v = epilogue;
#pragma unroll
        for (int w2 = 0; w2 < KSPLIT; ++w2) v += partial[w2][threadIdx.x];
#if HAS_RESIDUAL  // residual + layer(x), the layer's output rounded first as the modules do
        v = round_bf(v) + res;
#endif
        y[row] = f2bf(v);
    }
#endif
}

// The bf16 weight back from the packed one, for inputs of several rows (prefill), which then go
// through cuBLAS: one thread per lane's 16 bytes, 32 weights. Rows go back to the unpacked order:
// with pair_rows > 0 (SILU_PAIRS packing), row h * 8 + g of tile i is row h * pair_rows + 8 i + g.
extern "C" __global__ void int4_dequantize(const u32x4* __restrict__ wq, const u32x2* __restrict__ scales,
                                           bf16_t* __restrict__ out, int k_cols, int lanes, int pair_rows) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= lanes) return;
    const int lane = idx & 31, g = lane >> 2, t = lane & 3;
    const int chunks = k_cols / 64, chunk = (idx >> 5) % chunks;
    const size_t tile = (idx >> 5) / chunks;
    const int groups = k_cols / 128;
    const u32x4 v = wq[idx];
    const u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k0 = chunk * 64 + j * 16 + 2 * t;
        const u32x2 sm = scales[(tile * groups + k0 / 128) * 8 + g];
#pragma unroll
        for (int n = 0; n < 8; ++n) {  // nibble n: row half n & 1, column half (n >> 1) & 1, pair n >> 2
            const int h = n & 1, k = k0 + ((n >> 1) & 1) * 8 + (n >> 2);
            const u32 s = h ? sm.y : sm.x;
            const float q = (float)((words[j] >> (4 * n)) & 15u);
            const size_t row = pair_rows ? h * pair_rows + tile * 8 + g : tile * 16 + h * 8 + g;
            out[row * k_cols + k] = f2bf(q * bf2f(s) + bf2f(s >> 16));
        }
    }
}
