// Hopper's cp.async + wgmma kernel (16-bit and decoded quantized weights), in the WGMMA
// (sm_90a) variants.

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

#endif  // WGMMA
