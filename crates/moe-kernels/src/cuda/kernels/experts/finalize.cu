// Finalize: each token's rows weighted and summed in selection order, in f32.

// ---- finalize -----------------------------------------------------------------------------

// out[t] = sum_j scale[t, j] * y[pos[t, j]] over local selections, in j order, f32.
template <int DT, int ODT>
__device__ void finalize_body(const void* y, const int* pos, const float* scales, int n, int k, int h, void* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * h) return;
    int t = (int)(i / h), c = (int)(i % h);
    float s = 0.0f;
    for (int j = 0; j < k; ++j) {
        int p = pos[t * k + j];
        if (p < 0) continue;
        float wgt = scales ? scales[t * k + j] : 1.0f;
        s = fmaf(wgt, load_elem<DT>(y, (long long)p * h + c), s);
    }
    store_elem<ODT>(out, i, s);
}

// finalize_body for eight consecutive columns per thread (h % 8 == 0; every row then starts
// 16-byte aligned): the same f32 sums in the same order, with 16-byte loads and stores.
template <int DT, int ODT>
__device__ void finalize8_body(const void* y, const int* pos, const float* scales, int n, int k, int h, void* out) {
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= (long long)n * h) return;
    int t = (int)(i / h), c = (int)(i % h);
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < k; ++j) {
        int p = pos[t * k + j];
        if (p < 0) continue;
        float wgt = scales ? scales[t * k + j] : 1.0f;
        float v[8];
        load8<DT>(y, (long long)p * h + c, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) s[q] = fmaf(wgt, v[q], s[q]);
    }
    if (ODT == 0) {
        *(float4*)((float*)out + i) = make_float4(s[0], s[1], s[2], s[3]);
        *(float4*)((float*)out + i + 4) = make_float4(s[4], s[5], s[6], s[7]);
    } else {
        u32 w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            u32 lo = ODT == 1 ? f32_to_bf16(s[2 * q]) : f32_to_f16(s[2 * q]);
            u32 hi = ODT == 1 ? f32_to_bf16(s[2 * q + 1]) : f32_to_f16(s[2 * q + 1]);
            w[q] = lo | (hi << 16);
        }
        *(uint4*)((u16*)out + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

