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

struct alignas(16) F4 {
    float x, y, z, w;
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
// s = idx[r] (or r when idx is null); strides, offsets and width in words of T. Rows at or past
// *limit (when given: a row count known only on the device) are skipped. A row whose index lies
// outside 0..src_rows is left unwritten (the callers check their indices first; this keeps a
// wrong device index from reading outside `src`). One block per row (grid-stride over rows),
// threads over the row's words, COPY_UNROLL loads in flight per thread before their stores.
#define COPY_UNROLL 4
template <typename T>
__device__ __forceinline__ void copy_rows_impl(T* __restrict__ dst, i64 dst_stride, i64 dst_off,
                                               const T* __restrict__ src, i64 src_stride, i64 src_off,
                                               const int* __restrict__ idx, i64 rows, i64 width, i64 src_rows,
                                               const int* __restrict__ limit) {
    if (limit) rows = min(rows, (i64)*limit);
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const i64 s = idx ? (i64)idx[r] : r;
        if (s < 0 || s >= src_rows) continue;
        const T* from = src + s * src_stride + src_off;
        T* to = dst + r * dst_stride + dst_off;
        for (i64 c0 = threadIdx.x; c0 < width; c0 += COPY_UNROLL * (i64)blockDim.x) {
            T v[COPY_UNROLL];
#pragma unroll
            for (int u = 0; u < COPY_UNROLL; ++u) {
                const i64 c = c0 + u * (i64)blockDim.x;
                if (c < width) v[u] = from[c];
            }
#pragma unroll
            for (int u = 0; u < COPY_UNROLL; ++u) {
                const i64 c = c0 + u * (i64)blockDim.x;
                if (c < width) to[c] = v[u];
            }
        }
    }
}

#define COPY_ROWS(NAME, T)                                                                                   \
    extern "C" __global__ void NAME(T* dst, i64 dst_stride, i64 dst_off, const T* src, i64 src_stride,       \
                                    i64 src_off, const int* idx, i64 rows, i64 width, i64 src_rows,         \
                                    const int* limit) {                                                      \
        copy_rows_impl<T>(dst, dst_stride, dst_off, src, src_stride, src_off, idx, rows, width, src_rows,    \
                          limit);                                                                            \
    }

COPY_ROWS(copy_rows_w16, W16)
COPY_ROWS(copy_rows_w4, u32)
COPY_ROWS(copy_rows_w1, u8)

// dst[g, c] = sum over j in offsets[g]..offsets[g+1] of src[rows[j], c], accumulated in f32 from
// 0 in the listed order, stored as out_dt; rows outside 0..src_rows are skipped (the callers
// check them on the host first). One block per group, threads over the h columns.
extern "C" __global__ void segment_sum_rows(void* dst, int out_dt, const void* src, int in_dt,
                                            const int* offsets, const int* rows, i64 groups, i64 h,
                                            i64 src_rows) {
    for (i64 g = blockIdx.x; g < groups; g += gridDim.x) {
        const int a = offsets[g];
        const int b = offsets[g + 1];
        for (i64 c = threadIdx.x; c < h; c += blockDim.x) {
            float acc = 0.0f;
            for (int j = a; j < b; ++j) {
                const i64 r = rows[j];
                if (r < 0 || r >= src_rows) continue;
                acc += load_f(src, r * h + c, in_dt);
            }
            store_f(dst, g * h + c, out_dt, acc);
        }
    }
}

// Eight consecutive elements at element index i (a multiple of 8; the row start is 16-byte
// aligned for 16-bit types and 32-byte aligned for f32, checked by the caller).
template <int DT>
__device__ __forceinline__ void load8(const void* p, i64 i, float v[8]) {
    if (DT == DT_F32) {
        const F4 a = ((const F4*)p)[i / 4];
        const F4 b = ((const F4*)p)[i / 4 + 1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
        const W16 w = ((const W16*)p)[i / 8];
        const u32 u[4] = {w.a, w.b, w.c, w.d};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u16 lo = (u16)(u[k] & 0xffffu);
            const u16 hi = (u16)(u[k] >> 16);
            v[2 * k] = DT == DT_BF16 ? bf16_to_f32(lo) : f16_to_f32(lo);
            v[2 * k + 1] = DT == DT_BF16 ? bf16_to_f32(hi) : f16_to_f32(hi);
        }
    }
}

