// FP8 x FP8 experts on the tensor cores (see cuda/enabled/experts/fp8.rs for the pipeline).
// The last part of the experts module (one NVRTC source, `SRC` in enabled/experts.rs): it uses
// the number formats, argument structs and activation of formats.cu, gemv.cu's GemmArgs and the
// cp.async / wgmma / mbarrier / TMA helpers of mma.cu, wgmma.cu and tma.cu.
//
// Activations are E4M3 codes with f32 scales: one per row and 128-column group (DeepSeek's
// dynamic 1 x 128 recipe, `s = amax / 448`, `code = e4m3_sat(x / s)`) or one static scale for
// the whole tensor (ModelOpt per-tensor FP8). Weights are E4M3 codes with one f32 scale per
// 128 x 128 block, or one per slot. A product `sum_k a_k w_k` is accumulated on the tensor
// cores from the raw codes (exact E4M3 products) one 128-wide K block at a time, and each
// block's partial sum is promoted into the f32 total times (weight block scale x activation
// group scale); per-tensor scales multiply the finished total once.

// ---- activation quantization ----------------------------------------------------------------

// Scales of the FP8 inputs and outputs of one GEMM (`QuantIo` in fp8_experts.rs).
struct QuantIo {
    const float* in_scales;  // [rows, K / 128] group scales of the input codes, or null: in_scale
    float in_scale;
    float* out_scales;  // [rows, units / 128] group scales of quantized outputs, or null: out_scale
    float out_scale;
    // The GEMV's FC1 (else null): FC2's input codes, which the last block to finish each
    // 128-channel group of a slot quantizes from the f32 outputs, and the zeroed counters of
    // the blocks done per [slot tile, group].
    unsigned char* out_codes;
    int* group_done;
};

// Two f32 -> two E4M3 codes (nearest even, saturating, NaN kept), `a` in the low byte.
__device__ __forceinline__ u16 e4m3x2(float a, float b) {
    u16 pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(b), "f"(a));
    return pair;
}

// Four consecutive activations starting at element i (i % 4 == 0).
template <int DT> __device__ __forceinline__ void load4(const void* p, long long i, float v[4]) {
    if (DT == 0 || DT == 3) {
        // DT 3: f32 that other blocks of the running kernel wrote: read at L2, past this SM's L1.
        const float4 a = DT == 3 ? __ldcg((const float4*)((const float*)p + i)) : *(const float4*)((const float*)p + i);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    } else {
        const uint2 q = *(const uint2*)((const u16*)p + i);
        const u32 w[2] = {q.x, q.y};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            v[2 * j] = DT == 1 ? __uint_as_float(w[j] << 16) : f16_to_f32((u16)(w[j] & 0xffffu));
            v[2 * j + 1] = DT == 1 ? __uint_as_float(w[j] & 0xffff0000u) : f16_to_f32((u16)(w[j] >> 16));
        }
    }
}

// Group gi (128 columns) of input row `src` into row r of `codes` / `scales`, by one warp (4
// values a lane). scale > 0: that static scale, no scales written; otherwise the group's
// dynamic scale (a group whose amax is 0 keeps scale 0 and the codes of its values, 0 or
// NaN, as the CPU's qdq leaves such a group as it is).
template <int DTI>
__device__ __forceinline__ void f8quant_group(const void* in, long long src, int r, int gi, int cols, float scale,
                                              unsigned char* codes, float* scales) {
    const int lane = threadIdx.x & 31, groups = cols >> 7;
    float v[4];
    load4<DTI>(in, src * cols + gi * 128 + lane * 4, v);
    float s = scale;
    if (!(scale > 0.0f)) {
        float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        s = amax / 448.0f;
        if (lane == 0) scales[(long long)r * groups + gi] = s;
    }
    // x / s with IEEE division, as the host quantizes: a reciprocal multiply differs by an ulp,
    // which moves a code where x / s lies that close to an E4M3 rounding midpoint (measured on
    // an H100: one output of 268800 then missed the FP8-block criterion against the oracle).
    float x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = s == 0.0f ? v[j] : v[j] / s;
    *(u32*)(codes + (long long)r * cols + gi * 128 + lane * 4) = (u32)e4m3x2(x[0], x[1]) | ((u32)e4m3x2(x[2], x[3]) << 16);
}

