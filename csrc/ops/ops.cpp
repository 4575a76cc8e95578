#include "ops/ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "runtime/amx.hpp"
#include "runtime/blas.hpp"
#include "runtime/cpu_ops.hpp"
#include "runtime/f16_gemm.hpp"

namespace sdcpp::ops {

namespace {

// Quick GELU's constant (OpenAI CLIP): x * sigmoid(1.702 x).
constexpr float kQuickGeluCoef = 1.702f;

ggml_tensor* contiguous(ggml_context* ctx, ggml_tensor* x) {
    return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x);
}

// Node names group the time of a profiled run by block part (conv.*, attn.*, linear.*, norm.*, layout.*).
ggml_tensor* named(ggml_tensor* t, const char* name) {
    return ggml_set_name(t, name);
}

// Per-channel weight/bias [C] broadcast over x [W, H, C, N].
ggml_tensor* channel_affine(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    const int64_t C = x->ne[2];
    ggml_tensor* w = g.w(prefix + ".weight");
    x = named(ggml_mul(g.ctx, x, ggml_reshape_4d(g.ctx, w, 1, 1, C, 1)), "norm.affine");
    ggml_tensor* b = g.w(prefix + ".bias");
    return named(ggml_add(g.ctx, x, ggml_reshape_4d(g.ctx, b, 1, 1, C, 1)), "norm.affine");
}

// Products with at least this many activation columns take the f16 kernel in f16 graphs (one register tile's width).
// Its cost per weight element is a 16-bit load per 64 columns, so unlike the f32 path (a weight conversion per call)
// it also wins on the 32- and 128-column products of the deepest blocks (SD1.5 UNet at 32x32, 2 threads: 190-300
// GFLOP/s where ggml's f16 kernels ran 80-145).
constexpr int64_t kF16MinCols = 32;

bool f16_product(const Graph& g, int64_t cols) { return g.f16() && cols >= kF16MinCols; }

// The weight as src0 of a product with `cols` activation columns: converted to f32 (f16 for the f16 kernel) when the
// graph asks for it.
ggml_tensor* matmul_weight(const Graph& g, ggml_tensor* w, int64_t cols) {
    if (f16_product(g, cols)) {
        if (w->type == GGML_TYPE_F16 && ggml_is_contiguous(w)) {
            return w;  // read as stored
        }
        if (!ggml_is_contiguous(w)) {
            w = named(ggml_cont(g.ctx, w), "weight.cont");
        }
        return named(blas::to_f16(g.ctx, w), "weight.to_f16");
    }
    if (w->type == GGML_TYPE_F32 || !g.wide(cols)) {
        return w;
    }
    if (w->type == GGML_TYPE_F16 && g.bf16() && ggml_is_contiguous(w)) {
        return w;  // product() packs it for AMX straight from f16
    }
    return named(ggml_cast(g.ctx, w, GGML_TYPE_F32), "weight.to_f32");
}

ggml_tensor* add_bias(const Graph& g, ggml_tensor* y, const std::string& prefix) {
    const std::string bias = prefix + ".bias";
    return g.has(bias) ? named(ggml_add(g.ctx, y, g.w(bias)), "bias") : y;
}

// f32 bias of `prefix` that an OpenBLAS op can add in its own pass ([n] contiguous f32), else nullptr.
ggml_tensor* fusable_bias(const Graph& g, const std::string& prefix, int64_t n) {
    const std::string name = prefix + ".bias";
    if (!g.has(name)) {
        return nullptr;
    }
    ggml_tensor* b = g.w(name);
    return b->type == GGML_TYPE_F32 && ggml_is_contiguous(b) && ggml_nelements(b) == n ? b : nullptr;
}

// w x + `prefix`.bias (when present), for a weight from matmul_weight(): wide products go to AMX in bf16 graphs, wide
// f32 ones to OpenBLAS's sgemm when it is loaded (CPU only), with the bias fused; the rest to ggml_mul_mat and an add.
ggml_tensor* product(const Graph& g, ggml_tensor* w, ggml_tensor* x, const std::string& prefix, const char* name) {
    const int64_t cols = ggml_nelements(x) / x->ne[0];
    if (f16_product(g, cols) && w->type == GGML_TYPE_F16 && ggml_is_contiguous(w) && ggml_is_contiguous(x)) {
        ggml_tensor* bias = fusable_bias(g, prefix, w->ne[1]);
        ggml_tensor* y = named(blas::mul_mat_f16(g.ctx, w, x, bias, g.cancel()), name);
        return bias != nullptr ? y : add_bias(g, y, prefix);
    }
    if (g.wide(cols) && ggml_is_contiguous(w) && ggml_is_contiguous(x)) {
        // bf16 on AMX takes f32 and f16 weights (packed straight from f16); OpenBLAS takes f32 ones.
        const bool amx = g.bf16() && (w->type == GGML_TYPE_F32 || w->type == GGML_TYPE_F16);
        if (amx || (w->type == GGML_TYPE_F32 && g.use_blas())) {
            ggml_tensor* bias = fusable_bias(g, prefix, w->ne[1]);
            ggml_tensor* y = amx ? blas::mul_mat_bf16(g.ctx, w, x, bias, g.cancel())
                                 : blas::mul_mat(g.ctx, w, x, bias, g.cancel());
            return bias != nullptr ? named(y, name) : add_bias(g, named(y, name), prefix);
        }
    }
    return add_bias(g, named(ggml_mul_mat(g.ctx, w, x), name), prefix);
}

// One band of output rows [r0, r0 + rows) of a conv over the padded input xp: im2col on a row window (a view;
// im2col reads rows with the full-height plane stride) and one matmul. Returns [OW, rows, OC, N].
ggml_tensor* conv_band(const Graph& g, ggml_tensor* xp, ggml_tensor* w, ggml_tensor* shape, const std::string& prefix,
                       int k, int stride, int64_t r0, int64_t rows) {
    const int64_t in_rows = (rows - 1) * stride + k;
    ggml_tensor* win = ggml_view_4d(g.ctx, xp, xp->ne[0], in_rows, xp->ne[2], xp->ne[3], xp->nb[1], xp->nb[2],
                                    xp->nb[3], static_cast<size_t>(r0 * stride) * xp->nb[1]);
    ggml_tensor* cols = named(ggml_im2col(g.ctx, shape, win, stride, stride, 0, 0, 1, 1, true, GGML_TYPE_F32),
                              "conv.im2col");
    const int64_t K = cols->ne[0], OW = cols->ne[1], N = cols->ne[3];
    cols = ggml_reshape_2d(g.ctx, cols, K, OW * rows * N);
    ggml_tensor* y = ggml_reshape_4d(g.ctx, product(g, w, cols, prefix, "conv.matmul"), w->ne[1], OW, rows, N);
    return named(ggml_cont(g.ctx, ggml_permute(g.ctx, y, 2, 0, 1, 3)), "conv.layout");
}

// conv2d in bands of output rows, each written in place into the output, so only one band's im2col matrix
// lives at a time. Returns nullptr when the output is too large for ggml_set's 32-bit strides.
ggml_tensor* conv2d_banded(const Graph& g, ggml_tensor* x, ggml_tensor* w, ggml_tensor* shape,
                           const std::string& prefix, int k, int stride, int pad, int64_t OW, int64_t OH) {
    const int64_t OC = w->ne[1], N = x->ne[3];
    const size_t row_bytes = static_cast<size_t>(w->ne[0] * OW * N) * sizeof(float);
    const int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(g.opt.max_im2col_bytes / row_bytes));
    if (static_cast<double>(OW) * OH * OC * sizeof(float) >= std::numeric_limits<int32_t>::max()) {
        return nullptr;
    }
    ggml_tensor* xp = pad > 0 ? ggml_pad_ext(g.ctx, x, pad, pad, pad, pad, 0, 0, 0, 0) : x;
    ggml_tensor* out = ggml_new_tensor_4d(g.ctx, GGML_TYPE_F32, OW, OH, OC, N);
    for (int64_t r0 = 0; r0 < OH; r0 += rows) {
        ggml_tensor* band = conv_band(g, xp, w, shape, prefix, k, stride, r0, std::min(rows, OH - r0));
        // Each set returns a view of `out` that depends on the previous one, which orders the bands.
        out = named(ggml_set_inplace(g.ctx, out, band, out->nb[1], out->nb[2], out->nb[3],
                                     static_cast<size_t>(r0) * out->nb[1]),
                    "conv.band");
    }
    return out;
}

