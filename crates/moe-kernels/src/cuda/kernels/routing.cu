// Routing of router logits [N, E] -> ids [N, k] (i32), weights [N, k] (f32): the device twin of
// moe-core's routing/methods.rs and routing/deepseek.rs, launched by cuda/enabled/routing.rs.
//
// One block per token (one warp per 256 experts, routing.rs: route_threads). Element-wise math runs in parallel; every sum
// runs on thread 0 in the CPU's order (index order, or best-first over the selection) so the
// f32 roundings are the CPU's. Top-k is k rounds of a block argmax under the CPU's total order
// (larger value first, equal values by lower index), which selects exactly what the CPU's
// insertion top-k selects. exp/log1p go through double and round once to f32: that is
// correctly rounded except in astronomically rare cases, as glibc's expf/log1pf are, so the
// host and the device agree to the last bit almost always and within an ulp otherwise.
// Explicit __f*_rn intrinsics keep the compiler from contracting a*b+c into an FMA.
//
// Refusals (NaN/+inf logits, too few finite logits, a zero DeepSeek-V4 sum) cannot return an
// error from the device: the block writes a zero row and folds its error into the status word
// (see report()); the host decodes it only when asked (DeviceRouting::check).
//
// No headers: logits are read as raw 32/16-bit patterns.

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)
#define RENORM_EPS 1e-20f

// dtype codes (cuda/enabled/routing.rs: float_dtype_code)
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2

// method codes (cuda/enabled/routing.rs: Plan)
#define M_SOFTMAX_TOPK 0  // Default: softmax, top-k of the probabilities
#define M_TOPK_SOFTMAX 1  // Renormalize / RenormalizeNaive: top-k of the logits, softmax of the k
#define M_TOPK_SIGMOID 2  // Llama4: top-k of the logits, sigmoid of the k
#define M_SCORED 3        // score, top-k of score + bias, weights from the unbiased scores
#define M_GROUPED 4       // DeepSeek-V3 with n_group > 1
#define M_SPARSE_MIXER 5  // SparseMixer

// score codes of M_SCORED
#define S_SIGMOID 0
#define S_SQRT_SOFTPLUS 1

// norm codes (moe-core methods.rs: Norm)
#define N_RAW 0
#define N_EPS 1
#define N_EXACT 2

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float load_logit(const unsigned char* p, int dtype, unsigned long long i) {
    if (dtype == DT_BF16) return bf16_to_f32(((const unsigned short*)p)[i]);
    if (dtype == DT_F16) return f16_to_f32(((const unsigned short*)p)[i]);
    return ((const float*)p)[i];
}

__device__ __forceinline__ float exp_f32(float x) { return __double2float_rn(exp((double)x)); }

__device__ __forceinline__ float log1p_f32(float x) { return __double2float_rn(log1p((double)x)); }

// 1 / (1 + exp(-x)), PyTorch's form (methods.rs: sigmoid).
__device__ __forceinline__ float sigmoid_f32(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-x)));
}

// softplus with PyTorch's threshold 20, then sqrt (methods.rs: sqrt_softplus).
__device__ __forceinline__ float sqrt_softplus_f32(float x) {
    float sp = x > 20.0f ? x : log1p_f32(exp_f32(x));
    return __fsqrt_rn(sp);
}

// (v1, i1) ranks before (v2, i2): larger value first, equal values by lower index. An index
// below 0 is "no entry" and ranks after everything.
__device__ __forceinline__ bool ranks_before(float v1, int i1, float v2, int i2) {
    if (i1 < 0) return false;
    if (i2 < 0) return true;
    return v1 > v2 || (v1 == v2 && i1 < i2);
}

// Rust's f32::total_cmp key (deepseek.rs sorts the final weights with it).
__device__ __forceinline__ int total_key(float f) {
    int i = __float_as_int(f);
    return i ^ (int)(((unsigned int)(i >> 31)) >> 1);
}

// Folds one error into the status word. Errors are ordered as the CPU meets them: every
// logits error (by token, then NaN/+inf by expert before the finite count) before every
// weights error (by token). The key is (code << 32 | detail) and the word holds its bitwise
// complement, so a zero-filled word means "no error" and atomicMax keeps the first error.
// The host guarantees code < 2^32 - 1.
__device__ void report(unsigned long long* status, unsigned long long code, unsigned int detail) {
    unsigned long long key = (code << 32) | (unsigned long long)detail;
    atomicMax(status, ~key);
}