#ifdef VARIANT_common
// `rows` rows of `cols` values (rows at or past *row_limit, when given, skipped) to codes and
// scales. Grid: (groups / 8 rounded up, rows up to 65535), 256 threads: one warp per (row,
// group), each block's rows strided by the grid, so no index is divided (the first version's
// 64-bit division per warp made it compute-bound at a fifth of the copy rate).
#define F8QUANT(NAME, DTI)                                                                                     \
    extern "C" __global__ void NAME(const void* in, const int* row_limit, int rows, int cols, float scale,      \
                                    unsigned char* codes, float* scales) {                                     \
        if (row_limit) rows = min(rows, row_limit[0]);                                                          \
        const int gi = blockIdx.x * 8 + (threadIdx.x >> 5);                                                     \
        if (gi >= (cols >> 7)) return;                                                                          \
        for (int r = blockIdx.y; r < rows; r += gridDim.y) f8quant_group<DTI>(in, r, r, gi, cols, scale, codes, scales); \
    }
F8QUANT(f8quant_f32, 0)
F8QUANT(f8quant_bf16, 1)
F8QUANT(f8quant_f16, 2)

// A decode step's prologue in one block: the permutation (`permute_block`) and the FC1 input's
// `rows` token rows quantized as f8quant does (the GEMV reads the tokens' codes, not permuted
// rows, so neither waits for the other).
#define F8PERMUTE(NAME, DTI)                                                                                   \
    extern "C" __global__ void __launch_bounds__(1024)                                                        \
        NAME(const int* slots, int nk, int slot_start, int num_local, int bm, int group, int* offsets,         \
             int4* tiles, int* num_tiles, int* pos, int* row_sel, int* zero, int zero_count, const void* in,   \
             int rows, int cols, float scale, unsigned char* codes, float* scales) {                           \
        permute_block(slots, nk, slot_start, num_local, bm, group, offsets, tiles, num_tiles, pos, row_sel,    \
                      zero, zero_count);                                                                       \
        const int groups = cols >> 7;                                                                          \
        for (int w = threadIdx.x >> 5; w < rows * groups; w += blockDim.x >> 5)                              \
            f8quant_group<DTI>(in, w / groups, w / groups, w % groups, cols, scale, codes, scales);            \
    }
F8PERMUTE(f8permute_f32, 0)
F8PERMUTE(f8permute_bf16, 1)
F8PERMUTE(f8permute_f16, 2)

// The TMA path's FC1 input: permuted row r < *count gets the codes (`cols` bytes) and group
// scales (`cols / 128`, when `scales` is given) of token row_sel[r] / top_k. The tokens are
// quantized once and their codes copied per selection: quantizing each selection's row
// repeated the work top_k times. One block per row.
extern "C" __global__ void f8expand(const uint4* __restrict__ codes, const float* __restrict__ scales,
                                    const int* __restrict__ row_sel, int top_k, const int* __restrict__ count,
                                    int cols, uint4* __restrict__ codes_p, float* __restrict__ scales_p) {
    const int r = blockIdx.x;
    if (r >= *count) return;
    const long long src = row_sel[r] / top_k;
    const int chunks = cols >> 4, groups = cols >> 7;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) codes_p[(long long)r * chunks + c] = codes[src * chunks + c];
    if (scales)
        for (int g = threadIdx.x; g < groups; g += blockDim.x) scales_p[(long long)r * groups + g] = scales[src * groups + g];
}
#endif  // VARIANT_common

// ---- tensor-core GEMV (few rows per slot) -----------------------------------------------------
//
// mma.sync m16n8k32 with E4M3 operands: A = 16 weight rows (output units), B = the codes of up to
// 8 input rows of the slot (one or two such sets per pass), so the weights are never decoded and
// each weight byte is read once per pass of 8 or 16 rows. A block of 4 warps computes 16 units of one slot; warp w takes the 128-column K
// blocks w, w + 4, ... and the partial sums meet in shared memory (a slot's 16 units then stream
// from four warps, which keeps enough loads in flight when a forward touches few slots).
// K order inside an MMA is free as long as A and B agree: each lane reads 16 consecutive bytes
// of its A rows and of its B row, whose words are the k = 4t..4t+3 / 16+4t.. fragments of two
// consecutive MMAs.

#define F8_UNITS 16
#define F8_WARPS 4