// A conv output y [W, H, OC, N] plus `prefix`.bias, unless the conv op already added it (`fused`, from
// fusable_bias) or there is none.
ggml_tensor* add_unfused_channel_bias(const Graph& g, ggml_tensor* y, const std::string& prefix,
                                      const ggml_tensor* fused) {
    if (fused != nullptr || !g.has(prefix + ".bias")) {
        return y;
    }
    ggml_tensor* b = ggml_reshape_4d(g.ctx, g.w(prefix + ".bias"), 1, 1, y->ne[2], 1);
    return named(ggml_add(g.ctx, y, b), "bias");
}

// A wide 3x3 conv on OpenBLAS (runtime/blas.hpp): the weight [C*9, OC] becomes per-tap f32 matrices [C, OC, 9]
// (float types convert and reorder in one copy; quantized rows are dequantized first).
ggml_tensor* conv3x3_blas(const Graph& g, ggml_tensor* x, ggml_tensor* w, const std::string& prefix) {
    const int64_t C = x->ne[2], OC = w->ne[1];
    if (ggml_is_quantized(w->type)) {
        w = named(ggml_cast(g.ctx, w, GGML_TYPE_F32), "weight.to_f32");
    }
    ggml_tensor* by_tap = ggml_permute(g.ctx, ggml_reshape_3d(g.ctx, w, 9, C, OC), 2, 0, 1, 3);  // [C, OC, 9]
    ggml_tensor* taps = named(ggml_cast(g.ctx, by_tap, GGML_TYPE_F32), "weight.to_taps");
    ggml_tensor* xp = named(ggml_pad_ext(g.ctx, contiguous(g.ctx, x), 1, 1, 1, 2, 0, 0, 0, 0), "conv.pad");
    ggml_tensor* bias = fusable_bias(g, prefix, OC);
    ggml_tensor* y = named(blas::conv3x3(g.ctx, xp, taps, bias, g.cancel(), g.bf16()), "conv.matmul");
    return add_unfused_channel_bias(g, y, prefix, bias);
}

