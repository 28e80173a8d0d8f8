// Activation quantize-dequantize of the 16-bit paths (VARIANT_common).

// ---- activation quantize-dequantize (the formats' FP8 activation quantization) ----------

// out = QDQ(in) for `rows x cols` activations: mode 1 per-tensor `scale`; mode 2 dynamic
// groups of `group` columns scaled by their amax / 448 (the CPU's `qdq_rows`). The math runs
// in f32 on the input values; only the result is rounded to the output type. Rows at or past
// `*row_limit` (when given: the number of permuted rows, known only on the device) are skipped.
// One thread per element for mode 1, one warp per (row, group) for mode 2.
template <int DTI, int DTO>
__device__ void qdq_body(const void* in, void* out, int rows, int cols, int mode, float scale, int group,
                         const int* row_limit) {
    if (row_limit) rows = min(rows, row_limit[0]);
    if (mode == 1) {
        long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= (long long)rows * cols) return;
        float v = load_elem<DTI>(in, i);
        store_elem<DTO>(out, i, e4m3_round(v / scale) * scale);
        return;
    }
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    int groups_per_row = (cols + group - 1) / group;
    if (warp >= rows * groups_per_row) return;
    int r = warp / groups_per_row, g = warp % groups_per_row;
    int c0 = g * group, c1 = min(cols, c0 + group);
    float amax = 0.0f;
    for (int c = c0 + lane; c < c1; c += 32) amax = fmaxf(amax, fabsf(load_elem<DTI>(in, (long long)r * cols + c)));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float s = amax / 448.0f;
    for (int c = c0 + lane; c < c1; c += 32) {
        long long i = (long long)r * cols + c;
        float v = load_elem<DTI>(in, i);
        store_elem<DTO>(out, i, s == 0.0f ? v : e4m3_round(v / s) * s);
    }
}

#ifdef VARIANT_common
#define QDQ(NAME, DTI, DTO)                                                                             \
    extern "C" __global__ void NAME(const void* in, void* out, int rows, int cols, int mode, float scale, \
                                    int group, const int* row_limit) {                                   \
        qdq_body<DTI, DTO>(in, out, rows, cols, mode, scale, group, row_limit);                          \
    }
QDQ(qdq_f32_f32, 0, 0)
QDQ(qdq_bf16_bf16, 1, 1)
QDQ(qdq_f16_f16, 2, 2)
QDQ(qdq_f32_bf16, 0, 1)
QDQ(qdq_f32_f16, 0, 2)
#endif  // VARIANT_common