__device__ __forceinline__ void mma_e4m3(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 64-column step: rows (r0, r1) of A against B, two MMAs into c.
__device__ __forceinline__ void mma_step(float c[4], uint4 r0, uint4 r1, uint4 b) {
    mma_e4m3(c, r0.x, r1.x, r0.y, r1.y, b.x, b.y);
    mma_e4m3(c, r0.z, r1.z, r0.w, r1.w, b.z, b.w);
}

// The gated activations (SwiGLU, GPT-OSS's clamped SwiGLU) without the plain one's branch.
__device__ __forceinline__ float activate_gated(const ActArgs& a, float gate, float up) {
    if (a.kind == 1) {
        const float g = fminf(gate, a.limit);
        const float u = fminf(fmaxf(up, -a.limit), a.limit);
        return (u + a.beta) * (g / (1.0f + expf(-a.alpha * g)));
    }
    return gate / (1.0f + expf(-gate)) * up;
}

__device__ __forceinline__ float slot_scale(const WeightArgs& w, int e) { return w.per_slot ? w.per_slot[e] : w.tensor_scale; }

// Grid: (ceil(units / 16), non-empty slots bound), 128 threads. FC1 writes the activation in
// f32 (its quantization follows), FC2 y in DT. BLOCK: block scales; else per-tensor scales.
template <int DT, bool BLOCK, bool FC1, int SETS>
__device__ void f8gemv_body(const GemmArgs& g, const WeightArgs& w, const ActArgs& act, const QuantIo& q) {
    __shared__ float red[F8_WARPS][8 * SETS][32];
    if ((int)blockIdx.y >= g.num_tiles[0]) return;
    const int e = g.tiles[blockIdx.y].x;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, t = lane & 3;
    const bool two = FC1 && g.gated;
    const int K = g.k, kblocks = K >> 7;
    const int u0 = blockIdx.x * F8_UNITS;
    const int r_begin = g.offsets[e], r_end = g.offsets[e + 1];
    // This lane's A rows: units u0 + gq and u0 + gq + 8, clamped into the matrix (rows past the
    // end are computed and never stored).
    const int ua = min(u0 + gq, g.units - 1), ub = min(u0 + gq + 8, g.units - 1);
    const long long slot = (long long)e * w.rows;
    const unsigned char* W = (const unsigned char*)w.w;
    const unsigned char* pu0 = W + (slot + ua) * K + t * 16;
    const unsigned char* pu1 = W + (slot + ub) * K + t * 16;
    const unsigned char* pg0 = two ? W + (slot + g.units + ua) * K + t * 16 : pu0;
    const unsigned char* pg1 = two ? W + (slot + g.units + ub) * K + t * 16 : pu1;
    // The 16 units (and their 16 gate rows: units % 128 == 0) lie in one 128-row scale block.
    const int sr = (w.rows + 127) >> 7;
    const float* su = w.scales + ((long long)e * sr + (min(u0, g.units - 1) >> 7)) * kblocks;
    const float* sg = w.scales + ((long long)e * sr + ((g.units + min(u0, g.units - 1)) >> 7)) * kblocks;
    const unsigned char* A = (const unsigned char*)g.a;

    // Passes of up to 8 * SETS rows, SETS sets of 8 (h = 0, 1): B column gq of set h is row
    // r0 + 8h + gq, accumulator columns 2t, 2t + 1 rows r0 + 8h + 2t (+1). Each weight fragment
    // feeds both sets, so with SETS 2 a slot of up to 16 rows reads its weights once (passes of
    // 8 read DeepSeek-V3's twice for the 40% of slots past 8 rows at 256 tokens: 1.33x the
    // floor on an H100); SETS 1 keeps the registers of one set (more blocks per SM).
    for (int r0 = r_begin; r0 < r_end; r0 += 8 * SETS) {
        const bool hi = SETS == 2 && r_end - r0 > 8;  // the second set has rows (block-uniform)
        const unsigned char* pa[2];
        bool has[2];
        long long srow[2][2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int rb = r0 + 8 * h + gq;
            const long long arow = rb < r_end ? (FC1 ? (long long)(g.row_sel[rb] / g.top_k) : (long long)rb) : -1;
            has[h] = arow >= 0;
            pa[h] = A + (arow < 0 ? 0 : arow * K) + t * 16;
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int rr = min(r0 + 8 * h + 2 * t + c, r_end - 1);
                srow[h][c] = FC1 ? (long long)(g.row_sel[rr] / g.top_k) : (long long)rr;
            }
        }
        float au[2][4] = {}, ag[2][4] = {};
        // Two K blocks (four steps) per iteration: every load is issued before the first MMA.
        for (int kb = warp; kb < kblocks; kb += 2 * F8_WARPS) {
            uint4 wu[2][2][2], wg[2][2][2], b[2][2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int kbi = kb + i * F8_WARPS;
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    const int col = kbi * 128 + s * 64;
                    const bool ok = kbi < kblocks;
                    const uint4 z = make_uint4(0, 0, 0, 0);
                    wu[i][s][0] = ok ? *(const uint4*)(pu0 + col) : z;
                    wu[i][s][1] = ok ? *(const uint4*)(pu1 + col) : z;
                    if (two) {
                        wg[i][s][0] = ok ? *(const uint4*)(pg0 + col) : z;
                        wg[i][s][1] = ok ? *(const uint4*)(pg1 + col) : z;
                    }
                    b[i][s][0] = ok && has[0] ? *(const uint4*)(pa[0] + col) : z;
                    b[i][s][1] = ok && hi && has[1] ? *(const uint4*)(pa[1] + col) : z;
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int kbi = kb + i * F8_WARPS;
                if (kbi >= kblocks) break;
                const float wsu = BLOCK ? su[kbi] : 1.0f, wsg = BLOCK && two ? sg[kbi] : wsu;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    if (h == 1 && !hi) break;
                    float pu[4] = {0.0f, 0.0f, 0.0f, 0.0f}, pg[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                    for (int s = 0; s < 2; ++s) {
                        mma_step(pu, wu[i][s][0], wu[i][s][1], b[i][s][h]);
                        if (two) mma_step(pg, wg[i][s][0], wg[i][s][1], b[i][s][h]);
                    }
                    float f[2] = {1.0f, 1.0f}, fg[2] = {1.0f, 1.0f};
                    if (BLOCK) {
                        const float a0 = q.in_scales[srow[h][0] * kblocks + kbi];
                        const float a1 = q.in_scales[srow[h][1] * kblocks + kbi];
                        f[0] = wsu * a0; f[1] = wsu * a1; fg[0] = wsg * a0; fg[1] = wsg * a1;
                    }
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        au[h][j] = fmaf(pu[j], f[j & 1], au[h][j]);
                        if (two) ag[h][j] = fmaf(pg[j], fg[j & 1], ag[h][j]);
                    }
                }
            }
        }
#pragma unroll
        for (int h = 0; h < SETS; ++h)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                red[warp][h * 8 + j][lane] = au[h][j];
                red[warp][h * 8 + 4 + j][lane] = ag[h][j];
            }
        __syncthreads();
        if (warp == 0) {
            const float os = BLOCK ? 1.0f : slot_scale(w, e) * q.in_scale;
            const int rows_w = two ? 2 * g.units : g.units;
#pragma unroll 1
            for (int h = 0; h < SETS; ++h) {
                if (h == 1 && !hi) break;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float up = 0.0f, gate = 0.0f;
#pragma unroll
                    for (int v = 0; v < F8_WARPS; ++v) {
                        up += red[v][h * 8 + j][lane];
                        gate += red[v][h * 8 + 4 + j][lane];
                    }
                    const int unit = u0 + gq + ((j & 2) ? 8 : 0), row = r0 + 8 * h + 2 * t + (j & 1);
                    if (unit >= g.units || row >= r_end) continue;
                    up *= os;
                    gate *= os;
                    if (g.bias) {
                        up += g.bias[(long long)e * rows_w + unit];
                        if (two) gate += g.bias[(long long)e * rows_w + g.units + unit];
                    }
                    const long long o = (long long)row * g.units + unit;
                    if (FC1) ((float*)g.out)[o] = two ? activate(act, gate, up) : activate(act, 0.0f, up);
                    else store_elem<DT>(g.out, o, up);
                }
            }
        }
        __syncthreads();
    }
    if (FC1 && q.out_codes) {
        // The last of the 8 blocks of this 128-channel group quantizes it for every row of
        // the slot (FC2's input, as f8quant_f32 would in a launch of its own): the others'
        // stores are fenced before their counts, and read back at L2.
        __shared__ int last;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0)
            last = atomicAdd(&q.group_done[blockIdx.y * (g.units >> 7) + (u0 >> 7)], 1) == 128 / F8_UNITS - 1;
        __syncthreads();
        if (last) {
            __threadfence();
            for (int r = r_begin + warp; r < r_end; r += F8_WARPS)
                f8quant_group<3>(g.out, r, r, u0 >> 7, g.units, q.out_scale, q.out_codes, q.out_scales);
        }
    }
}

