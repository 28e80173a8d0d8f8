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

// One block: offsets[0..=S] (exclusive prefix sum of counts) and the GEMM's tile list:
// tiles[t] = (slot, first row, first tile of t's group, tiles in t's group) for every bm-row
// tile of every slot; num_tiles[0] = count. A group is the run of consecutive tiles the TMA
// kernel rasters together (every column tile of a group before the next group): at most
// `group` tiles, and a slot of at most `group` tiles never straddles two groups, so each
// weight tile is read from memory once while all its row tiles use it (a slot cut in two
// by a fixed-size group read its weights twice). Other kernels read only .x and .y, and pass
// group 0: the groups are not formed (one thread walks every slot, which a one-token forward
// of 256 slots would pay for nothing).
extern "C" __global__ void moe_scan(const int* counts, int num_local, int bm, int group, int* offsets, int4* tiles,
                                    int* num_tiles) {
    extern __shared__ int sh[];  // [2 * num_local]: row offsets, tile offsets
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) sh[e] = counts[e];
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, t = 0;
        for (int e = 0; e < num_local; ++e) {
            int c = sh[e];
            sh[e] = off;
            sh[num_local + e] = t;
            off += c;
            t += (c + bm - 1) / bm;
        }
        offsets[num_local] = off;
        num_tiles[0] = t;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < num_local; e += blockDim.x) {
        int start = sh[e], c = counts[e], t0 = sh[num_local + e];
        offsets[e] = start;
        for (int j = 0; j * bm < c; ++j) tiles[t0 + j] = make_int4(e, j * bm, 0, 0);
    }
    __syncthreads();
    if (group > 0 && threadIdx.x == 0) {
        const int total = num_tiles[0];
        int first = 0;  // first tile of the open group
        for (int e = 0; e <= num_local; ++e) {
            const int t0 = e < num_local ? sh[num_local + e] : total;
            const int te = e < num_local ? (e + 1 < num_local ? sh[num_local + e + 1] : total) - t0 : 0;
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

