// Python bindings of the model graphs; each model file defines its own register_* function.
#pragma once

#include <pybind11/pybind11.h>

#include "models/compute_py.hpp"

namespace sdcpp {

void register_clip(pybind11::module_& m);  // models/clip_bindings.cpp
void register_vae(pybind11::module_& m);   // models/vae_bindings.cpp
void register_unet(pybind11::module_& m);  // models/unet_bindings.cpp
void register_taesd(pybind11::module_& m);  // models/taesd_bindings.cpp

inline void register_models(pybind11::module_& m) {
    register_cancel_token(m);  // models/compute_py.cpp
    register_clip(m);
    register_vae(m);
    register_unet(m);
    register_taesd(m);
}

}  // namespace sdcpp
