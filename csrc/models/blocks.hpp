// Building blocks shared by the UNet and VAE graphs (diffusers semantics, ggml layouts).
//
// Layouts: images are ggml [W, H, C, N] (numpy NCHW contiguous); token sequences are [C, T, N].
// Weights are read through the GraphRunner by canonical name, in whatever type the plan stored them:
// every matrix product puts the weight in src0 of ggml_mul_mat, the only slot that takes quantized types.
#pragma once

#include <cstdint>
#include <string>

#include <ggml.h>

#include "runtime/graph_runner.hpp"

namespace sdcpp::blocks {

// One graph under construction: where weights come from and options every block shares.
struct Graph {
    GraphRunner& runner;
    ggml_context* ctx;
    bool flash_attn = false;  // ggml_flash_attn_ext instead of mul_mat + soft_max
    // Convs whose im2col matrix would exceed this many bytes run in bands of output rows (0: never). Bounds the
    // compute buffer of large VAE decodes, where one 3x3 conv's columns reach gigabytes.
    size_t max_im2col_bytes = 0;
    // Matrix products with at least this many activation columns (tokens x batch) first convert a non-f32 weight
    // to f32 in the compute buffer (0: never). See begin().
    int64_t f32_matmul_min_cols = 0;
    // Query blocks CPU flash attentions may still split into (3 nodes each): half the graph's node capacity, so
    // splitting never overflows it (see attention_core).
    mutable int64_t attention_blocks_left = 0;

    // Starts a graph on `runner`. f32_matmul_min_cols < 0 picks the backend's default: 256 on the CPU, where
    // f32 sgemm (OpenBLAS when loaded, else llamafile's) outruns ggml's f16 and q8_0 kernels, which convert or
    // quantize the activations first (measured on SD1.5 shapes with >= 256 columns, 2 threads, AVX-512 Xeon: 1.3-1.5x
    // with llamafile alone), and the one-off weight conversion costs far less than that when columns are many. It
    // also keeps activations unrounded (ggml's q8_0/q4_K products round them to 8-bit blocks). Few columns (time
    // embeddings, 77-token context, deep low-resolution blocks) stay on the stored type, where reading fewer weight
    // bytes wins. GPU backends keep their own kernels (0).
    static Graph begin(GraphRunner& runner, bool flash_attn, size_t max_im2col_bytes, int64_t f32_matmul_min_cols);

    // The weights live on the CPU backend, the only one that runs sdcpp's custom ops.
    bool cpu() const;
    // A product over `cols` activation columns takes an f32 weight (and OpenBLAS, when use_blas()).
    bool wide(int64_t cols) const { return f32_matmul_min_cols > 0 && cols >= f32_matmul_min_cols; }
    // OpenBLAS is loaded and enabled (runtime/blas.hpp) and the graph runs on the CPU.
    bool use_blas() const;

    // The token sdcpp's custom ops in this graph poll (the runner's).
    const CancelToken* cancel() const { return runner.cancel_token().get(); }

    ggml_tensor* w(const std::string& name) const { return runner.weight(name); }
    bool has(const std::string& name) const { return runner.has_weight(name); }
    // ggml dims of a stored weight (matrices are [n_per_row, rows]).
    int64_t ne(const std::string& name, int dim) const;
};

// y = W x (+ b when `prefix.bias` exists); x is [in, ...], the result [out, ...].
ggml_tensor* linear(const Graph& g, ggml_tensor* x, const std::string& prefix);

// 2-D convolution of x [W, H, C, N] with `prefix.weight` (stored [C*k*k, OC], any type) + bias.
// The kernel size follows from the stored row length and C; 1x1 convs skip im2col.
ggml_tensor* conv2d(const Graph& g, ggml_tensor* x, const std::string& prefix, int stride = 1, int pad = -1);

// GroupNorm with affine weight/bias over x [W, H, C, N], then SiLU when `silu` (one fused op on the CPU).
ggml_tensor* group_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, int groups, float eps,
                        bool silu = false);
// LayerNorm with affine weight/bias over the first dimension.
ggml_tensor* layer_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, float eps);

// [W, H, C, N] <-> [C, W*H, N].
ggml_tensor* to_tokens(ggml_context* ctx, ggml_tensor* x);
ggml_tensor* from_tokens(ggml_context* ctx, ggml_tensor* x, int64_t W, int64_t H);

// Scaled dot-product attention of q [C, Tq, N] over k, v [C, Tk, N] with `heads` heads; returns [C, Tq, N].
ggml_tensor* attention_core(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads);
// diffusers Attention: to_q/to_k/to_v (bias optional), heads, to_out.0. context == nullptr: self-attention.
ggml_tensor* attention(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& prefix, int heads);
// diffusers FeedForward with GEGLU: net.0.proj -> hidden * gelu(gate) (exact erf gelu) -> net.2.
ggml_tensor* geglu_feed_forward(const Graph& g, ggml_tensor* x, const std::string& prefix);

// diffusers ResnetBlock2D: norm1, silu, conv1, (+ time_emb_proj(temb_act)), norm2, silu, conv2, + shortcut.
// temb_act is silu(emb) [E, N] (shared by every block), or nullptr for the VAE.
ggml_tensor* resnet(const Graph& g, ggml_tensor* x, ggml_tensor* temb_act, const std::string& prefix, int groups,
                    float eps);

// diffusers Upsample2D: nearest resize to (W, H) (2x unless a skip connection needs another size), then conv.
ggml_tensor* upsample(const Graph& g, ggml_tensor* x, const std::string& prefix, int64_t W, int64_t H);
// diffusers Downsample2D: 3x3 conv, stride 2. UNet: padding 1. VAE encoder (asymmetric): pad right/bottom
// by one, then padding 0.
ggml_tensor* downsample(const Graph& g, ggml_tensor* x, const std::string& prefix, bool asymmetric);

// Sinusoidal embedding of t [N] -> [dim, N]: [cos, sin] halves, diffusers' Timesteps(dim,
// flip_sin_to_cos=True, downscale_freq_shift=0).
ggml_tensor* timestep_embedding(ggml_context* ctx, ggml_tensor* t, int dim);

}  // namespace sdcpp::blocks
