#include <optional>

#include <pybind11/stl.h>

#include "models/compute_py.hpp"
#include "models/nchw_py.hpp"
#include "models/introspection_py.hpp"
#include "models/register.hpp"
#include "models/unet.hpp"

namespace py = pybind11;

namespace sdcpp {

namespace {

Nchw predict(Unet& unet, const FloatArray& latents, const FloatArray& timesteps, const FloatArray& context,
             const std::optional<FloatArray>& text_embeds, const std::optional<FloatArray>& time_ids) {
    const auto s = shape_of(latents, 4, "latents");
    const auto ts = shape_of(timesteps, 1, "timesteps");
    const auto cs = shape_of(context, 3, "context");
    if (ts[0] != s[0] || cs[0] != s[0]) {
        throw py::value_error("latents, timesteps and context must share the batch size, got " +
                              std::to_string(s[0]) + ", " + std::to_string(ts[0]) + ", " + std::to_string(cs[0]));
    }
    UnetAdded added;
    if (text_embeds.has_value()) {
        const auto ps = shape_of(*text_embeds, 2, "text_embeds");
        if (ps[0] != s[0]) {
            throw py::value_error("text_embeds must be [N, P] with the latents' batch size");
        }
        added.text_embeds = text_embeds->data();
        added.pooled_dim = ps[1];
    }
    if (time_ids.has_value()) {
        const auto is = shape_of(*time_ids, 2, "time_ids");
        if (is[0] != s[0]) {
            throw py::value_error("time_ids must be [N, K] with the latents' batch size");
        }
        added.time_ids = time_ids->data();
        added.n_time_ids = is[1];
    }
    Nchw out;
    run_pass(unet, [&] {
        out = unet.predict(latents.data(), s[0], s[1], s[2], s[3], timesteps.data(), context.data(), cs[1], cs[2],
                           added);
    });
    return out;
}

}  // namespace

void register_unet(py::module_& m) {
    py::class_<Unet> cls(m, "UNet", "UNet2DConditionModel graph over the unet.* weights of a WeightStore.");
    cls.def(py::init([](WeightStore& store, const std::vector<int>& heads, int groups, float norm_eps,
                         float transformer_group_norm_eps, float transformer_layer_norm_eps,
                         int addition_time_embed_dim, bool flash_attn, double max_im2col_mib,
                         int64_t f32_matmul_min_cols, const std::string& precision, int n_threads) {
                 UnetConfig cfg;
                 cfg.heads = heads;
                 cfg.groups = groups;
                 cfg.resnet_eps = norm_eps;
                 cfg.transformer_gn_eps = transformer_group_norm_eps;
                 cfg.layer_norm_eps = transformer_layer_norm_eps;
                 cfg.addition_time_embed_dim = addition_time_embed_dim;
                 cfg.ops = kernel_options(flash_attn, max_im2col_mib, f32_matmul_min_cols, precision);
                 return new Unet(store, cfg, n_threads);
             }),
             // No defaults: sdcpp.models.unet.UNet passes every value (sdcpp.config holds the model's).
             py::arg("store"), py::arg("heads"), py::arg("groups"), py::arg("norm_eps"),
             py::arg("transformer_group_norm_eps"), py::arg("transformer_layer_norm_eps"),
             py::arg("addition_time_embed_dim"), py::arg("flash_attn"), py::arg("max_im2col_mib"),
             py::arg("f32_matmul_min_cols"), py::arg("precision"), py::arg("n_threads"), py::keep_alive<1, 2>())
        .def(
            "predict",
            [](Unet& unet, const FloatArray& latents, const FloatArray& timesteps, const FloatArray& context,
               const std::optional<FloatArray>& text_embeds, const std::optional<FloatArray>& time_ids) {
                return to_numpy(predict(unet, latents, timesteps, context, text_embeds, time_ids));
            },
            py::arg("latents"), py::arg("timesteps"), py::arg("context"), py::arg("text_embeds") = py::none(),
            py::arg("time_ids") = py::none(),
            "latents [N, C, h, w], timesteps [N], context [N, T, D] (+ SDXL text_embeds [N, P], time_ids [N, K])")
        .def_property_readonly("in_channels", &Unet::in_channels)
        .def_property_readonly("context_dim", &Unet::context_dim)
        .def_property_readonly("adm_in_channels", &Unet::adm_in_channels)
        .def_property_readonly("n_down_blocks", &Unet::n_down_blocks);
    bind_introspection(cls);
}

}  // namespace sdcpp
