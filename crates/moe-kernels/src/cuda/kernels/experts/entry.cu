// Entry points of the 16-bit and decode paths, per variant.

// ---- entry points -------------------------------------------------------------------------

// Each module compiles the entry points of one (dtype, format) variant (`VARIANT_<dt>_<fmt>`)
// or the shared ones (`VARIANT_common`), so a process JIT-compiles only what it runs.
// FC2 at 8 blocks per multiprocessor (64 registers; ptxas spills 12-36 bytes, format dependent):
// Mixtral's FC2 (2048 blocks) then fills two whole waves instead of 2.2 at 7 blocks, measured
// 1.46x -> 1.33x of the T=1 floor on an H100. FC1 keeps its 128 registers.
// `gemv1_*`: the one-row copies (their own register budgets: 112 and 57 registers without
// spills for bf16, where one kernel holding both copies spilled).
#define GEMV(NAME, DT, FMT, FC1, R) \
    extern "C" __global__ void __launch_bounds__(128, (FC1) ? 4 : 8) NAME(GemmArgs g, WeightArgs w, ActArgs a) { gemv_body<DT, FMT, FC1, R>(g, w, a); }
#define GEMV_ALL(SUF, DT, FMT) \
    GEMV(gemv_fc1_##SUF, DT, FMT, true, 8) GEMV(gemv_fc2_##SUF, DT, FMT, false, 8) \
    GEMV(gemv1_fc1_##SUF, DT, FMT, true, 1) GEMV(gemv1_fc2_##SUF, DT, FMT, false, 1)
#ifdef VARIANT_f32_float
GEMV_ALL(f32_float, 0, 0)
#endif
#ifdef VARIANT_bf16_float
GEMV_ALL(bf16_float, 1, 0)
#endif
#ifdef VARIANT_f16_float
GEMV_ALL(f16_float, 2, 0)
#endif
#ifdef VARIANT_bf16_fp8t
GEMV_ALL(bf16_fp8t, 1, 1)
#endif
#ifdef VARIANT_bf16_fp8b
GEMV_ALL(bf16_fp8b, 1, 2)
#endif
#ifdef VARIANT_bf16_mxfp4
GEMV_ALL(bf16_mxfp4, 1, 3)
#endif
#ifdef VARIANT_f16_fp8t
GEMV_ALL(f16_fp8t, 2, 1)
#endif
#ifdef VARIANT_f16_fp8b
GEMV_ALL(f16_fp8b, 2, 2)
#endif
#ifdef VARIANT_f16_mxfp4
GEMV_ALL(f16_mxfp4, 2, 3)
#endif

#define MMA(NAME, DT, FMT, FC1, BMV) \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME(GemmArgs g, WeightArgs w, ActArgs a) { mma_body<DT, FMT, FC1, BMV>(g, w, a); }
#define MMA_BM(SUF, DT, FMT, BMV) MMA(mma_fc1_##SUF##_##BMV, DT, FMT, true, BMV) MMA(mma_fc2_##SUF##_##BMV, DT, FMT, false, BMV)
#define MMA_ALL(SUF, DT, FMT) MMA_BM(SUF, DT, FMT, 32) MMA_BM(SUF, DT, FMT, 64) MMA_BM(SUF, DT, FMT, 128)
#ifdef VARIANT_bf16_float
MMA_ALL(bf16_float, 1, 0)
#ifdef WGMMA
WG_ALL(bf16_float, 1, 0)
TMA_ALL(bf16_float, 1)
#endif
#endif
#ifdef VARIANT_f16_float
MMA_ALL(f16_float, 2, 0)
#ifdef WGMMA
WG_ALL(f16_float, 2, 0)
TMA_ALL(f16_float, 2)
#endif
#endif
#ifdef VARIANT_bf16_fp8t
MMA_ALL(bf16_fp8t, 1, 1)
#ifdef WGMMA
WG_ALL(bf16_fp8t, 1, 1)
#endif
#endif
#ifdef VARIANT_bf16_fp8b
MMA_ALL(bf16_fp8b, 1, 2)
#ifdef WGMMA
WG_ALL(bf16_fp8b, 1, 2)
#endif
#endif
#ifdef VARIANT_bf16_mxfp4
MMA_ALL(bf16_mxfp4, 1, 3)
#ifdef WGMMA
WG_ALL(bf16_mxfp4, 1, 3)
#endif
#endif
#ifdef VARIANT_f16_fp8t
MMA_ALL(f16_fp8t, 2, 1)
#ifdef WGMMA
WG_ALL(f16_fp8t, 2, 1)
#endif
#endif
#ifdef VARIANT_f16_fp8b
MMA_ALL(f16_fp8b, 2, 2)
#ifdef WGMMA
WG_ALL(f16_fp8b, 2, 2)
#endif
#endif
#ifdef VARIANT_f16_mxfp4
MMA_ALL(f16_mxfp4, 2, 3)
#ifdef WGMMA
WG_ALL(f16_mxfp4, 2, 3)
#endif
#endif

#ifdef VARIANT_common
// finalize_<in>_<out> (one column per thread) and finalize8_<in>_<out> (eight, h % 8 == 0).
#define FIN(SUF, DT, ODT)                                                                                     \
    extern "C" __global__ void finalize_##SUF(const void* y, const int* pos, const float* s, int n, int k, int h, \
                                              void* out) {                                                    \
        finalize_body<DT, ODT>(y, pos, s, n, k, h, out);                                                      \
    }                                                                                                          \
    extern "C" __global__ void finalize8_##SUF(const void* y, const int* pos, const float* s, int n, int k,     \
                                               int h, void* out) {                                            \
        finalize8_body<DT, ODT>(y, pos, s, n, k, h, out);                                                     \
    }
FIN(f32_f32, 0, 0)
FIN(bf16_bf16, 1, 1)
FIN(bf16_f32, 1, 0)
FIN(f16_f16, 2, 2)
FIN(f16_f32, 2, 0)
#endif  // VARIANT_common

