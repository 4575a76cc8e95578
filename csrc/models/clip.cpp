#include "models/clip.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

namespace sdcpp {

namespace {

// Quick GELU's constant (OpenAI CLIP): x * sigmoid(1.702 x).
constexpr float kQuickGeluCoef = 1.702f;

std::string shape_str(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) {
        s += (i ? ", " : "") + std::to_string(ne[i]);
    }
    return s + "]";
}

}  // namespace

ClipActivation clip_activation_from_name(const std::string& name) {
    if (name == "quick_gelu") {
        return ClipActivation::QuickGelu;
    }
    if (name == "gelu") {
        return ClipActivation::Gelu;
    }
    throw std::invalid_argument("unsupported CLIP activation '" + name + "' (quick_gelu or gelu)");
}

ClipTextModel::ClipTextModel(WeightStore& weights, std::string prefix, const ClipConfig& config, int n_threads)
    : GraphModel(weights, n_threads), prefix_(std::move(prefix)), config_(config) {
    // Every shape is checked here, so graph building never reaches a GGML_ASSERT (process abort).
    auto ne_of = [&](const std::string& leaf) {
        const std::string name = prefix_ + leaf;
        if (!weights.contains(name)) {
            throw std::invalid_argument("model weight '" + name + "' is missing");
        }
        return weights.ne(name);
    };
    auto expect = [&](const std::string& leaf, const std::vector<int64_t>& want) {
        const auto got = ne_of(leaf);
        if (got != want) {
            throw std::invalid_argument("model weight '" + prefix_ + leaf + "' has ggml shape " + shape_str(got) +
                                        ", expected " + shape_str(want));
        }
    };

    const auto tok = ne_of("text_model.embeddings.token_embedding.weight");
    const auto pos = ne_of("text_model.embeddings.position_embedding.weight");
    if (tok.size() != 2 || pos.size() != 2 || tok[0] != pos[0]) {
        throw std::invalid_argument(prefix_ + ": token/position embeddings have shapes " + shape_str(tok) + " and " +
                                    shape_str(pos));
    }
    hidden_ = tok[0];
    vocab_ = tok[1];
    n_pos_ = pos[1];
    if (config_.n_layers < 1) {
        throw std::invalid_argument("ClipTextModel: n_layers must be >= 1");
    }
    if (config_.n_heads < 1 || hidden_ % config_.n_heads != 0) {
        throw std::invalid_argument("ClipTextModel: n_heads=" + std::to_string(config_.n_heads) +
                                    " does not divide the hidden size " + std::to_string(hidden_));
    }
    if (!(config_.eps > 0.0f)) {
        throw std::invalid_argument("ClipTextModel: eps must be > 0");
    }
    const int64_t C = hidden_;
    for (int i = 0; i < config_.n_layers; ++i) {
        const std::string l = "text_model.encoder.layers." + std::to_string(i) + ".";
        for (const char* n : {"layer_norm1", "layer_norm2"}) {
            expect(l + n + ".weight", {C});
            expect(l + n + ".bias", {C});
        }
        for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
            expect(l + "self_attn." + n + ".weight", {C, C});
            expect(l + "self_attn." + n + ".bias", {C});
        }
        const auto fc1 = ne_of(l + "mlp.fc1.weight");
        if (fc1.size() != 2 || fc1[0] != C) {
            throw std::invalid_argument("model weight '" + prefix_ + l + "mlp.fc1.weight' has ggml shape " +
                                        shape_str(fc1));
        }
        expect(l + "mlp.fc1.bias", {fc1[1]});
        expect(l + "mlp.fc2.weight", {fc1[1], C});
        expect(l + "mlp.fc2.bias", {C});
    }
    expect("text_model.final_layer_norm.weight", {C});
    expect("text_model.final_layer_norm.bias", {C});
    if (weights.contains(prefix_ + "text_projection.weight")) {
        const auto p = ne_of("text_projection.weight");
        if (p.size() != 2 || p[0] != C) {
            throw std::invalid_argument("model weight '" + prefix_ + "text_projection.weight' has ggml shape " +
                                        shape_str(p));
        }
        proj_dim_ = p[1];
    }
}

ggml_tensor* ClipTextModel::linear(ggml_tensor* x, const std::string& name, bool bias) {
    // Weight as src0: ggml_mul_mat handles every stored type (f32/f16/bf16/quantized) that way.
    ggml_tensor* y = ggml_mul_mat(runner_.ctx(), w(name + ".weight"), x);
    return bias ? ggml_add(runner_.ctx(), y, w(name + ".bias")) : y;
}

