// Row permutation of a forward (VARIANT_common): per-slot counts, offsets and tile lists, each
// selection's permuted row, and the FC1 input gathered per slot for the TMA path.

// ---- permutation ------------------------------------------------------------------------

#ifdef VARIANT_common
// counts[l] += 1 for every selection of a local slot l (counts zeroed by the caller).
extern "C" __global__ void moe_count(const int* slots, int nk, int slot_start, int num_local, int* counts) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nk) return;
    int l = slots[i] - slot_start;
    if (l >= 0 && l < num_local) atomicAdd(&counts[l], 1);
}

// Block-wide exclusive prefix sum of one (rows, tiles) pair per thread (blockDim.x a multiple
// of 32, at most 1024); *total gets the sums over the block.
__device__ int2 block_scan2(int2 v, int2* total) {
    __shared__ int2 warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int2 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_up_sync(0xffffffffu, inc.x, o), y = __shfl_up_sync(0xffffffffu, inc.y, o);
        if (lane >= o) inc.x += x, inc.y += y;
    }
    if (lane == 31) warp_sums[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int2 w = lane < warps ? warp_sums[lane] : make_int2(0, 0);
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, w.x, o), y = __shfl_up_sync(0xffffffffu, w.y, o);
            if (lane >= o) w.x += x, w.y += y;
        }
        if (lane < warps) warp_sums[lane] = w;
    }
    __syncthreads();
    const int2 base = warp > 0 ? warp_sums[warp - 1] : make_int2(0, 0);
    *total = warp_sums[warps - 1];
    __syncthreads();  // warp_sums is reused by the next call
    return make_int2(base.x + inc.x - v.x, base.y + inc.y - v.y);
}

// Offsets and tile list from per-slot counts `cnt` (read only): offsets[0..=S]
// (exclusive prefix sum of the counts) and tiles[t] = (slot, first row, first tile of t's
// group, tiles in t's group) for every bm-row tile of every slot; num_tiles[0] = count. The
// block's threads each take a run of consecutive slots. `row_off`/`tile_off` (shared, S each)
// receive each slot's first row and first tile.
//
// A group is the run of consecutive tiles the TMA kernel rasters together (every column tile
// of a group before the next group): at most `group` tiles, and a slot of at most `group`
// tiles never straddles two groups, so each weight tile is read from memory once while all
// its row tiles use it (a slot cut in two by a fixed-size group read its weights twice).
// Other kernels read only .x and .y and pass group 0: the groups are not formed (one thread
// walks every slot, which a one-token forward of 256 slots would pay for nothing).
__device__ void scan_tiles(const int* cnt, int num_local, int bm, int group, int* row_off, int* tile_off, int* offsets,
                           int4* tiles, int* num_tiles) {
    const int per = (num_local + blockDim.x - 1) / blockDim.x;
    const int e0 = min((int)threadIdx.x * per, num_local), e1 = min(e0 + per, num_local);
    int2 mine = make_int2(0, 0);
    for (int e = e0; e < e1; ++e) mine.x += cnt[e], mine.y += (cnt[e] + bm - 1) / bm;
    int2 total;
    int2 at = block_scan2(mine, &total);
    for (int e = e0; e < e1; ++e) {
        const int c = cnt[e];
        row_off[e] = at.x;
        tile_off[e] = at.y;
        offsets[e] = at.x;
        for (int j = 0; j * bm < c; ++j) tiles[at.y + j] = make_int4(e, j * bm, 0, 0);
        at.x += c;
        at.y += (c + bm - 1) / bm;
    }
    if (threadIdx.x == 0) {
        offsets[num_local] = total.x;
        num_tiles[0] = total.y;
    }
    __syncthreads();  // the tiles' .x/.y and tile_off before the groups
    if (group > 0 && threadIdx.x == 0) {
        int first = 0;  // first tile of the open group
        for (int e = 0; e <= num_local; ++e) {
            const int t0 = e < num_local ? tile_off[e] : total.y;
            const int te = e < num_local ? (e + 1 < num_local ? tile_off[e + 1] : total.y) - t0 : 0;
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

// One block: offsets and tile list (`scan_tiles`) from the counts of `moe_count`.
extern "C" __global__ void moe_scan(const int* counts, int num_local, int bm, int group, int* offsets, int4* tiles,
                                    int* num_tiles) {
    extern __shared__ int sh[];  // [2 * num_local]: row offsets, tile offsets
    scan_tiles(counts, num_local, bm, group, sh, sh + num_local, offsets, tiles, num_tiles);
}

// The whole permutation in one block (a forward whose selections and slots fit it): counts in
// shared memory, `scan_tiles`, then each selection's permuted row, as moe_count, moe_scan and
// moe_scatter do in three launches after a memset. A decode step pays one launch instead.
// `zero[0..zero_count)`: counters of later kernels, zeroed here as the memset before the
// three launches zeroes them.
__device__ void permute_block(const int* slots, int nk, int slot_start, int num_local, int bm, int group,
                              int* offsets, int4* tiles, int* num_tiles, int* pos, int* row_sel, int* zero,
                              int zero_count) {
    extern __shared__ int sh[];  // [3 * num_local]: counts (then cursors), row offsets, tile offsets
    int *cnt = sh, *row_off = sh + num_local;
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) cnt[e] = 0;
    for (int i = threadIdx.x; i < zero_count; i += blockDim.x) zero[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < nk; i += blockDim.x) {
        const int l = slots[i] - slot_start;
        if (l >= 0 && l < num_local) atomicAdd(&cnt[l], 1);
    }
    __syncthreads();
    scan_tiles(cnt, num_local, bm, group, row_off, sh + 2 * num_local, offsets, tiles, num_tiles);
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < nk; i += blockDim.x) {
        const int l = slots[i] - slot_start;
        if (l >= 0 && l < num_local) {
            const int p = row_off[l] + atomicAdd(&cnt[l], 1);
            pos[i] = p;
            row_sel[p] = i;
        } else {
            pos[i] = -1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(1024)
    moe_permute1(const int* slots, int nk, int slot_start, int num_local, int bm, int group, int* offsets, int4* tiles,
                 int* num_tiles, int* pos, int* row_sel, int* zero, int zero_count) {
    permute_block(slots, nk, slot_start, num_local, bm, group, offsets, tiles, num_tiles, pos, row_sel, zero,
                  zero_count);
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

