#include "models/clip.hpp"

#include <stdexcept>
#include <utility>

namespace sdcpp {

namespace {

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
    if (config_.act == ClipActivation::Unset) {
        throw std::invalid_argument("ClipTextModel: no activation given");
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

// One CLIPEncoderLayer: x + self_attn(layer_norm1(x)) (causal), then x + mlp(layer_norm2(x)).
ggml_tensor* ClipTextModel::encoder_layer(const ops::Graph& g, ggml_tensor* x, int layer) const {
    const std::string l = prefix_ + "text_model.encoder.layers." + std::to_string(layer) + ".";
    const std::string a = l + "self_attn.";
    ggml_tensor* h = ops::layer_norm(g, x, l + "layer_norm1", config_.eps);
    ggml_tensor* q = ops::linear(g, h, a + "q_proj");
    ggml_tensor* k = ops::linear(g, h, a + "k_proj");
    ggml_tensor* v = ops::linear(g, h, a + "v_proj");
    h = ops::attention(g, q, k, v, config_.n_heads, ops::Mask::Causal);
    x = ggml_add(g.ctx, x, ops::linear(g, h, a + "out_proj"));

    h = ops::linear(g, ops::layer_norm(g, x, l + "layer_norm2", config_.eps), l + "mlp.fc1");
    h = config_.act == ClipActivation::Gelu ? ops::gelu(g, h) : ops::quick_gelu(g, h);
    return ggml_add(g.ctx, x, ops::linear(g, h, l + "mlp.fc2"));
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
    const ops::Graph g = ops::Graph::begin(runner_, config_.ops, 512 + 128 * static_cast<size_t>(n_run));
    ggml_context* ctx = g.ctx;

    std::vector<int32_t> positions(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        positions[t] = static_cast<int32_t>(t);
    }
    ggml_tensor* ids = runner_.input(GGML_TYPE_I32, {T * B}, tokens, sizeof(int32_t) * T * B);
    ggml_tensor* pos = runner_.input(GGML_TYPE_I32, {T}, positions.data(), sizeof(int32_t) * T);

    // get_rows dequantizes any stored type (and f16 position tables) to f32.
    const std::string emb = prefix_ + "text_model.embeddings.";
    ggml_tensor* x = ggml_get_rows(ctx, g.w(emb + "token_embedding.weight"), ids);  // [C, T*B]
    x = ggml_reshape_3d(ctx, x, C, T, B);
    x = ggml_add(ctx, x, ggml_get_rows(ctx, g.w(emb + "position_embedding.weight"), pos));

    ggml_tensor* hidden = req.out_layer == 0 ? x : nullptr;
    for (int i = 0; i < n_run; ++i) {
        x = encoder_layer(g, x, i);
        if (i + 1 == req.out_layer) {
            hidden = x;
        }
    }
    const std::string final_norm = prefix_ + "text_model.final_layer_norm";
    if (req.final_norm) {
        hidden = ops::layer_norm(g, hidden, final_norm, config_.eps);
    }
    std::vector<ggml_tensor*> outputs{hidden};

    ggml_tensor* pooled = nullptr;
    ggml_tensor* embeds = nullptr;
    if (req.want_pooled) {
        // LayerNorm is per token, so norming only the gathered EOS rows equals pooling the normed states.
        ggml_tensor* rows = runner_.input(GGML_TYPE_I32, {B}, eos_rows.data(), sizeof(int32_t) * B);
        pooled = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, C, T * B), rows);  // [C, B]
        pooled = ops::layer_norm(g, pooled, final_norm, config_.eps);
        outputs.push_back(pooled);
        if (proj_dim_ > 0) {
            embeds = ops::linear(g, pooled, prefix_ + "text_projection");  // [P, B], no bias
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
