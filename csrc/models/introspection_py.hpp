// The introspection every model graph binding offers (weights read, buffer size, per-node profile), and its cancel
// token.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "runtime/cancel.hpp"

namespace sdcpp {

template <class Model>
void bind_introspection(pybind11::class_<Model>& cls) {
    namespace py = pybind11;
    cls.def("used_weights", &Model::used_weights)
        .def("compute_buffer_size", &Model::compute_buffer_size)
        .def("set_profiling", &Model::set_profiling, py::arg("on"))
        .def(
            "last_profile",
            [](const Model& m) {
                py::list out;
                for (const auto& t : m.last_profile()) {
                    out.append(py::make_tuple(t.op, t.name, t.seconds, t.flops));
                }
                return out;
            },
            "(op, node name, seconds, flops) per graph node of the last profiled run")
        .def_property("cancel_token", &Model::cancel_token, &Model::set_cancel_token,
                      "The CancelToken that stops this model's passes; models given one token stop together.");
}

}  // namespace sdcpp
