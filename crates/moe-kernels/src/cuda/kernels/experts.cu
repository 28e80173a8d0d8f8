// The expert computation of one MoE layer (see cuda/enabled/experts.rs for the pipeline).
// Compiled by NVRTC with no headers: 16-bit floats are raw `unsigned short` bit patterns,
// FP8/FP4 decode through PTX conversions or tables, tensor-core products are inline PTX.
//
// Element types (template parameter DT): 0 = f32, 1 = bf16, 2 = f16.
// Weight formats (FMT): 0 = float (the activation dtype), 1 = FP8 E4M3 with one scale,
// 2 = FP8 E4M3 with [b0 x b1] block scales, 3 = MXFP4 (E2M1 pairs, UE8M0 per 32 columns).
// Weights are row-major [rows = out, cols = in] per slot, slot-major: the row of output
// `n` of slot `e` starts at element (e * rows + n) * cols.
// FC1 of a gated activation holds rows [up ; gate] (up = rows 0..I, gate = rows I..2I).

typedef unsigned short u16;
typedef unsigned int u32;

// ---- number formats -------------------------------------------------------------------

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                          // nearest even
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("{.reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t;}" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("{.reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t;}" : "=h"(h) : "f"(f));
    return h;
}

template <int DT> __device__ __forceinline__ float load_elem(const void* p, long long i) {
    if (DT == 0) return ((const float*)p)[i];
    if (DT == 1) return bf16_to_f32(((const u16*)p)[i]);
    return f16_to_f32(((const u16*)p)[i]);
}

template <int DT> __device__ __forceinline__ void store_elem(void* p, long long i, float v) {
    if (DT == 0) ((float*)p)[i] = v;
    else if (DT == 1) ((u16*)p)[i] = f32_to_bf16(v);
    else ((u16*)p)[i] = f32_to_f16(v);
}

// Eight consecutive activations starting at element i (i % 8 == 0 for 16-bit types,
// i % 4 == 0 for f32: rows are 16-byte aligned because H and I are multiples of 8).
// Eight 16-bit values (DT 1: bf16, 2: f16) of one 16-byte load, widened.
template <int DT> __device__ __forceinline__ void unpack8(uint4 q, float v[8]) {
    u32 w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        if (DT == 1) {
            v[2 * j] = __uint_as_float(w[j] << 16);
            v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
        } else {
            v[2 * j] = f16_to_f32((u16)(w[j] & 0xffffu));
            v[2 * j + 1] = f16_to_f32((u16)(w[j] >> 16));
        }
    }
}

template <int DT> __device__ __forceinline__ void load8(const void* p, long long i, float v[8]) {
    if (DT == 0) {
        float4 a = *(const float4*)((const float*)p + i);
        float4 b = *(const float4*)((const float*)p + i + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
        unpack8<DT>(*(const uint4*)((const u16*)p + i), v);
    }
}

// E4M3 -> f32, exact (through f16, which holds every E4M3 value).
__device__ __forceinline__ void e4m3x2_to_f32(u16 pair, float& lo, float& hi) {
    u32 h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(pair));
    lo = f16_to_f32((u16)(h2 & 0xffffu));
    hi = f16_to_f32((u16)(h2 >> 16));
}

// f32 -> E4M3, nearest even, saturating to +-448 (NaN stays NaN): the CPU's f32_to_e4m3_sat.
__device__ __forceinline__ float e4m3_round(float x) {
    u16 pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(x));
    float lo, hi;
    e4m3x2_to_f32(pair, lo, hi);
    return lo;
}

// E2M1 (sign, 2 exponent bits, 1 mantissa bit) -> f32 by building the f32 bits: no table, so
// nothing is indexed at run time (a local array would live in local memory).
__device__ __forceinline__ float e2m1_to_f32(u32 nib) {
    u32 e = (nib >> 1) & 3u, m = nib & 1u;
    u32 bits = e ? (((e + 126u) << 23) | (m << 22)) : (m ? 0x3f000000u : 0u);  // e = 0: 0 or 0.5
    return __uint_as_float(bits | ((nib & 8u) << 28));
}

__device__ __forceinline__ float e8m0_to_f32(u32 s) {
    if (s == 255u) return __uint_as_float(0x7fc00000u);
    if (s == 0u) return __uint_as_float(0x00400000u);  // 2^-127, a subnormal
    return __uint_as_float(s << 23);
}

// Weight decode: eight consecutive weights of row n starting at column k (k % 8 == 0).
struct WeightArgs {
    const void* w;        // codes (FMT 1-3) or floats (FMT 0) of all slots
    const float* scales;  // FMT 2: f32 block scales of all slots; unused otherwise
    const unsigned char* mx_scales;  // FMT 3: UE8M0 scales [slots, rows, cols / 32]
    float tensor_scale;   // FMT 1: one scale for every slot (per-slot scales: see per_slot)
    const float* per_slot;  // FMT 1: f32 [slots] scale per slot, or null to use tensor_scale
    int rows, cols;       // of one slot's matrix
    int b0, b1;           // FMT 2 block
    int b0_log2, b1_log2; // FMT 2: log2 of the block sizes
};

template <int DT, int FMT>
__device__ __forceinline__ void load_w8(const WeightArgs& a, int e, int n, int k, float v[8]) {
    long long row = (long long)e * a.rows + n;
    if (FMT == 0) {
        load8<DT>(a.w, row * a.cols + k, v);
    } else if (FMT == 1 || FMT == 2) {
        uint2 q = *(const uint2*)((const unsigned char*)a.w + row * a.cols + k);
        u32 w[2] = {q.x, q.y};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            e4m3x2_to_f32((u16)(w[j] & 0xffffu), v[4 * j], v[4 * j + 1]);
            e4m3x2_to_f32((u16)(w[j] >> 16), v[4 * j + 2], v[4 * j + 3]);
        }
        // FMT 1: the per-slot scale multiplies the finished dot product (out_scale), so the
        // products themselves use the exact E4M3 values.
        if (FMT == 2) {
            // Block sizes are powers of two (checked at upload): shifts, not divisions.
            int sr = (a.rows + a.b0 - 1) >> a.b0_log2, sc = (a.cols + a.b1 - 1) >> a.b1_log2;
            float s = a.scales[((long long)e * sr + (n >> a.b0_log2)) * sc + (k >> a.b1_log2)];
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] *= s;
        }
    } else {
        u32 q = *(const u32*)((const unsigned char*)a.w + (row * a.cols + k) / 2);
        float s = e8m0_to_f32(a.mx_scales[row * (a.cols / 32) + k / 32]);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = e2m1_to_f32((q >> (4 * j)) & 0xfu) * s;
    }
}

// The factor of a whole output of slot e: FP8 per-tensor scale (exact E4M3 values in the
// products, one rounding-free multiply at the end), 1 otherwise.
template <int FMT> __device__ __forceinline__ float out_scale(const WeightArgs& a, int e) {
    if (FMT == 1) return a.per_slot ? a.per_slot[e] : a.tensor_scale;
    return 1.0f;
}

// ---- activation ---------------------------------------------------------------------------

struct ActArgs {
    int kind;  // 0 = swiglu, 1 = GPT-OSS clamped swiglu, 2 = relu^2 (not gated)
    float alpha, beta, limit;
};

__device__ __forceinline__ float activate(const ActArgs& a, float gate, float up) {
    if (a.kind == 0) return gate / (1.0f + expf(-gate)) * up;
    if (a.kind == 1) {
        float g = fminf(gate, a.limit);
        float u = fminf(fmaxf(up, -a.limit), a.limit);
        return (u + a.beta) * (g / (1.0f + expf(-a.alpha * g)));
    }
    float r = fmaxf(up, 0.0f);
    return r * r;
}

// ---- permutation ------------------------------------------------------------------------

#ifdef VARIANT_common
// counts[l] += 1 for every selection of a local slot l (counts zeroed by the caller).
extern "C" __global__ void moe_count(const int* slots, int nk, int slot_start, int num_local, int* counts) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nk) return;
    int l = slots[i] - slot_start;
    if (l >= 0 && l < num_local) atomicAdd(&counts[l], 1);
}