ggml_tensor* ClipTextModel::layer_norm(ggml_tensor* x, const std::string& name) {
    ggml_context* ctx = runner_.ctx();
    x = ggml_norm(ctx, x, config_.eps);
    return ggml_add(ctx, ggml_mul(ctx, x, w(name + ".weight")), w(name + ".bias"));
}

ggml_tensor* ClipTextModel::attention(ggml_tensor* x, const std::string& name, ggml_tensor* mask, int64_t T,
                                      int64_t B) {
    ggml_context* ctx = runner_.ctx();
    const int64_t C = hidden_;
    const int64_t H = config_.n_heads;
    const int64_t D = C / H;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));

    // [C, T, B] -> [D, H, T, B] -> [D, T, H, B]: one (T x D) matrix per head and batch item.
    auto heads = [&](ggml_tensor* t) { return ggml_permute(ctx, ggml_reshape_4d(ctx, t, D, H, T, B), 0, 2, 1, 3); };
    ggml_tensor* q = heads(linear(x, name + ".q_proj"));
    ggml_tensor* k = heads(linear(x, name + ".k_proj"));
    ggml_tensor* v_proj = linear(x, name + ".v_proj");

    ggml_tensor* out;
    if (config_.flash_attn) {
        ggml_tensor* v = heads(v_proj);
        out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);  // [D, H, T, B]
        ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    } else {
        ggml_tensor* kq = ggml_mul_mat(ctx, k, q);                     // [T_k, T_q, H, B]
        kq = ggml_soft_max_ext(ctx, kq, mask, scale, 0.0f);            // causal mask added after scaling
        ggml_tensor* vt = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, v_proj, D, H, T, B), 1, 2, 0, 3));
        ggml_tensor* kqv = ggml_mul_mat(ctx, vt, kq);                  // [D, T_q, H, B]
        out = ggml_cont(ctx, ggml_permute(ctx, kqv, 0, 2, 1, 3));      // [D, H, T, B]
    }
    return linear(ggml_reshape_3d(ctx, out, C, T, B), name + ".out_proj");
}

ggml_tensor* ClipTextModel::encoder_layer(ggml_tensor* x, int layer, ggml_tensor* mask, int64_t T, int64_t B) {
    ggml_context* ctx = runner_.ctx();
    const std::string l = "text_model.encoder.layers." + std::to_string(layer) + ".";
    x = ggml_add(ctx, x, attention(layer_norm(x, l + "layer_norm1"), l + "self_attn", mask, T, B));

    ggml_tensor* h = linear(layer_norm(x, l + "layer_norm2"), l + "mlp.fc1");
    if (config_.act == ClipActivation::Gelu) {
        h = ggml_gelu_erf(ctx, h);
    } else {
        // Not ggml_gelu_quick: its CPU kernel reads an f16 lookup table (~1e-3 relative error),
        // sigmoid keeps the activation in f32.
        h = ggml_mul(ctx, h, ggml_sigmoid(ctx, ggml_scale(ctx, h, kQuickGeluCoef)));
    }
    return ggml_add(ctx, x, linear(h, l + "mlp.fc2"));
}