// A 3x3 conv (stride 1, padding 1) on the f16 kernel (f16_product), reading the padded input's planes in place
// (no im2col matrix) and the weight as stored when f16. Returns [W, H, OC, N] like conv2d.
ggml_tensor* conv3x3_f16(const Graph& g, ggml_tensor* x, ggml_tensor* w, const std::string& prefix) {
    const int64_t OC = w->ne[1];
    w = matmul_weight(g, w, x->ne[0] * x->ne[1] * x->ne[3]);
    ggml_tensor* xp = named(ggml_pad_ext(g.ctx, contiguous(g.ctx, x), 1, 1, 1, 1, 0, 0, 0, 0), "conv.pad");
    ggml_tensor* bias = fusable_bias(g, prefix, OC);
    ggml_tensor* y = named(blas::conv3x3_f16(g.ctx, xp, w, bias, g.cancel()), "conv.matmul");  // [W, H, OC, N]
    return add_unfused_channel_bias(g, y, prefix, bias);
}

// The causal mask [T, T] (0 where key <= query, -inf after), added to the scaled scores; one per graph and type.
ggml_tensor* causal_mask(const Graph& g, int64_t T, ggml_type type) {
    ggml_tensor*& cached = type == GGML_TYPE_F16 ? g.causal_f16 : g.causal_f32;
    if (cached != nullptr && cached->ne[0] == T && cached->ne[1] == T) {
        return cached;
    }
    const float neg_inf = -std::numeric_limits<float>::infinity();
    std::vector<float> m(static_cast<size_t>(T * T));
    for (int64_t qi = 0; qi < T; ++qi) {
        for (int64_t ki = 0; ki < T; ++ki) {
            m[static_cast<size_t>(qi * T + ki)] = ki <= qi ? 0.0f : neg_inf;
        }
    }
    if (type == GGML_TYPE_F16) {
        std::vector<ggml_fp16_t> h(m.size());
        ggml_fp32_to_fp16_row(m.data(), h.data(), static_cast<int64_t>(m.size()));
        cached = g.runner.input(GGML_TYPE_F16, {T, T}, h.data(), h.size() * sizeof(ggml_fp16_t));
    } else {
        cached = g.runner.input(GGML_TYPE_F32, {T, T}, m.data(), m.size() * sizeof(float));
    }
    return named(cached, "attn.mask");
}

}  // namespace

