#include "models/blocks.hpp"

#include <cmath>
#include <stdexcept>

namespace sdcpp::blocks {

namespace {

ggml_tensor* contiguous(ggml_context* ctx, ggml_tensor* x) {
    return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x);
}

// Per-channel weight/bias [C] broadcast over x [W, H, C, N].
ggml_tensor* channel_affine(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    const int64_t C = x->ne[2];
    ggml_tensor* w = g.w(prefix + ".weight");
    x = ggml_mul(g.ctx, x, ggml_reshape_4d(g.ctx, w, 1, 1, C, 1));
    ggml_tensor* b = g.w(prefix + ".bias");
    return ggml_add(g.ctx, x, ggml_reshape_4d(g.ctx, b, 1, 1, C, 1));
}

ggml_tensor* add_bias(const Graph& g, ggml_tensor* y, const std::string& prefix) {
    const std::string bias = prefix + ".bias";
    return g.has(bias) ? ggml_add(g.ctx, y, g.w(bias)) : y;
}

}  // namespace

int64_t Graph::ne(const std::string& name, int dim) const {
    return runner.weights().tensor(name)->ne[dim];
}

ggml_tensor* linear(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    ggml_tensor* w = g.w(prefix + ".weight");
    if (w->ne[0] != x->ne[0]) {
        throw std::invalid_argument(prefix + ".weight takes " + std::to_string(w->ne[0]) + " inputs, got " +
                                    std::to_string(x->ne[0]));
    }
    return add_bias(g, ggml_mul_mat(g.ctx, w, contiguous(g.ctx, x)), prefix);
}

ggml_tensor* to_tokens(ggml_context* ctx, ggml_tensor* x) {
    const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
    x = ggml_reshape_3d(ctx, contiguous(ctx, x), W * H, C, N);
    return ggml_cont(ctx, ggml_transpose(ctx, x));
}

ggml_tensor* from_tokens(ggml_context* ctx, ggml_tensor* x, int64_t W, int64_t H) {
    const int64_t C = x->ne[0], N = x->ne[2];
    x = ggml_cont(ctx, ggml_transpose(ctx, x));
    return ggml_reshape_4d(ctx, x, W, H, C, N);
}

ggml_tensor* conv2d(const Graph& g, ggml_tensor* x, const std::string& prefix, int stride, int pad) {
    ggml_tensor* w = g.w(prefix + ".weight");
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
        return from_tokens(g.ctx, linear(g, to_tokens(g.ctx, x), prefix), W, H);
    }
    // im2col reads only the kernel's dims, so a small shape-only tensor stands in for the weight; this keeps
    // the weight free to be any (quantized) type. F32 columns: ggml's F16 im2col is a slow scalar path.
    ggml_tensor* shape = ggml_new_tensor_3d(g.ctx, GGML_TYPE_F16, k, k, C);
    ggml_tensor* cols = ggml_im2col(g.ctx, shape, contiguous(g.ctx, x), stride, stride, pad, pad, 1, 1, true,
                                    GGML_TYPE_F32);  // [C*k*k, OW, OH, N]
    const int64_t OW = cols->ne[1], OH = cols->ne[2];
    cols = ggml_reshape_2d(g.ctx, cols, cols->ne[0], OW * OH * N);
    ggml_tensor* y = add_bias(g, ggml_mul_mat(g.ctx, w, cols), prefix);  // [OC, OW*OH*N]
    // Back to [OW, OH, OC, N]: the transpose copies once per conv (measured small next to the matmul).
    y = ggml_reshape_3d(g.ctx, y, OC, OW * OH, N);
    y = ggml_cont(g.ctx, ggml_transpose(g.ctx, y));
    return ggml_reshape_4d(g.ctx, y, OW, OH, OC, N);
}

ggml_tensor* group_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, int groups, float eps) {
    if (x->ne[2] % groups != 0) {
        throw std::invalid_argument(prefix + ": " + std::to_string(x->ne[2]) + " channels do not split into " +
                                    std::to_string(groups) + " groups");
    }
    return channel_affine(g, ggml_group_norm(g.ctx, contiguous(g.ctx, x), groups, eps), prefix);
}

ggml_tensor* layer_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, float eps) {
    x = ggml_norm(g.ctx, contiguous(g.ctx, x), eps);
    x = ggml_mul(g.ctx, x, g.w(prefix + ".weight"));
    return ggml_add(g.ctx, x, g.w(prefix + ".bias"));
}