ClipOutput ClipTextModel::compute(const int32_t* tokens, int64_t B, int64_t T, const int32_t* eos,
                                  const ClipRequest& req) {
    if (B < 1 || T < 1) {
        throw std::invalid_argument("ClipTextModel: empty token batch");
    }
    if (T > n_pos_) {
        throw std::invalid_argument("ClipTextModel: " + std::to_string(T) + " tokens exceed the " +
                                    std::to_string(n_pos_) + " positions of the model");
    }
    const int L = config_.n_layers;
    if (req.out_layer < 0 || req.out_layer > L) {
        throw std::invalid_argument("ClipTextModel: out_layer must be in [0, " + std::to_string(L) + "]");
    }
    // ggml_get_rows does not check its indices; an out-of-range id would read past the table.
    for (int64_t i = 0; i < B * T; ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab_) {
            throw std::invalid_argument("ClipTextModel: token id " + std::to_string(tokens[i]) + " outside [0, " +
                                        std::to_string(vocab_) + ")");
        }
    }
    std::vector<int32_t> eos_rows;
    if (req.want_pooled) {
        for (int64_t b = 0; b < B; ++b) {
            if (eos[b] < 0 || eos[b] >= T) {
                throw std::invalid_argument("ClipTextModel: eos position " + std::to_string(eos[b]) +
                                            " outside [0, " + std::to_string(T) + ")");
            }
            eos_rows.push_back(static_cast<int32_t>(b * T + eos[b]));
        }
    }

    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t C = hidden_;
    const int n_run = req.want_pooled ? L : req.out_layer;  // layers past the requested outputs are skipped
    ggml_context* ctx = runner_.begin(512 + 128 * static_cast<size_t>(n_run));

    std::vector<int32_t> positions(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        positions[t] = static_cast<int32_t>(t);
    }
    ggml_tensor* ids = runner_.input(GGML_TYPE_I32, {T * B}, tokens, sizeof(int32_t) * T * B);
    ggml_tensor* pos = runner_.input(GGML_TYPE_I32, {T}, positions.data(), sizeof(int32_t) * T);

    // Causal mask, added to the scaled scores: row q sees keys 0..q. flash_attn_ext wants it in f16.
    const float neg_inf = -std::numeric_limits<float>::infinity();
    ggml_tensor* mask;
    if (config_.flash_attn) {
        std::vector<ggml_fp16_t> m(static_cast<size_t>(T * T));
        for (int64_t qi = 0; qi < T; ++qi) {
            for (int64_t ki = 0; ki < T; ++ki) {
                m[qi * T + ki] = ggml_fp32_to_fp16(ki <= qi ? 0.0f : neg_inf);
            }
        }
        mask = runner_.input(GGML_TYPE_F16, {T, T}, m.data(), m.size() * sizeof(ggml_fp16_t));
    } else {
        std::vector<float> m(static_cast<size_t>(T * T));
        for (int64_t qi = 0; qi < T; ++qi) {
            for (int64_t ki = 0; ki < T; ++ki) {
                m[qi * T + ki] = ki <= qi ? 0.0f : neg_inf;
            }
        }
        mask = runner_.input(GGML_TYPE_F32, {T, T}, m.data(), m.size() * sizeof(float));
    }

    // get_rows dequantizes any stored type (and f16 position tables) to f32.
    ggml_tensor* x = ggml_get_rows(ctx, w("text_model.embeddings.token_embedding.weight"), ids);  // [C, T*B]
    x = ggml_reshape_3d(ctx, x, C, T, B);
    x = ggml_add(ctx, x, ggml_get_rows(ctx, w("text_model.embeddings.position_embedding.weight"), pos));

    ggml_tensor* hidden = req.out_layer == 0 ? x : nullptr;
    for (int i = 0; i < n_run; ++i) {
        x = encoder_layer(x, i, mask, T, B);
        if (i + 1 == req.out_layer) {
            hidden = x;
        }
    }
    if (req.final_norm) {
        hidden = layer_norm(hidden, "text_model.final_layer_norm");
    }
    std::vector<ggml_tensor*> outputs{hidden};

    ggml_tensor* pooled = nullptr;
    ggml_tensor* embeds = nullptr;
    if (req.want_pooled) {
        // LayerNorm is per token, so norming only the gathered EOS rows equals pooling the normed states.
        ggml_tensor* rows = runner_.input(GGML_TYPE_I32, {B}, eos_rows.data(), sizeof(int32_t) * B);
        pooled = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, C, T * B), rows);  // [C, B]
        pooled = layer_norm(pooled, "text_model.final_layer_norm");
        outputs.push_back(pooled);
        if (proj_dim_ > 0) {
            embeds = linear(pooled, "text_projection", false);  // [P, B]
            outputs.push_back(embeds);
        }
    }

    runner_.run(outputs);

    ClipOutput out;
    out.hidden.resize(static_cast<size_t>(B * T * C));
    runner_.read(hidden, out.hidden.data(), out.hidden.size() * sizeof(float));
    if (pooled != nullptr) {
        out.pooled.resize(static_cast<size_t>(B * C));
        runner_.read(pooled, out.pooled.data(), out.pooled.size() * sizeof(float));
    }
    if (embeds != nullptr) {
        out.text_embeds.resize(static_cast<size_t>(B * proj_dim_));
        runner_.read(embeds, out.text_embeds.data(), out.text_embeds.size() * sizeof(float));
    }
    return out;
}

}  // namespace sdcpp