Graph Graph::begin(GraphRunner& runner, const Options& opt, size_t max_nodes) {
    Graph g{runner, runner.begin(max_nodes), opt};
    if (g.opt.f32_matmul_min_cols < 0) {
        g.opt.f32_matmul_min_cols = runner.weights().is_cpu() ? 256 : 0;
    }
    g.attention_blocks_left = static_cast<int64_t>(max_nodes / 6);
    return g;
}

bool Graph::cpu() const { return runner.weights().is_cpu(); }

bool Graph::use_blas() const { return (blas::enabled() || bf16()) && cpu(); }

bool Graph::bf16() const { return opt.bf16 && amx::available() && cpu(); }

bool Graph::f16() const { return opt.f16 && f16::available() && cpu(); }

int64_t Graph::ne(const std::string& name, int dim) const {
    return runner.weights().tensor(name)->ne[dim];
}

namespace {

// Names under which no weight exists: LoRA products add no bias.
const std::string kNoBias = "\x01lora";

// y = w x (+ `prefix`.bias) for a weight tensor w [in, out] in any type.
ggml_tensor* linear_w(const Graph& g, ggml_tensor* x, ggml_tensor* w, const std::string& prefix) {
    if (w->ne[0] != x->ne[0]) {
        throw std::invalid_argument(prefix + ".weight takes " + std::to_string(w->ne[0]) + " inputs, got " +
                                    std::to_string(x->ne[0]));
    }
    x = contiguous(g.ctx, x);
    w = matmul_weight(g, w, ggml_nelements(x) / x->ne[0]);
    return product(g, w, x, prefix, "linear.matmul");
}

// Runtime LoRA terms of a conv folded into its weight: a wide product converts its weight to f32 anyway
// (matmul_weight), and adding sum(scale * up down) to that copy costs in*out*rank multiply-adds once per pass, against
// rank*(in+out) per output pixel for the separate convs, which also redo the layer's im2col or tap products
// (bench_lora.py --conv, q8_0: 13.7% per step with separate convs, 9.2% folded). Only where that is cheaper; nullptr
// otherwise (the caller then adds the terms' own products). The stored bytes are never touched: the sum lives in the
// compute buffer.
ggml_tensor* folded_weight(const Graph& g, ggml_tensor* w, const std::vector<LoraTerm>& terms, int64_t cols) {
    if (!g.wide(cols)) {
        return nullptr;
    }
    const double in = static_cast<double>(w->ne[0]), out = static_cast<double>(w->ne[1]);
    double fold = 0.0, apart = 0.0;
    for (const LoraTerm& t : terms) {
        const double r = t.up == nullptr ? 0.0 : static_cast<double>(t.down->ne[1]);
        fold += t.up == nullptr ? in * out : in * out * r;
        apart += (t.up == nullptr ? in * out : r * (in + out)) * static_cast<double>(cols);
    }
    if (fold >= apart) {
        return nullptr;
    }
    ggml_tensor* wf = w->type == GGML_TYPE_F32 ? w : named(ggml_cast(g.ctx, w, GGML_TYPE_F32), "weight.to_f32");
    for (const LoraTerm& t : terms) {
        ggml_tensor* d = t.down;  // dense: [in, out] already
        if (t.up != nullptr) {    // [in, r] x [r, out] -> [in, out], the weight's own layout
            d = named(ggml_mul_mat(g.ctx, ggml_cont(g.ctx, ggml_transpose(g.ctx, t.down)), t.up), "lora.fold");
        }
        wf = named(ggml_add(g.ctx, wf, ggml_scale(g.ctx, d, t.scale)), "lora.fold");
    }
    return wf;
}

}  // namespace

ggml_tensor* linear(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    // Linear layers keep their terms as separate products even where folded_weight() would take them: the thin
    // products cost little next to the weight-sized add (bench_lora.py: 4.2-4.8% per step unfolded, 4.5-5.1% folded).
    ggml_tensor* y = linear_w(g, x, g.w(prefix + ".weight"), prefix);
    const std::vector<LoraTerm>* terms = g.runner.lora(prefix);
    if (terms == nullptr) {
        return y;
    }
    // Runtime LoRA: y += scale * up (down x), the scale applied to the rank-wide activations (the cheapest place).
    for (const LoraTerm& t : *terms) {
        ggml_tensor* d = linear_w(g, x, t.down, kNoBias);
        d = named(ggml_scale(g.ctx, d, t.scale), "lora.scale");
        if (t.up != nullptr) {
            d = linear_w(g, d, t.up, kNoBias);
        }
        y = named(ggml_add(g.ctx, y, d), "lora.add");
    }
    return y;
}

