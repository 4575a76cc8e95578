// CLIP text transformer (transformers' CLIPTextModel[WithProjection]) as a ggml graph: CLIP-L (SD1, SDXL),
// OpenCLIP ViT-H (SD2) and ViT-bigG (SDXL's second encoder) differ only in shapes and activation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ggml.h>

#include "models/graph_model.hpp"
#include "ops/ops.hpp"
#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

namespace sdcpp {

enum class ClipActivation {
    Unset,      // refused by the model: Python always names one
    QuickGelu,  // OpenAI CLIP: x * sigmoid(1.702 x)
    Gelu,       // OpenCLIP: transformers' "gelu", the exact erf form
};

ClipActivation clip_activation_from_name(const std::string& name);

// Every value comes from Python (sdcpp.config.model_config.TextEncoderConfig, defaults in sdcpp/config/families.py);
// the zeros here are no defaults: the constructor refuses them.
struct ClipConfig {
    int n_layers = 0;
    int n_heads = 0;
    ClipActivation act = ClipActivation::Unset;
    float eps = 0.0f;  // every LayerNorm
    ops::Options ops;  // kernel options (no convs: max_im2col_bytes is unused)
};

struct ClipRequest {
    int out_layer = -1;       // index into transformers' hidden_states: 0 = embeddings, n_layers = last layer
    bool final_norm = true;   // apply final_layer_norm to the hidden output
    bool want_pooled = true;  // pooled (final-LN'd last layer at the EOS positions) and text_embeds
};

struct ClipOutput {
    std::vector<float> hidden;       // [B, T, C]
    std::vector<float> pooled;       // [B, C], empty unless requested
    std::vector<float> text_embeds;  // [B, P], empty unless requested and the model has a projection
};

class ClipTextModel : public GraphModel {
public:
    // `prefix`: component prefix of the canonical names, e.g. "text_encoder." (weights under
    // prefix + "text_model." and prefix + "text_projection.weight"). Shapes are checked here.
    ClipTextModel(WeightStore& weights, std::string prefix, const ClipConfig& config, int n_threads);

    // tokens: int32 [B, T] row-major; eos: B positions in [0, T) (pooling rows). Thread-safe (serialised).
    ClipOutput compute(const int32_t* tokens, int64_t batch, int64_t n_tokens, const int32_t* eos,
                       const ClipRequest& request);

    int64_t hidden_size() const { return hidden_; }
    int64_t vocab_size() const { return vocab_; }
    int64_t n_positions() const { return n_pos_; }
    int64_t projection_dim() const { return proj_dim_; }  // 0: no text_projection
    const ClipConfig& config() const { return config_; }

private:
    ggml_tensor* encoder_layer(const ops::Graph& g, ggml_tensor* x, int layer) const;

    std::string prefix_;
    ClipConfig config_;
    int64_t hidden_ = 0;
    int64_t vocab_ = 0;
    int64_t n_pos_ = 0;
    int64_t proj_dim_ = 0;
};

}  // namespace sdcpp
