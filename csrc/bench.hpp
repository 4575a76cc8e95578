// Micro-benchmark of one ggml mul_mat on the CPU backend (used to compare libggml builds).
#pragma once

#include <cstdint>

#include <ggml.h>

namespace sdcpp {

// Weight M x K of `type` (random data), activations K x N f32. Returns the best wall time
// in seconds over `iters` graph runs. With repack=true the weight goes into the CPU's
// repacking buffer type (faster q4_0/q4_K/iq4_nl kernels where the CPU supports them).
// Call without the GIL.
double bench_mul_mat(ggml_type type, int64_t M, int64_t N, int64_t K, int iters, int n_threads, bool repack);

// Argument checks for bench_mul_mat that need no ggml state; call with the GIL held.
void check_bench_args(ggml_type type, int64_t M, int64_t N, int64_t K, int iters, int n_threads);

}  // namespace sdcpp