ggml_tensor* to_tokens(const Graph& g, ggml_tensor* x) {
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    x = ggml_reshape_3d(g.ctx, contiguous(g.ctx, x), W * H, C, N);
    return named(ggml_cont(g.ctx, ggml_transpose(g.ctx, x)), "layout.tokens");
}

ggml_tensor* from_tokens(const Graph& g, ggml_tensor* x, int64_t W, int64_t H) {
    const int64_t C = x->ne[0], N = x->ne[2];
    x = named(ggml_cont(g.ctx, ggml_transpose(g.ctx, x)), "layout.tokens");
    return ggml_reshape_4d(g.ctx, x, W, H, C, N);
}

ggml_tensor* resize_nearest(const Graph& g, ggml_tensor* x, int64_t W_out, int64_t H_out) {
    if (W_out == 2 * x->ne[0] && H_out == 2 * x->ne[1]) {
        return ggml_upscale(g.ctx, x, 2, GGML_SCALE_MODE_NEAREST);
    }
    return ggml_interpolate(g.ctx, x, W_out, H_out, x->ne[2], x->ne[3], GGML_SCALE_MODE_NEAREST);
}

ggml_tensor* silu(const Graph& g, ggml_tensor* x) { return ggml_silu(g.ctx, x); }

ggml_tensor* relu(const Graph& g, ggml_tensor* x) { return ggml_relu(g.ctx, x); }

ggml_tensor* gelu(const Graph& g, ggml_tensor* x) { return ggml_gelu_erf(g.ctx, x); }

ggml_tensor* quick_gelu(const Graph& g, ggml_tensor* x) {
    // Not ggml_gelu_quick: its CPU kernel reads an f16 lookup table (~1e-3 relative error); sigmoid keeps the
    // activation in f32.
    return ggml_mul(g.ctx, x, ggml_sigmoid(g.ctx, ggml_scale(g.ctx, x, kQuickGeluCoef)));
}

ggml_tensor* geglu(const Graph& g, ggml_tensor* h) {
    return named(ggml_geglu_erf_swapped(g.ctx, h), "ff.geglu");  // hidden * gelu_erf(gate), as torch's F.gelu
}

namespace {

// conv2d of x with the weight tensor w [C*k*k, OC] (any type) + `prefix`.bias; the kernel size follows from w and C.
ggml_tensor* conv2d_w(const Graph& g, ggml_tensor* x, ggml_tensor* w, const std::string& prefix, int stride,
                      int pad) {
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    const int64_t OC = w->ne[1];
    const int64_t taps = w->ne[0] / C;
    const int k = static_cast<int>(std::lround(std::sqrt(static_cast<double>(taps))));
    if (w->ne[0] % C != 0 || static_cast<int64_t>(k) * k != taps) {
        throw std::invalid_argument(prefix + ".weight rows of " + std::to_string(w->ne[0]) +
                                    " do not fit a square kernel over " + std::to_string(C) + " input channels");
    }
    if (pad < 0) {
        pad = k / 2;
    }
    if (k == 1 && stride == 1 && pad == 0) {
        // A 1x1 conv is a linear layer over channels: no im2col copy, only the token transposes.
        return from_tokens(g, linear_w(g, to_tokens(g, x), w, prefix), W, H);
    }
    if (k == 3 && stride == 1 && pad == 1 && f16_product(g, W * H * N) && W % 16 == 0) {
        return conv3x3_f16(g, x, w, prefix);
    }
    if (k == 3 && stride == 1 && pad == 1 && g.wide(W * H * N) && g.use_blas() && !f16_product(g, W * H * N)) {
        return conv3x3_blas(g, x, w, prefix);
    }
    // im2col reads only the kernel's dims, so a small shape-only tensor stands in for the weight; this keeps
    // the weight free to be any (quantized) type. F32 columns: ggml's F16 im2col is a slow scalar path.
    ggml_tensor* shape = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F16, k, k, C);
    x = contiguous(g.ctx, x);
    const int64_t OW = (W + 2 * pad - k) / stride + 1, OH = (H + 2 * pad - k) / stride + 1;
    if (OW <= 0 || OH <= 0) {
        throw std::invalid_argument(prefix + ": a " + std::to_string(W) + "x" + std::to_string(H) +
                                    " input is too small for its " + std::to_string(k) + "x" + std::to_string(k) +
                                    " kernel");
    }
    w = matmul_weight(g, w, OW * OH * N);  // once for all bands
    const double cols_bytes = static_cast<double>(w->ne[0]) * OW * OH * N * sizeof(float);
    if (g.opt.max_im2col_bytes > 0 && cols_bytes > static_cast<double>(g.opt.max_im2col_bytes) && OH > 1) {
        if (ggml_tensor* y = conv2d_banded(g, x, w, shape, prefix, k, stride, pad, OW, OH)) {
            return y;
        }
    }
    ggml_tensor* cols = ggml_im2col(g.ctx, shape, x, stride, stride, pad, pad, 1, 1, true,
                                    GGML_TYPE_F32);  // [C*k*k, OW, OH, N]
    named(cols, "conv.im2col");
    cols = ggml_reshape_2d(g.ctx, cols, cols->ne[0], OW * OH * N);
    ggml_tensor* y = product(g, w, cols, prefix, "conv.matmul");  // [OC, OW*OH*N]
    // Back to [OW, OH, OC, N]: the transpose copies once per conv (measured small next to the matmul).
    y = ggml_reshape_3d(g.ctx, y, OC, OW * OH, N);
    y = named(ggml_cont(g.ctx, ggml_transpose(g.ctx, y)), "conv.layout");
    return ggml_reshape_4d(g.ctx, y, OW, OH, OC, N);
}

}  // namespace

