// The introspection every model graph binding offers (weights read, buffer size, per-node profile), and its cancel
// token.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "runtime/cancel.hpp"
#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

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
        .def(
            "set_lora",
            [](Model& m, const std::vector<std::tuple<std::string, WeightStore*, std::string, std::string, float>>& terms) {
                // (layer prefix, store, down name, up name or "" for a dense delta, scale). The caller keeps the
                // stores alive while the terms are set (sdcpp.lora.runtime does).
                std::unordered_map<std::string, std::vector<LoraTerm>> map;
                for (const auto& [prefix, store, down, up, scale] : terms) {
                    if (store == nullptr || !store->allocated()) {
                        throw std::invalid_argument("set_lora: the store of '" + prefix + "' is not allocated");
                    }
                    LoraTerm t;
                    t.down = store->tensor(down);
                    t.up = up.empty() ? nullptr : store->tensor(up);
                    t.scale = scale;
                    map[prefix].push_back(t);
                }
                m.set_lora(std::move(map));
            },
            py::arg("terms"), "Runtime LoRA terms: [(layer prefix, WeightStore, down, up or '', scale)]")
        .def("lora_layers", &Model::lora_layers)
        .def_property("cancel_token", &Model::cancel_token, &Model::set_cancel_token,
                      "The CancelToken that stops this model's passes; models given one token stop together.");
}

}  // namespace sdcpp
