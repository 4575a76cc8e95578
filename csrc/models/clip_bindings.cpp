// Python binding of the CLIP text encoder graph (models/clip.hpp); sdcpp.models.clip wraps it.
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "models/clip.hpp"
#include "models/compute_py.hpp"
#include "models/introspection_py.hpp"
#include "models/register.hpp"

namespace py = pybind11;

namespace sdcpp {

namespace {

using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

py::array_t<float> to_numpy(std::vector<float>&& v, std::vector<py::ssize_t> shape) {
    // Move the result into a capsule-owned vector: no copy of the hidden states.
    auto* owned = new std::vector<float>(std::move(v));
    py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
    return py::array_t<float>(std::move(shape), owned->data(), free_when_done);
}

py::dict clip_compute(ClipTextModel& model, const IntArray& tokens, const IntArray& eos, int out_layer,
                      bool final_norm, bool want_pooled) {
    if (tokens.ndim() != 2) {
        throw py::value_error("tokens must be a 2-D int32 array [batch, n_tokens]");
    }
    const int64_t B = tokens.shape(0);
    const int64_t T = tokens.shape(1);
    if (want_pooled && (eos.ndim() != 1 || eos.shape(0) != B)) {
        throw py::value_error("eos must be a 1-D int32 array with one position per batch item (" +
                              std::to_string(B) + ")");
    }
    // Copies, so the GIL can be released while the graph runs.
    std::vector<int32_t> tok(tokens.data(), tokens.data() + B * T);
    std::vector<int32_t> pos;
    if (want_pooled) {
        pos.assign(eos.data(), eos.data() + B);
    }
    ClipRequest req;
    req.out_layer = out_layer;
    req.final_norm = final_norm;
    req.want_pooled = want_pooled;
    ClipOutput out;
    run_pass(model, [&] { out = model.compute(tok.data(), B, T, pos.data(), req); });
    py::dict d;
    const py::ssize_t C = model.hidden_size();
    d["hidden"] = to_numpy(std::move(out.hidden), {B, T, C});
    if (want_pooled) {
        d["pooled"] = to_numpy(std::move(out.pooled), {B, C});
        if (model.projection_dim() > 0) {
            const py::ssize_t P = model.projection_dim();
            d["text_embeds"] = to_numpy(std::move(out.text_embeds), {B, P});
        }
    }
    return d;
}

}  // namespace

void register_clip(py::module_& m) {
    py::class_<ClipTextModel> cls(m, "ClipTextModel",
                                  "CLIP text transformer over the weights `prefix`text_model.* of a WeightStore.");
    cls.def(py::init([](WeightStore& store, const std::string& prefix, int n_layers, int n_heads,
                         const std::string& hidden_act, float layer_norm_eps, bool flash_attn,
                         int64_t f32_matmul_min_cols, const std::string& precision, int n_threads) {
                 ClipConfig cfg;
                 cfg.n_layers = n_layers;
                 cfg.n_heads = n_heads;
                 cfg.act = clip_activation_from_name(hidden_act);
                 cfg.eps = layer_norm_eps;
                 cfg.ops = kernel_options(flash_attn, 0.0, f32_matmul_min_cols, precision);
                 return new ClipTextModel(store, prefix, cfg, n_threads);
             }),
             // No defaults: sdcpp.models.clip.TextEncoder passes every value (sdcpp.config holds the model's).
             py::arg("store"), py::arg("prefix"), py::arg("n_layers"), py::arg("n_heads"), py::arg("hidden_act"),
             py::arg("layer_norm_eps"), py::arg("flash_attn"), py::arg("f32_matmul_min_cols"), py::arg("precision"),
             py::arg("n_threads"),
             py::keep_alive<1, 2>())  // the graphs read the store's tensors: keep it alive
        .def("compute", &clip_compute, py::arg("tokens"), py::arg("eos"), py::arg("out_layer"),
             py::arg("apply_final_norm") = true, py::arg("want_pooled") = true,
             "tokens int32 [B, T], eos int32 [B] -> {'hidden': [B, T, C], 'pooled': [B, C], 'text_embeds': [B, P]}. "
             "out_layer indexes transformers' hidden_states (0 = embeddings). Releases the GIL.")
        .def_property_readonly("hidden_size", &ClipTextModel::hidden_size)
        .def_property_readonly("vocab_size", &ClipTextModel::vocab_size)
        .def_property_readonly("n_positions", &ClipTextModel::n_positions)
        .def_property_readonly("projection_dim", &ClipTextModel::projection_dim)
        .def_property_readonly("n_layers", [](const ClipTextModel& c) { return c.config().n_layers; })
        .def_property_readonly("n_heads", [](const ClipTextModel& c) { return c.config().n_heads; })
        .def_property_readonly("flash_attn", [](const ClipTextModel& c) { return c.config().ops.flash_attn; });
    bind_introspection(cls);
}

}  // namespace sdcpp
