// Row movement for the communication strategies (moe-comm): gathers rows by index, copies row
// fields between packed and separate layouts, and sums exchanged rows in f32.
//
// No #include: NVRTC compiles this with nothing but its built-ins. bf16 and f16 are raw 16-bit
// patterns; conversions are explicit (bf16 rounds to nearest even with a quiet NaN, like the
// `half` crate on the host; f16 uses the PTX cvt.rn instruction, also round to nearest even).
// Sums accumulate in f32 in the order the host code uses, so device and host results are
// bit-identical.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

struct alignas(16) W16 {
    u32 a, b, c, d;
};

// dtype codes shared with comm_rows.rs
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

__device__ __forceinline__ float bits_to_f32(u32 u) {
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(u));
    return f;
}

__device__ __forceinline__ u32 f32_to_bits(float f) {
    u32 u;
    asm("mov.b32 %0, %1;" : "=r"(u) : "f"(f));
    return u;
}

__device__ __forceinline__ float bf16_to_f32(u16 b) { return bits_to_f32(((u32)b) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float load_f(const void* p, i64 i, int dt) {
    if (dt == DT_F32) return ((const float*)p)[i];
    if (dt == DT_BF16) return bf16_to_f32(((const u16*)p)[i]);
    return f16_to_f32(((const u16*)p)[i]);
}

__device__ __forceinline__ void store_f(void* p, i64 i, int dt, float v) {
    if (dt == DT_F32) {
        ((float*)p)[i] = v;
    } else if (dt == DT_BF16) {
        ((u16*)p)[i] = f32_to_bf16(v);
    } else {
        ((u16*)p)[i] = f32_to_f16(v);
    }
}

// dst[r * dst_stride + dst_off + c] = src[s * src_stride + src_off + c] for c < width, with
// s = idx[r] (or r when idx is null); strides, offsets and width in words of T. One block per
// row (grid-stride over rows), threads over the row's words.
template <typename T>
__device__ __forceinline__ void copy_rows_impl(T* __restrict__ dst, i64 dst_stride, i64 dst_off,
                                               const T* __restrict__ src, i64 src_stride, i64 src_off,
                                               const int* __restrict__ idx, i64 rows, i64 width) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 s = idx ? (i64)idx[r] : r;
        const T* from = src + s * src_stride + src_off;
        T* to = dst + r * dst_stride + dst_off;
        for (i64 c = threadIdx.x; c < width; c += blockDim.x) {
            to[c] = from[c];
        }
    }
}

#define COPY_ROWS(NAME, T)                                                                             \
    extern "C" __global__ void NAME(T* dst, i64 dst_stride, i64 dst_off, const T* src, i64 src_stride, \
                                    i64 src_off, const int* idx, i64 rows, i64 width) {               \
        copy_rows_impl<T>(dst, dst_stride, dst_off, src, src_stride, src_off, idx, rows, width);       \
    }

COPY_ROWS(copy_rows_w16, W16)
COPY_ROWS(copy_rows_w4, u32)
COPY_ROWS(copy_rows_w1, u8)

// dst[g, c] = sum over j in offsets[g]..offsets[g+1] of src[rows[j], c], accumulated in f32 from
// 0 in the listed order, stored as out_dt. One block per group, threads over the h columns.
extern "C" __global__ void segment_sum_rows(void* dst, int out_dt, const void* src, int in_dt,
                                            const int* offsets, const int* rows, i64 groups, i64 h) {
    for (i64 g = blockIdx.x; g < groups; g += gridDim.x) {
        const int a = offsets[g];
        const int b = offsets[g + 1];
        for (i64 c = threadIdx.x; c < h; c += blockDim.x) {
            float acc = 0.0f;
            for (int j = a; j < b; ++j) {
                acc += load_f(src, (i64)rows[j] * h + c, in_dt);
            }
            store_f(dst, g * h + c, out_dt, acc);
        }
    }
}

// dst[e] = src[e] + src[len + e] + ... + src[(blocks - 1) * len + e], in f32 in block order
// (starting from the first block's value, as the host sum does), stored in the same dtype.
extern "C" __global__ void sum_blocks(void* dst, const void* src, int dt, i64 blocks, i64 len) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += stride) {
        float acc = load_f(src, e, dt);
        for (i64 b = 1; b < blocks; ++b) {
            acc += load_f(src, b * len + e, dt);
        }
        store_f(dst, e, dt, acc);
    }
}
