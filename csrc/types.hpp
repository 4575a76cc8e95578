// Lookup of ggml tensor types by name and queries about what we can do with them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ggml.h>

namespace sdcpp {

// Resolves a ggml type name ("f16", "q4_K", ...); throws std::invalid_argument if unknown.
ggml_type type_from_name(const std::string& name);

const char* type_name(ggml_type type);

// All types still supported by ggml (removed enum values are skipped), in enum order.
std::vector<std::string> type_names();

// True if ggml_quantize_chunk() accepts the type as destination without an imatrix.
bool type_can_quantize(ggml_type type);

// Largest |x| the quantizer for `type` survives, or +inf if any input (even NaN) is fine.
// ggml's grid-search iq quantizers GGML_ASSERT (abort) on NaN/inf and on values beyond
// roughly 1e12 (their squared sums overflow); 1e10 was fuzzed safe for all of them.
float type_max_abs_input(ggml_type type);

// True if rows of this type can be turned into f32 (f32 itself counts).
bool type_has_to_float(ggml_type type);

// Bytes in one row of n_per_row elements; validates n_per_row against the block size.
size_t checked_row_size(ggml_type type, int64_t n_per_row);

// a * b, throwing std::invalid_argument instead of overflowing size_t.
size_t checked_mul(size_t a, size_t b);

}  // namespace sdcpp
