// Per-core throughput of the multiply-add instructions a CPU product kernel can be built on, measured here.
//
// Why: which bf16/f16 kernel pays off differs between CPUs that report the same features. On an AMX-less Xeon of
// this project's machines (AVX512-BF16 and AVX512-FP16 reported, AMX hidden by the hypervisor) vdpbf16ps ran at
// half the rate of f32 FMA, so a bf16 dot-product kernel cannot beat the f32 path there, while f16 FMA ran at 2.0x
// (docs/benchmarks.md). benchmarks/bench_cpu_peaks.py prints these numbers next to the kernel choice.
#pragma once

#include <map>
#include <string>

namespace sdcpp::peaks {

// GFLOP/s of one core (this thread) for each instruction the CPU and OS support, 12 independent accumulators, no
// memory operands, about `seconds` each: "f32_fma_avx2", "f32_fma_avx512", "bf16_dot_avx512" (vdpbf16ps),
// "f16_fma_avx512" (vfmadd231ph). Multiply-adds count 2. x86-64 only (empty elsewhere).
std::map<std::string, double> instruction_peaks(double seconds);

}  // namespace sdcpp::peaks