// One block: offsets[0..=S] (exclusive prefix sum of counts) and the GEMM's tile list:
// tiles[t] = (slot, first row, first tile of t's group, tiles in t's group) for every bm-row
// tile of every slot; num_tiles[0] = count. A group is the run of consecutive tiles the TMA
// kernel rasters together (every column tile of a group before the next group): at most
// `group` tiles, and a slot of at most `group` tiles never straddles two groups, so each
// weight tile is read from memory once while all its row tiles use it (a slot cut in two
// by a fixed-size group read its weights twice). Other kernels read only .x and .y, and pass
// group 0: the groups are not formed (one thread walks every slot, which a one-token forward
// of 256 slots would pay for nothing).
extern "C" __global__ void moe_scan(const int* counts, int num_local, int bm, int group, int* offsets, int4* tiles,
                                    int* num_tiles) {
    extern __shared__ int sh[];  // [2 * num_local]: row offsets, tile offsets
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) sh[e] = counts[e];
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, t = 0;
        for (int e = 0; e < num_local; ++e) {
            int c = sh[e];
            sh[e] = off;
            sh[num_local + e] = t;
            off += c;
            t += (c + bm - 1) / bm;
        }
        offsets[num_local] = off;
        num_tiles[0] = t;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) {
        int start = sh[e], c = counts[e], t0 = sh[num_local + e];
        offsets[e] = start;
        for (int j = 0; j * bm < c; ++j) tiles[t0 + j] = make_int4(e, j * bm, 0, 0);
    }
    __syncthreads();
    if (group > 0 && threadIdx.x == 0) {
        const int total = num_tiles[0];
        int first = 0;  // first tile of the open group
        for (int e = 0; e <= num_local; ++e) {
            const int t0 = e < num_local ? sh[num_local + e] : total;
            const int te = e < num_local ? (e + 1 < num_local ? sh[num_local + e + 1] : total) - t0 : 0;
            // Close the open group before a slot that would straddle it (or at the end).
            if (t0 > first && (e == num_local || t0 - first + min(te, group) > group)) {
                for (int q = first; q < t0; ++q) tiles[q].z = first, tiles[q].w = t0 - first;
                first = t0;
            }
            // A slot of more than `group` tiles fills whole groups of its own.
            while (t0 + te - first > group) {
                for (int q = first; q < first + group; ++q) tiles[q].z = first, tiles[q].w = group;
                first += group;
            }
        }
    }
}

// pos[i] = permuted row of selection i (-1 for other ranks' slots); row_sel[row] = i.
extern "C" __global__ void moe_scatter(const int* slots, int nk, int slot_start, int num_local, const int* offsets,
                                       int* cursor, int* pos, int* row_sel) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nk) return;
    int l = slots[i] - slot_start;
    if (l >= 0 && l < num_local) {
        int p = offsets[l] + atomicAdd(&cursor[l], 1);
        pos[i] = p;
        row_sel[p] = i;
    } else {
        pos[i] = -1;
    }
}

// xp[r] = x[row_sel[r] / top_k] for the permuted rows r < *count, in 16-byte chunks: the
// TMA path reads each slot's FC1 input as one contiguous block. One block per row; each
// thread issues four loads before its stores, so a row's copy is not one load at a time.
extern "C" __global__ void moe_expand(const uint4* __restrict__ x, const int* __restrict__ row_sel, int top_k,
                                      const int* __restrict__ count, int chunks, uint4* __restrict__ xp) {
    const int r = blockIdx.x;
    if (r >= *count) return;
    const long long src = (long long)(row_sel[r] / top_k) * chunks, dst = (long long)r * chunks;
    const int step = blockDim.x;
    int c = threadIdx.x;
    for (; c + 3 * step < chunks; c += 4 * step) {
        const uint4 a = x[src + c], b = x[src + c + step], d = x[src + c + 2 * step], e = x[src + c + 3 * step];
        xp[dst + c] = a;
        xp[dst + c + step] = b;
        xp[dst + c + 2 * step] = d;
        xp[dst + c + 3 * step] = e;
    }
    for (; c < chunks; c += step) xp[dst + c] = x[src + c];
}

#endif  // VARIANT_common

// ---- activation quantize-dequantize (the formats' FP8 activation quantization) ----------

