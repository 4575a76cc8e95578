#include "models/modules.hpp"

namespace sdcpp::modules {

ggml_tensor* attention(const Graph& g, ggml_tensor* x, ggml_tensor* context, const std::string& prefix, int heads) {
    ggml_tensor* kv = context != nullptr ? context : x;
    ggml_tensor* q = ops::linear(g, x, prefix + ".to_q");
    ggml_tensor* k = ops::linear(g, kv, prefix + ".to_k");
    ggml_tensor* v = ops::linear(g, kv, prefix + ".to_v");
    return ops::linear(g, ops::attention(g, q, k, v, heads), prefix + ".to_out.0");
}

ggml_tensor* geglu_feed_forward(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    ggml_tensor* h = ops::linear(g, x, prefix + ".net.0.proj");  // [2*inner, T, N] = [hidden | gate]
    return ops::linear(g, ops::geglu(g, h), prefix + ".net.2");
}

ggml_tensor* resnet(const Graph& g, ggml_tensor* x, ggml_tensor* temb_act, const std::string& prefix, int groups,
                    float eps) {
    ggml_tensor* h = ops::group_norm(g, x, prefix + ".norm1", groups, eps, true);
    h = ops::conv2d(g, h, prefix + ".conv1");
    if (temb_act != nullptr) {
        ggml_tensor* t = ops::linear(g, temb_act, prefix + ".time_emb_proj");  // [OC, N]
        h = ggml_add(g.ctx, h, ggml_reshape_4d(g.ctx, t, 1, 1, t->ne[0], t->ne[1]));
    }
    h = ops::group_norm(g, h, prefix + ".norm2", groups, eps, true);
    h = ops::conv2d(g, h, prefix + ".conv2");
    ggml_tensor* skip = g.has(prefix + ".conv_shortcut.weight") ? ops::conv2d(g, x, prefix + ".conv_shortcut") : x;
    return ggml_add(g.ctx, skip, h);
}

ggml_tensor* tiny_block(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    ggml_tensor* h = ops::relu(g, ops::conv2d(g, x, prefix + ".conv.0"));
    h = ops::relu(g, ops::conv2d(g, h, prefix + ".conv.2"));
    h = ops::conv2d(g, h, prefix + ".conv.4");
    ggml_tensor* skip = g.has(prefix + ".skip.weight") ? ops::conv2d(g, x, prefix + ".skip") : x;
    return ops::relu(g, ggml_add(g.ctx, h, skip));
}

ggml_tensor* upsample(const Graph& g, ggml_tensor* x, const std::string& prefix, int64_t W, int64_t H) {
    return ops::conv2d(g, ops::resize_nearest(g, x, W, H), prefix + ".conv", 1, 1);
}

ggml_tensor* downsample(const Graph& g, ggml_tensor* x, const std::string& prefix, bool asymmetric) {
    if (asymmetric) {
        x = ggml_pad_ext(g.ctx, x, 0, 1, 0, 1, 0, 0, 0, 0);
        return ops::conv2d(g, x, prefix + ".conv", 2, 0);
    }
    return ops::conv2d(g, x, prefix + ".conv", 2, 1);
}

ggml_tensor* timestep_embedding(const Graph& g, ggml_tensor* t, int dim) {
    return ggml_timestep_embedding(g.ctx, t, dim, 10000);
}

ggml_tensor* timestep_mlp(const Graph& g, ggml_tensor* x, const std::string& prefix) {
    x = ops::silu(g, ops::linear(g, x, prefix + ".linear_1"));
    return ops::linear(g, x, prefix + ".linear_2");
}

}  // namespace sdcpp::modules
