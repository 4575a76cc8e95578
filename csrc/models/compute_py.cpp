#include "models/compute_py.hpp"

#include <memory>

#include "runtime/cancel.hpp"

namespace py = pybind11;

namespace sdcpp {

void register_cancel_token(py::module_& m) {
    py::class_<CancelToken, std::shared_ptr<CancelToken>>(
        m, "CancelToken",
        "A flag that stops the graph passes of every model sharing it: ggml's CPU abort callback reads it between "
        "nodes and sdcpp's custom ops between blocks of work; a stopped pass raises sdcpp.Cancelled. Thread-safe.")
        .def(py::init<>())
        .def(
            "cancel", [](CancelToken& t) { t.cancel(CancelToken::Reason::Cancel); },
            "Stop the passes running now and refuse new ones until reset().")
        .def("reset", &CancelToken::reset)
        .def_property_readonly("cancelled", &CancelToken::cancelled)
        .def(
            "check",
            [](const CancelToken& t) {
                if (t.cancelled()) {
                    throw CancelledError(t.reason());
                }
            },
            "Raise what a pass stopped by this token raises (sdcpp.Cancelled) when it is set.");
}

}  // namespace sdcpp