// out = QDQ(in) for `rows x cols` activations: mode 1 per-tensor `scale`; mode 2 dynamic
// groups of `group` columns scaled by their amax / 448 (the CPU's `qdq_rows`). The math runs
// in f32 on the input values; only the result is rounded to the output type. Rows at or past
// `*row_limit` (when given: the number of permuted rows, known only on the device) are skipped.
// One thread per element for mode 1, one warp per (row, group) for mode 2.
template <int DTI, int DTO>
__device__ void qdq_body(const void* in, void* out, int rows, int cols, int mode, float scale, int group,
                         const int* row_limit) {
    if (row_limit) rows = min(rows, row_limit[0]);
    if (mode == 1) {
        long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= (long long)rows * cols) return;
        float v = load_elem<DTI>(in, i);
        store_elem<DTO>(out, i, e4m3_round(v / scale) * scale);
        return;
    }
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    int groups_per_row = (cols + group - 1) / group;
    if (warp >= rows * groups_per_row) return;
    int r = warp / groups_per_row, g = warp % groups_per_row;
    int c0 = g * group, c1 = min(cols, c0 + group);
    float amax = 0.0f;
    for (int c = c0 + lane; c < c1; c += 32) amax = fmaxf(amax, fabsf(load_elem<DTI>(in, (long long)r * cols + c)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float s = amax / 448.0f;
    for (int c = c0 + lane; c < c1; c += 32) {
        long long i = (long long)r * cols + c;
        float v = load_elem<DTI>(in, i);
        store_elem<DTO>(out, i, s == 0.0f ? v : e4m3_round(v / s) * s);
    }
}

#ifdef VARIANT_common
#define QDQ(NAME, DTI, DTO)                                                                             \
    extern "C" __global__ void NAME(const void* in, void* out, int rows, int cols, int mode, float scale, \
                                    int group, const int* row_limit) {                                   \
        qdq_body<DTI, DTO>(in, out, rows, cols, mode, scale, group, row_limit);                          \
    }
QDQ(qdq_f32_f32, 0, 0)
QDQ(qdq_bf16_bf16, 1, 1)
QDQ(qdq_f16_f16, 2, 2)
QDQ(qdq_f32_bf16, 0, 1)
QDQ(qdq_f32_f16, 0, 2)
#endif  // VARIANT_common

// ---- GEMV path (few rows per slot, and every f32 layer) -----------------------------------

// Shared arguments of both GEMMs. FC1: A = x rows of the selections (row_sel / k gives the
// token), output act [rows, I]. FC2: A = act rows, output y [rows, H].
struct GemmArgs {
    const void* a;         // FC1: x [N, H]; FC2: act [R, I]
    const int* row_sel;    // FC1: selection of each permuted row (token = sel / top_k)
    int top_k;
    const int* offsets;    // [S + 1] row offsets of each slot
    const int4* tiles;     // tile list (see `moe_scan`)
    const int* num_tiles;
    void* out;             // FC1: act [R, I]; FC2: y [R, H]
    const float* bias;     // [S, rows] f32 or null
    int k;                 // reduction length (H for FC1, I for FC2)
    int units;             // FC1: I (channels); FC2: H (columns)
    int gated;             // FC1 only: rows are [up ; gate]
    int out_f32;           // FC1 only: write act in f32 (its FP8 quantization follows)
};

template <int DT> __device__ __forceinline__ void store_out(const GemmArgs& g, long long i, float v) {
    if (g.out_f32) ((float*)g.out)[i] = v;
    else store_elem<DT>(g.out, i, v);
}

#define GEMV_UNROLL 4
// The decode copy's steps in flight: raw 16-byte words cost 4 registers per 8 weights instead of
// 8 floats, so a one-row warp keeps 8 steps (16 loads with the gate rows) in flight. Measured on
// an H100, Mixtral T=1 (two one-row slots): 0.314 -> 0.289 ms under graph replay; 16 steps were
// slower (0.46 ms), as were non-allocating loads with the activations preloaded (0.51 ms).
#define GEMV_UNROLL_ONE 8

// One warp's output unit (FC1: channel with its up and gate rows; FC2: column), for up to R
// rows of its slot at a time. R = 8 in general; R = 1 is the decode copy for slots of one row
// (one row's address and sums instead of eight; more rows are correct but reread the weights),
// which for 16-bit float weights keeps the weights as raw words until their products. Every copy adds each lane's products in the same
// order (columns lane * 8 + 256 * i, ascending i), so they give the same bits.
template <int DT, int FMT, bool FC1, int R>
__device__ __forceinline__ void gemv_unit(const GemmArgs& g, const WeightArgs& w, const ActArgs& act, int e,
                                          int unit, int lane, int r_begin, int r_end) {
    constexpr bool RAW = R == 1 && FMT == 0 && DT != 0;
    if (unit >= g.units || r_begin == r_end) return;
    const bool two = FC1 && g.gated;
    const int n0 = unit, n1 = two ? g.units + unit : unit;  // up row, gate row
    for (int r0 = r_begin; r0 < r_end; r0 += R) {
        const int mr = min(R, r_end - r0);
        long long arow[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            int rr = r0 + min(r, mr - 1);
            arow[r] = FC1 ? (long long)(g.row_sel[rr] / g.top_k) * g.k : (long long)rr * g.k;
        }
        float acc0[R], acc1[R];
#pragma unroll
        for (int r = 0; r < R; ++r) { acc0[r] = 0.0f; acc1[r] = 0.0f; }
        // Several steps of 256 columns per iteration: all their weight loads are issued before
        // the first product, so each warp keeps several 16-byte loads in flight (the weight
        // stream is the whole cost when a slot has a handful of rows).
        if constexpr (RAW) {
            const u16* p0 = (const u16*)w.w + ((long long)e * w.rows + n0) * w.cols;
            const u16* p1 = (const u16*)w.w + ((long long)e * w.rows + n1) * w.cols;
            for (int kb = lane * 8; kb < g.k; kb += 256 * GEMV_UNROLL_ONE) {
                uint4 q0[GEMV_UNROLL_ONE], q1[GEMV_UNROLL_ONE];
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL_ONE; ++u) {
                    const int k = kb + u * 256;
                    if (k < g.k) {
                        q0[u] = *(const uint4*)(p0 + k);
                        if (two) q1[u] = *(const uint4*)(p1 + k);
                    }
                }
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL_ONE; ++u) {
                    const int k = kb + u * 256;
                    if (k >= g.k) break;
                    float w0[8], w1[8], a[8];
                    unpack8<DT>(q0[u], w0);
                    if (two) unpack8<DT>(q1[u], w1);
                    load8<DT>(g.a, arow[0] + k, a);
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        acc0[0] = fmaf(a[j], w0[j], acc0[0]);
                        if (two) acc1[0] = fmaf(a[j], w1[j], acc1[0]);
                    }
                }
            }
        } else {
            for (int kb = lane * 8; kb < g.k; kb += 256 * GEMV_UNROLL) {
                float w0[GEMV_UNROLL][8], w1[GEMV_UNROLL][8];
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int k = kb + u * 256;
                    if (k < g.k) {
                        load_w8<DT, FMT>(w, e, n0, k, w0[u]);
                        if (two) load_w8<DT, FMT>(w, e, n1, k, w1[u]);
                    }
                }
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int k = kb + u * 256;
                    if (k >= g.k) break;
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        if (r < mr) {
                            float a[8];
                            load8<DT>(g.a, arow[r] + k, a);
#pragma unroll
                            for (int j = 0; j < 8; ++j) {
                                acc0[r] = fmaf(a[j], w0[u][j], acc0[r]);
                                if (two) acc1[r] = fmaf(a[j], w1[u][j], acc1[r]);
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                acc0[r] += __shfl_xor_sync(0xffffffffu, acc0[r], o);
                if (two) acc1[r] += __shfl_xor_sync(0xffffffffu, acc1[r], o);
            }
        }
        if (lane == 0) {
            const int rows_w = two ? 2 * g.units : g.units;
            const float os = out_scale<FMT>(w, e);
            for (int r = 0; r < mr; ++r) {
                float v0 = acc0[r] * os, v1 = acc1[r] * os;
                if (g.bias) {
                    v0 += g.bias[(long long)e * rows_w + n0];
                    if (two) v1 += g.bias[(long long)e * rows_w + n1];
                }
                float outv = FC1 ? (two ? activate(act, v1, v0) : activate(act, 0.0f, v0)) : v0;
                store_out<DT>(g, (long long)(r0 + r) * g.units + unit, outv);
            }
        }
    }
}

// One warp per output unit, R rows of a slot at a time (R = 1: the entry points for a forward of
// one token, where no slot has more than one row). Grid: (ceil(units / 4), slots), 128 threads.
template <int DT, int FMT, bool FC1, int R>
__device__ void gemv_body(GemmArgs g, WeightArgs w, ActArgs act) {
    // blockIdx.y walks the non-empty slots only (the scan's tile list with one tile per slot),
    // so a decode step over hundreds of experts launches blocks for the few it touches.
    if ((int)blockIdx.y >= g.num_tiles[0]) return;
    const int e = g.tiles[blockIdx.y].x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    gemv_unit<DT, FMT, FC1, R>(g, w, act, e, blockIdx.x * 4 + warp, lane, g.offsets[e], g.offsets[e + 1]);
}

// ---- tensor-core path (bf16 / f16, many rows per slot) ------------------------------------

#define BN 128
#define BK 32
#define STAGES 3
#define THREADS 256

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    int n = valid ? 16 : 0;  // src-size 0 writes zeros
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// A 64-byte row of 4 chunks of 16 bytes: chunk c of row r lives at chunk c ^ ((r >> 1) & 3),
// so the 8 rows an ldmatrix reads hit 8 different 16-byte bank groups.
__device__ __forceinline__ int swz(int r, int c) { return r * 32 + ((c ^ ((r >> 1) & 3)) << 3); }

__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