// Block-wide broadcast of the best (value, index) that each thread proposes. All threads call.
__device__ void block_best(float v, int i, float* warp_v, int* warp_i, float* out_v, int* out_i) {
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, off);
        int oi = __shfl_xor_sync(0xffffffffu, i, off);
        if (ranks_before(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        warp_v[warp] = v;
        warp_i[warp] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float bv = warp_v[0];
        int bi = warp_i[0];
        for (int w = 1; w < nwarps; ++w) {
            if (ranks_before(warp_v[w], warp_i[w], bv, bi)) {
                bv = warp_v[w];
                bi = warp_i[w];
            }
        }
        *out_v = bv;
        *out_i = bi;
    }
    __syncthreads();
}

// The k best entries of vals[0..len), best first, into sel_v/sel_i (shared). With `ok`, only
// entries j whose group ok[j / per_group] is set compete. Round r takes the best entry ranked
// after round r-1's pick, so no entry is taken twice and no mask is needed. All threads call.
__device__ void block_topk(const float* vals, int len, int k, const int* ok, int per_group, float* sel_v,
                           int* sel_i, float* warp_v, int* warp_i) {
    for (int r = 0; r < k; ++r) {
        float pv = 0.0f;
        int pi = -1;
        if (r > 0) {
            pv = sel_v[r - 1];
            pi = sel_i[r - 1];
        }
        float bv = 0.0f;
        int bi = -1;
        for (int j = threadIdx.x; j < len; j += blockDim.x) {
            if (ok != 0 && !ok[j / per_group]) continue;
            float v = vals[j];
            // After round 0 only entries ranked after the previous pick compete (none at all
            // if the previous round found nothing, which validation makes unreachable).
            if (r > 0 && !ranks_before(pv, pi, v, j)) continue;
            if (ranks_before(v, j, bv, bi)) {
                bv = v;
                bi = j;
            }
        }
        block_best(bv, bi, warp_v, warp_i, &sel_v[r], &sel_i[r]);
    }
}

// Block-wide maximum (NaN-free input), broadcast to every thread.
__device__ float block_max(float v, float* warp_v, float* bcast) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) warp_v[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = warp_v[0];
        for (int w = 1; w < nwarps; ++w) m = fmaxf(m, warp_v[w]);
        *bcast = m;
    }
    __syncthreads();
    return *bcast;
}

__device__ void zero_row(int* ids, float* w, int k) {
    for (int s = threadIdx.x; s < k; s += blockDim.x) {
        ids[s] = 0;
        w[s] = 0.0f;
    }
}

