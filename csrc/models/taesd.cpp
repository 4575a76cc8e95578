#include "models/taesd.hpp"

#include <stdexcept>
#include <string>

#include "models/modules.hpp"

namespace sdcpp {

using ops::Graph;

namespace {

const std::string kEnc = "vae.encoder.layers.";
const std::string kDec = "vae.decoder.layers.";

bool is_block(const Graph& g, const std::string& layer) { return g.has(layer + ".conv.0.weight"); }
bool is_conv(const Graph& g, const std::string& layer) { return g.has(layer + ".weight"); }

// DecoderTiny: tanh(z / 3) * 3, conv, ReLU, then blocks, upsamplings and convs; [0, 1] -> [-1, 1].
ggml_tensor* decoder(const Graph& g, ggml_tensor* z, const TinyVaeConfig& cfg) {
    ggml_tensor* x = ggml_scale(g.ctx, ggml_tanh(g.ctx, ggml_scale(g.ctx, z, 1.0f / 3.0f)), 3.0f);
    x = ops::relu(g, ops::conv2d(g, x, kDec + "0"));  // index 1 is that ReLU
    for (int64_t i = 2; i < cfg.decoder_layers; ++i) {
        const std::string layer = kDec + std::to_string(i);
        if (is_block(g, layer)) {
            x = modules::tiny_block(g, x, layer);
        } else if (is_conv(g, layer)) {
            x = ops::conv2d(g, x, layer);
        } else {
            x = ops::resize_nearest(g, x, cfg.upscale * x->ne[0], cfg.upscale * x->ne[1]);
        }
    }
    return ggml_scale_bias(g.ctx, x, 2.0f, -1.0f);
}

// EncoderTiny: [-1, 1] -> [0, 1], conv, then blocks and stride-2 convs, and the conv to latents at the end.
ggml_tensor* encoder(const Graph& g, ggml_tensor* x, const TinyVaeConfig& cfg) {
    x = ops::conv2d(g, ggml_scale_bias(g.ctx, x, 0.5f, 0.5f), kEnc + "0");
    for (int64_t i = 1; i < cfg.encoder_layers; ++i) {
        const std::string layer = kEnc + std::to_string(i);
        if (is_block(g, layer)) {
            x = modules::tiny_block(g, x, layer);
        } else {
            x = ops::conv2d(g, x, layer, i + 1 == cfg.encoder_layers ? 1 : 2, 1);
        }
    }
    return x;
}

int64_t conv3x3_in_channels(const WeightStore& w, const std::string& name) { return w.ne(name)[0] / 9; }

}  // namespace

TinyVae::TinyVae(WeightStore& weights, const TinyVaeConfig& config, int n_threads)
    : GraphModel(weights, n_threads), weights_(weights), config_(config) {
    if (config_.decoder_layers < 3 || config_.encoder_layers < 0 || config_.upscale < 1) {
        throw std::invalid_argument("TAESD: decoder_layers >= 3, encoder_layers >= 0 and upscale >= 1 "
                                    "(sdcpp.config passes them)");
    }
    for (const std::string& name : {kDec + "0.weight", kEnc + "0.weight"}) {
        if (name.rfind(kEnc, 0) == 0 && config_.encoder_layers == 0) {
            continue;
        }
        if (!weights_.contains(name)) {
            throw std::invalid_argument("TAESD weight '" + name + "' is missing");
        }
    }
    latent_channels_ = conv3x3_in_channels(weights_, kDec + "0.weight");
    for (int64_t i = 1; i + 1 < config_.encoder_layers; ++i) {
        if (weights_.contains(kEnc + std::to_string(i) + ".weight")) {
            encoder_stride_ *= 2;
        }
    }
}

Nchw TinyVae::decode(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w) {
    check_dims("latents", n, c, h, w);
    if (c != latent_channels_) {
        throw std::invalid_argument("latents have " + std::to_string(c) + " channels, the TAESD takes " +
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

Nchw TinyVae::encode(const float* images, int64_t n, int64_t c, int64_t h, int64_t w) {
    check_dims("images", n, c, h, w);
    if (!has_encoder()) {
        throw std::invalid_argument("this TAESD has no encoder (a taesd_decoder file alone decodes only)");
    }
    const int64_t in_ch = conv3x3_in_channels(weights_, kEnc + "0.weight");
    if (c != in_ch) {
        throw std::invalid_argument("images have " + std::to_string(c) + " channels, the TAESD takes " +
                                    std::to_string(in_ch));
    }
    if (h % encoder_stride_ != 0 || w % encoder_stride_ != 0) {
        throw std::invalid_argument("images of " + std::to_string(w) + "x" + std::to_string(h) +
                                    " pixels: the TAESD encoder takes multiples of " + std::to_string(encoder_stride_));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    Graph g = Graph::begin(runner_, config_.ops);
    ggml_tensor* x = runner_.input(GGML_TYPE_F32, {w, h, c, n}, images, sizeof(float) * n * c * h * w);
    ggml_tensor* y = encoder(g, x, config_);
    runner_.run({y});
    Nchw out(y->ne[3], y->ne[2], y->ne[1], y->ne[0]);
    runner_.read(y, out.data.data(), out.nbytes());
    return out;
}

}  // namespace sdcpp