template <int DT> __device__ __forceinline__ void mma16816(float c[4], const u32 a[4], const u32 b[2]) {
    if (DT == 1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

template <int DT> __device__ __forceinline__ u16 to16(float v) { return DT == 1 ? f32_to_bf16(v) : f32_to_f16(v); }

// B-tile row rb of the tile at output offset n_tile -> weight row. FC1 gated tiles hold
// BN / 2 channels: groups of 8 up rows followed by the same 8 channels' gate rows, so each
// thread's accumulators for n8-blocks 2q (up) and 2q + 1 (gate) are the same channels.
template <bool FC1>
__device__ __forceinline__ int b_row(int n_tile, int rb, int gated, int units) {
    if (FC1 && gated) {
        int ch = n_tile / 2 + (rb >> 4) * 8 + (rb & 7);
        return (rb & 8) ? units + ch : ch;
    }
    return n_tile + rb;
}

// Grid: (ceil(out columns / BN) [FC1 gated: ceil(2 I / BN)], tile bound), 256 threads.
// Warps 2 (M) x 4 (N); each warp WM = BM / 2 rows x 32 columns.
template <int DT, int FMT, bool FC1, int BM>
__device__ void mma_body(GemmArgs g, WeightArgs w, ActArgs act) {
    constexpr int MI = BM / 32;  // m16 blocks per warp
    constexpr int NI = 4;        // n8 blocks per warp
    // One static buffer carved in three: A stages, B tiles (STAGES of them for float weights,
    // one decoded tile for codes), and the raw code stages (codes only). 48 KB at most.
    constexpr int A_BYTES = STAGES * BM * BK * 2;
    constexpr int B_BYTES = ((FMT == 0) ? STAGES : 1) * BN * BK * 2;
    constexpr int Q_BYTES = (FMT == 0) ? 0 : STAGES * BN * BK;
    __shared__ __align__(128) unsigned char smem[A_BYTES + B_BYTES + Q_BYTES];
    u16 (*sa)[BM * BK] = (u16 (*)[BM * BK])smem;
    u16 (*sb)[BN * BK] = (u16 (*)[BN * BK])(smem + A_BYTES);
    unsigned char (*sq)[BN * BK] = (unsigned char (*)[BN * BK])(smem + A_BYTES + B_BYTES);

    // Tiles run fastest along x: the CTAs resident at once share a few weight column strips,
    // which stay in L2 while every row tile of their slot passes over them.
    const int tile = blockIdx.x;
    if (tile >= g.num_tiles[0]) return;
    const int4 te = g.tiles[tile];
    const int e = te.x;
    const int r_begin = g.offsets[e] + te.y;
    const int m_rows = min(BM, g.offsets[e + 1] - r_begin);
    const int n_tile = blockIdx.y * BN;
    const bool two = FC1 && g.gated;
    const int out_cols = two ? 2 * g.units : g.units;  // rows of the weight matrix
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;
    const int K = g.k;
    const int ktiles = (K + BK - 1) / BK;

    // Source rows of this thread's copies, fixed for the whole K loop (-1: zero fill).
    constexpr int A_PER = (BM * 4 + THREADS - 1) / THREADS;
    long long a_base[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        int r = (tid + i * THREADS) >> 2;
        a_base[i] = -1;
        if (r < m_rows && tid + i * THREADS < BM * 4) {
            long long row = FC1 ? (long long)(g.row_sel[r_begin + r] / g.top_k) : (long long)(r_begin + r);
            a_base[i] = row * K;
        }
    }
    constexpr int B_CHUNKS = (FMT == 0) ? 4 : ((FMT == 3) ? 1 : 2);  // 16-byte chunks per B row
    constexpr int B_PER = (BN * B_CHUNKS + THREADS - 1) / THREADS;
    long long b_base[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int rb = (tid + i * THREADS) / B_CHUNKS;
        int n = b_row<FC1>(n_tile, rb, g.gated, g.units);
        bool valid = (two ? (n_tile / 2 + (rb >> 4) * 8 + (rb & 7)) < g.units : n < out_cols) && rb < BN;
        b_base[i] = valid ? ((long long)e * w.rows + n) * K : -1;
    }

    auto load_stage = [&](int stage, int kt) {
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            int c = tid + i * THREADS;
            if (c >= BM * 4) break;
            int r = c >> 2, ch = c & 3;
            int kk = k0 + ch * 8;
            bool valid = a_base[i] >= 0 && kk < K;
            const u16* src = (const u16*)g.a + (valid ? a_base[i] + kk : 0);
            cp_async16(&sa[stage][swz(r, ch)], src, valid);
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            int c = tid + i * THREADS;
            if (c >= BN * B_CHUNKS) break;
            int rb = c / B_CHUNKS, ch = c % B_CHUNKS;
            if (FMT == 0) {
                int kk = k0 + ch * 8;
                bool valid = b_base[i] >= 0 && kk < K;
                const u16* src = (const u16*)w.w + (valid ? b_base[i] + kk : 0);
                cp_async16(&sb[stage][swz(rb, ch)], src, valid);
            } else {
                // Raw codes: FP8 32 bytes per row (2 chunks), MXFP4 16 bytes per row (1 chunk).
                constexpr int bytes_per_row = (FMT == 3) ? BK / 2 : BK;
                bool valid = b_base[i] >= 0 && k0 + ch * 16 * (FMT == 3 ? 2 : 1) < K;
                long long off = b_base[i] + k0;
                const unsigned char* src =
                    (const unsigned char*)w.w + (valid ? (FMT == 3 ? off / 2 : off) + ch * 16 : 0);
                cp_async16(&sq[stage][rb * bytes_per_row + ch * 16], src, valid);
            }
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        cp_wait<STAGES - 2>();
        __syncthreads();
        const int stage = kt % STAGES;
        // Queue the tile STAGES - 1 ahead before computing on this one.
        {
            int nk = kt + STAGES - 1;
            if (nk < ktiles) load_stage(nk % STAGES, nk);
            cp_commit();
        }
        const u16* bt;
        if (FMT == 0) {
            bt = sb[stage];
        } else {
            // Decode this stage's codes into the bf16/f16 tile (scales applied), then sync.
            const int k0 = kt * BK;
            for (int c = tid; c < BN * 4; c += THREADS) {
                int rb = c >> 2, ch = c & 3;
                int n = b_row<FC1>(n_tile, rb, g.gated, g.units);
                int kk = k0 + ch * 8;
                float v[8];
                bool valid = (two ? (n_tile / 2 + (rb >> 4) * 8 + (rb & 7)) < g.units : n < out_cols) && kk < K;
                if (valid) {
                    if (FMT == 3) {
                        u32 q = *(const u32*)&sq[stage][rb * (BK / 2) + ch * 4];
                        float s = e8m0_to_f32(w.mx_scales[((long long)e * w.rows + n) * (K / 32) + kk / 32]);
#pragma unroll
                        for (int j = 0; j < 8; ++j) v[j] = e2m1_to_f32((q >> (4 * j)) & 0xfu) * s;
                    } else {
                        uint2 q = *(const uint2*)&sq[stage][rb * BK + ch * 8];
                        u32 ww[2] = {q.x, q.y};
#pragma unroll
                        for (int j = 0; j < 2; ++j) {
                            e4m3x2_to_f32((u16)(ww[j] & 0xffffu), v[4 * j], v[4 * j + 1]);
                            e4m3x2_to_f32((u16)(ww[j] >> 16), v[4 * j + 2], v[4 * j + 3]);
                        }
                        if (FMT == 2) {
                            int sr = (w.rows + w.b0 - 1) / w.b0, sc = (K + w.b1 - 1) / w.b1;
                            float s = w.scales[((long long)e * sr + n / w.b0) * sc + kk / w.b1];
#pragma unroll
                            for (int j = 0; j < 8; ++j) v[j] *= s;
                        }
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 8; ++j) v[j] = 0.0f;
                }
                uint4 o;
                o.x = (u32)to16<DT>(v[0]) | ((u32)to16<DT>(v[1]) << 16);
                o.y = (u32)to16<DT>(v[2]) | ((u32)to16<DT>(v[3]) << 16);
                o.z = (u32)to16<DT>(v[4]) | ((u32)to16<DT>(v[5]) << 16);
                o.w = (u32)to16<DT>(v[6]) | ((u32)to16<DT>(v[7]) << 16);
                *(uint4*)&sb[0][swz(rb, ch)] = o;
            }
            __syncthreads();
            bt = sb[0];
        }
        const u16* at = sa[stage];
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 af[MI][4], bf[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                int r = wm * (BM / 2) + i * 16 + (lane & 15);
                int ch = (kk >> 3) + (lane >> 4);
                ldmatrix_x4(af[i], &at[swz(r, ch)]);
            }
#pragma unroll
            for (int j = 0; j < NI; j += 2) {
                int rb = wn * 32 + j * 8 + (lane & 7) + ((lane >> 4) << 3);
                int ch = (kk >> 3) + ((lane >> 3) & 1);
                u32 t[4];
                ldmatrix_x4(t, &bt[swz(rb, ch)]);
                bf[j][0] = t[0]; bf[j][1] = t[1]; bf[j + 1][0] = t[2]; bf[j + 1][1] = t[3];
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma16816<DT>(acc[i][j], af[i], bf[j]);
        }
        if (FMT != 0) __syncthreads();  // the decoded tile is rewritten next iteration
    }
    cp_wait<0>();

    // Epilogue: output scale, bias, activation (FC1), store.
    const float os = out_scale<FMT>(w, e);
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int r = wm * (BM / 2) + i * 16 + (lane >> 2) + h * 8;
            if (r >= m_rows) continue;
            long long orow = (long long)(r_begin + r);
            if (two) {
#pragma unroll
                for (int j = 0; j < NI; j += 2) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        int ch = n_tile / 2 + ((wn * 32 + j * 8) >> 4) * 8 + (lane & 3) * 2 + c;
                        if (ch >= g.units) continue;
                        float up = acc[i][j][h * 2 + c] * os, gate = acc[i][j + 1][h * 2 + c] * os;
                        if (g.bias) {
                            up += g.bias[(long long)e * out_cols + ch];
                            gate += g.bias[(long long)e * out_cols + g.units + ch];
                        }
                        store_out<DT>(g, orow * g.units + ch, activate(act, gate, up));
                    }
                }
            } else {
#pragma unroll
                for (int j = 0; j < NI; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        int n = n_tile + wn * 32 + j * 8 + (lane & 3) * 2 + c;
                        if (n >= g.units) continue;
                        float v = acc[i][j][h * 2 + c] * os;
                        if (g.bias) v += g.bias[(long long)e * out_cols + n];
                        store_out<DT>(g, orow * g.units + n, FC1 ? activate(act, 0.0f, v) : v);
                    }
                }
            }
        }
    }
}


