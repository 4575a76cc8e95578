// How every model binding runs a graph pass from Python: without the GIL, and, on the main thread, with Python's
// signal handlers still running (Ctrl-C) while the pass computes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include <pybind11/pybind11.h>

#include "models/graph_model.hpp"
#include "ops/ops.hpp"

namespace sdcpp {

// Runs `work` (one pass of `model`; it must not touch Python objects) with the GIL released. On the interpreter's
// main thread, the only one Python runs signal handlers on, `work` runs on a long-lived pass thread while this one
// wakes every 20 ms to run them (PyErr_CheckSignals); when a handler raises (KeyboardInterrupt), the model's token
// stops the pass with CancelToken::Reason::Interrupt, the pass is waited for, the interrupt reason is cleared again
// and the handler's exception propagates. Any other thread runs `work` in place. Exceptions of `work` are rethrown
// here.
void run_pass(GraphModel& model, const std::function<void()>& work);

// The kernel options every model binding takes, all given by its Python wrapper (which documents their defaults).
// max_im2col_mib: a memory budget in MiB (0 = unlimited).
// precision: "f32", "bf16" (ops::Options::bf16) or "f16" (ops::Options::f16).
ops::Options kernel_options(bool flash_attn, double max_im2col_mib, int64_t f32_matmul_min_cols,
                            const std::string& precision);

// sdcpp._core.CancelToken.
void register_cancel_token(pybind11::module_& m);

}  // namespace sdcpp