ggml_tensor* conv2d(const Graph& g, ggml_tensor* x, const std::string& prefix, int stride, int pad) {
    ggml_tensor* w = g.w(prefix + ".weight");
    const std::vector<LoraTerm>* terms = g.runner.lora(prefix);
    const int64_t C = x->ne[2];
    if (terms != nullptr && w->ne[0] % C == 0) {
        const int k = static_cast<int>(std::lround(std::sqrt(static_cast<double>(w->ne[0] / C))));
        const int p = pad < 0 ? k / 2 : pad;
        const int64_t OW = (x->ne[0] + 2 * p - k) / stride + 1, OH = (x->ne[1] + 2 * p - k) / stride + 1;
        if (ggml_tensor* wf = OW > 0 && OH > 0 ? folded_weight(g, w, *terms, OW * OH * x->ne[3]) : nullptr) {
            return conv2d_w(g, x, wf, prefix, stride, pad);
        }
    }
    ggml_tensor* y = conv2d_w(g, x, w, prefix, stride, pad);
    if (terms == nullptr) {
        return y;
    }
    // Runtime LoRA (LoCon): the down kernel is a conv with the layer's own kernel size, stride and padding, the up
    // a 1x1 conv over the rank channels; a dense delta is a conv of the layer's shape.
    for (const LoraTerm& t : *terms) {
        ggml_tensor* d = conv2d_w(g, x, t.down, kNoBias, stride, pad);
        d = named(ggml_scale(g.ctx, d, t.scale), "lora.scale");
        if (t.up != nullptr) {
            d = conv2d_w(g, d, t.up, kNoBias, 1, 0);
        }
        y = named(ggml_add(g.ctx, y, d), "lora.add");
    }
    return y;
}

ggml_tensor* group_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, int groups, float eps,
                        bool silu) {
    if (x->ne[2] % groups != 0 || groups > 0xFFFF) {
        throw std::invalid_argument(prefix + ": " + std::to_string(x->ne[2]) + " channels do not split into " +
                                    std::to_string(groups) + " groups");
    }
    x = contiguous(g.ctx, x);
    ggml_tensor* gamma = g.w(prefix + ".weight");
    ggml_tensor* beta = g.w(prefix + ".bias");
    const int64_t C = x->ne[2];
    auto plain_f32 = [C](const ggml_tensor* t) {
        return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == C;
    };
    if (g.cpu() && x->type == GGML_TYPE_F32 && plain_f32(gamma) && plain_f32(beta)) {
        return named(cpu_ops::group_norm(g.ctx, x, gamma, beta, groups, eps, silu, g.cancel()), "norm.group");
    }
    ggml_tensor* y = channel_affine(g, named(ggml_group_norm(g.ctx, x, groups, eps), "norm.group"), prefix);
    return silu ? ggml_silu(g.ctx, y) : y;
}