// ---- Hopper path: warpgroup MMA (wgmma, sm_90a) -------------------------------------------
//
// 256 threads = 2 warpgroups. A and B tiles are K-major with 64 columns (128-byte rows) in the
// 128-byte swizzle wgmma reads (16-byte chunk c of row r at chunk c ^ (r % 8), 8-row atoms of
// 1 KB), filled by cp.async in WG_STAGES stages. BM = 128: each warpgroup owns 64 rows x 128
// columns (m64n128k16); BM = 64: each owns all 64 rows x 64 columns (m64n64k16). Codes (FP8,
// MXFP4) are decoded from their raw stage into one bf16/f16 B tile before the MMAs; FP8 block
// scales multiply a per-128-column partial sum, so the products use the exact E4M3 values.
#ifdef WGMMA

#define WG_BK 64
#ifndef WG_STAGES
#define WG_STAGES 4  // the host passes the depth it sized the shared memory for (`WG_STAGES` in experts.rs)
#endif

__device__ __forceinline__ unsigned long long wg_desc(const void* p) {
    unsigned long long a = (smem_addr(p) & 0x3FFFFu) >> 4;
    return a | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ int swz128(int r, int c) { return r * 128 + ((c ^ (r & 7)) << 4); }

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
__device__ __forceinline__ void wg_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

template <int DT> __device__ __forceinline__ void wgmma_n128(float* d, unsigned long long da, unsigned long long db) {
    if (DT == 1) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(da), "l"(db), "r"(1));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(da), "l"(db), "r"(1));
    }
}

template <int DT> __device__ __forceinline__ void wgmma_n64(float* d, unsigned long long da, unsigned long long db) {
    if (DT == 1) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(1));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                     : "l"(da), "l"(db), "r"(1));
    }
}