// Dynamic shared memory, 4-byte words: a[E], b[E], gscore[G], gok[G], gsel_v[G], gsel_i[G],
// sel_v[K], sel_i[K] with G = max(n_group, 1) (routing.rs: shared_bytes).
extern "C" __global__ void route_logits(const unsigned char* logits, int dtype, int num_tokens, int num_experts,
                                        int top_k, int method, int score_fn, const float* bias, int has_bias,
                                        int norm, float scale, int n_group, int topk_group, float eps,
                                        int* out_ids, float* out_w, unsigned long long* status) {
    extern __shared__ float smem[];
    __shared__ float warp_v[32];
    __shared__ int warp_i[32];
    __shared__ int s_bad;
    __shared__ int s_finite;
    __shared__ float s_bcast;

    const int t = blockIdx.x;
    if (t >= num_tokens) return;  // whole block
    const int E = num_experts, K = top_k, G = n_group > 0 ? n_group : 1;
    float* a = smem;
    float* b = a + E;
    float* gscore = b + E;
    int* gok = (int*)(gscore + G);
    float* gsel_v = (float*)(gok + G);
    int* gsel_i = (int*)(gsel_v + G);
    float* sel_v = (float*)(gsel_i + G);
    int* sel_i = (int*)(sel_v + K);
    int* ids = out_ids + (unsigned long long)t * K;
    float* w = out_w + (unsigned long long)t * K;

    // --- load and check the row (methods.rs: check_logits) ---
    if (threadIdx.x == 0) {
        s_bad = E;
        s_finite = 0;
    }
    __syncthreads();
    int finite = 0;
    for (int j = threadIdx.x; j < E; j += blockDim.x) {
        float x = load_logit(logits, dtype, (unsigned long long)t * E + j);
        a[j] = x;
        if (x != x || x == POS_INF) {
            atomicMin(&s_bad, j);
        } else if (x != NEG_INF) {
            finite++;
        }
    }
    atomicAdd(&s_finite, finite);
    __syncthreads();
    if (s_bad < E || s_finite < K) {
        // The first NaN/+inf of the row wins over the count, as on the CPU.
        if (threadIdx.x == 0) {
            unsigned long long code = (unsigned long long)t * (E + 1) + (s_bad < E ? s_bad : E);
            report(status, code, s_bad < E ? 0u : (unsigned int)s_finite);
        }
        zero_row(ids, w, K);
        return;  // whole block: s_bad and s_finite are shared
    }

    if (method == M_SOFTMAX_TOPK) {
        // methods.rs: default_row
        float m = NEG_INF;
        for (int j = threadIdx.x; j < E; j += blockDim.x) m = fmaxf(m, a[j]);
        m = block_max(m, warp_v, &s_bcast);
        for (int j = threadIdx.x; j < E; j += blockDim.x) b[j] = exp_f32(__fsub_rn(a[j], m));
        __syncthreads();
        if (threadIdx.x == 0) {
            float sum = 0.0f;
            // Unrolled so the shared-memory loads run ahead of the serial chain of adds.
#pragma unroll 8
            for (int j = 0; j < E; ++j) sum = __fadd_rn(sum, b[j]);
            s_bcast = sum;
        }
        __syncthreads();
        float sum = s_bcast;
        for (int j = threadIdx.x; j < E; j += blockDim.x) b[j] = __fdiv_rn(b[j], sum);
        __syncthreads();
        block_topk(b, E, K, 0, 1, sel_v, sel_i, warp_v, warp_i);
        for (int s = threadIdx.x; s < K; s += blockDim.x) {
            ids[s] = sel_i[s];
            w[s] = sel_v[s];
        }
    } else if (method == M_TOPK_SOFTMAX) {
        // methods.rs: renormalize_row
        block_topk(a, E, K, 0, 1, sel_v, sel_i, warp_v, warp_i);
        if (threadIdx.x == 0) {
            float m = sel_v[0];
            float sum = 0.0f;
            for (int r = 0; r < K; ++r) sum = __fadd_rn(sum, exp_f32(__fsub_rn(sel_v[r], m)));
            for (int r = 0; r < K; ++r) {
                ids[r] = sel_i[r];
                w[r] = __fdiv_rn(exp_f32(__fsub_rn(sel_v[r], m)), sum);
            }
        }
    } else if (method == M_TOPK_SIGMOID) {
        // methods.rs: llama4_row
        block_topk(a, E, K, 0, 1, sel_v, sel_i, warp_v, warp_i);
        for (int s = threadIdx.x; s < K; s += blockDim.x) {
            ids[s] = sel_i[s];
            w[s] = sigmoid_f32(sel_v[s]);
        }
    } else if (method == M_SCORED) {
        // methods.rs: scored_row. a = unbiased score, b = score + bias.
        for (int j = threadIdx.x; j < E; j += blockDim.x) {
            float s = score_fn == S_SQRT_SOFTPLUS ? sqrt_softplus_f32(a[j]) : sigmoid_f32(a[j]);
            a[j] = s;
            if (has_bias) b[j] = __fadd_rn(s, bias[j]);
        }
        __syncthreads();
        block_topk(has_bias ? b : a, E, K, 0, 1, sel_v, sel_i, warp_v, warp_i);
        if (threadIdx.x == 0) {
            float sum = 0.0f;
            for (int r = 0; r < K; ++r) sum = __fadd_rn(sum, a[sel_i[r]]);
            if (norm == N_EXACT && !(sum > 0.0f && sum < POS_INF)) {
                // DeepSeek-V4 refuses a zero (or non-finite) sum instead of emitting NaN weights.
                unsigned long long code = (unsigned long long)num_tokens * (E + 1) + t;
                report(status, code, __float_as_uint(sum));
                for (int r = 0; r < K; ++r) {
                    ids[r] = 0;
                    w[r] = 0.0f;
                }
            } else {
                float d = norm == N_EPS ? __fadd_rn(sum, RENORM_EPS) : sum;
                for (int r = 0; r < K; ++r) {
                    float s = a[sel_i[r]];
                    ids[r] = sel_i[r];
                    w[r] = norm == N_RAW ? __fmul_rn(s, scale) : __fmul_rn(__fdiv_rn(s, d), scale);
                }
            }
        }
    } else if (method == M_GROUPED) {
        // deepseek.rs: grouped_row. a = sigmoid score, b = score + bias (0 without a bias).
        for (int j = threadIdx.x; j < E; j += blockDim.x) {
            float s = sigmoid_f32(a[j]);
            a[j] = s;
            b[j] = __fadd_rn(s, has_bias ? bias[j] : 0.0f);
        }
        __syncthreads();
        const int per_group = E / G;
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            // deepseek.rs: top2_sum, a repeated maximum counting twice.
            float m1 = NEG_INF, m2 = NEG_INF;
            for (int j = g * per_group; j < (g + 1) * per_group; ++j) {
                float v = b[j];
                if (v > m1) {
                    m2 = m1;
                    m1 = v;
                } else if (v > m2) {
                    m2 = v;
                }
            }
            gscore[g] = __fadd_rn(m1, m2);
        }
        __syncthreads();
        block_topk(gscore, G, topk_group, 0, 1, gsel_v, gsel_i, warp_v, warp_i);
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            int chosen = 0;
            for (int r = 0; r < topk_group; ++r) chosen |= gsel_i[r] == g;
            gok[g] = chosen;
        }
        __syncthreads();
        block_topk(b, E, K, gok, per_group, sel_v, sel_i, warp_v, warp_i);
        if (threadIdx.x == 0) {
            float sum = 0.0f;
            for (int r = 0; r < K; ++r) sum = __fadd_rn(sum, a[sel_i[r]]);
            float d = __fadd_rn(sum, RENORM_EPS);
            // Weights replace the biased scores in sel_v; then the final sort by weight
            // (total order, descending), equal weights by lower index.
            for (int r = 0; r < K; ++r) {
                float s = a[sel_i[r]];
                sel_v[r] = norm == N_RAW ? __fmul_rn(s, scale) : __fmul_rn(__fdiv_rn(s, d), scale);
            }
            for (int r = 1; r < K; ++r) {
                float v = sel_v[r];
                int i = sel_i[r];
                int key = total_key(v);
                int p = r;
                while (p > 0) {
                    int pk = total_key(sel_v[p - 1]);
                    bool after = pk < key || (pk == key && sel_i[p - 1] > i);
                    if (!after) break;
                    sel_v[p] = sel_v[p - 1];
                    sel_i[p] = sel_i[p - 1];
                    --p;
                }
                sel_v[p] = v;
                sel_i[p] = i;
            }
            for (int r = 0; r < K; ++r) {
                ids[r] = sel_i[r];
                w[r] = sel_v[r];
            }
        }
    } else if (method == M_SPARSE_MIXER) {
        // methods.rs: sparse_mixer_row. a is the working copy; b holds the softmax terms.
        const float threshold = __fmul_rn(2.0f, eps);
        for (int step = 0; step < K; ++step) {
            if (step > 0 && threadIdx.x == 0) a[sel_i[step - 1]] = NEG_INF;
            __syncthreads();
            float bv = 0.0f;
            int bi = -1;
            for (int j = threadIdx.x; j < E; j += blockDim.x) {
                if (ranks_before(a[j], j, bv, bi)) {
                    bv = a[j];
                    bi = j;
                }
            }
            block_best(bv, bi, warp_v, warp_i, &sel_v[step], &sel_i[step]);
            const float m = sel_v[step];
            for (int j = threadIdx.x; j < E; j += blockDim.x) {
                float x = a[j];
                // -inf entries give inf/inf = NaN gaps (not masked) and exp(-inf) = 0 terms.
                bool masked = __fdiv_rn(__fsub_rn(m, x), fmaxf(fabsf(x), m)) > threshold;
                b[j] = masked ? 0.0f : exp_f32(__fsub_rn(x, m));
            }
            __syncthreads();
            if (threadIdx.x == 0) {
                // Adding the 0 of a masked entry leaves the sum as the CPU's skip does.
                float sum = 0.0f;
#pragma unroll 8
                for (int j = 0; j < E; ++j) sum = __fadd_rn(sum, b[j]);
                // Every step has a finite maximum after the row check (k finite logits, one
                // removed per step), so sel_i[step] >= 0 and sum >= 1.
                ids[step] = sel_i[step] >= 0 ? sel_i[step] : 0;
                w[step] = __fdiv_rn(1.0f, sum);
            }
            __syncthreads();
        }
    }
}

// LoadBalanced: ids cycle through 0..E over the flattened [N, k] slots, weights 1.
extern "C" __global__ void route_load_balanced(int* ids, float* w, unsigned long long total,
                                               unsigned long long num_experts) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        ids[i] = (int)(i % num_experts);
        w[i] = 1.0f;
    }
}
