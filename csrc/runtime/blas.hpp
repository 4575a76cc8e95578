// Optional f32 GEMM from an OpenBLAS loaded at run time (the scipy-openblas32 wheel, a package dependency).
//
// Why: on the AVX-512 CPUs we measured, ggml's own f32/f16/q8_0 kernels reach 70-260 GFLOP/s on the UNet's product
// shapes while OpenBLAS's sgemm holds 280-320 on all of them (2 threads; benchmarks/bench_matmul.py --shapes unet).
// The library is opened with dlopen, not linked, so a build or an install without it still works: products then
// stay on ggml's mul_mat. Its symbols carry the wheel's "scipy_" prefix, so it cannot clash with numpy's copy.
#pragma once

#include <cstdint>
#include <string>

#include <ggml.h>

#include "runtime/cancel.hpp"

namespace sdcpp::blas {

// Opens the library and resolves sgemm; returns false (and stays unavailable) when either fails.
bool load(const std::string& path);
// The library in use ("" when none); products use it only while enabled (on by default once loaded).
std::string library();
void set_enabled(bool on);
bool enabled();

// dst = w x as ggml_mul_mat(w, x) computes it, for f32 w [K, M] and f32 x [K, R...] (both contiguous): a custom
// op whose rows of the result are split across ggml's threads, each calling a single-threaded sgemm.
// `bias` (f32 [M], contiguous) is added in the same pass, or nullptr.
//
// Every op here stops early (leaving its output incomplete) once `cancel` (may be null) is set, looking at it
// between blocks of at most a few milliseconds of one core's work; GraphRunner::run then throws CancelledError.
ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias, const CancelToken* cancel);
//
// bf16 (conv3x3 and attention below): their products run on the AMX bf16 kernel (runtime/amx.hpp) instead of
// OpenBLAS, when amx::available(); ignored otherwise. mul_mat_bf16 is the bf16 form of mul_mat.

// The same product in bf16 on AMX (amx::available() must hold) for an f32 or f16 weight w [K, M] (contiguous):
// one node packs the weight into AMX's layout in the compute buffer (the size of an f16 copy, threads splitting its
// rows), a second multiplies (threads splitting the rows of x).
ggml_tensor* mul_mat_bf16(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias,
                          const CancelToken* cancel);

// The same product for an f16 weight w [K, M] (contiguous) on the AVX512-FP16 kernel (runtime/f16_gemm.hpp;
// f16::available() must hold): f16 operands and f16 partial sums of at most f16::kF16Terms terms, f32 totals.
ggml_tensor* mul_mat_f16(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias,
                         const CancelToken* cancel);

// A 3x3 conv (stride 1, padding 1) on the same kernel without an im2col matrix: xp is the input padded by one
// pixel on every side ([W+2, H+2, C, N], contiguous, W a multiple of 16), w [9C, OC] the f16 weight as stored.
// Returns [W, H, OC, N], written plane by plane (no layout copy).
ggml_tensor* conv3x3_f16(ggml_context* ctx, ggml_tensor* xp, ggml_tensor* w, ggml_tensor* bias,
                         const CancelToken* cancel);

// w (contiguous rows of a type ggml can convert to f32: quantized, bf16, f32) as f16 in one pass.
ggml_tensor* to_f16(ggml_context* ctx, ggml_tensor* w);

// 3x3 convolution, stride 1, of a padded input xp [W+2, H+3, C, N] (one zero column each side, one zero row on top
// and two below) with taps [C, OC, 9] (f32; tap t = 3*ky + kx is a row-major OC x C matrix) -> [W, H, OC, N].
// Each tap is one sgemm over the padded plane shifted by (ky, kx), accumulated in place: no im2col matrix (9x the
// input) and no transpose back; the two pad columns per row are computed and dropped. Threads split the output
// channels.
// `bias` (f32 [OC], contiguous) is added in the same pass, or nullptr.
ggml_tensor* conv3x3(ggml_context* ctx, ggml_tensor* xp, ggml_tensor* taps, ggml_tensor* bias,
                     const CancelToken* cancel, bool bf16 = false);

// Multiply-adds x 2 of a node made by this file (0 for any other node), for the profiler.
double flops(const ggml_tensor* node);

// softmax(q k^T / sqrt(D)) v per head, for f32 q [C, Tq, N] and k, v [C, Tk, N] (contiguous; head h owns channels
// [h*D, (h+1)*D)) -> [C, Tq, N]. Blocks of queries small enough for their scores to stay in cache go through two
// sgemm calls that read the heads in place (no permutes, no padding); threads take blocks in turn. ggml's fused
// kernel ran the SD1.5 UNet's attention at ~80 GFLOP/s here, a third of a 64x64-latent call.
// Scores and softmax statistics stay f32 (only the two products' operands are rounded, with bf16).
ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads,
                       const CancelToken* cancel, bool bf16 = false);

}  // namespace sdcpp::blas
