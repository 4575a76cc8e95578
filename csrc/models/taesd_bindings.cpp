#include <pybind11/stl.h>

#include "models/compute_py.hpp"
#include "models/introspection_py.hpp"
#include "models/nchw_py.hpp"
#include "models/register.hpp"
#include "models/taesd.hpp"

namespace py = pybind11;

namespace sdcpp {

void register_taesd(py::module_& m) {
    py::class_<TinyVae> cls(m, "TinyVAE",
                            "TAESD (diffusers AutoencoderTiny) encoder/decoder graphs over the vae.* weights of a "
                            "WeightStore.");
    cls.def(py::init([](WeightStore& store, int64_t encoder_layers, int64_t decoder_layers, int upscale,
                         double max_im2col_mib, int64_t f32_matmul_min_cols, const std::string& precision,
                         int n_threads) {
                 TinyVaeConfig cfg;
                 cfg.encoder_layers = encoder_layers;
                 cfg.decoder_layers = decoder_layers;
                 cfg.upscale = upscale;
                 cfg.ops = kernel_options(false, max_im2col_mib, f32_matmul_min_cols, precision);
                 return new TinyVae(store, cfg, n_threads);
             }),
             // No defaults: sdcpp.models.taesd.TinyVAE passes every value (sdcpp.config holds the model's).
             py::arg("store"), py::arg("encoder_layers"), py::arg("decoder_layers"), py::arg("upscale"),
             py::arg("max_im2col_mib"), py::arg("f32_matmul_min_cols"), py::arg("precision"), py::arg("n_threads"),
             py::keep_alive<1, 2>())
        .def(
            "decode",
            [](TinyVae& vae, const FloatArray& latents) {
                const auto s = shape_of(latents, 4, "latents");
                Nchw out;
                run_pass(vae, [&] { out = vae.decode(latents.data(), s[0], s[1], s[2], s[3]); });
                return to_numpy(std::move(out));
            },
            py::arg("latents"), "latents [N, C, h, w] float32 (unscaled) -> images [N, 3, f*h, f*w]")
        .def(
            "encode",
            [](TinyVae& vae, const FloatArray& images) {
                const auto s = shape_of(images, 4, "images");
                Nchw out;
                run_pass(vae, [&] { out = vae.encode(images.data(), s[0], s[1], s[2], s[3]); });
                return to_numpy(std::move(out));
            },
            py::arg("images"), "images [N, 3, H, W] float32 in [-1, 1] -> latents [N, C, H/f, W/f]")
        .def_property_readonly("latent_channels", &TinyVae::latent_channels)
        .def_property_readonly("has_encoder", &TinyVae::has_encoder);
    bind_introspection(cls);
}

}  // namespace sdcpp
