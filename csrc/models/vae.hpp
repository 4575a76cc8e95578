// AutoencoderKL (diffusers) encoder and decoder graphs; the architecture is read from the weights' names and shapes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "models/nchw.hpp"
#include "models/graph_model.hpp"
#include "ops/ops.hpp"
#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

namespace sdcpp {

// Every value comes from Python (sdcpp.config.model_config.VaeConfig, defaults in sdcpp/config/families.py); the
// zeros here are no defaults: the constructor refuses them.
struct VaeConfig {
    int groups = 0;    // norm_num_groups
    float eps = 0.0f;  // every GroupNorm (diffusers' Encoder/Decoder: 1e-6)
    ops::Options ops;  // kernel options
};

class Vae : public GraphModel {
public:
    Vae(WeightStore& weights, const VaeConfig& config, int n_threads);

    // latents [N, latent_channels, h, w] -> images [N, out_channels, 8h, 8w] (no scaling factor applied).
    Nchw decode(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w);
    // images [N, in_channels, H, W] -> mean, or mean + std * noise when noise ([N, latent, H/8, W/8]) is given.
    Nchw encode(const float* images, int64_t n, int64_t c, int64_t h, int64_t w, const float* noise = nullptr,
                size_t noise_count = 0);

    int64_t latent_channels() const { return latent_channels_; }

private:
    WeightStore& weights_;
    VaeConfig config_;
    int64_t latent_channels_ = 0;
};

}  // namespace sdcpp
