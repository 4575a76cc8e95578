// Multi-threaded conversion of rows between ggml types (dequantize + requantize).
#pragma once

#include <cstdint>

#include <ggml.h>

namespace sdcpp {

// 0 means "one per physical core" (hyper-threads share a core's vector units, so compute-bound ggml work
// gains nothing from them); negative values throw std::invalid_argument.
int resolve_threads(int n_threads);

// Physical cores: distinct thread-sibling sets in Linux sysfs; elsewhere the hardware thread count.
int physical_cores();

// Converts n_rows rows of n_per_row elements from src_type to dst_type.
// Preconditions (validated by the caller): n_per_row fits both block sizes, dst can be
// quantized to, src has to_float, buffers have the right sizes. Safe without the GIL.
// Output is independent of n_threads because every ggml quantizer works per row.
// Throws std::invalid_argument (output then incomplete) if the f32 values exceed
// type_max_abs_input(dst_type), since those would abort inside ggml.
void convert_rows(ggml_type src_type, const uint8_t* src, ggml_type dst_type, uint8_t* dst,
                  int64_t n_rows, int64_t n_per_row, int n_threads);

}  // namespace sdcpp