template <int DT, int FMT, bool FC1, int BM>
__device__ void wg_body(GemmArgs g, WeightArgs w, ActArgs act) {
    constexpr int NW = (BM == 128) ? 128 : 64;  // columns per warpgroup
    constexpr int NJ = NW / 8;                  // n8 blocks per warpgroup
    constexpr int A_BYTES = BM * 128, B_BYTES = BN * 128;
    constexpr int Q_ROW = (FMT == 3) ? WG_BK / 2 : WG_BK;  // raw code bytes per B row
    constexpr int STAGE = A_BYTES + ((FMT == 0) ? B_BYTES : BN * Q_ROW);
    extern __shared__ unsigned char dsm_raw[];
    // 1 KB alignment of every tile (the swizzle atoms); the launch adds 1 KB of slack.
    unsigned char* dsm = dsm_raw + ((1024u - (smem_addr(dsm_raw) & 1023u)) & 1023u);
    unsigned char* bdec = dsm + WG_STAGES * STAGE;  // decoded B tile (codes only)

    const int tile = blockIdx.x;
    if (tile >= g.num_tiles[0]) return;
    const int4 te = g.tiles[tile];
    const int e = te.x;
    const int r_begin = g.offsets[e] + te.y;
    const int m_rows = min(BM, g.offsets[e + 1] - r_begin);
    const int n_tile = blockIdx.y * BN;
    const bool two = FC1 && g.gated;
    const int out_cols = two ? 2 * g.units : g.units;
    const int tid = threadIdx.x, wg = tid >> 7, wl = (tid >> 5) & 3, lane = tid & 31;
    const int K = g.k;
    const int ktiles = (K + WG_BK - 1) / WG_BK;
    const int row0 = (BM == 128) ? wg * 64 : 0;   // first tile row of this warpgroup
    const int col0 = (BM == 128) ? 0 : wg * 64;   // first tile column of this warpgroup

    constexpr int A_PER = BM * 8 / THREADS;  // 16-byte chunks per thread
    long long a_base[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; ++i) {
        int r = (tid + i * THREADS) >> 3;
        a_base[i] = -1;
        if (r < m_rows) {
            long long row = FC1 ? (long long)(g.row_sel[r_begin + r] / g.top_k) : (long long)(r_begin + r);
            a_base[i] = row * K;
        }
    }
    constexpr int B_CHUNKS = Q_ROW * ((FMT == 0) ? 2 : 1) / 16;  // per B row: 8 (float), 4 (FP8), 2 (MXFP4)
    constexpr int B_PER = BN * B_CHUNKS / THREADS;
    long long b_base[B_PER];
#pragma unroll
    for (int i = 0; i < B_PER; ++i) {
        int rb = (tid + i * THREADS) / B_CHUNKS;
        int n = b_row<FC1>(n_tile, rb, g.gated, g.units);
        bool valid = two ? (n_tile / 2 + (rb >> 4) * 8 + (rb & 7)) < g.units : n < out_cols;
        b_base[i] = valid ? ((long long)e * w.rows + n) * K : -1;
    }

    auto load_stage = [&](int stage, int kt) {
        unsigned char* st = dsm + stage * STAGE;
        const int k0 = kt * WG_BK;
#pragma unroll
        for (int i = 0; i < A_PER; ++i) {
            int c = tid + i * THREADS, r = c >> 3, ch = c & 7;
            int kk = k0 + ch * 8;
            bool valid = a_base[i] >= 0 && kk < K;
            cp_async16(st + swz128(r, ch), (const u16*)g.a + (valid ? a_base[i] + kk : 0), valid);
        }
#pragma unroll
        for (int i = 0; i < B_PER; ++i) {
            int c = tid + i * THREADS, rb = c / B_CHUNKS, ch = c % B_CHUNKS;
            if (FMT == 0) {
                int kk = k0 + ch * 8;
                bool valid = b_base[i] >= 0 && kk < K;
                cp_async16(st + A_BYTES + swz128(rb, ch), (const u16*)w.w + (valid ? b_base[i] + kk : 0), valid);
            } else {
                int kk = k0 + ch * 16 * (FMT == 3 ? 2 : 1);
                bool valid = b_base[i] >= 0 && kk < K;
                long long off = b_base[i] + k0;
                const unsigned char* src =
                    (const unsigned char*)w.w + (valid ? (FMT == 3 ? off / 2 : off) + ch * 16 : 0);
                cp_async16(st + A_BYTES + rb * Q_ROW + ch * 16, src, valid);
            }
        }
    };

    float d[NJ * 4], part[(FMT == 2) ? NJ * 4 : 1];
#pragma unroll
    for (int i = 0; i < NJ * 4; ++i) d[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < ((FMT == 2) ? NJ * 4 : 1); ++i) part[i] = 0.0f;

    // Loads run WG_STAGES - 2 tiles ahead and one wgmma group stays in flight: the stage a
    // load overwrites held tile kt - 2, whose wgmma every warpgroup retired
    // (`wgmma.wait_group 1` at the end of iteration kt - 1) before the barrier of iteration kt
    // (for float weights; codes wait for all groups, their decoded tile being rewritten every
    // iteration).
    constexpr int AHEAD = WG_STAGES - 2;
#pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_wait<AHEAD - 1>();  // tile kt has landed (kt + 1 may still be in flight)
        proxy_fence();
        __syncthreads();  // every warpgroup has retired its wgmma of tile kt - 2
        {
            int nk = kt + AHEAD;
            if (nk < ktiles) load_stage(nk % WG_STAGES, nk);
            cp_commit();
        }
        unsigned char* st = dsm + (kt % WG_STAGES) * STAGE;
        const unsigned char* bt = st + A_BYTES;
        if (FMT != 0) {
            // Decode the raw codes (no FP8 scale: exact E4M3 values; MXFP4 times its power of
            // two, exact too) into the swizzled B tile.
            const int k0 = kt * WG_BK;
            for (int c = tid; c < BN * 8; c += THREADS) {
                int rb = c >> 3, ch = c & 7, kk = k0 + ch * 8;
                int n = b_row<FC1>(n_tile, rb, g.gated, g.units);
                bool valid = (two ? (n_tile / 2 + (rb >> 4) * 8 + (rb & 7)) < g.units : n < out_cols) && kk < K;
                float v[8];
                if (valid && FMT == 3) {
                    u32 q = *(const u32*)(st + A_BYTES + rb * Q_ROW + ch * 4);
                    float sc = e8m0_to_f32(w.mx_scales[((long long)e * w.rows + n) * (K / 32) + kk / 32]);
#pragma unroll
                    for (int j = 0; j < 8; ++j) v[j] = e2m1_to_f32((q >> (4 * j)) & 0xfu) * sc;
                } else if (valid) {
                    uint2 q = *(const uint2*)(st + A_BYTES + rb * Q_ROW + ch * 8);
                    u32 ww[2] = {q.x, q.y};
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        e4m3x2_to_f32((u16)(ww[j] & 0xffffu), v[4 * j], v[4 * j + 1]);
                        e4m3x2_to_f32((u16)(ww[j] >> 16), v[4 * j + 2], v[4 * j + 3]);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < 8; ++j) v[j] = 0.0f;
                }
                uint4 o;
                o.x = (u32)to16<DT>(v[0]) | ((u32)to16<DT>(v[1]) << 16);
                o.y = (u32)to16<DT>(v[2]) | ((u32)to16<DT>(v[3]) << 16);
                o.z = (u32)to16<DT>(v[4]) | ((u32)to16<DT>(v[5]) << 16);
                o.w = (u32)to16<DT>(v[6]) | ((u32)to16<DT>(v[7]) << 16);
                *(uint4*)(bdec + swz128(rb, ch)) = o;
            }
            proxy_fence();
            __syncthreads();
            bt = bdec;
        }
        float* acc = (FMT == 2) ? part : d;
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < WG_BK / 16; ++ks) {
            unsigned long long da = wg_desc(st + row0 * 128) + 2 * ks;
            unsigned long long db = wg_desc(bt + col0 * 128) + 2 * ks;
            if (NW == 128) wgmma_n128<DT>(acc, da, db);
            else wgmma_n64<DT>(acc, da, db);
        }
        wg_commit();
        if (FMT == 0) wg_wait1();
        else wg_wait0();
        if (FMT == 2) {
            // End of a scale block along K (or of K): fold the partial sums with their scales.
            const int kend = (kt + 1) * WG_BK;
            if (kend % w.b1 == 0 || kt == ktiles - 1) {
                const int kb = kt * WG_BK / w.b1;
                const int sr = (w.rows + w.b0 - 1) / w.b0, sc = (K + w.b1 - 1) / w.b1;
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    int rb = col0 + j * 8;  // the 8 rows of block j lie in one scale block
                    int n = b_row<FC1>(n_tile, rb, g.gated, g.units);
                    bool ok = two ? (n_tile / 2 + (rb >> 4) * 8) < g.units : n < out_cols;
                    float s = ok ? w.scales[((long long)e * sr + n / w.b0) * sc + kb] : 0.0f;
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        d[j * 4 + q] = fmaf(part[j * 4 + q], s, d[j * 4 + q]);
                        part[j * 4 + q] = 0.0f;
                    }
                }
            }
        }
        if (FMT != 0) __syncthreads();  // the decoded tile is rewritten next iteration
    }
    cp_wait<0>();
    wg_wait0();

    const float os = out_scale<FMT>(w, e);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        int r = row0 + wl * 16 + (lane >> 2) + h * 8;
        if (r >= m_rows) continue;
        long long orow = (long long)(r_begin + r);
        if (two) {
#pragma unroll
            for (int j = 0; j < NJ; j += 2) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    int ch = n_tile / 2 + ((col0 + j * 8) >> 4) * 8 + (lane & 3) * 2 + c;
                    if (ch >= g.units) continue;
                    float up = d[j * 4 + h * 2 + c] * os, gate = d[(j + 1) * 4 + h * 2 + c] * os;
                    if (g.bias) {
                        up += g.bias[(long long)e * out_cols + ch];
                        gate += g.bias[(long long)e * out_cols + g.units + ch];
                    }
                    store_out<DT>(g, orow * g.units + ch, activate(act, gate, up));
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < NJ; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    int n = n_tile + col0 + j * 8 + (lane & 3) * 2 + c;
                    if (n >= g.units) continue;
                    float v = d[j * 4 + h * 2 + c] * os;
                    if (g.bias) v += g.bias[(long long)e * out_cols + n];
                    store_out<DT>(g, orow * g.units + n, FC1 ? activate(act, 0.0f, v) : v);
                }
            }
        }
    }
}

#define WG(NAME, DT, FMT, FC1, BMV) \
    extern "C" __global__ void __launch_bounds__(THREADS, 1) NAME(GemmArgs g, WeightArgs w, ActArgs a) { wg_body<DT, FMT, FC1, BMV>(g, w, a); }
#define WG_BM(SUF, DT, FMT, BMV) WG(wg_fc1_##SUF##_##BMV, DT, FMT, true, BMV) WG(wg_fc2_##SUF##_##BMV, DT, FMT, false, BMV)
#define WG_ALL(SUF, DT, FMT) WG_BM(SUF, DT, FMT, 64) WG_BM(SUF, DT, FMT, 128)

// ---- TMA warp-specialized path (16-bit float weights, many rows per slot) ----------------
// 128 x TBN output tiles (TBN = 256 or 128) in 384 threads. Warpgroup 0 is the producer: one
// thread issues the bulk tensor copies (TMA) of A [64-row boxes x 64] and B [TBN weight rows x 64] into
// TMA_STAGES stages laid out in the 128-byte swizzle wgmma reads, each stage guarded by a
// `full` mbarrier (the copies' byte count) and an `empty` one (one arrival per consumer
// warp). Warpgroups 1 and 2 are the consumers: each multiplies 64 rows by all TBN columns
// (m64n256k16 or m64n128k16) once a stage is full, keeps one MMA group in flight and releases the stage of
// the previous group. A is contiguous per slot (FC1 reads the expanded input of
// `moe_expand`; gathering the rows in the producer warpgroup with cp.async instead measured
// 13% slower on DeepSeek-V3 at 4096 tokens), and a tile copies only the 64-row boxes its
// slot's rows reach (at about 128 rows per slot the kernel is bound by L2 and DRAM traffic);
// rows past the slot's end in the last box belong to the next slot or are zero-filled by the
// copy, and are never stored. A consumer whose 64 rows all lie past the slot's end skips its
// MMAs (a slot's last tile is often half empty).
// B of a gated FC1 is 128 up rows then the 128 gate rows of the same channels, so a
// thread holds each channel's up and gate sums and the activation needs no exchange.
// Tiles are visited in the groups `moe_scan` forms (at most 8 row tiles, no slot cut in two),
// every column tile of a group before the next group, so a slot's weight tile is read from
// memory once for all its row tiles and the A tiles of a group stay in L2.

#define TMA_BK 64
#define TMA_STAGES 4
#define TMA_A_BOX_BYTES (64 * 128)
#define TMA_A_BYTES (2 * TMA_A_BOX_BYTES)
#define TMA_THREADS 384

