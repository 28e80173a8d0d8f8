// Element-wise row kernels of cuda/enabled/rows.rs: weight-on-input row scaling and float casts.
//
// No headers: bf16/f16 are raw 16-bit patterns. Conversions match the `half` crate the host
// path uses bit for bit: bf16 by round-to-nearest-even on the bits with NaN kept quiet, f16
// through the PTX round-to-nearest conversion with the same NaN payload rule as `half`.

// dtype codes (cuda/enabled/rows.rs: float_dtype_code)
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    unsigned int x = (unsigned int)h;
    if ((x & 0x7fffu) > 0x7f80u) x |= 0x0040u;  // NaN: `half` sets the quiet bit
    return __uint_as_float(x << 16);
}

__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x0040u);  // NaN, kept quiet
    // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
    x += 0x7fffu + ((x >> 16) & 1u);
    return (unsigned short)(x >> 16);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x03ffu) != 0) {
        // NaN: `half` keeps the payload and sets the quiet bit; PTX may canonicalise it.
        unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
        return __uint_as_float(sign | 0x7fc00000u | (((unsigned int)h & 0x03ffu) << 13));
    }
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned int x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        // The PTX conversion returns a canonical NaN; `half` keeps the top payload bits.
        return (unsigned short)(((x >> 16) & 0x8000u) | 0x7c00u | 0x0200u | ((x & 0x007fffffu) >> 13));
    }
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float load_f(const unsigned char* p, int dtype, unsigned long long i) {
    if (dtype == DT_BF16) return bf16_to_f32(((const unsigned short*)p)[i]);
    if (dtype == DT_F16) return f16_to_f32(((const unsigned short*)p)[i]);
    return ((const float*)p)[i];
}

__device__ __forceinline__ void store_f(unsigned char* p, int dtype, unsigned long long i, float v) {
    if (dtype == DT_BF16) {
        ((unsigned short*)p)[i] = f32_to_bf16(v);
    } else if (dtype == DT_F16) {
        ((unsigned short*)p)[i] = f32_to_f16(v);
    } else {
        ((float*)p)[i] = v;
    }
}

// out[r, c] = x[r, c] * w[r] in f32, rounded to x's dtype; x and out are [rows, row_len].
extern "C" __global__ void scale_rows(const unsigned char* x, int dtype, const float* w, unsigned long long rows,
                                      unsigned long long row_len, unsigned char* out) {
    unsigned long long total = rows * row_len;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        float v = __fmul_rn(load_f(x, dtype, i), w[i / row_len]);
        store_f(out, dtype, i, v);
    }
}

// out[i] = x[i] converted from src_dtype to dst_dtype (through f32, exact for the widening
// direction, round to nearest even for the narrowing one).
extern "C" __global__ void cast_float(const unsigned char* x, int src_dtype, unsigned char* out, int dst_dtype,
                                      unsigned long long n) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        store_f(out, dst_dtype, i, load_f(x, src_dtype, i));
    }
}