ggml_tensor* layer_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, float eps) {
    x = named(ggml_norm(g.ctx, contiguous(g.ctx, x), eps), "norm.layer");
    x = named(ggml_mul(g.ctx, x, g.w(prefix + ".weight")), "norm.affine");
    return named(ggml_add(g.ctx, x, g.w(prefix + ".bias")), "norm.affine");
}

namespace {

// Heads of t [C, T, N] as [Dp, T, heads, N] (contiguous), zero-padded from D = C / heads to Dp columns: zero columns
// leave QK^T unchanged and give zero output columns.
ggml_tensor* split_heads(const Graph& g, ggml_tensor* t, int64_t heads, int64_t Dp) {
    const int64_t D = t->ne[0] / heads, T = t->ne[1], N = t->ne[2];
    ggml_tensor* h = ggml_permute(g.ctx, ggml_reshape_4d(g.ctx, contiguous(g.ctx, t), D, heads, T, N), 0, 2, 1, 3);
    return named(Dp == D ? ggml_cont(g.ctx, h) : ggml_pad(g.ctx, h, static_cast<int>(Dp - D), 0, 0, 0),
                 "attn.layout");
}

// ggml_flash_attn_ext over heads padded (on the CPU) to the SIMD width; `mask` (f16 [Tk, Tq]) or nullptr.
ggml_tensor* attention_flash(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int64_t heads,
                             ggml_tensor* mask) {
    ggml_context* ctx = g.ctx;
    const int64_t C = q->ne[0], Tq = q->ne[1], Tk = k->ne[1], N = q->ne[2], D = C / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    // F32 K/V keep the CPU kernel's dot products in f32 (F16 K would round Q to f16 as well). ggml's tiled CPU
    // kernel needs the head width to be a multiple of the SIMD width (16 floats on AVX-512), dropped below. SD1.5's
    // 40-wide heads otherwise take the one-query-at-a-time kernel: an SD1.5 UNet call at 64x64 latents took 7.3 s
    // instead of 8.3 s. GPU kernels take the model's own widths.
    const int64_t Dp = g.cpu() ? (D + 15) / 16 * 16 : D;
    ggml_tensor* qp = split_heads(g, q, heads, Dp);
    ggml_tensor* kp = split_heads(g, k, heads, Dp);
    ggml_tensor* vp = split_heads(g, v, heads, Dp);
    auto flash = [&](ggml_tensor* qs, ggml_tensor* ms) {
        ggml_tensor* o = named(ggml_flash_attn_ext(ctx, qs, kp, vp, ms, scale, 0.0f, 0.0f), "attn.flash");
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);  // [Dp, heads, rows, N]
        return o;
    };
    // ggml cannot stop inside a node, and one fused attention over many tokens runs for seconds (minutes over 64k
    // tokens): on the CPU, queries go in blocks of ~2^28 multiply-adds (~50 ms on two cores), each block written
    // into its rows of the output, so an interrupt waits for one block at most. Rows are independent in the kernel,
    // so blocks change no result. Blocks take 3 nodes each: at most 2048 per attention, and what the graph's budget
    // has left (attention_blocks_left).
    const double macs = 2.0 * static_cast<double>(Tq) * static_cast<double>(Tk) * static_cast<double>(Dp) *
                        static_cast<double>(heads * N);
    const double out_bytes = static_cast<double>(Dp * heads * Tq * N) * sizeof(float);
    int64_t rows = Tq;
    if (g.cpu() && out_bytes < std::numeric_limits<int32_t>::max()) {  // ggml_set keeps 32-bit offsets
        const auto by_work = static_cast<int64_t>(static_cast<double>(Tq) * static_cast<double>(1 << 28) / macs);
        const int64_t max_blocks = std::min<int64_t>(2048, g.attention_blocks_left);
        rows = std::max<int64_t>({32, by_work, max_blocks > 0 ? (Tq + max_blocks - 1) / max_blocks : Tq});
    }
    ggml_tensor* out = nullptr;
    if (rows >= Tq) {
        out = flash(qp, mask);
    } else {
        out = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, Dp, heads, Tq, N);
        g.attention_blocks_left -= (Tq + rows - 1) / rows;
        for (int64_t q0 = 0; q0 < Tq; q0 += rows) {
            const int64_t m = std::min(rows, Tq - q0);
            ggml_tensor* qs = ggml_view_4d(ctx, qp, Dp, m, heads, N, qp->nb[1], qp->nb[2], qp->nb[3],
                                           static_cast<size_t>(q0) * qp->nb[1]);
            ggml_tensor* ms = mask == nullptr ? nullptr
                                              : ggml_view_2d(ctx, mask, Tk, m, mask->nb[1],
                                                             static_cast<size_t>(q0) * mask->nb[1]);  // its rows
            // Each set returns a view of `out` that depends on the previous one, which orders the blocks.
            out = named(ggml_set_inplace(ctx, out, flash(qs, ms), out->nb[1], out->nb[2], out->nb[3],
                                         static_cast<size_t>(q0) * out->nb[2]),
                        "attn.block");
        }
    }
    if (Dp != D) {
        out = named(ggml_cont(ctx, ggml_view_4d(ctx, out, D, heads, Tq, N, out->nb[1], out->nb[2], out->nb[3], 0)),
                    "attn.layout");
    }
    return ggml_reshape_3d(ctx, out, C, Tq, N);
}