// CUtensorMap: 128 opaque bytes written by cuTensorMapEncodeTiled on the host.
struct __align__(64) TensorMap {
    unsigned long long v[16];
};

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    }
}
// The pipeline's barriers, before any thread uses them: per stage a `full` barrier (one
// producer arrival plus the copies' bytes) and an `empty` one (one arrival per consumer warp:
// two warpgroups). Every thread of the block calls it.
__device__ __forceinline__ void mbar_init_stages(u32 full0, u32 empty0, int stages) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; ++s) {
            mbar_init(full0 + 8 * s, 1);
            mbar_init(empty0 + 8 * s, 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
}

// One box of `map` at (column c0, row c1) into shared memory, counted on `bar`.
__device__ __forceinline__ void tma_load(u32 dst, const TensorMap* map, int c0, int c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(dst),
        "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// Two adjacent outputs (i even, so 4- or 8-byte aligned) in one store.
template <int DT> __device__ __forceinline__ void store_pair(const GemmArgs& g, long long i, float a, float b) {
    if (g.out_f32) {
        *(float2*)((float*)g.out + i) = make_float2(a, b);
    } else {
        *(u32*)((u16*)g.out + i) = (u32)to16<DT>(a) | ((u32)to16<DT>(b) << 16);
    }
}

template <int DT> __device__ __forceinline__ void wgmma_n256(float* d, unsigned long long da, unsigned long long db) {
    if (DT == 1) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                     : "l"(da), "l"(db), "r"(1));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n"
                     "}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                     : "l"(da), "l"(db), "r"(1));
    }
}

// TBN = 256 (a gated FC1 always: 128 channels of up and gate) or 128 (plain GEMMs whose
// 256-column grid would leave multiprocessors idle: the host picks it from the tile count).
template <int DT, bool FC1, int TBN>
__device__ void tma_body(const GemmArgs& g, const WeightArgs& w, const ActArgs& act, const TensorMap* ta,
                         const TensorMap* tb, int n_tiles) {
    constexpr int B_BYTES = TBN * 128, STAGE = TMA_A_BYTES + B_BYTES;
    extern __shared__ unsigned char dsm_raw[];
    // 1 KB alignment of every tile (the swizzle atoms); the launch adds 1 KB of slack.
    unsigned char* dsm = dsm_raw + ((1024u - (smem_addr(dsm_raw) & 1023u)) & 1023u);
    const u32 full0 = smem_addr(dsm + TMA_STAGES * STAGE), empty0 = full0 + 8 * TMA_STAGES;

    // Grouped raster over a 1-D grid of (row tiles x column tiles): the blocks of a group of
    // gm tiles starting at tile first_m are [first_m, first_m + gm) * n_tiles, so the tile
    // index blockIdx.x / n_tiles lies in the block's own group.
    const int q = (int)blockIdx.x / n_tiles;
    if (q >= g.num_tiles[0]) return;
    const int first_m = g.tiles[q].z, gm = g.tiles[q].w;
    const int in_group = (int)blockIdx.x - first_m * n_tiles;
    const int tile = first_m + in_group % gm;
    const int nt = in_group / gm;

    const int4 te = g.tiles[tile];
    const int e = te.x;
    const int r_begin = g.offsets[e] + te.y;
    const int m_rows = min(128, g.offsets[e + 1] - r_begin);
    const int a_boxes = (m_rows + 63) / 64;
    const bool two = FC1 && g.gated;
    const int out_cols = two ? 2 * g.units : g.units;
    const int c0 = two ? nt * 128 : nt * TBN;  // first channel (gated) or column of the tile
    const int tid = threadIdx.x, wg = tid >> 7;
    const int ktiles = (g.k + TMA_BK - 1) / TMA_BK;

    mbar_init_stages(full0, empty0, TMA_STAGES);

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 0) {
            const int b0 = e * w.rows + c0;
            const int b1 = two ? e * w.rows + g.units + c0 : b0 + 128;
            for (int kt = 0; kt < ktiles; ++kt) {
                const int s = kt % TMA_STAGES;
                // The consumers released this stage's previous use (tile kt - TMA_STAGES).
                if (kt >= TMA_STAGES) mbar_wait(empty0 + 8 * s, ((kt / TMA_STAGES) & 1) ^ 1);
                const u32 st = smem_addr(dsm + s * STAGE), full = full0 + 8 * s;
                const int k0 = kt * TMA_BK;
                mbar_expect_tx(full, a_boxes * TMA_A_BOX_BYTES + B_BYTES);
                for (int i = 0; i < a_boxes; ++i) tma_load(st + i * TMA_A_BOX_BYTES, ta, k0, r_begin + 64 * i, full);
                tma_load(st + TMA_A_BYTES, tb, k0, b0, full);
                if (TBN == 256) tma_load(st + TMA_A_BYTES + 128 * 128, tb, k0, b1, full);
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int c = wg - 1, wl = (tid >> 5) & 3, lane = tid & 31;
    const bool active = c * 64 < m_rows;
    float d[TBN / 2];
#pragma unroll
    for (int i = 0; i < TBN / 2; ++i) d[i] = 0.0f;
    for (int kt = 0; kt < ktiles; ++kt) {
        const int s = kt % TMA_STAGES;
        mbar_wait(full0 + 8 * s, (kt / TMA_STAGES) & 1);
        if (active) {
            const unsigned char* st = dsm + s * STAGE;
            wg_fence();
#pragma unroll
            for (int ks = 0; ks < TMA_BK / 16; ++ks) {
                const unsigned long long da = wg_desc(st + c * 64 * 128) + 2 * ks, db = wg_desc(st + TMA_A_BYTES) + 2 * ks;
                if (TBN == 256) wgmma_n256<DT>(d, da, db);
                else wgmma_n128<DT>(d, da, db);
            }
            wg_commit();
            wg_wait1();  // the group of tile kt - 1 retired: its stage can be refilled
        }
        if (kt > 0 && lane == 0) mbar_arrive(empty0 + 8 * ((kt - 1) % TMA_STAGES));
    }
    wg_wait0();
    if (!active) return;

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = c * 64 + wl * 16 + (lane >> 2) + h * 8;
        if (r >= m_rows) continue;
        const long long orow = (long long)(r_begin + r) * g.units;
        if (two) {
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                const int ch = c0 + j * 8 + (lane & 3) * 2;  // and ch + 1 (units is a multiple of 8)
                if (ch >= g.units) continue;
                float v[2];
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    float up = d[j * 4 + h * 2 + q], gate = d[(j + 16) * 4 + h * 2 + q];
                    if (g.bias) {
                        up += g.bias[(long long)e * out_cols + ch + q];
                        gate += g.bias[(long long)e * out_cols + g.units + ch + q];
                    }
                    v[q] = activate(act, gate, up);
                }
                store_pair<DT>(g, orow + ch, v[0], v[1]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < TBN / 8; ++j) {
                const int n = c0 + j * 8 + (lane & 3) * 2;
                if (n >= g.units) continue;
                float v[2];
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                    float x = d[j * 4 + h * 2 + q];
                    if (g.bias) x += g.bias[(long long)e * out_cols + n + q];
                    v[q] = FC1 ? activate(act, 0.0f, x) : x;
                }
                store_pair<DT>(g, orow + n, v[0], v[1]);
            }
        }
    }
}

#define TMA(NAME, DT, FC1, TBN)                                                                                 \
    extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)                                               \
        NAME(GemmArgs g, WeightArgs w, ActArgs a, const __grid_constant__ TensorMap ta,                       \
             const __grid_constant__ TensorMap tb, int n_tiles) {                                              \
        tma_body<DT, FC1, TBN>(g, w, a, &ta, &tb, n_tiles);                                                     \
    }
