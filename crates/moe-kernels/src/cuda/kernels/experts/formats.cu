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

