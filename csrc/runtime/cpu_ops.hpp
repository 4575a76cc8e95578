// CPU-only fused ops (ggml custom ops) for elementwise chains that ggml runs as several passes over memory.
#pragma once

#include <ggml.h>

#include "runtime/cancel.hpp"

namespace sdcpp::cpu_ops {

// GroupNorm over x [W, H, C, N] (f32, contiguous) with per-channel f32 gamma/beta [C], optionally followed by SiLU:
// one pass for the statistics and one for normalize + affine (+ SiLU), where ggml takes group_norm, mul, add and
// silu as four. Threads take (image, group) pairs in turn, and stop (output incomplete) once `cancel` (may be
// null) is set, looking at it before each pair.
ggml_tensor* group_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* gamma, ggml_tensor* beta, int groups,
                        float eps, bool silu, const CancelToken* cancel);

}  // namespace sdcpp::cpu_ops
