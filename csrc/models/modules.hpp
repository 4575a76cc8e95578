// diffusers modules shared by the UNet and VAE graphs, written on the ops layer (ops/ops.hpp): each says what the
// module computes, in diffusers' order and with its weight names; which kernels run it is the ops layer's choice.
#pragma once

#include <cstdint>
#include <string>

#include <ggml.h>

#include "ops/ops.hpp"

namespace sdcpp::modules {

using ops::Graph;

// diffusers Attention: to_q/to_k/to_v (bias optional), `heads` heads, to_out.0. context == nullptr: self-attention.
ggml_tensor* attention(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& prefix, int heads);
// diffusers FeedForward with GEGLU: net.0.proj -> hidden * gelu(gate) (exact erf gelu) -> net.2.
ggml_tensor* geglu_feed_forward(const Graph& g, ggml_tensor* x, const std::string& prefix);

// diffusers ResnetBlock2D: norm1, silu, conv1, (+ time_emb_proj(temb_act)), norm2, silu, conv2, + shortcut.
// temb_act is silu(emb) [E, N] (shared by every block), or nullptr for the VAE.
ggml_tensor* resnet(const Graph& g, ggml_tensor* x, ggml_tensor* temb_act, const std::string& prefix, int groups,
                    float eps);

// diffusers AutoencoderTinyBlock (TAESD): relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x)), skip a bias-free
// 1x1 conv where the block changes channels, else x.
ggml_tensor* tiny_block(const Graph& g, ggml_tensor* x, const std::string& prefix);

// diffusers Upsample2D: nearest resize to (W, H) (2x unless a skip connection needs another size), then conv.
ggml_tensor* upsample(const Graph& g, ggml_tensor* x, const std::string& prefix, int64_t W, int64_t H);
// diffusers Downsample2D: 3x3 conv, stride 2. UNet: padding 1. VAE encoder (asymmetric): pad right/bottom
// by one, then padding 0.
ggml_tensor* downsample(const Graph& g, ggml_tensor* x, const std::string& prefix, bool asymmetric);

// Sinusoidal embedding of t [N] -> [dim, N]: [cos, sin] halves, diffusers' Timesteps(dim,
// flip_sin_to_cos=True, downscale_freq_shift=0).
ggml_tensor* timestep_embedding(const Graph& g, ggml_tensor* t, int dim);
// diffusers TimestepEmbedding: linear_1, silu, linear_2.
ggml_tensor* timestep_mlp(const Graph& g, ggml_tensor* x, const std::string& prefix);

}  // namespace sdcpp::modules
