// The Python side of graph passes: sdcpp._core.CancelToken.
#pragma once

#include <pybind11/pybind11.h>

namespace sdcpp {

// sdcpp._core.CancelToken.
void register_cancel_token(pybind11::module_& m);

}  // namespace sdcpp
