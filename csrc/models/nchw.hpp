// A float32 NCHW array handed between the model graphs and the bindings (ggml sees it as [W, H, C, N]).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sdcpp {

struct Nchw {
    int64_t n = 0, c = 0, h = 0, w = 0;
    std::vector<float> data;

    Nchw() = default;
    Nchw(int64_t n_, int64_t c_, int64_t h_, int64_t w_) : n(n_), c(c_), h(h_), w(w_), data(n_ * c_ * h_ * w_) {}
    size_t nbytes() const { return data.size() * sizeof(float); }
};

// Dimensions a graph input must have; throws std::invalid_argument naming `what` (ggml would abort instead).
inline void check_dims(const char* what, int64_t n, int64_t c, int64_t h, int64_t w) {
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0) {
        throw std::invalid_argument(std::string(what) + ": every dimension must be positive");
    }
}

}  // namespace sdcpp