template <int DT>
__device__ __forceinline__ void store8(void* p, i64 i, const float v[8]) {
    if (DT == DT_F32) {
        F4 a, b;
        a.x = v[0]; a.y = v[1]; a.z = v[2]; a.w = v[3];
        b.x = v[4]; b.y = v[5]; b.z = v[6]; b.w = v[7];
        ((F4*)p)[i / 4] = a;
        ((F4*)p)[i / 4 + 1] = b;
    } else {
        u32 u[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u16 lo = DT == DT_BF16 ? f32_to_bf16(v[2 * k]) : f32_to_f16(v[2 * k]);
            const u16 hi = DT == DT_BF16 ? f32_to_bf16(v[2 * k + 1]) : f32_to_f16(v[2 * k + 1]);
            u[k] = (u32)lo | ((u32)hi << 16);
        }
        W16 w;
        w.a = u[0]; w.b = u[1]; w.c = u[2]; w.d = u[3];
        ((W16*)p)[i / 8] = w;
    }
}

// segment_sum_rows with eight columns per thread and 16-byte loads (h a multiple of 8): the
// same f32 sums in the same order, so the same bits.
template <int IN, int OUT>
__device__ __forceinline__ void segment_sum_v8_impl(void* dst, const void* src, const int* offsets, const int* rows,
                                                    i64 groups, i64 h, i64 src_rows) {
    const i64 h8 = h / 8;
    for (i64 g = blockIdx.x; g < groups; g += gridDim.x) {
        const int a = offsets[g];
        const int b = offsets[g + 1];
        for (i64 c = threadIdx.x; c < h8; c += blockDim.x) {
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
            for (int j = a; j < b; ++j) {
                const i64 r = rows[j];
                if (r < 0 || r >= src_rows) continue;
                float v[8];
                load8<IN>(src, r * h + c * 8, v);
#pragma unroll
                for (int k = 0; k < 8; ++k) acc[k] += v[k];
            }
            store8<OUT>(dst, g * h + c * 8, acc);
        }
    }
}

#define SEGMENT_SUM_V8(IN, OUT)                                                                              \
    extern "C" __global__ void segment_sum_v8_##IN##_##OUT(void* dst, const void* src, const int* offsets,    \
                                                          const int* rows, i64 groups, i64 h, i64 src_rows) { \
        segment_sum_v8_impl<IN, OUT>(dst, src, offsets, rows, groups, h, src_rows);                          \
    }

SEGMENT_SUM_V8(0, 0)
SEGMENT_SUM_V8(0, 1)
SEGMENT_SUM_V8(0, 2)
SEGMENT_SUM_V8(1, 0)
SEGMENT_SUM_V8(1, 1)
SEGMENT_SUM_V8(1, 2)
SEGMENT_SUM_V8(2, 0)
SEGMENT_SUM_V8(2, 1)
SEGMENT_SUM_V8(2, 2)

// dst[e] = block 0 [e] + block 1 [e] + ... + block (blocks - 1) [e], in f32 in block order
// (starting from the first block's value, as the host sum does), stored in the same dtype.
// Block b is src + b * len, except block `own` (when 0 <= own < blocks), which is `own_src`;
// the blocks after it then sit one block earlier in src (the NCCL reduce-scatter sums its own
// block where it already is instead of copying it next to the received ones).
__device__ __forceinline__ i64 block_at(i64 b, i64 own) { return (own >= 0 && b > own) ? b - 1 : b; }

extern "C" __global__ void sum_blocks(void* dst, const void* src, const void* own_src, i64 own, int dt, i64 blocks,
                                      i64 len) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += stride) {
        float acc = own == 0 ? load_f(own_src, e, dt) : load_f(src, e, dt);
        for (i64 b = 1; b < blocks; ++b) {
            acc += b == own ? load_f(own_src, e, dt) : load_f(src, block_at(b, own) * len + e, dt);
        }
        store_f(dst, e, dt, acc);
    }
}

// sum_blocks with eight elements per thread and 16-byte loads (len a multiple of 8, every
// base 16-byte aligned, checked by the caller): the same f32 sums in the same order.
template <int DT>
__device__ __forceinline__ void sum_blocks_v8_impl(void* dst, const void* src, const void* own_src, i64 own,
                                                   i64 blocks, i64 len) {
    const i64 stride = (i64)gridDim.x * blockDim.x * 8;
    for (i64 e = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 8; e < len; e += stride) {
        float acc[8], v[8];
        if (own == 0) {
            load8<DT>(own_src, e, acc);
        } else {
            load8<DT>(src, e, acc);
        }
        for (i64 b = 1; b < blocks; ++b) {
            if (b == own) {
                load8<DT>(own_src, e, v);
            } else {
                load8<DT>(src, block_at(b, own) * len + e, v);
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) acc[k] += v[k];
        }
        store8<DT>(dst, e, acc);
    }
}

