// The GEMV path: one warp per output unit, for few rows per slot and every f32 layer.

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