#define F8GEMV(NAME, DT, BLOCK, FC1, SETS)                                                                 \
    extern "C" __global__ void __launch_bounds__(128) NAME(GemmArgs g, WeightArgs w, ActArgs a, QuantIo q) { \
        f8gemv_body<DT, BLOCK, FC1, SETS>(g, w, a, q);                                                     \
    }
// f8gemv8: passes of 8 rows; f8gemv16: of 16 (FP8_KERNELS in fp8.rs picks by rows per slot).
#define F8GEMV_ALL(SUF, DT, BLOCK)                                                                         \
    F8GEMV(f8gemv8_fc1_##SUF, DT, BLOCK, true, 1) F8GEMV(f8gemv8_fc2_##SUF, DT, BLOCK, false, 1)           \
    F8GEMV(f8gemv16_fc1_##SUF, DT, BLOCK, true, 2) F8GEMV(f8gemv16_fc2_##SUF, DT, BLOCK, false, 2)

// ---- warp-specialized TMA + wgmma GEMM (many rows per slot) -----------------------------------
//
// The FP8 twin of `tma_body`: one producer warpgroup issues bulk tensor copies of A (the slot's
// quantized rows, in 64-row boxes) and B (256 weight rows) of one 128-column K block per stage;
// two consumer warpgroups each compute 64 rows x 256 columns with `wgmma` m64n128k32 E4M3, as
// two 128-column halves: a half's four MMAs write a fresh partial (scale-d 0 on the first), and
// once they retire the partial is promoted into the f32 total times its weight block scale
// and the row's activation group scale (DeepSeek's recipe: the tensor cores' FP8 accumulation
// never runs longer than one K block). Halves keep the registers at 128 totals + 64 partials.
// A gated FC1 tile is 128 channels: B = their 128 up rows, then their 128 gate rows, so a
// thread holds each channel's up and gate sums and a row's 128 channels (one quantization
// group) lie in the four lanes of a quad: FC1's epilogue quantizes its output to E4M3 codes and
// group scales (FC2's input) without leaving registers. A tile of at most 64 rows is split by
// columns instead (each warpgroup one half; a gated tile's gate sums cross through shared
// memory). The grid is persistent, one block per multiprocessor.
// Code size matters here: the first version unrolled its epilogue into 449 KB of instructions
// for gated FC1 (71 KB for FC2) and ran at 3-7 us per K block where the MMAs need 0.4
// (Nsight Compute on an H100: Qwen3-30B-A3B T = 4096 FC1 1.27 ms, 15% SM throughput, DRAM and
// L2 far from busy); the epilogue now activates in place, quantizes once per row and keeps
// each entry point to one activation family (fc1g / fc1 / fc2: 65 / 36 / 33 KB then; the
// activation of both rows before the per-row loop, which ended the epilogue's spills, added
// 32 KB to the whole sm_90a module of 1.9 MB).

#ifdef WGMMA

#define F8_STAGES 4
#define F8_A_BOX (64 * 128)
#define F8_A_BYTES (2 * F8_A_BOX)
#define F8_B_BYTES (256 * 128)
#define F8_STAGE (F8_A_BYTES + F8_B_BYTES)
#define F8_XCHG (64 * 128 * 4)  // after the stages and a 1 KB barrier block

__device__ __forceinline__ void wgmma_e4m3_n128(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n"
                 "}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(scale_d));
}

// One work item of the persistent grid: a (row tile, column tile) pair in grouped raster
// order (as in tma_body: the blocks of a group of gm row tiles starting at first_m are
// [first_m, first_m + gm) * n_tiles), or false past the last row tile.
struct F8Tile {
    int e, r_begin, m_rows, nt;
};
__device__ __forceinline__ bool f8_tile(const GemmArgs& g, int item, int n_tiles, F8Tile& t) {
    const int qt = item / n_tiles;
    if (qt >= g.num_tiles[0]) return false;
    const int first_m = g.tiles[qt].z, gm = g.tiles[qt].w;
    const int in_group = item - first_m * n_tiles;
    const int4 te = g.tiles[first_m + in_group % gm];
    t.e = te.x;
    t.r_begin = g.offsets[te.x] + te.y;
    t.m_rows = min(128, g.offsets[te.x + 1] - t.r_begin);
    t.nt = in_group / gm;
    return true;
}

// Persistent grid (one block per multiprocessor, `work` = the items' upper bound), 384
// threads: the producer runs ahead across work items, so the next tile's first stages load
// while the consumers run the last one's epilogue (a Qwen3 FC2 tile is only six K blocks).
// FC1 (gated: 128 channels a tile; plain: 256) writes E4M3 codes to g.out and, with group
// scales, q.out_scales; FC2 writes y in DT.
template <int DT, bool BLOCK, bool FC1, bool GATED>
__device__ void f8tma_body(const GemmArgs& g, const WeightArgs& w, const ActArgs& act, const QuantIo& q,
                           const TensorMap* ta, const TensorMap* tb, int n_tiles, int work) {
    extern __shared__ unsigned char dsm_raw[];
    // 1 KB alignment of every tile (the swizzle atoms); the launch adds 1 KB of slack.
    unsigned char* dsm = dsm_raw + ((1024u - (smem_addr(dsm_raw) & 1023u)) & 1023u);
    const u32 full0 = smem_addr(dsm + F8_STAGES * F8_STAGE), empty0 = full0 + 8 * F8_STAGES;
    // The n-split tiles' gate sums on their way between the consumer warpgroups (F8_XCHG).
    float* xchg = (float*)(dsm + F8_STAGES * F8_STAGE + 1024);
    constexpr bool two = FC1 && GATED;  // g.gated picked the entry point
    const int tid = threadIdx.x, wg = tid >> 7;
    const int ktiles = g.k >> 7;

    mbar_init_stages(full0, empty0, F8_STAGES);

    // Stage uses are counted across work items (`it`): stage it % F8_STAGES, phase
    // (it / F8_STAGES) & 1, the same sequence on both sides.
    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (tid == 0) {
            int it = 0;
            F8Tile t;
            for (int item = blockIdx.x; item < work && f8_tile(g, item, n_tiles, t); item += gridDim.x) {
                const int c0 = two ? t.nt * 128 : t.nt * 256;
                const int b0 = t.e * w.rows + c0, b1 = t.e * w.rows + (two ? g.units + c0 : c0 + 128);
                const int a_boxes = (t.m_rows + 63) / 64;
                for (int kt = 0; kt < ktiles; ++kt, ++it) {
                    const int s = it % F8_STAGES;
                    if (it >= F8_STAGES) mbar_wait(empty0 + 8 * s, ((it / F8_STAGES) & 1) ^ 1);
                    const u32 st = smem_addr(dsm + s * F8_STAGE), full = full0 + 8 * s;
                    const int k0 = kt * 128;
                    mbar_expect_tx(full, a_boxes * F8_A_BOX + F8_B_BYTES);
                    for (int i = 0; i < a_boxes; ++i) tma_load(st + i * F8_A_BOX, ta, k0, t.r_begin + 64 * i, full);
                    tma_load(st + F8_A_BYTES, tb, k0, b0, full);
                    tma_load(st + F8_A_BYTES + 128 * 128, tb, k0, b1, full);
                }
            }
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int c = wg - 1, wl = (tid >> 5) & 3, lane = tid & 31;
    const int sr = (w.rows + 127) >> 7;
    int it = 0;
    F8Tile t;
    for (int item = blockIdx.x; item < work && f8_tile(g, item, n_tiles, t); item += gridDim.x) {
        const int e = t.e, r_begin = t.r_begin, m_rows = t.m_rows;
        const int c0 = two ? t.nt * 128 : t.nt * 256;  // first channel (gated) or column of the tile
        const int h0 = c0, h1 = two ? g.units + c0 : c0 + 128;  // weight rows of the two halves
        // Up to 64 rows (decode-sized slots, a slot's last tile): both warpgroups take the 64
        // rows, each one half of the columns, instead of one warpgroup idling.
        const bool nsplit = m_rows <= 64;
        const bool active = nsplit || c * 64 < m_rows;
        // This thread's two rows of the tile (h = 0, 1), clamped into the slot for the scale reads.
        const int ra = (nsplit ? 0 : c * 64) + wl * 16 + (lane >> 2);
        const long long sa0 = (long long)(r_begin + min(ra, m_rows - 1)) * ktiles;
        const long long sa1 = (long long)(r_begin + min(ra + 8, m_rows - 1)) * ktiles;
        const long long sw0 = ((long long)e * sr + min(h0 >> 7, sr - 1)) * ktiles;
        const long long sw1 = ((long long)e * sr + min(h1 >> 7, sr - 1)) * ktiles;

        // d[0..64): columns of half 0 (n-split: of this warpgroup's half c), d[64..128): half 1.
        float d[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) d[i] = 0.0f;
        float part[64];
        // The scales of K block kt + 1 load while block kt computes (an L2 round trip each).
        float nx0 = 1.0f, nx1 = 1.0f, nw0 = 1.0f, nw1 = 1.0f;
        if (BLOCK && active) {
            nx0 = q.in_scales[sa0]; nx1 = q.in_scales[sa1]; nw0 = w.scales[sw0]; nw1 = w.scales[sw1];
        }
        for (int kt = 0; kt < ktiles; ++kt, ++it) {
            const int s = it % F8_STAGES;
            // [half][row h]
            const float f[2][2] = {{nw0 * nx0, nw0 * nx1}, {nw1 * nx0, nw1 * nx1}};
            if (BLOCK && active && kt + 1 < ktiles) {
                nx0 = q.in_scales[sa0 + kt + 1]; nx1 = q.in_scales[sa1 + kt + 1];
                nw0 = w.scales[sw0 + kt + 1]; nw1 = w.scales[sw1 + kt + 1];
            }
            mbar_wait(full0 + 8 * s, (it / F8_STAGES) & 1);
            const unsigned char* st = dsm + s * F8_STAGE;
            if (nsplit) {
                wg_fence();
#pragma unroll
                for (int ks = 0; ks < 4; ++ks) {
                    const unsigned long long da = wg_desc(st) + 2 * ks;
                    const unsigned long long db = wg_desc(st + F8_A_BYTES + c * 128 * 128) + 2 * ks;
                    wgmma_e4m3_n128(part, da, db, ks);
                }
                wg_commit();
                wg_wait0();
                const float f0 = c ? f[1][0] : f[0][0], f1 = c ? f[1][1] : f[0][1];
#pragma unroll
                for (int i = 0; i < 64; ++i) d[i] = fmaf(part[i], (i & 2) ? f1 : f0, d[i]);
            } else if (active) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    wg_fence();
#pragma unroll
                    for (int ks = 0; ks < 4; ++ks) {
                        const unsigned long long da = wg_desc(st + c * 64 * 128) + 2 * ks;
                        const unsigned long long db = wg_desc(st + F8_A_BYTES + half * 128 * 128) + 2 * ks;
                        wgmma_e4m3_n128(part, da, db, ks);
                    }
                    wg_commit();
                    wg_wait0();
#pragma unroll
                    for (int i = 0; i < 64; ++i) d[half * 64 + i] = fmaf(part[i], f[half][(i >> 1) & 1], d[half * 64 + i]);
                }
            }
            // The stage's MMAs retired: it can be refilled.
            if (lane == 0) mbar_arrive(empty0 + 8 * s);
        }
        if (!active) continue;

        const float os = BLOCK ? 1.0f : slot_scale(w, e) * q.in_scale;
        const int out_cols = two ? 2 * g.units : g.units;
        const float* bias = g.bias ? g.bias + (long long)e * out_cols : nullptr;
        // Columns this warpgroup holds: n-split, the 16 n8-blocks of half c; else all 32.
        const int cbase = c0 + (nsplit ? c * 128 : 0);
        const int blocks = nsplit ? 16 : 32;
        if (two && nsplit) {
            // The gate sums live in warpgroup 1: through shared memory to warpgroup 0, which
            // holds the up sums of the same fragment positions (barrier 1: the 256 consumers).
            const int tl = tid & 127;
            if (c == 1) {
#pragma unroll
                for (int i = 0; i < 64; ++i) xchg[i * 128 + tl] = d[i];
            }
            asm volatile("bar.sync 1, 256;" ::: "memory");
            if (c == 0) {
#pragma unroll
                for (int i = 0; i < 64; ++i) d[64 + i] = xchg[i * 128 + tl];
            }
            asm volatile("bar.sync 1, 256;" ::: "memory");
            if (c == 1) continue;
        }
        if (FC1) {
            // The activation of both rows, in place of their sums (gated: of the up sums of the
            // tile's 128 channels, n8-blocks j with gate j + 16, so the gate half of d dies
            // here; plain: squared ReLU of every block this warpgroup holds), before the
            // per-row quantization below. Activating one row per pass kept the other row's
            // sums live through the first pass's amax and codes: 168 registers spilled 372
            // bytes a thread gated and 316 plain (ptxas -v, NVRTC 13.0, sm_90a; now 0), and an
            // H100 counted 2.4 M local-memory requests in one Qwen3 T = 4096 FC1.
#pragma unroll
            for (int j = 0; j < 32; ++j) {
                if (two ? j >= 16 : j >= blocks) break;
#pragma unroll
                for (int qq = 0; qq < 4; ++qq) {
                    const int ch = min(cbase + j * 8 + (lane & 3) * 2 + (qq & 1), g.units - 1);
                    const float x = d[j * 4 + qq] * os + (bias ? bias[ch] : 0.0f);
                    if (two) {
                        const float gate = d[(j + 16) * 4 + qq] * os + (bias ? bias[g.units + ch] : 0.0f);
                        d[j * 4 + qq] = activate_gated(act, gate, x);
                    } else {
                        const float rl = fmaxf(x, 0.0f);
                        d[j * 4 + qq] = rl * rl;
                    }
                }
            }
        }
        // The epilogue runs once per row (h) and the second pass first moves row 1's sums into
        // row 0's registers: an unrolled pair of rows doubled a kernel whose size (hundreds of
        // KB of activations and stores) already stalled on instruction fetch.
#pragma unroll 1
        for (int h = 0; h < 2; ++h) {
            if (h == 1) {
#pragma unroll
                for (int j = 0; j < 32; ++j) {
                    if (two && j >= 16) break;  // a gated tile's activations are d[0..64)
                    d[j * 4] = d[j * 4 + 2];
                    d[j * 4 + 1] = d[j * 4 + 3];
                }
            }
            const int r = ra + h * 8;
            const bool row_ok = r < m_rows;
            const long long orow = (long long)(r_begin + r) * g.units;
            if (!FC1) {
                if (!row_ok) continue;
#pragma unroll
                for (int j = 0; j < 32; ++j) {
                    if (j >= blocks) break;
                    const int n = cbase + j * 8 + (lane & 3) * 2;  // and n + 1 (units is a multiple of 128)
                    if (n >= g.units) continue;
                    // y is 16-bit here (out_f32 is FC1's flag): one 4-byte store, no f32 copy.
                    const float b0 = bias ? bias[n] : 0.0f, b1 = bias ? bias[n + 1] : 0.0f;
                    *(u32*)((u16*)g.out + orow + n) =
                        (u32)to16<DT>(d[j * 4] * os + b0) | ((u32)to16<DT>(d[j * 4 + 1] * os + b1) << 16);
                }
                continue;
            }
            if (!FC1) continue;  // (unreachable; keeps the FC1-only code below out of FC2's instantiation)
            // Quantization groups of 128 channels: gated one, plain two (n-split: one).
#pragma unroll
            for (int grp = 0; grp < 2; ++grp) {
                if ((two || nsplit) && grp == 1) continue;
                const int gc0 = cbase + grp * 128;  // first channel of the group
                float s = q.out_scale;
                if (q.out_scales) {
                    // Every lane takes part in the shuffles (rows past the slot compute values
                    // that are never stored).
                    float amax = 0.0f;
#pragma unroll
                    for (int j = 0; j < 16; ++j)
                        amax = fmaxf(amax, fmaxf(fabsf(d[(grp * 16 + j) * 4]), fabsf(d[(grp * 16 + j) * 4 + 1])));
                    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
                    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
                    s = amax / 448.0f;
                    if (row_ok && gc0 < g.units && (lane & 3) == 0)
                        q.out_scales[(long long)(r_begin + r) * (g.units >> 7) + (gc0 >> 7)] = s;
                }
                if (!row_ok || gc0 >= g.units) continue;
                // Codes of value / s (IEEE division, as f8quant and the host); s = 0: the values
                // themselves (zeros, or NaN).
                unsigned char* out = (unsigned char*)g.out + orow + gc0 + (lane & 3) * 2;
#pragma unroll
                for (int j = 0; j < 16; ++j) {
                    const float a = d[(grp * 16 + j) * 4], b = d[(grp * 16 + j) * 4 + 1];
                    *(u16*)(out + j * 8) = s == 0.0f ? e4m3x2(a, b) : e4m3x2(a / s, b / s);
                }
            }
        }
    }  // work items
}

#define F8TMA(NAME, DT, BLOCK, FC1, GATED)                                                                  \
    extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)                                           \
        NAME(GemmArgs g, WeightArgs w, ActArgs a, QuantIo q, const __grid_constant__ TensorMap ta,        \
             const __grid_constant__ TensorMap tb, int n_tiles, int work) {                                \
        f8tma_body<DT, BLOCK, FC1, GATED>(g, w, a, q, &ta, &tb, n_tiles, work);                            \
    }