#define SUM_BLOCKS_V8(DT)                                                                                      \
    extern "C" __global__ void sum_blocks_v8_##DT(void* dst, const void* src, const void* own_src, i64 own,    \
                                                  i64 blocks, i64 len) {                                     \
        sum_blocks_v8_impl<DT>(dst, src, own_src, own, blocks, len);                                         \
    }

SUM_BLOCKS_V8(0)
SUM_BLOCKS_V8(1)
SUM_BLOCKS_V8(2)

// ---- all-to-all routing ---------------------------------------------------------------------

// The all-to-all routing of one dispatch, built where the slot ids already are (alltoall.rs
// builds the same lists on the host for host payloads). Token t goes once to every distinct rank
// owning one of its k slots (owner[slot] < world <= 64: a bit of a 64-bit mask). One block of
// ROUTE_THREADS threads, each owning a contiguous run of tokens, so block-wide prefix sums over
// the runs keep tokens in ascending order. Writes, with m the number of rows sent:
//   index[0, m):                        the token of every sent row, grouped by destination rank
//                                       (rank order), tokens ascending within a rank;
//   index[max_rows, max_rows + n + 1):  offsets (CSR) of each token's entries in the next list;
//   index[max_rows + n + 1, + m):       each token's row numbers in send order, ascending;
//   index[scratch, + 2n):               the tokens' rank masks (scratch);
//   head[0, world):                     rows sent to each rank;
//   head[world], head[world + 1]:       1 + the first token naming a slot outside 0..num_slots
//                                       and that slot (0, 0 when every slot is valid).
// Invalid slots send nowhere; the caller refuses the whole dispatch when head[world] != 0.
#define ROUTE_THREADS 1024

// Exclusive prefix sum of v over the block; *total receives the block's sum.
__device__ int route_scan(int v, int* total) {
    __shared__ int warp_sums[ROUTE_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int s = warp_sums[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        warp_sums[lane] = s;
    }
    __syncthreads();
    const int excl = x - v + (warp > 0 ? warp_sums[warp - 1] : 0);
    *total = warp_sums[ROUTE_THREADS / 32 - 1];
    __syncthreads();  // warp_sums is reused by the next scan
    return excl;
}

extern "C" __global__ void __launch_bounds__(ROUTE_THREADS) a2a_route(const int* slots, int n, int k, const int* owner,
                                                                    int num_slots, int world, int max_rows, int scratch,
                                                                    int* index, int* head) {
    __shared__ int first_bad;
    if (threadIdx.x == 0) first_bad = 0x7fffffff;
    __syncthreads();
    const int per = (n + ROUTE_THREADS - 1) / ROUTE_THREADS;
    const int t0 = min(n, (int)threadIdx.x * per), t1 = min(n, t0 + per);
    unsigned long long* masks = (unsigned long long*)(index + scratch);
    int* offsets = index + max_rows;
    int* rows = offsets + n + 1;
    // Masks first, neighbouring threads on neighbouring tokens (coalesced slot reads); the
    // barrier makes them visible to the threads whose runs hold them.
    for (int t = threadIdx.x; t < n; t += ROUTE_THREADS) {
        unsigned long long m = 0;
        for (int j = 0; j < k; ++j) {
            const int s = slots[(long long)t * k + j];
            if (s >= 0 && s < num_slots) m |= 1ull << owner[s];
            else atomicMin(&first_bad, t);
        }
        masks[t] = m;
    }
    __syncthreads();
    int mine = 0;
    for (int t = t0; t < t1; ++t) mine += __popcll(masks[t]);
    int total;
    int at = route_scan(mine, &total);
    for (int t = t0; t < t1; ++t) {
        offsets[t] = at;
        at += __popcll(masks[t]);
    }
    if (threadIdx.x == 0) offsets[n] = total;
    int base = 0;
    for (int r = 0; r < world; ++r) {
        int cr = 0;
        for (int t = t0; t < t1; ++t) cr += (int)((masks[t] >> r) & 1ull);
        int sent;
        int pos = base + route_scan(cr, &sent);
        const unsigned long long below = (1ull << r) - 1ull;
        for (int t = t0; t < t1; ++t) {
            const unsigned long long m = masks[t];
            if ((m >> r) & 1ull) {
                index[pos] = t;
                rows[offsets[t] + __popcll(m & below)] = pos;
                ++pos;
            }
        }
        if (threadIdx.x == 0) head[r] = sent;
        base += sent;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const int t = first_bad;
        head[world] = t == 0x7fffffff ? 0 : t + 1;
        int slot = 0;
        if (t != 0x7fffffff) {
            for (int j = 0; j < k; ++j) {
                const int s = slots[(long long)t * k + j];
                if (s < 0 || s >= num_slots) {
                    slot = s;
                    break;
                }
            }
        }
        head[world + 1] = slot;
    }
}