// softmax(q k^T * scale + mask) v as two ggml_mul_mat and a soft_max_ext; `mask` (f32 [Tk, Tq]) or nullptr.
ggml_tensor* attention_mul_mat(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int64_t heads,
                               ggml_tensor* mask) {
    ggml_context* ctx = g.ctx;
    const int64_t C = q->ne[0], Tq = q->ne[1], Tk = k->ne[1], N = q->ne[2], D = C / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    // Zero-padding the head width to a multiple of 16 lets llamafile's f32 sgemm (it needs K % 16 == 0 on AVX-512)
    // take SD1.5's 40-wide heads: QK^T of the SD1.5 UNet at 32x32 went from 0.49 s to 0.13 s (native + llamafile
    // ggml, 2 threads). Stock ggml does the same work on 20% more zeros.
    const int64_t Dp = (D + 15) / 16 * 16;
    ggml_tensor* qh = split_heads(g, q, heads, Dp);
    ggml_tensor* kh = split_heads(g, k, heads, Dp);
    // v as [Tk, D, heads, N] so the second product is again "rows of src0 times columns of src1".
    ggml_tensor* vt = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, contiguous(ctx, v), D, heads, Tk, N),
                                                  1, 2, 0, 3));
    named(vt, "attn.layout");
    ggml_tensor* kq = named(ggml_mul_mat(ctx, kh, qh), "attn.kq");  // [Tk, Tq, heads, N]
    kq = named(ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f), "attn.softmax");
    ggml_tensor* out = named(ggml_mul_mat(ctx, vt, kq), "attn.kqv");  // [D, Tq, heads, N]
    out = named(ggml_cont(ctx, ggml_permute(ctx, out, 0, 2, 1, 3)), "attn.layout");  // [D, heads, Tq, N]
    return ggml_reshape_3d(ctx, out, C, Tq, N);
}

}  // namespace

ggml_tensor* attention(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads, Mask mask) {
    const int64_t C = q->ne[0], Tq = q->ne[1], Tk = k->ne[1];
    if (heads <= 0 || C % heads != 0) {
        throw std::invalid_argument("attention: " + std::to_string(C) + " channels do not split into " +
                                    std::to_string(heads) + " heads");
    }
    if (mask == Mask::Causal && Tq != Tk) {
        throw std::invalid_argument("attention: a causal mask needs as many queries as keys, got " +
                                    std::to_string(Tq) + " and " + std::to_string(Tk));
    }
    // The first kernel that applies: OpenBLAS's blocked attention (CPU, f32, unmasked: it takes no mask), ggml's
    // flash attention when the options ask for it (mask in f16), else mul_mat + soft_max (mask in f32). A masked
    // attention (CLIP's causal one) thus always runs on one of ggml's two.
    if (mask == Mask::None && g.use_blas() && q->type == GGML_TYPE_F32 && k->type == GGML_TYPE_F32 &&
        v->type == GGML_TYPE_F32) {
        return named(blas::attention(g.ctx, contiguous(g.ctx, q), contiguous(g.ctx, k), contiguous(g.ctx, v), heads,
                                     g.cancel(), g.bf16()),
                     "attn.blas");
    }
    if (g.opt.flash_attn) {
        return attention_flash(g, q, k, v, heads, mask == Mask::Causal ? causal_mask(g, Tq, GGML_TYPE_F16) : nullptr);
    }
    return attention_mul_mat(g, q, k, v, heads, mask == Mask::Causal ? causal_mask(g, Tq, GGML_TYPE_F32) : nullptr);
}

}  // namespace sdcpp::ops
