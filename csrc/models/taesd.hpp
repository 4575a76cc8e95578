// TAESD: diffusers' AutoencoderTiny encoder and decoder graphs (EncoderTiny / DecoderTiny) over the vae.encoder.layers
// and vae.decoder.layers weights. The layer sequence is read from the weights' names, as sdcpp.config.arch's
// tiny_vae_arch walks it: at each index an AutoencoderTinyBlock (`N.conv.0`), a conv (`N.weight`) or, in the
// decoder, a weightless layer: the ReLU at index 1, nearest upsampling anywhere else.
#pragma once

#include <cstdint>

#include "models/graph_model.hpp"
#include "models/nchw.hpp"
#include "ops/ops.hpp"
#include "weight_store.hpp"

namespace sdcpp {

// Every value comes from Python (sdcpp.config.model_config, VaeArch of kind "tiny"); the zeros are no defaults.
struct TinyVaeConfig {
    int64_t encoder_layers = 0;  // indices encoder.layers spans (0: no encoder)
    int64_t decoder_layers = 0;  // indices decoder.layers spans, weightless ones included
    int upscale = 0;             // nearest-upsampling factor of the decoder
    ops::Options ops;
};

class TinyVae : public GraphModel {
public:
    TinyVae(WeightStore& weights, const TinyVaeConfig& config, int n_threads);

    // latents [N, latent, h, w] (the UNet's, no scaling) -> images [N, 3, f*h, f*w] in about [-1, 1].
    Nchw decode(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w);
    // images [N, 3, H, W] in [-1, 1] -> latents [N, latent, H/f, W/f] (deterministic: TAESD has no posterior).
    Nchw encode(const float* images, int64_t n, int64_t c, int64_t h, int64_t w);

    int64_t latent_channels() const { return latent_channels_; }
    bool has_encoder() const { return config_.encoder_layers > 0; }

private:
    WeightStore& weights_;
    TinyVaeConfig config_;
    int64_t latent_channels_ = 0;
    int64_t encoder_stride_ = 1;  // pixels per latent of the encoder: 2 per stride-2 conv
};

}  // namespace sdcpp
