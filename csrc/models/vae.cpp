#include "models/vae.hpp"

#include <stdexcept>

#include "models/modules.hpp"

namespace sdcpp {

using ops::Graph;

namespace {

const std::string kEnc = "vae.encoder";
const std::string kDec = "vae.decoder";

std::string idx(const std::string& prefix, const char* part, int i) {
    return prefix + "." + part + "." + std::to_string(i);
}

// Input channels of a stored conv kernel [C*k*k, OC] with a k x k kernel.
int64_t conv_in_channels(const WeightStore& w, const std::string& name, int k) {
    return w.ne(name)[0] / (k * k);
}

// UNetMidBlock2D: resnet, then (attention, resnet) pairs; the VAE's attention is single-head over all channels.
ggml_tensor* mid_block(const Graph& g, ggml_tensor* x, const std::string& prefix, const VaeConfig& cfg) {
    const std::string p = prefix + ".mid_block";
    x = modules::resnet(g, x, nullptr, idx(p, "resnets", 0), cfg.groups, cfg.eps);
    for (int i = 0; g.has(idx(p, "attentions", i) + ".to_q.weight"); ++i) {
        const std::string a = idx(p, "attentions", i);
        const int64_t W = x->ne[0], H = x->ne[1];
        ggml_tensor* h = ops::group_norm(g, x, a + ".group_norm", cfg.groups, cfg.eps);
        h = modules::attention(g, ops::to_tokens(g, h), nullptr, a, 1);
        x = ggml_add(g.ctx, x, ops::from_tokens(g, h, W, H));  // residual_connection=True
        x = modules::resnet(g, x, nullptr, idx(p, "resnets", i + 1), cfg.groups, cfg.eps);
    }
    return x;
}

ggml_tensor* out_head(const Graph& g, ggml_tensor* x, const std::string& prefix, const VaeConfig& cfg) {
    x = ops::group_norm(g, x, prefix + ".conv_norm_out", cfg.groups, cfg.eps, true);
    return ops::conv2d(g, x, prefix + ".conv_out");
}

ggml_tensor* decoder(const Graph& g, ggml_tensor* z, const VaeConfig& cfg) {
    if (g.has("vae.post_quant_conv.weight")) {
        z = ops::conv2d(g, z, "vae.post_quant_conv");
    }
    ggml_tensor* x = ops::conv2d(g, z, kDec + ".conv_in");
    x = mid_block(g, x, kDec, cfg);
    for (int i = 0; g.has(idx(kDec, "up_blocks", i) + ".resnets.0.conv1.weight"); ++i) {
        const std::string b = idx(kDec, "up_blocks", i);
        for (int j = 0; g.has(idx(b, "resnets", j) + ".conv1.weight"); ++j) {
            x = modules::resnet(g, x, nullptr, idx(b, "resnets", j), cfg.groups, cfg.eps);
        }
        if (g.has(b + ".upsamplers.0.conv.weight")) {
            x = modules::upsample(g, x, b + ".upsamplers.0", 2 * x->ne[0], 2 * x->ne[1]);
        }
    }
    return out_head(g, x, kDec, cfg);
}

ggml_tensor* encoder(const Graph& g, ggml_tensor* x, const VaeConfig& cfg) {
    x = ops::conv2d(g, x, kEnc + ".conv_in");
    for (int i = 0; g.has(idx(kEnc, "down_blocks", i) + ".resnets.0.conv1.weight"); ++i) {
        const std::string b = idx(kEnc, "down_blocks", i);
        for (int j = 0; g.has(idx(b, "resnets", j) + ".conv1.weight"); ++j) {
            x = modules::resnet(g, x, nullptr, idx(b, "resnets", j), cfg.groups, cfg.eps);
        }
        if (g.has(b + ".downsamplers.0.conv.weight")) {
            x = modules::downsample(g, x, b + ".downsamplers.0", /*asymmetric=*/true);
        }
    }
    x = mid_block(g, x, kEnc, cfg);
    x = out_head(g, x, kEnc, cfg);
    if (g.has("vae.quant_conv.weight")) {
        x = ops::conv2d(g, x, "vae.quant_conv");
    }
    return x;  // moments: [w, h, 2 * latent, N] = mean | logvar
}

}  // namespace

Vae::Vae(WeightStore& weights, const VaeConfig& config, int n_threads)
    : GraphModel(weights, n_threads), weights_(weights), config_(config) {
    if (config_.groups < 1 || !(config_.eps > 0.0f)) {
        throw std::invalid_argument("VAE: groups and eps must be > 0 (sdcpp.config passes them)");
    }
    for (const char* name : {"vae.decoder.conv_in.weight", "vae.encoder.conv_in.weight"}) {
        if (!weights_.contains(name)) {
            throw std::invalid_argument(std::string("VAE weight '") + name + "' is missing");
        }
    }
    latent_channels_ = weights_.contains("vae.post_quant_conv.weight")
                           ? conv_in_channels(weights_, "vae.post_quant_conv.weight", 1)
                           : conv_in_channels(weights_, "vae.decoder.conv_in.weight", 3);
}

Nchw Vae::decode(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w) {
    check_dims("latents", n, c, h, w);
    if (c != latent_channels_) {
        throw std::invalid_argument("latents have " + std::to_string(c) + " channels, the VAE takes " +
                                    std::to_string(latent_channels_));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    Graph g = Graph::begin(runner_, config_.ops);
    ggml_tensor* z = runner_.input(GGML_TYPE_F32, {w, h, c, n}, latents, sizeof(float) * n * c * h * w);
    ggml_tensor* y = decoder(g, z, config_);
    runner_.run({y});
    Nchw out(y->ne[3], y->ne[2], y->ne[1], y->ne[0]);
    runner_.read(y, out.data.data(), out.nbytes());
    return out;
}

Nchw Vae::encode(const float* images, int64_t n, int64_t c, int64_t h, int64_t w, const float* noise,
                 size_t noise_count) {
    check_dims("images", n, c, h, w);
    const int64_t in_ch = conv_in_channels(weights_, "vae.encoder.conv_in.weight", 3);
    if (c != in_ch) {
        throw std::invalid_argument("images have " + std::to_string(c) + " channels, the VAE takes " +
                                    std::to_string(in_ch));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    Graph g = Graph::begin(runner_, config_.ops);
    ggml_tensor* x = runner_.input(GGML_TYPE_F32, {w, h, c, n}, images, sizeof(float) * n * c * h * w);
    ggml_tensor* moments = encoder(g, x, config_);
    const int64_t lw = moments->ne[0], lh = moments->ne[1], lc = moments->ne[2] / 2;
    ggml_tensor* mean = ggml_view_4d(g.ctx, moments, lw, lh, lc, n, moments->nb[1], moments->nb[2], moments->nb[3], 0);
    ggml_tensor* y = ggml_cont(g.ctx, mean);
    if (noise != nullptr) {
        // DiagonalGaussianDistribution.sample: mean + exp(0.5 * clamp(logvar, -30, 20)) * noise
        ggml_tensor* logvar = ggml_view_4d(g.ctx, moments, lw, lh, lc, n, moments->nb[1], moments->nb[2],
                                           moments->nb[3], lc * moments->nb[2]);
        logvar = ggml_clamp(g.ctx, ggml_cont(g.ctx, logvar), -30.0f, 20.0f);
        ggml_tensor* std_ = ggml_exp(g.ctx, ggml_scale(g.ctx, logvar, 0.5f));
        if (noise_count != static_cast<size_t>(lw * lh * lc * n)) {
            throw std::invalid_argument("noise has " + std::to_string(noise_count) + " values, the latents [" +
                                        std::to_string(n) + ", " + std::to_string(lc) + ", " + std::to_string(lh) +
                                        ", " + std::to_string(lw) + "] need " + std::to_string(lw * lh * lc * n));
        }
        ggml_tensor* eps = runner_.input(GGML_TYPE_F32, {lw, lh, lc, n}, noise, sizeof(float) * noise_count);
        y = ggml_add(g.ctx, y, ggml_mul(g.ctx, std_, eps));
    }
    runner_.run({y});
    Nchw out(n, lc, lh, lw);
    runner_.read(y, out.data.data(), out.nbytes());
    return out;
}

}  // namespace sdcpp
