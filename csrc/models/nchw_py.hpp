// numpy <-> Nchw for the model bindings: float32 C-contiguous arrays in, owned arrays out (no copy).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "models/nchw.hpp"

namespace sdcpp {

using FloatArray = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;

// The shape of `a`, which must have `ndim` dimensions; `what` names the argument in the error.
inline std::vector<int64_t> shape_of(const FloatArray& a, pybind11::ssize_t ndim, const char* what) {
    if (a.ndim() != ndim) {
        throw pybind11::value_error(std::string(what) + " must have " + std::to_string(ndim) + " dimensions, got " +
                                    std::to_string(a.ndim()));
    }
    std::vector<int64_t> s(static_cast<size_t>(ndim));
    for (pybind11::ssize_t i = 0; i < ndim; ++i) {
        s[static_cast<size_t>(i)] = static_cast<int64_t>(a.shape(i));
    }
    return s;
}

// Hands the buffer to numpy: the vector moves into a capsule that frees it with the array.
inline pybind11::array_t<float> to_numpy(Nchw&& t) {
    auto* owned = new std::vector<float>(std::move(t.data));
    pybind11::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
    const std::array<pybind11::ssize_t, 4> shape{t.n, t.c, t.h, t.w};
    return pybind11::array_t<float>(shape, owned->data(), free_when_done);
}

}  // namespace sdcpp
