#include <pybind11/stl.h>

#include "models/compute_py.hpp"
#include "models/nchw_py.hpp"
#include "models/introspection_py.hpp"
#include "models/register.hpp"
#include "models/vae.hpp"

namespace py = pybind11;

namespace sdcpp {

void register_vae(py::module_& m) {
    py::class_<Vae> cls(m, "VAE", "AutoencoderKL encoder/decoder graphs over the vae.* weights of a WeightStore.");
    cls.def(py::init([](WeightStore& store, int groups, float norm_eps, bool flash_attn, double max_im2col_mib,
                         int64_t f32_matmul_min_cols, const std::string& precision, int n_threads) {
                 VaeConfig cfg;
                 cfg.groups = groups;
                 cfg.eps = norm_eps;
                 cfg.ops = kernel_options(flash_attn, max_im2col_mib, f32_matmul_min_cols, precision);
                 return new Vae(store, cfg, n_threads);
             }),
             // No defaults: sdcpp.models.vae.VAE passes every value (sdcpp.config holds the model's).
             py::arg("store"), py::arg("groups"), py::arg("norm_eps"), py::arg("flash_attn"),
             py::arg("max_im2col_mib"), py::arg("f32_matmul_min_cols"), py::arg("precision"), py::arg("n_threads"),
             py::keep_alive<1, 2>())
        .def(
            "decode",
            [](Vae& vae, const FloatArray& latents) {
                const auto s = shape_of(latents, 4, "latents");
                Nchw out;
                run_pass(vae, [&] { out = vae.decode(latents.data(), s[0], s[1], s[2], s[3]); });
                return to_numpy(std::move(out));
            },
            py::arg("latents"), "latents [N, C, h, w] float32 -> images [N, 3, 8h, 8w]")
        .def(
            "encode",
            [](Vae& vae, const FloatArray& images, const std::optional<FloatArray>& noise) {
                const auto s = shape_of(images, 4, "images");
                const float* eps = nullptr;
                size_t n_eps = 0;
                if (noise.has_value()) {
                    shape_of(*noise, 4, "noise");
                    eps = noise->data();
                    n_eps = static_cast<size_t>(noise->size());
                }
                Nchw out;
                run_pass(vae, [&] { out = vae.encode(images.data(), s[0], s[1], s[2], s[3], eps, n_eps); });
                return to_numpy(std::move(out));
            },
            py::arg("images"), py::arg("noise") = py::none(),
            "images [N, C, H, W] float32 -> latent mean, or mean + std * noise")
        .def_property_readonly("latent_channels", &Vae::latent_channels);
    bind_introspection(cls);
}

}  // namespace sdcpp
