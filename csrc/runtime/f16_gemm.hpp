// f16 matrix products on AVX512-FP16: the precision="f16" path of the CPU's linear products and convs
// (runtime/blas.hpp: mul_mat_f16, conv3x3_f16).
//
// Why: on CPUs that have AVX512-FP16 but no AMX (an AMX-less Xeon of this project's machines: the hypervisor hides
// it), vfmadd231ph multiplies 32 f16 lanes per instruction, 2.0x the f32 FMA rate, while vdpbf16ps ran at 0.48x
// (runtime/peaks.hpp). ggml's f16 kernels convert to f32 before multiplying; OpenBLAS has no f16 GEMM.
//
// Numerics (what makes f16 sums safe): each token's activations are scaled by a power of two (exact) so that their
// largest magnitude is at most 1, then rounded to f16; weights are read as stored (f16, no copy). Products are
// summed in f16 lanes for at most kF16Terms terms, then flushed into f32 sums, and the scale is undone in f32. An
// f16 sum can still overflow for weights beyond ~2000 in magnitude: a tile whose f32 result is not finite is
// recomputed in f32 from the original operands, so overflow costs time, never accuracy (and inf/NaN inputs give
// the f32 path's inf/NaN).
#pragma once

#include <cstdint>
#include <string>

namespace sdcpp::f16 {

// Products summed in one f16 lane before the flush to f32. Error and speed both grow with it; measured on one core
// (products of N(0,1) x N(0,1/K), rel-L2 vs f64): 16 terms 4.5e-4, 32 terms 6e-4 and ~1.2x faster, 64 terms 8e-4
// and no faster again. The flush (f16 -> f32 conversions and adds) costs the multiply-add ports.
constexpr int kF16Terms = 32;

// The CPU has AVX512-F/BW/VL and AVX512-FP16, the OS enables AVX-512 state, and SDCPP_NO_F16 is unset. Checked once.
bool available();
// Why available() is false ("" when true), for system-info.
std::string unavailable_reason();

// Tokens per block of product_block(), and weight rows per register tile (splits of M best keep to multiples).
constexpr int64_t kBlockTokens = 64;
constexpr int64_t kTileRows = 12;

// The activations of a product: value(t, k) of token t.
//   Rows (channels == 0): x holds rows of K f32 with stride `ld`; value(t, k) = x[t * ld + k].
//   3x3 patches (channels > 0): x is a conv input padded by one pixel on every side ([width + 2, height + 2,
//   channels, images] in ggml's order, contiguous); token t is output pixel (t % width, t / width % height) of image
//   t / (width * height), and k = 9 c + 3 ky + kx, the order of a ggml conv weight's rows, which is read as stored.
//   width must be a multiple of 16: 16 tokens in a row are 16 adjacent pixels, loaded as one vector. This is im2col
//   without its matrix.
struct Tokens {
    const float* x = nullptr;
    int64_t ld = 0;
    int64_t channels = 0, width = 0, height = 0;

    float value(int64_t t, int64_t k) const {
        if (channels == 0) {
            return x[t * ld + k];
        }
        const int64_t ox = t % width, oy = t / width % height, image = t / (width * height);
        const int64_t c = k / 9, ky = k % 9 / 3, kx = k % 3;
        return x[(((image * channels + c) * (height + 2)) + oy + ky) * (width + 2) + ox + kx];
    }
};

// Where result (t, m) goes.
//   Rows (plane == 0): y[t * ld + m].
//   Planes (plane > 0, a multiple of 16, e.g. a conv's width x height): channel-first planes per image, ld channels
//   each, y[((t / plane) * ld + m) * plane + t % plane] (ggml's [W, H, C, N]): 16 tokens are one vector store.
struct Output {
    float* y = nullptr;
    int64_t ld = 0;
    int64_t plane = 0;

    float* at(int64_t t, int64_t m) const {
        return plane == 0 ? y + t * ld + m : y + ((t / plane) * ld + m) * plane + t % plane;
    }
};

// Results (t, m) = sum_k value(t, k) w[m, k] (+ bias[m]) for the tokens t of [t0, t0 + n), n <= kBlockTokens, and
// m in [0, M): w M rows of K f16 (IEEE half, stride ldw elements), bias f32 [M] or nullptr. Uses this thread's
// scratch buffer; available() must hold.
void product_block(const Tokens& x, const uint16_t* w, int64_t ldw, const float* bias, const Output& y, int64_t t0,
                   int64_t n, int64_t M, int64_t K);

// n f32 values as f16 (nearest even), and n values of q8_0 blocks (ggml's layout: an f16 scale, 32 int8) as f16:
// the weight conversions of quantized models, vectorized (ggml's row converters are scalar in its base library).
// available() must hold.
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n);
void q8_0_to_f16_row(const void* src, uint16_t* dst, int64_t n);


}  // namespace sdcpp::f16
