// UNet2DConditionModel (diffusers) forward graph for SD1, SD2, SDXL (base, refiner) and inpainting UNets.
// Depths, widths and block kinds come from the weights' names and shapes; only what shapes cannot tell
// (attention heads, norm groups and epsilons, the size of SDXL's time-id embedding) comes from UnetConfig.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/nchw.hpp"
#include "models/graph_model.hpp"
#include "ops/ops.hpp"
#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

namespace sdcpp {

// Every value comes from Python (sdcpp.config.model_config.UNetConfig, defaults in sdcpp/config/families.py); the
// zeros here are no defaults: the constructor refuses them.
struct UnetConfig {
    std::vector<int> heads;           // attention heads per down block; up blocks mirror it, mid takes the last
    int groups = 0;                   // norm_num_groups
    float resnet_eps = 0.0f;          // norm_eps (resnets, conv_norm_out)
    float transformer_gn_eps = 0.0f;  // GroupNorm in front of each Transformer2DModel
    float layer_norm_eps = 0.0f;      // LayerNorms inside BasicTransformerBlock
    int addition_time_embed_dim = 0;  // SDXL: sinusoidal width of each time id (0 without add_embedding)
    ops::Options ops;                 // kernel options
};

// Optional SDXL conditioning: pooled text embeds [N, P] and time ids [N, K] (6 for base, 5 for refiner).
struct UnetAdded {
    const float* text_embeds = nullptr;
    int64_t pooled_dim = 0;
    const float* time_ids = nullptr;
    int64_t n_time_ids = 0;
};

class Unet : public GraphModel {
public:
    Unet(WeightStore& weights, const UnetConfig& config, int n_threads);

    // latents [N, C, h, w], timesteps [N], context [N, T, D] -> prediction [N, out_channels, h, w].
    Nchw predict(const float* latents, int64_t n, int64_t c, int64_t h, int64_t w, const float* timesteps,
                 const float* context, int64_t tokens, int64_t context_dim, const UnetAdded& added);

    int64_t in_channels() const { return in_channels_; }
    int64_t context_dim() const { return context_dim_; }
    // Input width of add_embedding (pooled + time ids), 0 when the UNet has none (SD1/SD2).
    int64_t adm_in_channels() const { return adm_in_channels_; }
    int n_down_blocks() const { return n_down_; }

private:
    WeightStore& weights_;
    UnetConfig config_;
    int64_t in_channels_ = 0;
    int64_t context_dim_ = 0;
    int64_t adm_in_channels_ = 0;
    int n_down_ = 0;
};

}  // namespace sdcpp
