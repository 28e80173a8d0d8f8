// The mma.sync tensor-core path (Ampere and later): 32/64/128-row tiles, cp.async pipeline.

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


