#include "runtime/cpu_ops.hpp"

#include <cmath>
#include <cstdint>

namespace sdcpp::cpu_ops {

namespace {

// What one group-norm node needs besides its tensors (custom_op_args keeps it in the graph's context).
struct GroupNormArgs {
    const CancelToken* cancel;
    int64_t groups;
    float eps;
    bool silu;
};

// Sum of term(x[i]) over n floats: 16 float lanes over blocks of 1024 values, block sums added in double, so the
// loop vectorizes (inlined into its caller's SIMD clone) and long groups keep double-like accuracy.
template <typename Term>
__attribute__((always_inline)) inline double blocked_sum(const float* x, int64_t n, Term term) {
    double total = 0.0;
    for (int64_t b = 0; b < n; b += 1024) {
        const int64_t e = b + 1024 < n ? b + 1024 : n;
        float lane[16] = {};
        int64_t i = b;
        for (; i + 16 <= e; i += 16) {
            for (int j = 0; j < 16; j++) {
                lane[j] += term(x[i + j]);
            }
        }
        for (; i < e; i++) {
            lane[0] += term(x[i]);
        }
        for (float v : lane) {
            total += v;
        }
    }
    return total;
}

// Mean and mean squared deviation of n floats, in two passes (no cancellation).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void moments(const float* x, int64_t n, double* mean_out, double* var_out) {
    const double mean = blocked_sum(x, n, [](float v) { return v; }) / static_cast<double>(n);
    const float m = static_cast<float>(mean);
    *mean_out = mean;
    *var_out = blocked_sum(x, n, [m](float v) { return (v - m) * (v - m); }) / static_cast<double>(n);
}

// y = (x - mean) * rstd * gamma + beta (then y * sigmoid(y)) over one group's channels, each `plane` floats.
// Vectorizable loops (one clone per SIMD width); sigmoid via expf, which glibc vectorizes under the file's
// -fno-math-errno (CMakeLists).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void normalize_group(const float* x, float* y, int64_t channels, int64_t plane, const float* gamma, const float* beta,
                     double mean, double rstd, bool silu) {
    for (int64_t c = 0; c < channels; c++) {
        const float scale = static_cast<float>(rstd) * gamma[c];
        const float shift = beta[c] - static_cast<float>(mean) * scale;
        const float* xc = x + c * plane;
        float* yc = y + c * plane;
        if (silu) {
            for (int64_t i = 0; i < plane; i++) {
                const float v = xc[i] * scale + shift;
                yc[i] = v / (1.0f + std::exp(-v));
            }
        } else {
            for (int64_t i = 0; i < plane; i++) {
                yc[i] = xc[i] * scale + shift;
            }
        }
    }
}

void group_norm_groups(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* x = dst->src[0];
    const float* gamma = static_cast<const float*>(dst->src[1]->data);
    const float* beta = static_cast<const float*>(dst->src[2]->data);
    const GroupNormArgs args = *static_cast<const GroupNormArgs*>(userdata);
    const int64_t groups = args.groups;
    const int64_t plane = x->ne[0] * x->ne[1], C = x->ne[2], N = x->ne[3], cg = C / groups;
    const int64_t count = cg * plane;
    for (int64_t task = ith; task < N * groups; task += nth) {
        if (stop_requested(args.cancel)) {
            return;
        }
        const int64_t n = task / groups, grp = task % groups;
        const int64_t offset = (n * C + grp * cg) * plane;
        const float* xs = static_cast<const float*>(x->data) + offset;
        double mean = 0.0, var = 0.0;
        moments(xs, count, &mean, &var);
        const double rstd = 1.0 / std::sqrt(var + args.eps);
        normalize_group(xs, static_cast<float*>(dst->data) + offset, cg, plane, gamma + grp * cg, beta + grp * cg,
                        mean, rstd, args.silu);
    }
}

}  // namespace

ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* gamma, ggml_tensor* beta, int groups,
                        float eps, bool silu, const CancelToken* cancel) {
    ggml_tensor* args[] = {x, gamma, beta};
    GroupNormArgs* params = custom_op_args(ctx, GroupNormArgs{cancel, groups, eps, silu});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 3, group_norm_groups,
                          GGML_N_TASKS_MAX, params);
}

}  // namespace sdcpp::cpu_ops
