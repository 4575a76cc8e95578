#include "models/unet.hpp"

#include <stdexcept>

#include "models/modules.hpp"

namespace sdcpp {

using ops::Graph;

namespace {

std::string idx(const std::string& prefix, const char* part, int i) {
    return prefix + "." + part + "." + std::to_string(i);
}

int count(const Graph& g, const std::string& prefix, const char* part, const std::string& probe) {
    int n = 0;
    while (g.has(idx(prefix, part, n) + probe)) {
        ++n;
    }
    return n;
}

// BasicTransformerBlock: self-attention, cross-attention over the text context, GEGLU feed-forward.
ggml_tensor* transformer_block(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& p, int heads,
                               const UnetConfig& cfg) {
    ggml_tensor* n = ops::layer_norm(g, x, p + ".norm1", cfg.layer_norm_eps);
    x = ggml_add(g.ctx, x, modules::attention(g, n, nullptr, p + ".attn1", heads));
    n = ops::layer_norm(g, x, p + ".norm2", cfg.layer_norm_eps);
    x = ggml_add(g.ctx, x, modules::attention(g, n, context, p + ".attn2", heads));
    n = ops::layer_norm(g, x, p + ".norm3", cfg.layer_norm_eps);
    return ggml_add(g.ctx, x, modules::geglu_feed_forward(g, n, p + ".ff"));
}

// Transformer2DModel. proj_in/proj_out are 1x1 convs in SD1 and linears in SD2/SDXL; both are stored as
// [C_in, C_out] matrices and act on channels, so one path serves both.
ggml_tensor* spatial_transformer(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& p,
                                 int heads, const UnetConfig& cfg) {
    const int64_t W = x->ne[0], H = x->ne[1];
    ggml_tensor* h = ops::group_norm(g, x, p + ".norm", cfg.groups, cfg.transformer_gn_eps);
    h = ops::linear(g, ops::to_tokens(g, h), p + ".proj_in");
    const std::string tb = p + ".transformer_blocks";
    for (int i = 0; g.has(tb + "." + std::to_string(i) + ".norm1.weight"); ++i) {
        h = transformer_block(g, h, context, tb + "." + std::to_string(i), heads, cfg);
    }
    h = ops::linear(g, h, p + ".proj_out");
    return ggml_add(g.ctx, x, ops::from_tokens(g, h, W, H));
}

struct Inputs {
    ggml_tensor* x;
    ggml_tensor* timesteps;
    ggml_tensor* context;
    ggml_tensor* text_embeds;  // nullptr without add_embedding
    ggml_tensor* time_ids;     // [K * N] flattened, nullptr without add_embedding
};

ggml_tensor* forward(const Graph& g, const Inputs& in, const UnetConfig& cfg) {
    const std::string u = "unet";
    const int64_t N = in.x->ne[3];
    const int64_t C0 = g.ne(u + ".time_embedding.linear_1.weight", 0);
    ggml_tensor* emb = modules::timestep_mlp(g, modules::timestep_embedding(g, in.timesteps, static_cast<int>(C0)),
                                     u + ".time_embedding");
    if (in.text_embeds != nullptr) {
        // SDXL "text_time": each time id gets its own sinusoidal embedding, concatenated after the pooled text.
        ggml_tensor* ids = modules::timestep_embedding(g, in.time_ids, cfg.addition_time_embed_dim);
        ids = ggml_reshape_2d(g.ctx, ids, ids->ne[0] * ids->ne[1] / N, N);
        ggml_tensor* adm = ggml_concat(g.ctx, in.text_embeds, ids, 0);
        emb = ggml_add(g.ctx, emb, modules::timestep_mlp(g, adm, u + ".add_embedding"));
    }
    ggml_tensor* temb = ops::silu(g, emb);  // every resnet applies silu before its time_emb_proj

    auto resnet = [&](ggml_tensor* h, const std::string& p) {
        return modules::resnet(g, h, temb, p, cfg.groups, cfg.resnet_eps);
    };
    auto attn = [&](ggml_tensor* h, const std::string& p, int heads) {
        return spatial_transformer(g, h, in.context, p, heads, cfg);
    };

    ggml_tensor* h = ops::conv2d(g, in.x, u + ".conv_in");
    std::vector<ggml_tensor*> skips{h};
    const int n_down = count(g, u, "down_blocks", ".resnets.0.conv1.weight");
    for (int i = 0; i < n_down; ++i) {
        const std::string b = idx(u, "down_blocks", i);
        for (int j = 0; g.has(idx(b, "resnets", j) + ".conv1.weight"); ++j) {
            h = resnet(h, idx(b, "resnets", j));
            if (g.has(idx(b, "attentions", j) + ".norm.weight")) {
                h = attn(h, idx(b, "attentions", j), cfg.heads[i]);
            }
            skips.push_back(h);
        }
        if (g.has(b + ".downsamplers.0.conv.weight")) {
            h = modules::downsample(g, h, b + ".downsamplers.0", /*asymmetric=*/false);
            skips.push_back(h);
        }
    }

    const std::string mid = u + ".mid_block";
    h = resnet(h, mid + ".resnets.0");
    for (int i = 0; g.has(idx(mid, "attentions", i) + ".norm.weight"); ++i) {
        h = attn(h, idx(mid, "attentions", i), cfg.heads[n_down - 1]);
        h = resnet(h, idx(mid, "resnets", i + 1));
    }

    const int n_up = count(g, u, "up_blocks", ".resnets.0.conv1.weight");
    for (int i = 0; i < n_up; ++i) {
        const std::string b = idx(u, "up_blocks", i);
        for (int j = 0; g.has(idx(b, "resnets", j) + ".conv1.weight"); ++j) {
            if (skips.empty()) {
                throw std::invalid_argument(b + " needs more skip connections than the down blocks made");
            }
            h = ggml_concat(g.ctx, h, skips.back(), 2);  // torch.cat([hidden, skip], dim=1)
            skips.pop_back();
            h = resnet(h, idx(b, "resnets", j));
            if (g.has(idx(b, "attentions", j) + ".norm.weight")) {
                h = attn(h, idx(b, "attentions", j), cfg.heads[n_down - 1 - i]);
            }
        }
        if (g.has(b + ".upsamplers.0.conv.weight")) {
            // Odd sizes: diffusers resizes to the next skip's size rather than exactly 2x.
            const ggml_tensor* next = skips.empty() ? nullptr : skips.back();
            const int64_t W = next != nullptr ? next->ne[0] : 2 * h->ne[0];
            const int64_t H = next != nullptr ? next->ne[1] : 2 * h->ne[1];
            h = modules::upsample(g, h, b + ".upsamplers.0", W, H);
        }
    }
    h = ops::group_norm(g, h, u + ".conv_norm_out", cfg.groups, cfg.resnet_eps, true);
    return ops::conv2d(g, h, u + ".conv_out");
}

}  // namespace

Unet::Unet(WeightStore& weights, const UnetConfig& config, int n_threads)
    : GraphModel(weights, n_threads), weights_(weights), config_(config) {
    if (config_.groups < 1 || !(config_.resnet_eps > 0.0f) || !(config_.transformer_gn_eps > 0.0f) ||
        !(config_.layer_norm_eps > 0.0f)) {
        throw std::invalid_argument("UNet: groups and every norm eps must be > 0 (sdcpp.config passes them)");
    }
    const std::string conv_in = "unet.conv_in.weight";
    if (!weights_.contains(conv_in)) {
        throw std::invalid_argument("UNet weight '" + conv_in + "' is missing");
    }
    in_channels_ = weights_.ne(conv_in)[0] / 9;
    while (weights_.contains("unet.down_blocks." + std::to_string(n_down_) + ".resnets.0.conv1.weight")) {
        ++n_down_;
    }
    if (n_down_ == 0) {
        throw std::invalid_argument("UNet weights have no down blocks (unet.down_blocks.0.resnets.0.conv1.weight)");
    }
    if (static_cast<int>(config_.heads.size()) < n_down_) {
        throw std::invalid_argument("UNet has " + std::to_string(n_down_) + " down blocks but heads for " +
                                    std::to_string(config_.heads.size()));
    }
    for (const auto& name : weights_.names()) {
        const std::string suffix = ".attn2.to_k.weight";
        if (name.rfind("unet.", 0) == 0 && name.size() > suffix.size() &&
            name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
            context_dim_ = weights_.ne(name)[0];
            break;
        }
    }
    if (weights_.contains("unet.add_embedding.linear_1.weight")) {
        adm_in_channels_ = weights_.ne("unet.add_embedding.linear_1.weight")[0];
        if (config_.addition_time_embed_dim < 1) {
            throw std::invalid_argument("UNet: this UNet has add_embedding and needs addition_time_embed_dim > 0");
        }
    }
}

Nchw Unet::predict(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w, const float* timesteps,
                   const float* context, int64_t tokens, int64_t context_dim, const UnetAdded& added) {
    check_dims("latents", n, c, h, w);
    if (c != in_channels_) {
        throw std::invalid_argument("latents have " + std::to_string(c) + " channels, the UNet takes " +
                                    std::to_string(in_channels_));
    }
    if (tokens <= 0 || context_dim != context_dim_) {
        throw std::invalid_argument("context must be [N, T > 0, " + std::to_string(context_dim_) + "], got [N, " +
                                    std::to_string(tokens) + ", " + std::to_string(context_dim) + "]");
    }
    const bool sdxl = adm_in_channels_ > 0;
    if (sdxl) {
        if (added.text_embeds == nullptr || added.time_ids == nullptr) {
            throw std::invalid_argument("this UNet (SDXL) needs text_embeds and time_ids");
        }
        const int64_t want = added.pooled_dim + added.n_time_ids * config_.addition_time_embed_dim;
        if (want != adm_in_channels_) {
            throw std::invalid_argument(
                "add_embedding takes " + std::to_string(adm_in_channels_) + " inputs but text_embeds (" +
                std::to_string(added.pooled_dim) + ") + " + std::to_string(added.n_time_ids) + " time ids x " +
                std::to_string(config_.addition_time_embed_dim) + " give " + std::to_string(want));
        }
    } else if (added.text_embeds != nullptr || added.time_ids != nullptr) {
        throw std::invalid_argument("text_embeds/time_ids are SDXL inputs; this UNet has no add_embedding");
    }

    std::lock_guard<std::mutex> lock(mutex_);
    Graph g = Graph::begin(runner_, config_.ops);
    Inputs in{};
    in.x = runner_.input(GGML_TYPE_F32, {w, h, c, n}, latents, sizeof(float) * n * c * h * w);
    in.timesteps = runner_.input(GGML_TYPE_F32, {n}, timesteps, sizeof(float) * n);
    in.context = runner_.input(GGML_TYPE_F32, {context_dim, tokens, n}, context,
                               sizeof(float) * context_dim * tokens * n);
    if (sdxl) {
        in.text_embeds = runner_.input(GGML_TYPE_F32, {added.pooled_dim, n}, added.text_embeds,
                                       sizeof(float) * added.pooled_dim * n);
        in.time_ids = runner_.input(GGML_TYPE_F32, {added.n_time_ids * n}, added.time_ids,
                                    sizeof(float) * added.n_time_ids * n);
    }
    ggml_tensor* y = forward(g, in, config_);
    runner_.run({y});
    Nchw out(y->ne[3], y->ne[2], y->ne[1], y->ne[0]);
    runner_.read(y, out.data.data(), out.nbytes());
    return out;
}

}  // namespace sdcpp