ggml_tensor* attention_core(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads) {
    ggml_context* ctx = g.ctx;
    const int64_t C = q->ne[0], Tq = q->ne[1], Tk = k->ne[1], N = q->ne[2];
    if (heads <= 0 || C % heads != 0) {
        throw std::invalid_argument("attention: " + std::to_string(C) + " channels do not split into " +
                                    std::to_string(heads) + " heads");
    }
    const int64_t D = C / heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    // [C, T, N] -> [D, T, heads, N]
    auto split = [&](ggml_tensor* t, int64_t T) {
        return ggml_permute(ctx, ggml_reshape_4d(ctx, contiguous(ctx, t), D, heads, T, N), 0, 2, 1, 3);
    };
    if (g.flash_attn) {
        // F32 K/V keep the CPU kernel's dot products in f32 (F16 K would round Q to f16 as well).
        ggml_tensor* out = ggml_flash_attn_ext(ctx, split(q, Tq), ggml_cont(ctx, split(k, Tk)),
                                               ggml_cont(ctx, split(v, Tk)), nullptr, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
        return ggml_reshape_3d(ctx, out, C, Tq, N);  // result is [D, heads, Tq, N]
    }
    ggml_tensor* qh = ggml_cont(ctx, split(q, Tq));
    ggml_tensor* kh = ggml_cont(ctx, split(k, Tk));
    // v as [Tk, D, heads, N] so the second product is again "rows of src0 times columns of src1".
    ggml_tensor* vt = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, contiguous(ctx, v), D, heads, Tk, N),
                                                  1, 2, 0, 3));
    ggml_tensor* kq = ggml_mul_mat(ctx, kh, qh);  // [Tk, Tq, heads, N]
    kq = ggml_soft_max_ext(ctx, kq, nullptr, scale, 0.0f);
    ggml_tensor* out = ggml_mul_mat(ctx, vt, kq);  // [D, Tq, heads, N]
    out = ggml_cont(ctx, ggml_permute(ctx, out, 0, 2, 1, 3));  // [D, heads, Tq, N]
    return ggml_reshape_3d(ctx, out, C, Tq, N);
}

ggml_tensor* attention(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& prefix, int heads) {
    ggml_tensor* kv = context != nullptr ? context : x;
    ggml_tensor* q = linear(g, x, prefix + ".to_q");
    ggml_tensor* k = linear(g, kv, prefix + ".to_k");
    ggml_tensor* v = linear(g, kv, prefix + ".to_v");
    return linear(g, attention_core(g, q, k, v, heads), prefix + ".to_out.0");
}

ggml_tensor* geglu_feed_forward(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    ggml_tensor* h = linear(g, x, prefix + ".net.0.proj");  // [2*inner, T, N] = [hidden | gate]
    h = ggml_geglu_erf_swapped(g.ctx, h);                   // hidden * gelu_erf(gate), as torch's F.gelu
    return linear(g, h, prefix + ".net.2");
}

ggml_tensor* resnet(const Graph& g, ggml_tensor* x, ggml_tensor* temb_act, const std::string& prefix, int groups,
                    float eps) {
    ggml_tensor* h = ggml_silu(g.ctx, group_norm(g, x, prefix + ".norm1", groups, eps));
    h = conv2d(g, h, prefix + ".conv1");
    if (temb_act != nullptr) {
        ggml_tensor* t = linear(g, temb_act, prefix + ".time_emb_proj");  // [OC, N]
        h = ggml_add(g.ctx, h, ggml_reshape_4d(g.ctx, t, 1, 1, t->ne[0], t->ne[1]));
    }
    h = ggml_silu(g.ctx, group_norm(g, h, prefix + ".norm2", groups, eps));
    h = conv2d(g, h, prefix + ".conv2");
    ggml_tensor* skip = g.has(prefix + ".conv_shortcut.weight") ? conv2d(g, x, prefix + ".conv_shortcut") : x;
    return ggml_add(g.ctx, skip, h);
}

ggml_tensor* upsample(const Graph& g, ggml_tensor* x, const std::string& prefix, int64_t W, int64_t H) {
    if (W == 2 * x->ne[0] && H == 2 * x->ne[1]) {
        x = ggml_upscale(g.ctx, x, 2, GGML_SCALE_MODE_NEAREST);
    } else {
        x = ggml_interpolate(g.ctx, x, W, H, x->ne[2], x->ne[3], GGML_SCALE_MODE_NEAREST);
    }
    return conv2d(g, x, prefix + ".conv", 1, 1);
}

ggml_tensor* downsample(const Graph& g, ggml_tensor* x, const std::string& prefix, bool asymmetric) {
    if (asymmetric) {
        x = ggml_pad_ext(g.ctx, x, 0, 1, 0, 1, 0, 0, 0, 0);
        return conv2d(g, x, prefix + ".conv", 2, 0);
    }
    return conv2d(g, x, prefix + ".conv", 2, 1);
}

ggml_tensor* timestep_embedding(ggml_context* ctx, ggml_tensor* t, int dim) {
    return ggml_timestep_embedding(ctx, t, dim, 10000);
}

}  // namespace sdcpp::blocks