// fc1g: gated FC1 (SwiGLU and GPT-OSS's), fc1: plain FC1 (squared ReLU), fc2.
#define F8TMA_ALL(SUF, DT, BLOCK)                                                  \
    F8TMA(f8tma_fc1g_##SUF, DT, BLOCK, true, true) F8TMA(f8tma_fc1_##SUF, DT, BLOCK, true, false) \
    F8TMA(f8tma_fc2_##SUF, DT, BLOCK, false, false)

#endif  // WGMMA

#ifndef WGMMA
#define F8TMA_ALL(SUF, DT, BLOCK)  // the TMA kernels exist in the WGMMA (sm_90a) variants only
#endif
#define F8_ALL(SUF, DT, BLOCK) F8GEMV_ALL(SUF, DT, BLOCK) F8TMA_ALL(SUF, DT, BLOCK)
#ifdef VARIANT_bf16_fp8b
F8_ALL(bf16_fp8b, 1, true)
#endif
#ifdef VARIANT_f16_fp8b
F8_ALL(f16_fp8b, 2, true)
#endif
#ifdef VARIANT_bf16_fp8t
F8_ALL(bf16_fp8t, 1, false)
#endif
#ifdef VARIANT_f16_fp8t
F8_ALL(f16_fp8t, 2, false)
#endif