#define TMA_ALL(SUF, DT)                                                                           \
    TMA(tma_fc1_##SUF##_256, DT, true, 256) TMA(tma_fc2_##SUF##_256, DT, false, 256)               \
    TMA(tma_fc1_##SUF##_128, DT, true, 128) TMA(tma_fc2_##SUF##_128, DT, false, 128)

#endif  // WGMMA

// ---- finalize -----------------------------------------------------------------------------

// out[t] = sum_j scale[t, j] * y[pos[t, j]] over local selections, in j order, f32.
template <int DT, int ODT>
__device__ void finalize_body(const void* y, const int* pos, const float* scales, int n, int k, int h, void* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * h) return;
    int t = (int)(i / h), c = (int)(i % h);
    float s = 0.0f;
    for (int j = 0; j < k; ++j) {
        int p = pos[t * k + j];
        if (p < 0) continue;
        float wgt = scales ? scales[t * k + j] : 1.0f;
        s = fmaf(wgt, load_elem<DT>(y, (long long)p * h + c), s);
    }
    store_elem<ODT>(out, i, s);
}

// finalize_body for eight consecutive columns per thread (h % 8 == 0; every row then starts
// 16-byte aligned): the same f32 sums in the same order, with 16-byte loads and stores.
template <int DT, int ODT>
__device__ void finalize8_body(const void* y, const int* pos, const float* scales, int n, int k, int h, void* out) {
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (long long)n * h) return;
    int t = (int)(i / h), c = (int)(i % h);
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < k; ++j) {
        int p = pos[t * k + j];
        if (p < 0) continue;
        float wgt = scales ? scales[t * k + j] : 1.0f;
        float v[8];
        load8<DT>(y, (long long)p * h + c, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) s[q] = fmaf(wgt, v[q], s[q]);
    }
    if (ODT == 0) {
        *(float4*)((float*)out + i) = make_float4(s[0], s[1], s[2], s[3]);
        *(float4*)((float*)out + i + 4) = make_float4(s[4], s[5], s[6], s[7]);
    } else {
        u32 w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            u32 lo = ODT == 1 ? f32_to_bf16(s[2 * q]) : f32_to_f16(s[2 * q]);
            u32 hi = ODT == 1 ? f32_to_bf16(s[2 * q + 1]) : f32_to_f16(s[2 * q + 1]);
            w[q] = lo | (hi << 16);
        }
        *(uint4*)((u16*)out + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// ---- entry points -------------------------------------------------------------------------

// Each module compiles the entry points of one (dtype, format) variant (`VARIANT_<dt>_<fmt>`)
// or the shared ones (`VARIANT_common`), so a process JIT-compiles only what it runs.
// FC2 at 8 blocks per multiprocessor (64 registers; ptxas spills 12-36 bytes, format dependent):
// Mixtral's FC2 (2048 blocks) then fills two whole waves instead of 2.2 at 7 blocks, measured
// 1.46x -> 1.33x of the T=1 floor on an H100. FC1 keeps its 128 registers.
// `gemv1_*`: the one-row copies (their own register budgets: 112 and 57 registers without
// spills for bf16, where one kernel holding both copies spilled).
#define GEMV(NAME, DT, FMT, FC1, R) \
    extern "C" __global__ void __launch_bounds__(128, (FC1) ? 4 : 8) NAME(GemmArgs g, WeightArgs w, ActArgs a) { gemv_body<DT, FMT, FC1, R>(g, w, a); }
#define GEMV_ALL(SUF, DT, FMT) \
    GEMV(gemv_fc1_##SUF, DT, FMT, true, 8) GEMV(gemv_fc2_##SUF, DT, FMT, false, 8) \
    GEMV(gemv1_fc1_##SUF, DT, FMT, true, 1) GEMV(gemv1_fc2_##SUF, DT, FMT, false, 1)
#ifdef VARIANT_f32_float
GEMV_ALL(f32_float, 0, 0)
#endif
#ifdef VARIANT_bf16_float
GEMV_ALL(bf16_float, 1, 0)
#endif
#ifdef VARIANT_f16_float
GEMV_ALL(f16_float, 2, 0)
#endif
#ifdef VARIANT_bf16_fp8t
GEMV_ALL(bf16_fp8t, 1, 1)
#endif
#ifdef VARIANT_bf16_fp8b
GEMV_ALL(bf16_fp8b, 1, 2)
#endif
#ifdef VARIANT_bf16_mxfp4
GEMV_ALL(bf16_mxfp4, 1, 3)
#endif
#ifdef VARIANT_f16_fp8t
GEMV_ALL(f16_fp8t, 2, 1)
#endif
#ifdef VARIANT_f16_fp8b
GEMV_ALL(f16_fp8b, 2, 2)
#endif
#ifdef VARIANT_f16_mxfp4
GEMV_ALL(f16_mxfp4, 2, 3)
#endif

#define MMA(NAME, DT, FMT, FC1, BMV) \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME(GemmArgs g, WeightArgs w, ActArgs a) { mma_body<DT, FMT, FC1, BMV>(g, w, a); }
#define MMA_BM(SUF, DT, FMT, BMV) MMA(mma_fc1_##SUF##_##BMV, DT, FMT, true, BMV) MMA(mma_fc2_##SUF##_##BMV, DT, FMT, false, BMV)
#define MMA_ALL(SUF, DT, FMT) MMA_BM(SUF, DT, FMT, 32) MMA_BM(SUF, DT, FMT, 64) MMA_BM(SUF, DT, FMT, 128)
#ifdef VARIANT_bf16_float
MMA_ALL(bf16_float, 1, 0)
#ifdef WGMMA
WG_ALL(bf16_float, 1, 0)
TMA_ALL(bf16_float, 1)
#endif
#endif
#ifdef VARIANT_f16_float
MMA_ALL(f16_float, 2, 0)
#ifdef WGMMA
WG_ALL(f16_float, 2, 0)
TMA_ALL(f16_float, 2)
#endif
#endif
#ifdef VARIANT_bf16_fp8t
MMA_ALL(bf16_fp8t, 1, 1)
#ifdef WGMMA
WG_ALL(bf16_fp8t, 1, 1)
#endif
#endif
#ifdef VARIANT_bf16_fp8b
MMA_ALL(bf16_fp8b, 1, 2)
#ifdef WGMMA
WG_ALL(bf16_fp8b, 1, 2)
#endif
#endif
#ifdef VARIANT_bf16_mxfp4
MMA_ALL(bf16_mxfp4, 1, 3)
#ifdef WGMMA
WG_ALL(bf16_mxfp4, 1, 3)
#endif
#endif
#ifdef VARIANT_f16_fp8t
MMA_ALL(f16_fp8t, 2, 1)
#ifdef WGMMA
WG_ALL(f16_fp8t, 2, 1)
#endif
#endif
#ifdef VARIANT_f16_fp8b
MMA_ALL(f16_fp8b, 2, 2)
#ifdef WGMMA
WG_ALL(f16_fp8b, 2, 2)
#endif
#endif
#ifdef VARIANT_f16_mxfp4
MMA_ALL(f16_mxfp4, 2, 3)
#ifdef WGMMA
WG_ALL(f16_mxfp4, 2, 3)
#endif
#endif

#ifdef VARIANT_common
// finalize_<in>_<out> (one column per thread) and finalize8_<in>_<out> (eight, h % 8 == 0).
#define FIN(SUF, DT, ODT)                                                                                     \
    extern "C" __global__ void finalize_##SUF(const void* y, const int* pos, const float* s, int n, int k, int h, \
                                              void* out) {                                                    \
        finalize_body<DT, ODT>(y, pos, s, n, k, h, out);                                                      \
    }                                                                                                          \
    extern "C" __global__ void finalize8_##SUF(const void* y, const int* pos, const float* s, int n, int k,     \
                                               int h, void* out) {                                            \
        finalize8_body<DT, ODT>(y, pos, s, n, k, h, out);                                                     \
    }
FIN(f32_f32, 0, 0)
FIN(bf16_bf16, 1, 1)
FIN(bf16_f32, 1, 0)
FIN(f16_f16, 2, 2)
FIN(f16_f32, 2, 0)
#endif  // VARIANT_common
