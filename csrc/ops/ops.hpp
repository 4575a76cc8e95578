// The ops layer: primitives the model graphs are written on. Kernel choice lives here, and only here: which kernel
// computes a product, a convolution, a norm or an attention (an OpenBLAS custom op from runtime/blas.hpp, a fused
// CPU op from runtime/cpu_ops.hpp, or ggml's own op, with or without an f32 copy of the weight, in bands of rows, in
// query blocks, with padded heads) is decided per backend, shape and type in ops.cpp / attention.cpp. What a weight
// is stored as is decided before any graph exists (python/sdcpp/plan.py); the modules (models/modules.hpp) and
// the models only say what they compute.
//
// Layouts: images are ggml [W, H, C, N] (numpy NCHW contiguous); token sequences are [C, T, N].
// Weights are read through the GraphRunner by canonical name, in whatever type the plan stored them:
// every matrix product puts the weight in src0 of ggml_mul_mat, the only slot that takes quantized types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <ggml.h>

#include "runtime/graph_runner.hpp"

namespace sdcpp::ops {

// Kernel options of a model's graphs (the Python wrappers document and pass them; nothing model-specific).
struct Options {
    bool flash_attn = false;  // ggml_flash_attn_ext instead of mul_mat + soft_max (where OpenBLAS does not run)
    // Convs whose im2col matrix would exceed this many bytes run in bands of output rows (0: never). Bounds the
    // compute buffer of large VAE decodes, where one 3x3 conv's columns reach gigabytes.
    size_t max_im2col_bytes = 0;
    // Matrix products with at least this many activation columns (tokens x batch) first convert a non-f32 weight
    // to f32 in the compute buffer (0: never; < 0: the backend's default, see Graph::begin).
    int64_t f32_matmul_min_cols = 0;
    // precision="bf16": the wide products, 3x3 convs and attention products of the CPU's custom ops round their
    // operands to bf16 and run on AMX (runtime/amx.hpp), where the CPU has it; norms, softmax, the timestep
    // embedding and every accumulation stay f32. Without AMX this changes nothing.
    bool bf16 = false;
    // precision="f16": the linear products and convs with >= 32 activation columns (3x3 ones read in place, the
    // rest through im2col) take f16 operands with f16 partial sums on AVX512-FP16 (runtime/f16_gemm.hpp), where
    // the CPU has it; attention, norms, softmax and the rest as with f32. Without it this changes nothing.
    bool f16 = false;
};

// One graph under construction: where weights come from, the options every primitive shares, and the kernel
// conditions derived from them.
struct Graph {
    GraphRunner& runner;
    ggml_context* ctx;
    Options opt;
    // Query blocks CPU flash attentions may still split into (3 nodes each): half the graph's node capacity, so
    // splitting never overflows it (see attention()).
    mutable int64_t attention_blocks_left = 0;
    // The causal masks built so far in this graph (one per kernel format), shared by every layer.
    mutable ggml_tensor* causal_f16 = nullptr;
    mutable ggml_tensor* causal_f32 = nullptr;

    // Starts a graph of at most `max_nodes` nodes on `runner`. opt.f32_matmul_min_cols < 0 picks the backend's
    // default: 256 on the CPU, where f32 sgemm (OpenBLAS when loaded, else llamafile's) outruns ggml's f16 and q8_0
    // kernels, which convert or quantize the activations first (measured on SD1.5 shapes with >= 256 columns, 2
    // threads, AVX-512 Xeon: 1.3-1.5x with llamafile alone), and the one-off weight conversion costs far less than
    // that when columns are many. It also keeps activations unrounded (ggml's q8_0/q4_K products round them to
    // 8-bit blocks). Few columns (time embeddings, 77-token context, deep low-resolution blocks) stay on the stored
    // type, where reading fewer weight bytes wins. GPU backends keep their own kernels (0).
    static Graph begin(GraphRunner& runner, const Options& opt, size_t max_nodes = 65536);

    // The weights live on the CPU backend, the only one that runs sdcpp's custom ops.
    bool cpu() const;
    // A product over `cols` activation columns takes an f32 weight (and OpenBLAS, when use_blas()).
    bool wide(int64_t cols) const { return opt.f32_matmul_min_cols > 0 && cols >= opt.f32_matmul_min_cols; }
    // The CPU's custom product ops can run: the graph runs on the CPU and has a kernel for them (OpenBLAS loaded
    // and enabled, runtime/blas.hpp, or AMX with bf16()).
    bool use_blas() const;
    // Products run in bf16 on AMX (opt.bf16 and the CPU can).
    bool bf16() const;
    // Products run in f16 on AVX512-FP16 (opt.f16 and the CPU can).
    bool f16() const;

    // The token sdcpp's custom ops in this graph poll (the runner's).
    const CancelToken* cancel() const { return runner.cancel_token().get(); }

    ggml_tensor* w(const std::string& name) const { return runner.weight(name); }
    bool has(const std::string& name) const { return runner.has_weight(name); }
    // ggml dims of a stored weight (matrices are [n_per_row, rows]).
    int64_t ne(const std::string& name, int dim) const;
};

// y = W x (+ b when `prefix.bias` exists); x is [in, ...], the result [out, ...].
ggml_tensor* linear(const Graph& g, ggml_tensor* x, const std::string& prefix);

// 2-D convolution of x [W, H, C, N] with `prefix.weight` (stored [C*k*k, OC], any type) + bias; pad < 0: k / 2.
// The kernel size follows from the stored row length and C; 1x1 convs skip im2col.
ggml_tensor* conv2d(const Graph& g, ggml_tensor* x, const std::string& prefix, int stride = 1, int pad = -1);

// GroupNorm with affine weight/bias over x [W, H, C, N], then SiLU when `silu` (one fused op on the CPU).
ggml_tensor* group_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, int groups, float eps,
                        bool silu = false);
// LayerNorm with affine weight/bias over the first dimension.
ggml_tensor* layer_norm(const Graph& g, ggml_tensor* x, const std::string& prefix, float eps);

enum class Mask {
    None,
    Causal,  // query i sees keys 0..i (CLIP's text transformer)
};

// Scaled dot-product attention of q [C, Tq, N] over k, v [C, Tk, N] with `heads` heads; returns [C, Tq, N].
ggml_tensor* attention(const Graph& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads,
                       Mask mask = Mask::None);

// Activations, elementwise in f32.
ggml_tensor* silu(const Graph& g, ggml_tensor* x);
ggml_tensor* relu(const Graph& g, ggml_tensor* x);
ggml_tensor* gelu(const Graph& g, ggml_tensor* x);        // exact (erf) form, as torch's F.gelu
ggml_tensor* quick_gelu(const Graph& g, ggml_tensor* x);  // x * sigmoid(1.702 x), OpenAI CLIP
// GEGLU of h = [hidden | gate] (first dimension 2 * n) -> hidden * gelu(gate) (erf form), [n, ...].
ggml_tensor* geglu(const Graph& g, ggml_tensor* h);

// [W, H, C, N] <-> [C, W*H, N].
ggml_tensor* to_tokens(const Graph& g, ggml_tensor* x);
ggml_tensor* from_tokens(const Graph& g, ggml_tensor* x, int64_t W, int64_t H);
// Nearest-neighbour resize of x [W, H, C, N] to [W_out, H_out, C, N].
ggml_tensor* resize_nearest(const Graph& g, ggml_tensor* x, int64_t W_out, int64_t H_out);

}  // namespace sdcpp::ops
