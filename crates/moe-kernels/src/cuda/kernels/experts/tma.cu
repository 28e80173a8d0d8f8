// Hopper's warp-specialized TMA + mbarrier + wgmma kernel for 16-bit weights, in the WGMMA
// (sm_90a) variants.

#ifdef WGMMA

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

