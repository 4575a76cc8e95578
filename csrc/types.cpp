#include "types.hpp"

#include <cctype>
#include <limits>
#include <stdexcept>
#include <unordered_map>

namespace sdcpp {
namespace {

// Removed enum values (e.g. 4, 5, 31-33) have empty traits; never hand those to ggml.
bool type_is_valid(int t) {
    if (t < 0 || t >= GGML_TYPE_COUNT) {
        return false;
    }
    const ggml_type_traits* tr = ggml_get_type_traits(static_cast<ggml_type>(t));
    return tr->type_name != nullptr && tr->blck_size > 0 && tr->type_size > 0;
}

std::string lower(std::string s) {
    for (char& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

// Keyed by lower-case name so that gguf-style "Q4_K" also resolves.
const std::unordered_map<std::string, ggml_type>& name_table() {
    static const std::unordered_map<std::string, ggml_type> table = [] {
        std::unordered_map<std::string, ggml_type> t;
        for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
            if (type_is_valid(i)) {
                t.emplace(lower(ggml_type_name(static_cast<ggml_type>(i))), static_cast<ggml_type>(i));
            }
        }
        return t;
    }();
    return table;
}

}  // namespace

ggml_type type_from_name(const std::string& name) {
    const auto& table = name_table();
    auto it = table.find(lower(name));
    if (it == table.end()) {
        std::string msg = "unknown ggml type '" + name + "'; valid types:";
        for (const auto& n : type_names()) {
            msg += " " + n;
        }
        throw std::invalid_argument(msg);
    }
    return it->second;
}

const char* type_name(ggml_type type) { return ggml_type_name(type); }

std::vector<std::string> type_names() {
    std::vector<std::string> names;
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        if (type_is_valid(i)) {
            names.emplace_back(ggml_type_name(static_cast<ggml_type>(i)));
        }
    }
    return names;
}

bool type_can_quantize(ggml_type type) {
    // Mirrors the switch in ggml_quantize_chunk(): any other type falls through to an
    // abort there, so this list must not be derived from the traits (q8_1/q8_K have
    // from_float_ref but are not accepted).
    switch (type) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16:
        case GGML_TYPE_Q1_0:
        case GGML_TYPE_Q2_0:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_MXFP4:
        case GGML_TYPE_NVFP4:
        case GGML_TYPE_Q2_K:
        case GGML_TYPE_Q3_K:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K:
        case GGML_TYPE_Q6_K:
        case GGML_TYPE_TQ1_0:
        case GGML_TYPE_TQ2_0:
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ1_M:
        case GGML_TYPE_IQ4_NL:
        case GGML_TYPE_IQ4_XS:
            // We never pass an importance matrix, and these assert on a missing one.
            return !ggml_quantize_requires_imatrix(type);
        default:
            return false;
    }
}

float type_max_abs_input(ggml_type type) {
    switch (type) {
        case GGML_TYPE_IQ2_XXS:
        case GGML_TYPE_IQ2_XS:
        case GGML_TYPE_IQ2_S:
        case GGML_TYPE_IQ3_XXS:
        case GGML_TYPE_IQ3_S:
        case GGML_TYPE_IQ1_S:
        case GGML_TYPE_IQ1_M:
            return 1e10f;
        default:
            return std::numeric_limits<float>::infinity();
    }
}

bool type_has_to_float(ggml_type type) {
    if (type == GGML_TYPE_F32) {
        return true;
    }
    return type_is_valid(type) && ggml_get_type_traits(type)->to_float != nullptr;
}

size_t checked_row_size(ggml_type type, int64_t n_per_row) {
    if (n_per_row <= 0) {
        throw std::invalid_argument("n_per_row must be positive, got " + std::to_string(n_per_row));
    }
    const int64_t blck = ggml_blck_size(type);
    if (n_per_row % blck != 0) {
        throw std::invalid_argument("n_per_row=" + std::to_string(n_per_row) + " is not a multiple of the " +
                                    ggml_type_name(type) + " block size " + std::to_string(blck));
    }
    // ggml_row_size() does the multiply in size_t without checking.
    return checked_mul(ggml_type_size(type), static_cast<size_t>(n_per_row / blck));
}

size_t checked_mul(size_t a, size_t b) {
    if (a != 0 && b > std::numeric_limits<size_t>::max() / a) {
        throw std::invalid_argument("size overflow");
    }
    return a * b;
}

}  // namespace sdcpp
